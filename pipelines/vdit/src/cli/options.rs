//! Options shared by `vdit generate`, `vdit batch` and `vdit calibrate`: the model, the device
//! (or GPUs) and the generation settings (the attention flags come from the method registry, see
//! `attention_args`).

use crate::device::open_device;
use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use dit::{LoraSet, LoraSpec};
use pipelines::t2v::parallel::Placement;
use pipelines::t2v::{ModelSpec, ParallelPlan, Sampler, SettingOverrides, Size};
use sparse::ForwardKernel;
use std::path::PathBuf;

/// Which model to run.
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// A diffusers Wan pipeline folder (model_index.json, transformer/, vae/, text_encoder/,
    /// tokenizer/, scheduler/). Default: the embedded small model trained on shape videos,
    /// assets/shapes-wan (128x128, 17 frames; see assets/README.md).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Transformer weights (folder or .safetensors, diffusers or original Wan keys); overrides
    /// the model folder's.
    #[arg(long, value_name = "PATH")]
    pub transformer: Option<PathBuf>,
    /// VAE weights (folder or .safetensors, diffusers or original keys); overrides the folder's.
    #[arg(long, value_name = "PATH")]
    pub vae: Option<PathBuf>,
    /// UMT5 text encoder folder (transformers' safetensors); overrides the folder's.
    #[arg(long, value_name = "DIR")]
    pub text_encoder: Option<PathBuf>,
    /// T5 tokenizer: folder with tokenizer.json, or the file; overrides the folder's.
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
}

impl ModelArgs {
    /// The model as named.
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            folder: self.model.clone(),
            transformer: self.transformer.clone(),
            vae: self.vae.clone(),
            text_encoder: self.text_encoder.clone(),
            tokenizer: self.tokenizer.clone(),
        }
    }
}

/// LoRAs merged into the transformer as it loads.
#[derive(Args, Clone, Debug, Default)]
pub struct LoraArgs {
    /// A LoRA to merge into the transformer, FILE[:SCALE] (scale 1 by default); repeat for
    /// several, whose updates add up. Reads diffusers/PEFT (lora_A/lora_B), kohya/ComfyUI
    /// (lora_down/lora_up with alpha) and original Wan key names.
    #[arg(long = "lora", value_name = "FILE[:SCALE]")]
    pub loras: Vec<LoraSpec>,
    /// Leave out LoRA keys that match no weight of the transformer (they are listed) instead of
    /// refusing the file.
    #[arg(long)]
    pub lora_lenient: bool,
}

impl LoraArgs {
    /// The LoRAs as given.
    pub fn set(&self) -> LoraSet {
        LoraSet {
            loras: self.loras.clone(),
            lenient: self.lora_lenient,
        }
    }
}

/// Tells about LoRA keys left out under `--lora-lenient` on stderr (the first few and a count).
pub fn warn_ignored(ignored: &[String]) {
    const SHOWN: usize = 5;
    if ignored.is_empty() {
        return;
    }
    eprintln!(
        "warning: {} LoRA keys match no weight and were left out: {}{}",
        ignored.len(),
        ignored[..ignored.len().min(SHOWN)].join(", "),
        if ignored.len() > SHOWN { ", ..." } else { "" }
    );
}

/// Weight and activation dtypes on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

/// Where and in which precision to run.
#[derive(Args, Clone, Debug, Default)]
pub struct RuntimeArgs {
    /// Device: cpu, cuda or cuda:N. Default: cuda when vdit was built with CUDA, else cpu.
    #[arg(long)]
    pub device: Option<String>,
    /// Precision of weights and activations. Default: f32 on the CPU, bf16 on CUDA.
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Attention kernels on the GPU: auto (wgmma on Hopper, mma.sync elsewhere), mma or wgmma.
    /// Default: $VDIT_ATTENTION_KERNEL, else auto.
    #[arg(long, value_name = "FAMILY")]
    pub attention_kernel: Option<ForwardKernel>,
}

impl RuntimeArgs {
    /// Opens the device and picks the dtype.
    pub fn open(&self) -> Result<(Device, DType)> {
        let default = if candle_core::utils::cuda_is_available() {
            "cuda"
        } else {
            "cpu"
        };
        let device = open_device(self.device.as_deref().unwrap_or(default))?;
        let dtype = self.dtype_on(&device);
        Ok((device, dtype))
    }

    /// The dtype asked for, else f32 on the CPU and bf16 on a GPU.
    fn dtype_on(&self, device: &Device) -> DType {
        match self.dtype {
            Some(DTypeArg::F32) => DType::F32,
            Some(DTypeArg::Bf16) => DType::BF16,
            Some(DTypeArg::F16) => DType::F16,
            None if device.is_cpu() => DType::F32,
            None => DType::BF16,
        }
    }

    /// The attention kernel family: the flag, else `$VDIT_ATTENTION_KERNEL`, else auto.
    pub fn kernel(&self) -> Result<ForwardKernel> {
        if let Some(kernel) = self.attention_kernel {
            return Ok(kernel);
        }
        match std::env::var(KERNEL_ENV) {
            Ok(text) => text
                .parse()
                .map_err(|e| anyhow::anyhow!("{KERNEL_ENV}: {e}")),
            Err(_) => Ok(ForwardKernel::Auto),
        }
    }
}

