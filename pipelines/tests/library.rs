//! The pipeline as a library, without the command line: a generation on the tiny random
//! model with a sparse method chosen by name, decoded into a sink of our own.

mod common;

use candle_core::{DType, Device, Tensor};
use common::tiny;
use dit::LoraSet;
use pipelines::t2v::{
    FrameSink, Job, Loaded, ModelContext, ModelSpec, NoiseSource, PromptInput, SettingOverrides,
    Silent, SinkError,
};
use sparse::{MethodSpec, Registry};

/// Counts frames and checks their range.
#[derive(Default)]
struct Counter {
    frames: usize,
    shape: Vec<usize>,
}

impl FrameSink for Counter {
    fn push(&mut self, chunk: &Tensor) -> Result<(), SinkError> {
        let (b, c, t, h, w) = chunk.dims5()?;
        self.shape = vec![b, c, h, w];
        self.frames += t;
        let max = chunk
            .abs()?
            .max_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        if max > 1.0 {
            return Err(format!("values out of [-1, 1]: {max}").into());
        }
        Ok(())
    }
}

#[test]
fn a_generation_runs_into_a_sink_of_our_own() -> anyhow::Result<()> {
    let context = ModelContext::new(&tiny())?;
    let settings = context.settings(&SettingOverrides {
        size: Some("128x128".parse()?), // 3 x 8 x 8 tokens: 4 cubes of 4 x 4 x 4
        frames: Some(9),
        steps: Some(2),
        ..Default::default()
    })?;
    let spec: MethodSpec = "vsa:sparsity=0.5".parse()?;
    let job = Job::plan(
        &context,
        settings,
        PromptInput {
            prompt: Some("a red kite".to_string()),
            ..Default::default()
        },
        NoiseSource::Seed(7),
        Registry::builtin().schedule(&spec)?,
        None,
        LoraSet::default(),
    )?;
    let device = Device::Cpu;
    let prompts = context.encode(&job.texts(), DType::F32, &device, &mut Silent)?;
    let loaded = Loaded::load(
        &context,
        &LoraSet::default(),
        DType::F32,
        &device,
        &mut Silent,
    )?;
    let mut sink = Counter::default();
    let outcome = loaded.run(&job, &prompts, &mut sink, &mut Silent)?;
    assert_eq!(sink.frames, 9);
    assert_eq!(sink.shape, vec![1, 3, 128, 128]);
    let density = outcome.density.overall();
    assert!(
        density > 0.4 && density < 0.9,
        "VSA at sparsity 0.5: {density}"
    );
    assert!(outcome.timings.denoising_s > 0.0 && outcome.timings.decoding_s > 0.0);
    Ok(())
}

#[test]
fn a_failing_sink_ends_the_generation_with_its_own_error() -> anyhow::Result<()> {
    struct Full;
    impl FrameSink for Full {
        fn push(&mut self, _: &Tensor) -> Result<(), SinkError> {
            Err("the disk is full".into())
        }
    }
    let context = ModelContext::new(&tiny())?;
    let settings = context.settings(&SettingOverrides {
        size: Some("64x48".parse()?),
        frames: Some(5),
        steps: Some(1),
        ..Default::default()
    })?;
    let job = Job::plan(
        &context,
        settings,
        PromptInput {
            prompt: Some("a kite".to_string()),
            ..Default::default()
        },
        NoiseSource::Seed(1),
        Registry::builtin().schedule(&MethodSpec::named("dense"))?,
        None,
        LoraSet::default(),
    )?;
    let prompts = context.encode(&job.texts(), DType::F32, &Device::Cpu, &mut Silent)?;
    let loaded = Loaded::load(
        &context,
        &LoraSet::default(),
        DType::F32,
        &Device::Cpu,
        &mut Silent,
    )?;
    let err = loaded
        .run(&job, &prompts, &mut Full, &mut Silent)
        .unwrap_err();
    assert!(matches!(err, pipelines::Error::Sink(_)), "{err:?}");
    assert_eq!(err.to_string(), "the disk is full");
    Ok(())
}

/// A transformer with VSA's gate weights (fine-tuned with VSA, as FastWan) runs VSA at
/// sparsity 0.8 unless a method is named; option flags apply over that default.
#[test]
fn a_vsa_trained_transformer_defaults_to_vsa() -> anyhow::Result<()> {
    let folder = tiny().folder.expect("a folder");
    let dir = tempfile::tempdir()?;
    for part in ["vae", "text_encoder", "tokenizer", "scheduler"] {
        std::os::unix::fs::symlink(folder.join(part), dir.path().join(part))?;
    }
    std::fs::copy(
        folder.join("model_index.json"),
        dir.path().join("model_index.json"),
    )?;
    let transformer = dir.path().join("transformer");
    std::fs::create_dir(&transformer)?;
    std::fs::copy(
        folder.join("transformer/config.json"),
        transformer.join("config.json"),
    )?;
    let weights = "diffusion_pytorch_model.safetensors";
    let mut tensors =
        candle_core::safetensors::load(folder.join("transformer").join(weights), &Device::Cpu)?;
    for block in 0..2 {
        let gate = format!("blocks.{block}.attn1.to_gate_compress");
        tensors.insert(
            format!("{gate}.weight"),
            Tensor::zeros((32, 32), DType::F32, &Device::Cpu)?,
        );
        tensors.insert(
            format!("{gate}.bias"),
            Tensor::zeros(32, DType::F32, &Device::Cpu)?,
        );
    }
    candle_core::safetensors::save(&tensors, transformer.join(weights))?;
    let context = ModelContext::new(&ModelSpec {
        folder: Some(dir.path().to_path_buf()),
        ..Default::default()
    })?;
    let unnamed = context.attention(&MethodSpec::named("dense"), false)?;
    assert_eq!(unnamed.to_string(), "vsa:sparsity=0.8");
    let mut flags = MethodSpec::named("dense");
    flags.options.set("sparsity", "0.9");
    assert_eq!(
        context.attention(&flags, false)?.to_string(),
        "vsa:sparsity=0.9"
    );
    assert_eq!(context.attention(&flags, true)?, flags);
    // the plain tiny model keeps dense
    let plain = ModelContext::new(&tiny())?;
    assert_eq!(
        plain.attention(&MethodSpec::named("dense"), false)?.name,
        "dense"
    );
    Ok(())
}
