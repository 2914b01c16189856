//! The small text-to-video model this project trains (the embedded default,
//! assets/shapes-wan): every part a Wan 2.1 family member of the engine's own model code, sized
//! so that a generation runs on a 2-core CPU in under a minute (about 30 s for 12 guided steps)
//! while the transformer still sees more than a thousand tokens.
//!
//! | part | shape |
//! | --- | --- |
//! | video | 128x128, 17 frames (1 + 4k), 16 fps |
//! | VAE | Wan 2.1 VAE structure (8x spatial, 4x temporal, 16 latent channels), base width 8 |
//! | latents / tokens | 16 x 5 x 16 x 16; patch 1x1x1, so 1280 tokens |
//! | transformer | Wan 2.1 DiT, 6 blocks of width 256 (4 heads of 64), FFN 1024 |
//! | text encoder | UMT5, 2 blocks of width 64, over a word-level vocabulary of the grammar |

use crate::data;
use candle_core::DType;
use dit::WanConfig;
use pipelines::t2v::noise::NoiseGenerator;
use serde_json::{json, Value};
use umt5::Umt5Config;
use vae::VaeConfig;

/// Frame side in pixels.
pub const SIZE: usize = 128;
/// Frames per video.
pub const FRAMES: usize = 17;
/// Frames per second of the videos.
pub const FPS: u32 = 16;
/// Text width (the UMT5 encoder's `d_model`, the transformer's `text_dim`).
pub const TEXT_DIM: usize = 64;
/// Text length of the model, in tokens (its tokenizer's fixed padding): the longest caption of
/// the grammar with its `</s>` fits. Wan pads to 512, but at this scale 500 identical padding
/// keys would take almost all of the cross-attention's weight from the dozen caption tokens.
pub const TEXT_LEN: usize = 32;
/// Default denoising steps of the shipped model (UniPC).
pub const STEPS: usize = 12;
/// Default guidance scale of the shipped model.
pub const GUIDANCE: f64 = 5.0;

/// Flow shift of the sampler and of training's noise levels: 1280 tokens are few, so a
/// modest shift (Wan uses 3 at 480p and 5 at 720p).
pub const FLOW_SHIFT: f64 = 3.0;

/// Special tokens of the word-level tokenizer, in id order.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// A model size: `Small` is the shipped model, `Tiny` a seconds-on-a-CPU stand-in for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The shipped model (the table above).
    Small,
    /// 32x32 pixels, 5 frames, a VAE of base width 4 and one transformer block of width 64.
    Tiny,
}

impl Preset {
    /// Parses `small` or `tiny`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "small" => Some(Self::Small),
            "tiny" => Some(Self::Tiny),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Tiny => "tiny",
        }
    }

    /// Frames and side of its videos.
    pub fn clip(self) -> (usize, usize) {
        match self {
            Self::Small => (FRAMES, SIZE),
            Self::Tiny => (5, 32),
        }
    }

    /// Its VAE: Wan 2.1's structure (latent statistics are measured after training and
    /// written into the config).
    pub fn vae_config(self) -> VaeConfig {
        VaeConfig {
            base_dim: match self {
                Self::Small => 8,
                Self::Tiny => 4,
            },
            latents_mean: vec![0.0; 16],
            latents_std: vec![1.0; 16],
            ..VaeConfig::wan2_1()
        }
    }

    /// Its transformer over text of width `text_dim`.
    pub fn dit_config(self, text_dim: usize) -> WanConfig {
        let (heads, head_dim, ffn_dim, layers) = match self {
            Self::Small => (4, 64, 1024, 6),
            Self::Tiny => (2, 32, 128, 1),
        };
        WanConfig {
            patch_size: [1, 1, 1],
            num_heads: heads,
            head_dim,
            in_channels: 16,
            out_channels: 16,
            text_dim,
            freq_dim: 64,
            ffn_dim,
            num_layers: layers,
            cross_attn_norm: true,
            eps: 1e-6,
        }
    }
}

/// The text encoder over `vocab_size` tokens.
pub fn text_config(vocab_size: usize) -> Umt5Config {
    Umt5Config {
        vocab_size,
        d_model: TEXT_DIM,
        d_kv: 16,
        d_ff: 128,
        num_layers: 2,
        num_heads: 4,
        ..Umt5Config::umt5_xxl()
    }
}

/// The tokenizer's words: the special tokens, then every word the caption grammar writes
/// (collected from the captions of every combination on every background, and of two
/// objects), sorted.
pub fn vocabulary() -> Vec<String> {
    let mut captions = vec![];
    let all: Vec<data::Combination> = data::Combination::all().collect();
    for &object in &all {
        for background in data::Colour::BACKGROUND {
            if let Ok(c) = data::Caption::new(vec![object], background) {
                captions.push(c.to_string());
            }
        }
    }
    if let Some(pair) = all.windows(2).find(|w| w[0].colour != w[1].colour) {
        if let Ok(c) = data::Caption::new(pair.to_vec(), data::Colour::Black) {
            captions.push(c.to_string());
        }
    }
    let grammar: std::collections::BTreeSet<String> = captions
        .iter()
        .flat_map(|c| c.split_whitespace().map(str::to_string))
        .collect();
    SPECIAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .chain(grammar)
        .collect()
}