/// Spreading each generation over several GPUs of this host.
#[derive(Args, Clone, Debug, Default)]
pub struct ParallelArgs {
    /// GPUs to spread each generation over: a count (2: GPUs 0 and 1) or a list of GPU
    /// numbers (0,2). Each GPU is a thread of this process with its own copy of the
    /// transformer; they exchange tensors through NCCL. The first encodes the text and decodes.
    #[arg(long, value_name = "N|LIST", conflicts_with = "device")]
    pub gpus: Option<GpuList>,
    /// GPUs that split each forward pass's tokens (Ulysses sequence parallelism; must divide
    /// the model's attention heads). Default: the GPUs left after --cfg-parallel's split.
    #[arg(long, value_name = "N", requires = "gpus")]
    pub sp: Option<usize>,
    /// Run the prompt's and the negative prompt's passes on different GPUs (default when
    /// guidance is on and the GPU count is even: the passes need no exchange until the end of
    /// each step).
    #[arg(long, requires = "gpus", conflicts_with = "no_cfg_parallel")]
    pub cfg_parallel: bool,
    /// Keep both guidance passes on every GPU; split only the sequence.
    #[arg(long, requires = "gpus")]
    pub no_cfg_parallel: bool,
}

/// `--gpus`: a count or a list of GPU numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuList(Vec<usize>);

impl std::str::FromStr for GpuList {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{text}` is not a GPU count (2) or a list of GPU numbers (0,1)");
        let text = text.trim();
        let gpus: Vec<usize> = if text.contains(',') {
            text.split(',')
                .map(|n| n.trim().parse().map_err(|_| bad()))
                .collect::<std::result::Result<_, _>>()?
        } else {
            let count: usize = text.parse().map_err(|_| bad())?;
            (0..count).collect()
        };
        if gpus.is_empty() {
            return Err("--gpus 0 leaves no GPU: give a count of 1 or more".to_string());
        }
        let mut sorted = gpus.clone();
        sorted.sort_unstable();
        if let Some(twice) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("GPU {} is listed twice in `{text}`", twice[0]));
        }
        Ok(Self(gpus))
    }
}

impl GpuList {
    /// The GPUs, opened in order (a build with NCCL is needed to exchange between them).
    pub fn open(&self) -> Result<Vec<Device>> {
        if !cfg!(feature = "nccl") {
            anyhow::bail!(
                "--gpus needs a vdit built with NCCL: rebuild with `cargo build --release \
                 --no-default-features --features cuda,nccl`"
            );
        }
        self.0
            .iter()
            .map(|n| open_device(&format!("cuda:{n}")))
            .collect()
    }
}

impl ParallelArgs {
    /// The devices and split of the run (one device, from `runtime`, without --gpus) and the
    /// dtype; `guided` says whether any generation has guidance, `heads` is the model's
    /// attention head count.
    pub fn open(
        &self,
        runtime: &RuntimeArgs,
        guided: bool,
        heads: usize,
    ) -> Result<(Placement, DType)> {
        let Some(gpus) = &self.gpus else {
            let (device, dtype) = runtime.open()?;
            return Ok((Placement::single(&device), dtype));
        };
        let devices = gpus.open()?;
        let cfg = match (self.cfg_parallel, self.no_cfg_parallel) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        };
        let plan = ParallelPlan::choose(devices.len(), self.sp, cfg, guided, heads)?;
        let dtype = runtime.dtype_on(&devices[0]);
        Ok((Placement::new(devices, plan)?, dtype))
    }
}

/// Environment variable choosing the attention kernel family when no flag does.
const KERNEL_ENV: &str = "VDIT_ATTENTION_KERNEL";

/// Generation settings. Unset ones come from the model folder's generation_config.json, else
/// Wan's defaults (832x480, 81 frames, 50 steps, guidance 5.0, the scheduler config's shift).
#[derive(Args, Clone, Debug, Default)]
pub struct SettingArgs {
    /// Frame size WIDTHxHEIGHT, multiples of 16 (Wan: 832x480; the default model: 256x256).
    #[arg(long)]
    pub size: Option<Size>,
    /// Frames, 4k+1 (Wan: 81; the default model: 17).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Denoising steps (Wan: 50; the default model: 20).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale, >= 0; at most 1 turns it off (Wan: 5.0).
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Flow shift of the noise schedule (default: the model's scheduler config, Wan 3.0 at
    /// 480p; use 5.0 at 720p).
    #[arg(long, allow_negative_numbers = true)]
    pub shift: Option<f64>,
    /// Sampler: unipc, euler, or dmd for few-step (DMD-distilled) models (default: the model's:
    /// dmd for a FastWan folder, else its scheduler config's, else unipc).
    #[arg(long)]
    pub scheduler: Option<Sampler>,
    /// The dmd sampler's timesteps, decreasing, e.g. 1000,757,522 (FastWan's); implies
    /// --scheduler dmd, and the step count is their number.
    #[arg(long, value_name = "T,T,...", value_delimiter = ',')]
    pub timesteps: Option<Vec<u32>>,
}

impl SettingArgs {
    /// The settings these flags set, with the frame rate `fps` (`--timesteps` next to a
    /// sampler other than dmd is refused).
    pub fn overrides(&self, fps: Option<u32>) -> Result<SettingOverrides> {
        Ok(SettingOverrides {
            size: self.size,
            frames: self.frames,
            steps: self.steps,
            guidance: self.guidance,
            shift: self.shift,
            scheduler: self.scheduler,
            fps,
            timesteps: self.timesteps.clone(),
        }
        .checked()?)
    }
}
