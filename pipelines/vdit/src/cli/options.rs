//! Options shared by `vdit generate`, `vdit batch` and `vdit calibrate`: the model, the device
//! and the generation settings (the attention flags come from the method registry, see
//! `attention_args`).

use crate::device::open_device;
use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use pipelines::t2v::{ModelSpec, Sampler, SettingOverrides, Size};
use sparse::ForwardKernel;
use std::path::PathBuf;

/// Which model to run.
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// A diffusers Wan pipeline folder (model_index.json, transformer/, vae/, text_encoder/,
    /// tokenizer/, scheduler/). Default: the embedded tiny RANDOM model, assets/tiny-wan (its
    /// videos are noise).
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
        let dtype = match self.dtype {
            Some(DTypeArg::F32) => DType::F32,
            Some(DTypeArg::Bf16) => DType::BF16,
            Some(DTypeArg::F16) => DType::F16,
            None if device.is_cpu() => DType::F32,
            None => DType::BF16,
        };
        Ok((device, dtype))
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
    /// Sampler: unipc or euler (default: the model's scheduler config, else unipc).
    #[arg(long)]
    pub scheduler: Option<Sampler>,
}

impl SettingArgs {
    /// The settings these flags set, with the frame rate `fps`.
    pub fn overrides(&self, fps: Option<u32>) -> SettingOverrides {
        SettingOverrides {
            size: self.size,
            frames: self.frames,
            steps: self.steps,
            guidance: self.guidance,
            shift: self.shift,
            scheduler: self.scheduler,
            fps,
        }
    }
}
