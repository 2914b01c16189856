//! The text side of Wan: prompts to UMT5 embeddings, as diffusers' WanPipeline makes them.
//!
//! [`Umt5Encoder`] is the encoder built from a [`Umt5Config`] and a `VarBuilder` in
//! transformers' names; [`PromptTokenizer`] cleans and tokenizes prompts as WanPipeline does;
//! [`TextEncoder`] loads both from disk and turns prompts into zero-padded embeddings.

mod config;
mod encoder;
mod error;
mod position_bias;
mod tokenize;

pub use config::Umt5Config;
pub use encoder::Umt5Encoder;
pub use error::{Error, Result};
pub use tokenize::{clean_prompt, PromptTokenizer, TokenBatch};

use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::sync::Arc;
use vdit_core::weights::{same_keys, Checkpoint};

/// Wan's text length: prompts are cut or padded to 512 tokens (unless the tokenizer names
/// another, see [`PromptTokenizer::text_len`]).
pub const WAN_TEXT_LEN: usize = 512;

/// The UMT5 encoder and its tokenizer. Holds its weights on its device until dropped (nothing
/// is cached elsewhere), so a pipeline can encode its prompts and then free the memory.
pub struct TextEncoder {
    tokenizer: PromptTokenizer,
    encoder: Umt5Encoder,
    device: Device,
}

impl TextEncoder {
    /// Loads the encoder from `encoder_dir` (transformers' `UMT5EncoderModel` safetensors, one
    /// file or sharded, with its `config.json`; without one, umt5-xxl's sizes are assumed) in
    /// `dtype` on `device`, and `tokenizer.json` from `tokenizer_dir`.
    pub fn load(
        encoder_dir: &Path,
        tokenizer_dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tokenizer = PromptTokenizer::open(tokenizer_dir)?;
        let config_path = encoder_dir.join("config.json");
        let config = if config_path.is_file() {
            Umt5Config::from_file(&config_path)?
        } else {
            Umt5Config::umt5_xxl()
        };
        let checkpoint = Arc::new(Checkpoint::open(encoder_dir)?);
        let vb = checkpoint.var_builder(same_keys(), dtype, device);
        let encoder = Umt5Encoder::new(&config, vb).map_err(|source| Error::Load {
            path: encoder_dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            tokenizer,
            encoder,
            device: device.clone(),
        })
    }

    /// The model's text length (see [`PromptTokenizer::text_len`]): what prompts are cut or
    /// padded to.
    pub fn text_len(&self) -> usize {
        self.tokenizer.text_len()
    }

    /// Prompts to `[B, max_len, d_model]` embeddings (the encoder's dtype); rows past each
    /// prompt's token count (its `</s>` included) are zero, as WanPipeline leaves them.
    pub fn encode(&self, prompts: &[&str], max_len: usize) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(Error::NoPrompts);
        }
        let batch = self.tokenizer.tokenize(prompts, max_len, &self.device)?;
        let hidden = self
            .encoder
            .forward(&batch.input_ids, &batch.attention_mask)?;
        let keep = batch
            .attention_mask
            .unsqueeze(2)?
            .broadcast_as(hidden.shape())?;
        let zeros = hidden.zeros_like()?;
        Ok(keep.where_cond(&hidden, &zeros)?)
    }
}
