//! The two training stages end to end, from options to a model folder:
//!
//! 1. [`train_vae`]: the VAE for reconstruction, then its latent statistics; the
//!    folder it writes (VAE, a frozen random text encoder, the word-level tokenizer) is the
//!    base of the next stage.
//! 2. [`train_dit`]: the transformer with flow matching over a base, through any attention
//!    method; from scratch, or fine-tuning the base's own transformer; on one device, or on
//!    several that each take a share of every batch and average their gradients.
//!
//! Both write `<run>/loss.csv`, `<run>/loss.png`, `<run>/checkpoints/step-N/` and
//! `<run>/model/` (EMA weights), and resume from their latest checkpoint when asked; the
//! transformer stage keeps its encoded clips in `<run>/latents.safetensors`.

use crate::dit_stage::{AttentionPlan, FlowMatching, FlowMatchingOptions, Shard};
use crate::error::{Error, Result};
use crate::latent_set::{LatentSet, CACHE_FILE};
use crate::model_folder::{self, Base};
use crate::optim::{loss_csv, plot_png, AdamWConfig, LossRow, LrSchedule};
use crate::params::Params;
use crate::recipe::{self, Preset};
use crate::trainer::{check_run_dir, Finish, LoopOptions, PhaseSeconds, Trainer};
use crate::vae_stage::{
    latent_statistics, reconstruction_psnr, Reconstruction, ReconstructionOptions,
};
use candle_core::{DType, Device};
use dit::{WanConfig, WanTransformer};
use serde_json::json;
use sparse::Registry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use umt5::{TextEncoder, Umt5Config, Umt5Encoder};
use vae::{VaeConfig, WanVae};
use vdit_core::parallel::{Collective, GroupHealth};

/// Clips whose latents give the VAE's latent statistics.
const STATISTICS_CLIPS: usize = 64;
/// Unseen whole clips the trained VAE's reconstruction is measured on.
const RECONSTRUCTION_CLIPS: usize = 8;

/// What both stages share.
#[derive(Clone, Debug)]
pub struct Common {
    /// Model size.
    pub preset: Preset,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Steps of the whole run.
    pub steps: u64,
    /// Examples per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Global gradient-norm limit.
    pub clip: f64,
    /// EMA decay.
    pub ema_decay: f64,
    /// Seed of the data and of fresh weights.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Continue the run in `run_dir` from its latest checkpoint.
    pub resume: bool,
    /// Training device.
    pub device: Device,
}

impl Common {
    fn loop_options(&self, dtype: DType, config: serde_json::Value) -> Result<LoopOptions> {
        Ok(LoopOptions {
            steps: self.steps,
            schedule: LrSchedule::new(self.lr, self.warmup, self.steps, 0.1)?,
            adamw: AdamWConfig::default(),
            clip: self.clip,
            ema_decay: self.ema_decay,
            checkpoint_every: self.checkpoint_every,
            keep_checkpoints: 2,
            dtype,
            device: self.device.clone(),
            run_dir: self.run_dir.clone(),
            config,
        })
    }

    /// The settings a resumed run must repeat.
    fn record(&self) -> serde_json::Value {
        json!({
            "preset": self.preset.name(), "steps": self.steps, "batch": self.batch,
            "lr": self.lr, "warmup": self.warmup, "clip": self.clip,
            "ema_decay": self.ema_decay, "seed": self.seed,
        })
    }

    /// The model folder a run writes.
    pub fn model_dir(&self) -> PathBuf {
        self.run_dir.join("model")
    }
}

/// Reports a stage's progress and asks whether to go on.
pub trait TrainProgress {
    /// Work named `what` of `total` units begins (0: unknown).
    fn begin(&mut self, what: &str, total: u64);
    /// One unit done (a training step: its logged row).
    fn advance(&mut self, row: Option<&LossRow>);
    /// The work ended.
    fn end(&mut self);
    /// Whether the user asked to stop (a checkpoint is written first).
    fn stop_requested(&self) -> bool;
}