/// A `tokenizer.json` (Hugging Face tokenizers format) of a word-level model over `words`
/// (ids in order): lowercased, split on whitespace and punctuation, unknown words `<unk>`,
/// padded to [`TEXT_LEN`] (which the engine reads as the model's text length).
pub fn tokenizer_json(words: &[String]) -> Value {
    let vocab: serde_json::Map<String, Value> = words
        .iter()
        .enumerate()
        .map(|(id, w)| (w.clone(), json!(id)))
        .collect();
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, token)| {
            json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": {"strategy": {"Fixed": TEXT_LEN}, "direction": "Right",
                    "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"},
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// diffusers' `vae/config.json` for `config`.
pub fn vae_config_json(config: &VaeConfig) -> Value {
    json!({
        "_class_name": "AutoencoderKLWan",
        "attn_scales": config.attn_scales,
        "base_dim": config.base_dim,
        "decoder_base_dim": config.decoder_base_dim,
        "dim_mult": config.dim_mult,
        "dropout": 0.0,
        "in_channels": config.in_channels,
        "is_residual": false,
        "latents_mean": config.latents_mean,
        "latents_std": config.latents_std,
        "num_res_blocks": config.num_res_blocks,
        "out_channels": config.out_channels,
        "patch_size": null,
        "scale_factor_spatial": config.spatial_ratio(),
        "scale_factor_temporal": config.temporal_ratio(),
        "temperal_downsample": config.temperal_downsample,
        "z_dim": config.z_dim
    })
}

/// diffusers' `transformer/config.json` for `config`.
pub fn dit_config_json(config: &WanConfig) -> Value {
    json!({
        "_class_name": "WanTransformer3DModel",
        "added_kv_proj_dim": null,
        "attention_head_dim": config.head_dim,
        "cross_attn_norm": config.cross_attn_norm,
        "eps": config.eps,
        "ffn_dim": config.ffn_dim,
        "freq_dim": config.freq_dim,
        "image_dim": null,
        "in_channels": config.in_channels,
        "num_attention_heads": config.num_heads,
        "num_layers": config.num_layers,
        "out_channels": config.out_channels,
        "patch_size": config.patch_size,
        "pos_embed_seq_len": null,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
        "text_dim": config.text_dim
    })
}

/// transformers' `text_encoder/config.json` for `config`.
pub fn text_config_json(config: &Umt5Config) -> Value {
    json!({
        "architectures": ["UMT5EncoderModel"],
        "d_ff": config.d_ff,
        "d_kv": config.d_kv,
        "d_model": config.d_model,
        "dense_act_fn": "gelu_new",
        "eos_token_id": 1,
        "feed_forward_proj": config.feed_forward_proj,
        "is_gated_act": true,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "model_type": "umt5",
        "num_heads": config.num_heads,
        "num_layers": config.num_layers,
        "pad_token_id": 0,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "tie_word_embeddings": true,
        "vocab_size": config.vocab_size
    })
}

/// diffusers' `scheduler/scheduler_config.json`: UniPC over flow sigmas with `shift`.
pub fn scheduler_config_json(shift: f64) -> Value {
    json!({
        "_class_name": "UniPCMultistepScheduler",
        "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
        "disable_corrector": [], "dynamic_thresholding_ratio": 0.995,
        "final_sigmas_type": "zero", "flow_shift": shift, "lower_order_final": true,
        "num_train_timesteps": 1000, "predict_x0": true, "prediction_type": "flow_prediction",
        "rescale_betas_zero_snr": false, "sample_max_value": 1.0, "shift_terminal": null,
        "sigma_max": null, "sigma_min": null, "solver_order": 2, "solver_p": null,
        "solver_type": "bh2", "steps_offset": 0, "thresholding": false,
        "time_shift_type": "exponential", "timestep_spacing": "linspace",
        "trained_betas": null, "use_beta_sigmas": false, "use_dynamic_shifting": false,
        "use_exponential_sigmas": false, "use_flow_sigmas": true, "use_karras_sigmas": false
    })
}

/// The pipeline's `model_index.json`.
pub fn model_index_json() -> Value {
    json!({
        "_class_name": "WanPipeline",
        "boundary_ratio": null,
        "expand_timesteps": false,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [null, null],
        "vae": ["diffusers", "AutoencoderKLWan"]
    })
}

/// `generation_config.json`: vdit's defaults for the model.
pub fn generation_config_json(preset: Preset, steps: usize, guidance: f64) -> Value {
    let (frames, side) = preset.clip();
    json!({
        "size": format!("{side}x{side}"),
        "frames": frames,
        "steps": steps,
        "guidance": guidance,
        "fps": FPS
    })
}