/// What a stage produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Every step ran (false: stopped on request, resumable).
    pub finished: bool,
    /// Steps taken.
    pub steps: u64,
    /// The model folder (written only when finished).
    pub model_dir: PathBuf,
    /// The loss plot.
    pub plot: PathBuf,
    /// Trainable parameters.
    pub parameters: usize,
    /// Mean seconds per step of this invocation.
    pub seconds_per_step: f64,
    /// Where those seconds went.
    pub phases: PhaseSeconds,
    /// The trained VAE's reconstruction PSNR of each frame of unseen whole clips, in dB
    /// (empty for the transformer stage, and when stopped early).
    pub reconstruction_psnr: Vec<f64>,
}

/// VAE-stage settings.
#[derive(Clone, Debug)]
pub struct VaeStage {
    /// Shared settings.
    pub common: Common,
    /// Crop side in pixels.
    pub crop: usize,
    /// Frames per crop.
    pub crop_frames: usize,
    /// KL weight.
    pub kl_weight: f64,
    /// A model folder (`vdit train vae`'s `model/`, or a trained model) whose VAE the run
    /// starts from, with a fresh optimiser; fresh weights when `None`.
    pub from: Option<PathBuf>,
}

/// Trains the VAE and writes the base model folder.
pub fn train_vae(stage: &VaeStage, progress: &mut dyn TrainProgress) -> Result<Outcome> {
    let common = &stage.common;
    check_run_dir(&common.run_dir, common.resume)?;
    let config = common.preset.vae_config();
    let shapes = Params::shapes_of(|vb| {
        WanVae::new(&config, vb)?;
        Ok(())
    })?;
    let params = match &stage.from {
        Some(folder) => {
            let file = folder.join("vae/diffusion_pytorch_model.safetensors");
            if !file.is_file() {
                return Err(Error::Usage(format!(
                    "{} has no vae/diffusion_pytorch_model.safetensors: give --from a model folder written by `vdit train`",
                    folder.display()
                )));
            }
            Params::load(&file, Some(&shapes), &common.device)?
        }
        None => Params::initialised(&shapes, &recipe::vae_init, common.seed, &common.device)?,
    };
    let mut record = common.record();
    record["stage"] = json!("vae");
    record["from"] = json!(stage.from.as_ref().map(|f| f.display().to_string()));
    record["crop"] = json!([stage.crop, stage.crop_frames]);
    record["kl_weight"] = json!(stage.kl_weight);
    let options = common.loop_options(DType::F32, record)?;
    let mut objective = Reconstruction::new(
        config.clone(),
        ReconstructionOptions {
            batch: common.batch,
            crop: stage.crop,
            crop_frames: stage.crop_frames,
            clip: common.preset.clip(),
            kl_weight: stage.kl_weight,
            seed: common.seed,
        },
    )?;
    let (trainer, finish, seconds) = {
        let _layout = TrainingLayout::on();
        run_loop(common, params, options, &mut objective, progress, None)?
    };
    let mut outcome = outcome(common, &trainer, finish, seconds)?;
    if finish == Finish::Stopped {
        return Ok(outcome);
    }
    // the shipped VAE is the EMA one; its latents' statistics go into its config
    let weights = trainer.ema_weights()?;
    let vae = WanVae::new(
        &config,
        Params::frozen_var_builder(&weights, DType::F32, &common.device),
    )?;
    progress.begin("latent statistics and reconstruction", 0);
    let (mean, std) = latent_statistics(
        &vae,
        STATISTICS_CLIPS,
        common.preset.clip(),
        common.seed ^ 1,
        &common.device,
    )?;
    outcome.reconstruction_psnr = reconstruction_psnr(
        &vae,
        RECONSTRUCTION_CLIPS,
        common.preset.clip(),
        common.seed ^ 3,
        &common.device,
    )?;
    progress.end();
    let config = VaeConfig {
        latents_mean: mean,
        latents_std: std,
        ..config
    };
    let words = recipe::vocabulary();
    let text_config = recipe::text_config(words.len());
    let text_shapes = Params::shapes_of(|vb| {
        Umt5Encoder::new(&text_config, vb)?;
        Ok(())
    })?;
    let text = Params::initialised(
        &text_shapes,
        &recipe::text_init,
        common.seed ^ 2,
        &Device::Cpu,
    )?;
    let text_weights = text.tensors();
    let base = Base {
        vae: model_folder::vae_part(&config, &weights),
        text_encoder: model_folder::text_part(&text_config, &text_weights),
        words: &words,
    };
    let generation = recipe::generation_config_json(common.preset, recipe::STEPS, recipe::GUIDANCE);
    model_folder::write(
        &common.model_dir(),
        &base,
        None,
        &generation,
        provenance(&trainer, "vae"),
    )?;
    Ok(outcome)
}

/// The run's encoded clips: read back from the run folder when it holds the same set (a resumed
/// run), otherwise rendered and encoded, then kept there.
fn training_set(
    stage: &DitStage,
    base: &BaseFolder,
    dtype: DType,
    progress: &mut dyn TrainProgress,
) -> Result<LatentSet> {
    let common = &stage.common;
    let (frames, size) = common.preset.clip();
    let label = json!({
        "clips": stage.clips,
        "seed": common.seed,
        "frames": frames,
        "size": size,
        "base": base.fingerprint,
        "dtype": format!("{dtype:?}"),
    })
    .to_string();
    let cache = common.run_dir.join(CACHE_FILE);
    if let Some(set) = LatentSet::load(&cache, &label, &common.device)? {
        return Ok(set);
    }
    let vae = WanVae::load(&stage.base.join("vae"), dtype, &common.device)?;
    let text = TextEncoder::load(
        &stage.base.join("text_encoder"),
        &stage.base.join("tokenizer"),
        dtype,
        &common.device,
    )?;
    progress.begin("encode clips", stage.clips as u64);
    let mut done = 0;
    let set = LatentSet::build(
        stage.clips,
        common.seed,
        (frames, size),
        &vae,
        &text,
        &common.device,
        &mut |n, _| {
            while done < n {
                progress.advance(None);
                done += 1;
            }
        },
    )?;
    progress.end();
    std::fs::create_dir_all(&common.run_dir).map_err(|e| Error::io("write", &common.run_dir, e))?;
    set.save(&cache, &label, dtype)?;
    Ok(set)
}

/// The VAE's differentiable layout while it lives (see [`vae::frames::set_training_layout`]).
struct TrainingLayout;

impl TrainingLayout {
    fn on() -> Self {
        vae::frames::set_training_layout(true);
        Self
    }
}

impl Drop for TrainingLayout {
    fn drop(&mut self) {
        vae::frames::set_training_layout(false);
    }
}

/// Transformer-stage settings.
#[derive(Clone, Debug)]
pub struct DitStage {
    /// Shared settings.
    pub common: Common,
    /// The base model folder (VAE, text encoder, tokenizer; its transformer is fine-tuned
    /// unless `from_scratch`).
    pub base: PathBuf,
    /// Start from fresh weights even when the base has a transformer.
    pub from_scratch: bool,
    /// Clips in the training set.
    pub clips: usize,
    /// The attention trained through, e.g. `dense` or `vsa:sparsity=0.875`.
    pub attention: sparse::MethodSpec,
    /// Steps over which a sparsity ramps from 0 to its target.
    pub sparsity_ramp: u64,
    /// Share of captions dropped for classifier-free guidance.
    pub caption_dropout: f64,
    /// More devices, each training a replica of the transformer on its share of every step's
    /// batch next to `common.device`'s (data parallelism; empty: `common.device` alone).
    pub replica_devices: Vec<Device>,
}