/// Adds VSA's gate projection of every block to a transformer's weight `shapes`:
/// `blocks.N.attn1.to_gate_compress.{weight,bias}`, `[dim, dim]` and `[dim]`.
pub fn add_vsa_gates(
    shapes: &mut std::collections::BTreeMap<String, Vec<usize>>,
    config: &WanConfig,
) {
    let dim = config.dim();
    for layer in 0..config.num_layers {
        let prefix = format!("blocks.{layer}.attn1.to_gate_compress");
        shapes.insert(format!("{prefix}.weight"), vec![dim, dim]);
        shapes.insert(format!("{prefix}.bias"), vec![dim]);
    }
}

/// Normal values with standard deviation `std`.
fn normal(n: usize, std: f32, rng: &mut NoiseGenerator) -> Vec<f32> {
    rng.normals(n).into_iter().map(|v| v * std).collect()
}

/// Fan-in of a weight: every dim but the first.
fn fan_in(dims: &[usize]) -> usize {
    dims.iter().skip(1).product::<usize>().max(1)
}

/// The transformer's starting weights: linear and patch weights normal with variance
/// `1 / fan_in`, biases zero, norm gains one, modulation tables normal with standard deviation
/// `dim^-1/2`, and the output projection zero (so the untrained model predicts zero velocity).
/// VSA's gate projection starts at zero too: fine-tuning starts from the training-free method.
pub fn dit_init(name: &str, dims: &[usize], rng: &mut NoiseGenerator) -> Vec<f32> {
    let n: usize = dims.iter().product();
    if name.starts_with("proj_out") || name.contains("to_gate_compress") {
        vec![0.0; n]
    } else if name.contains("scale_shift_table") {
        normal(n, (1.0 / *dims.last().unwrap_or(&1) as f32).sqrt(), rng)
    } else if name.contains("norm") && dims.len() == 1 && name.ends_with("weight") {
        vec![1.0; n]
    } else if dims.len() == 1 {
        vec![0.0; n]
    } else {
        normal(n, (1.0 / fan_in(dims) as f32).sqrt(), rng)
    }
}

/// The VAE's starting weights: convolutions normal with variance `1 / fan_in`, biases zero,
/// norm gains one.
pub fn vae_init(name: &str, dims: &[usize], rng: &mut NoiseGenerator) -> Vec<f32> {
    let n: usize = dims.iter().product();
    if name.ends_with("gamma") {
        vec![1.0; n]
    } else if dims.len() == 1 {
        vec![0.0; n]
    } else {
        normal(n, (1.0 / fan_in(dims) as f32).sqrt(), rng)
    }
}

/// The text encoder's (frozen) random weights: token embeddings and relative-position biases
/// standard normal, projections normal with variance `1 / fan_in`, norm gains one. A random
/// encoder keeps every word of the small grammar distinct, which is all the transformer's
/// cross-attention needs to learn from; training it would add nothing the DiT cannot learn.
pub fn text_init(name: &str, dims: &[usize], rng: &mut NoiseGenerator) -> Vec<f32> {
    let n: usize = dims.iter().product();
    if name.contains("layer_norm") {
        vec![1.0; n]
    } else if name.contains("embed_tokens")
        || name.contains("shared")
        || name.contains("relative_attention_bias")
    {
        normal(n, 1.0, rng)
    } else {
        normal(
            n,
            (1.0 / dims.last().copied().unwrap_or(1) as f32).sqrt(),
            rng,
        )
    }
}

/// The dtype the shipped weights are stored in (bf16 halves the size; the engine upcasts).
pub const SHIPPED_DTYPE: DType = DType::BF16;

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest caption the grammar writes (two objects with the longest words, on a named
    /// background), with its `</s>`, fits the text length.
    #[test]
    fn the_longest_caption_fits_the_text_length() {
        let all: Vec<data::Combination> = data::Combination::all().collect();
        let words = |c: &data::Combination| {
            data::Caption::new(vec![*c], data::Colour::Black)
                .map(|c| c.to_string().split_whitespace().count())
                .unwrap_or(0)
        };
        let longest = all.iter().map(words).max().unwrap_or(0);
        let caption = |a: &data::Combination, b: &data::Combination, bg| {
            data::Caption::new(vec![*a, *b], bg).map(|c| c.to_string().split_whitespace().count())
        };
        let mut most = 0;
        for a in all.iter().filter(|c| words(c) == longest) {
            for b in all.iter().filter(|c| words(c) == longest) {
                for bg in data::Colour::BACKGROUND {
                    most = most.max(caption(a, b, bg).unwrap_or(0));
                }
            }
        }
        assert!(most > 10, "no two-object caption was made");
        assert!(
            most < TEXT_LEN,
            "{most} words and </s> do not fit {TEXT_LEN} tokens"
        );
    }
}