/// Trains the transformer over a base and writes the full model folder.
pub fn train_dit(
    stage: &DitStage,
    registry: &Registry,
    progress: &mut dyn TrainProgress,
) -> Result<Outcome> {
    let common = &stage.common;
    check_run_dir(&common.run_dir, common.resume)?;
    let base = BaseFolder::open(&stage.base)?;
    let dtype = if common.device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let plan = AttentionPlan::new(stage.attention.clone(), stage.sparsity_ramp, registry)?;
    // generation's default: the method as trained (e.g. VMoBA without its dense first steps)
    let trained = plan.spec().clone();
    let config = common.preset.dit_config(base.text_config.d_model);
    let mut shapes = Params::shapes_of(|vb| {
        WanTransformer::new(&config, vb)?;
        Ok(())
    })?;
    if stage.attention.name == "vsa" {
        recipe::add_vsa_gates(&mut shapes, &config);
    }
    let start = match (&base.transformer, stage.from_scratch) {
        (Some(file), false) => Some(file.clone()),
        _ => None,
    };
    // the step's batch, split evenly over the replicas
    let replicas = 1 + stage.replica_devices.len();
    if !common.batch.is_multiple_of(replicas) {
        return Err(Error::Usage(format!(
            "a batch of {} does not split evenly over {replicas} devices: give a multiple of {replicas}",
            common.batch
        )));
    }
    let mut record = common.record();
    record["stage"] = json!("dit");
    record["base"] = json!(stage.base.display().to_string());
    record["from"] = json!(start.as_ref().map(|f| f.display().to_string()));
    record["clips"] = json!(stage.clips);
    record["attention"] = json!(stage.attention.to_string());
    record["sparsity_ramp"] = json!(stage.sparsity_ramp);
    record["caption_dropout"] = json!(stage.caption_dropout);
    if replicas > 1 {
        record["replicas"] = json!(replicas);
    }
    let set = training_set(stage, &base, dtype, progress)?;
    let run = TransformerRun {
        stage,
        config: &config,
        shapes: &shapes,
        start: start.as_deref(),
        plan: &plan,
        registry,
        dtype,
        replicas,
        options: common.loop_options(dtype, record)?,
    };
    let (trainer, finish, seconds) = if replicas == 1 {
        let objective = &mut run.objective(&set, 0)?;
        let params = run.params(&common.device)?;
        run_loop(
            common,
            params,
            run.options.clone(),
            objective,
            progress,
            None,
        )?
    } else {
        run.with_replicas(&set, progress)?
    };
    let outcome = outcome(common, &trainer, finish, seconds)?;
    if finish == Finish::Stopped {
        return Ok(outcome);
    }
    let mut generation =
        recipe::generation_config_json(common.preset, recipe::STEPS, recipe::GUIDANCE);
    if trained.name != "dense" {
        generation["attention"] = json!(trained.to_string());
    }
    let weights = trainer.ema_weights()?;
    let transformer = model_folder::transformer_part(&config, &weights);
    let base_parts = Base {
        vae: model_folder::vae_part(&base.vae_config, &base.vae_weights),
        text_encoder: model_folder::text_part(&base.text_config, &base.text_weights),
        words: &base.words,
    };
    model_folder::write(
        &common.model_dir(),
        &base_parts,
        Some(&transformer),
        &generation,
        provenance(&trainer, "dit"),
    )?;
    Ok(outcome)
}

/// What every replica of a transformer run shares.
struct TransformerRun<'a> {
    stage: &'a DitStage,
    config: &'a WanConfig,
    shapes: &'a BTreeMap<String, Vec<usize>>,
    /// The transformer weights it starts from (none: fresh ones).
    start: Option<&'a Path>,
    plan: &'a AttentionPlan,
    registry: &'a Registry,
    dtype: DType,
    replicas: usize,
    options: LoopOptions,
}

impl TransformerRun<'_> {
    /// The starting parameters on `device`: the start's weights, or fresh ones from the seed
    /// (the same on every device).
    fn params(&self, device: &Device) -> Result<Params> {
        let seed = self.stage.common.seed;
        let Some(file) = self.start else {
            return Params::initialised(self.shapes, &recipe::dit_init, seed, device);
        };
        // VSA's gate, absent from a dense base, starts as a fresh model's (at zero)
        let mut weights = model_folder::read_weights(file)?;
        let mut rng = pipelines::t2v::noise::NoiseGenerator::new(seed);
        for (name, dims) in self.shapes {
            if !weights.contains_key(name) && name.contains("to_gate_compress") {
                let values = recipe::dit_init(name, dims, &mut rng);
                let tensor = candle_core::Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)?;
                weights.insert(name.clone(), tensor);
            }
        }
        Params::from_tensors(weights, Some(self.shapes), device, file)
    }

    /// Replica `rank`'s objective over `set`.
    fn objective<'s>(&'s self, set: &'s LatentSet, rank: usize) -> Result<FlowMatching<'s>> {
        FlowMatching::new(
            self.config.clone(),
            set,
            FlowMatchingOptions {
                batch: self.stage.common.batch / self.replicas,
                shard: Shard {
                    rank,
                    ranks: self.replicas,
                },
                shift: recipe::FLOW_SHIFT,
                caption_dropout: self.stage.caption_dropout,
                seed: self.stage.common.seed,
                dtype: self.dtype,
            },
            self.plan.clone(),
            self.registry,
        )
    }

    /// Replica `rank` (from 1) on `device`: its copy of the set, parameters and trainer, run
    /// to the end in step with the others.
    fn replica(
        &self,
        set: &LatentSet,
        rank: usize,
        device: &Device,
        group: Box<dyn Collective>,
    ) -> Result<()> {
        let set = set.to_device(device)?;
        let params = self.params(device)?;
        let options = LoopOptions {
            device: device.clone(),
            ..self.options.clone()
        };
        let mut trainer = if self.stage.common.resume {
            Trainer::resume(params, options, Some(group))?
        } else {
            Trainer::start(params, options, Some(group))?
        };
        trainer.run(&mut self.objective(&set, rank)?, &mut |_| true)?;
        Ok(())
    }

    /// Trains with replica 0 on this thread (with the progress) and the others on threads of
    /// their own; a replica that fails stops the others, and its error is the run's.
    fn with_replicas(
        &self,
        set: &LatentSet,
        progress: &mut dyn TrainProgress,
    ) -> Result<(Trainer, Finish, f64)> {
        let common = &self.stage.common;
        let devices: Vec<Device> = std::iter::once(common.device.clone())
            .chain(self.stage.replica_devices.iter().cloned())
            .collect();
        let health = GroupHealth::new();
        let mut groups = pipelines::t2v::parallel::collectives(&devices, &health)
            .map_err(|e| Error::Usage(format!("cannot connect the training devices: {e}")))?
            .into_iter();
        let first_group = groups.next();
        std::thread::scope(|scope| {
            let others: Vec<_> = groups
                .zip(&devices[1..])
                .enumerate()
                .map(|(i, (group, device))| {
                    let health = health.clone();
                    scope.spawn(move || {
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.replica(set, i + 1, device, group)
                        }))
                        .unwrap_or_else(|_| {
                            Err(Error::Usage(format!("training replica {} panicked", i + 1)))
                        });
                        if let Err(e) = &result {
                            health.fail(&format!("replica {} failed: {e}", i + 1));
                        }
                        result
                    })
                })
                .collect();
            let first = self.objective(set, 0).and_then(|mut objective| {
                let params = self.params(&common.device)?;
                let options = self.options.clone();
                run_loop(
                    common,
                    params,
                    options,
                    &mut objective,
                    progress,
                    first_group,
                )
            });
            if let Err(e) = &first {
                health.fail(&format!("replica 0 failed: {e}"));
            }
            let mut failed = vec![];
            for (i, handle) in others.into_iter().enumerate() {
                if let Ok(Err(e)) = handle.join() {
                    failed.push((i + 1, e));
                }
            }
            // the replica that failed first says why; the others stopped because it did
            let first_failure = health.failure().unwrap_or_default();
            match first {
                Err(e) if failed.is_empty() || first_failure.starts_with("replica 0 ") => Err(e),
                first => match failed
                    .into_iter()
                    .find(|(rank, _)| first_failure.starts_with(&format!("replica {rank} ")))
                {
                    Some((_, e)) => Err(e),
                    None => first,
                },
            }
        })
    }
}

/// Starts or resumes the run and runs it with progress; returns the trainer, how it ended and
/// the seconds per step of this invocation.
fn run_loop(
    common: &Common,
    params: Params,
    options: LoopOptions,
    objective: &mut dyn crate::trainer::Objective,
    progress: &mut dyn TrainProgress,
    group: Option<Box<dyn Collective>>,
) -> Result<(Trainer, Finish, f64)> {
    let mut trainer = if common.resume {
        Trainer::resume(params, options, group)?
    } else {
        Trainer::start(params, options, group)?
    };
    let first = trainer.step();
    progress.begin("train", common.steps);
    for _ in 0..first {
        progress.advance(None);
    }
    let started = std::time::Instant::now();
    let finish = trainer.run(objective, &mut |row| {
        progress.advance(Some(row));
        !progress.stop_requested()
    })?;
    progress.end();
    let taken = trainer.step().saturating_sub(first).max(1);
    let csv = loss_csv(&common.run_dir);
    plot_png(&csv, &common.run_dir.join("loss.png"), "TRAINING LOSS")?;
    Ok((
        trainer,
        finish,
        started.elapsed().as_secs_f64() / taken as f64,
    ))
}

fn outcome(common: &Common, trainer: &Trainer, finish: Finish, seconds: f64) -> Result<Outcome> {
    Ok(Outcome {
        finished: finish == Finish::Done,
        steps: trainer.step(),
        model_dir: common.model_dir(),
        plot: common.run_dir.join("loss.png"),
        parameters: trainer.params().count(),
        seconds_per_step: seconds,
        phases: trainer.phases(),
        reconstruction_psnr: vec![],
    })
}

fn provenance(trainer: &Trainer, stage: &str) -> serde_json::Value {
    json!({"stage": stage, "steps": trainer.step()})
}

/// A base model folder read for the transformer stage.
struct BaseFolder {
    vae_config: VaeConfig,
    vae_weights: BTreeMap<String, candle_core::Tensor>,
    text_config: Umt5Config,
    text_weights: BTreeMap<String, candle_core::Tensor>,
    words: Vec<String>,
    transformer: Option<PathBuf>,
    /// A hash of the files that encode the training set (VAE, text encoder, tokenizer).
    fingerprint: String,
}

impl BaseFolder {
    fn open(dir: &Path) -> Result<Self> {
        let need = |part: &str| {
            let path = dir.join(part);
            if path.exists() {
                Ok(path)
            } else {
                Err(Error::Usage(format!(
                    "{} has no {part}: give --base a folder written by `vdit train vae` (or a trained model)",
                    dir.display()
                )))
            }
        };
        let parts = [
            need("vae/config.json")?,
            need("vae/diffusion_pytorch_model.safetensors")?,
            need("text_encoder/config.json")?,
            need("text_encoder/model.safetensors")?,
            need("tokenizer/tokenizer.json")?,
        ];
        let vae_config = VaeConfig::from_file(&parts[0])?;
        let vae_weights = model_folder::read_weights(&parts[1])?;
        let text_config = Umt5Config::from_file(&parts[2])?;
        let text_weights = model_folder::read_weights(&parts[3])?;
        let words = read_words(&parts[4])?;
        let fingerprint = fingerprint(&parts)?;
        let transformer = dir.join("transformer/diffusion_pytorch_model.safetensors");
        Ok(Self {
            vae_config,
            vae_weights,
            text_config,
            text_weights,
            words,
            transformer: transformer.is_file().then_some(transformer),
            fingerprint,
        })
    }
}

/// The 64-bit FNV-1a hash of the files' bytes, one after the other, in hex.
fn fingerprint(files: &[PathBuf]) -> Result<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let bytes = std::fs::read(file).map_err(|e| Error::io("read", file, e))?;
        for byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{hash:016x}"))
}

/// The words of a word-level `tokenizer.json`, in id order.
fn read_words(file: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io("read", file, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::io("read", file, e))?;
    let vocab = json["model"]["vocab"].as_object().ok_or_else(|| {
        Error::Usage(format!(
            "{} is not a word-level tokenizer written by vdit train",
            file.display()
        ))
    })?;
    let mut words: Vec<(u64, String)> = vocab
        .iter()
        .map(|(w, id)| (id.as_u64().unwrap_or(u64::MAX), w.clone()))
        .collect();
    words.sort();
    Ok(words.into_iter().map(|(_, w)| w).collect())
}
