//! Text conditioning of a generation: prompts encoded by the text encoder, or embeddings read
//! from files, for the prompt and (with guidance) the negative prompt.

use crate::error::{fail, ResultExt};
use crate::t2v::files::read_tensor;
use crate::t2v::progress::{unit_done, Progress, Stage};
use crate::{Error, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;
use umt5::{TextEncoder, WAN_TEXT_LEN};

/// The text side of one generation as the user gave it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PromptInput {
    /// The prompt (or `prompt_embeds`).
    pub prompt: Option<String>,
    /// The negative prompt; with guidance and without `negative_prompt_embeds`, "" by default
    /// (diffusers' default).
    pub negative_prompt: Option<String>,
    /// safetensors file with `prompt_embeds` `[1, L, text_dim]`, instead of the prompt.
    pub prompt_embeds: Option<PathBuf>,
    /// safetensors file with `negative_prompt_embeds` `[1, L, text_dim]`, instead of the
    /// negative prompt.
    pub negative_prompt_embeds: Option<PathBuf>,
}

impl PromptInput {
    /// Checks that the prompt is given exactly once, and the negative prompt at most once.
    pub fn validate(&self) -> Result<()> {
        match (&self.prompt, &self.prompt_embeds) {
            (Some(_), Some(_)) => fail!(Usage, "give --prompt or --prompt-embeds, not both"),
            (None, None) => fail!(
                Usage,
                "no prompt: give --prompt TEXT (or --prompt-embeds FILE)"
            ),
            _ => {}
        }
        if self.negative_prompt.is_some() && self.negative_prompt_embeds.is_some() {
            fail!(
                Usage,
                "give --negative-prompt or --negative-prompt-embeds, not both"
            );
        }
        for path in [&self.prompt_embeds, &self.negative_prompt_embeds]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                fail!(Usage, "embeddings file {} does not exist", path.display());
            }
        }
        Ok(())
    }

    /// The negative prompt the unconditional branch uses when it is encoded from text.
    fn negative_text(&self) -> &str {
        self.negative_prompt.as_deref().unwrap_or("")
    }

    /// The texts the text encoder must encode for this generation (none when embeddings are
    /// given; the negative prompt only when `guided`).
    pub fn texts_to_encode(&self, guided: bool) -> Vec<&str> {
        let mut texts = Vec::new();
        if self.prompt_embeds.is_none() {
            texts.extend(self.prompt.as_deref());
        }
        if guided && self.negative_prompt_embeds.is_none() {
            texts.push(self.negative_text());
        }
        texts
    }

    /// The embeddings, from `encoded` for texts and from files for the rest, checked against
    /// the transformer's text width. Encoded texts are padded to the length of given
    /// embeddings (else the text encoder's, see [`PromptCache::text_len`]).
    pub fn conditioning(
        &self,
        guided: bool,
        encoded: &PromptCache,
        text_dim: usize,
    ) -> Result<Conditioning> {
        let from_file = |path: &PathBuf, name: &str| -> Result<Tensor> {
            let t = read_tensor(path, name)?;
            match t.dims() {
                [1, len, dim] if *dim == text_dim && *len > 0 => Ok(t.to_dtype(DType::F32)?),
                dims => fail!(
                    Usage,
                    "`{name}` in {} has shape {dims:?}; the transformer needs [1, tokens, \
                     {text_dim}]",
                    path.display()
                ),
            }
        };
        let cond_file = self
            .prompt_embeds
            .as_ref()
            .map(|p| from_file(p, "prompt_embeds"))
            .transpose()?;
        let uncond_file = match (guided, &self.negative_prompt_embeds) {
            (true, Some(p)) => Some(from_file(p, "negative_prompt_embeds")?),
            _ => None,
        };
        let len = cond_file
            .as_ref()
            .or(uncond_file.as_ref())
            .map_or(Ok(encoded.text_len()), |t| t.dim(1))?;
        let cond = match (cond_file, &self.prompt) {
            (Some(t), _) => t,
            (None, Some(text)) => encoded.embeddings(text, len)?,
            (None, None) => fail!(
                Usage,
                "no prompt: give --prompt TEXT (or --prompt-embeds FILE)"
            ),
        };
        let uncond = match (guided, uncond_file) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(encoded.embeddings(self.negative_text(), len)?),
        };
        let conditioning = Conditioning { cond, uncond };
        conditioning.check_lengths()?;
        Ok(conditioning)
    }
}

/// Text embeddings for the transformer: `[1, L, text_dim]` f32 each.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// The prompt's embeddings.
    pub cond: Tensor,
    /// The negative prompt's, when guidance is on.
    pub uncond: Option<Tensor>,
}

impl Conditioning {
    /// The prompt and the negative prompt must have the same length to run as one batch.
    fn check_lengths(&self) -> Result<()> {
        if let Some(uncond) = &self.uncond {
            let (a, b) = (self.cond.dim(1)?, uncond.dim(1)?);
            if a != b {
                fail!(
                    Usage,
                    "prompt embeddings have {a} tokens and negative prompt embeddings {b}: give \
                     both at the same length (Wan uses 512)"
                );
            }
        }
        Ok(())
    }

    /// The transformer's text input: `[cond; uncond]` (batch 2) with guidance, else `cond`.
    pub fn batch(&self) -> Result<Tensor> {
        Ok(match &self.uncond {
            Some(uncond) => Tensor::cat(&[&self.cond, uncond], 0)?,
            None => self.cond.clone(),
        })
    }
}

/// Encoded prompts kept on the CPU without their zero padding (rows past a prompt's tokens are
/// zero, so dropping trailing zero rows and padding them back is exact), with the time each
/// took to encode.
#[derive(Default)]
pub struct PromptCache {
    rows: HashMap<String, (Tensor, f64)>,
    loading: f64,
    text_len: Option<usize>,
}

impl PromptCache {
    /// Loads the text encoder, encodes every distinct text in `texts` at the model's text length
    /// (Wan's 512 tokens unless its tokenizer names another), and drops the encoder (freeing its
    /// memory) before returning.
    pub fn encode(
        encoder_dir: &std::path::Path,
        tokenizer: &std::path::Path,
        texts: &[&str],
        dtype: DType,
        device: &Device,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let mut cache = Self::default();
        let mut distinct: Vec<&str> = Vec::new();
        for &text in texts {
            if !distinct.contains(&text) {
                distinct.push(text);
            }
        }
        if distinct.is_empty() {
            return Ok(cache);
        }
        progress.begin(Stage::Loading, 0);
        let started = Instant::now();
        let encoder = TextEncoder::load(encoder_dir, tokenizer, dtype, device)?;
        cache.loading = started.elapsed().as_secs_f64();
        cache.text_len = Some(encoder.text_len());
        progress.end();
        progress.begin(Stage::TextEncoding, distinct.len());
        for text in distinct {
            let started = Instant::now();
            let embeddings = encoder
                .encode(&[text], encoder.text_len())
                .with_context(|| format!("cannot encode the prompt {text:?}"))?;
            let rows = trim_padding(&embeddings.i(0)?)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?;
            cache.insert(text, rows, started.elapsed().as_secs_f64());
            unit_done(progress)?;
        }
        progress.end();
        Ok(cache)
    }

    /// Stores the unpadded embeddings `[n, dim]` of `text`, encoded in `seconds`.
    pub fn insert(&mut self, text: &str, rows: Tensor, seconds: f64) {
        self.rows.insert(text.to_string(), (rows, seconds));
    }

    /// The embeddings of `text` padded with zero rows to `[1, len, dim]`.
    pub fn embeddings(&self, text: &str, len: usize) -> Result<Tensor> {
        let (rows, _) = self
            .rows
            .get(text)
            .ok_or_else(|| Error::Usage(format!("the prompt {text:?} was not encoded")))?;
        let (n, dim) = rows.dims2()?;
        if n > len {
            fail!(
                Usage,
                "the prompt {text:?} has {n} tokens, more than the {len} of the given embeddings"
            );
        }
        let padded = if n == len {
            rows.clone()
        } else {
            let zeros = Tensor::zeros((len - n, dim), rows.dtype(), rows.device())?;
            Tensor::cat(&[rows, &zeros], 0)?
        };
        Ok(padded.unsqueeze(0)?)
    }

    /// The length encoded texts are padded to: the text encoder's (Wan's 512 when nothing was
    /// encoded).
    pub fn text_len(&self) -> usize {
        self.text_len.unwrap_or(WAN_TEXT_LEN)
    }

    /// Seconds spent loading the text encoder (0 when nothing was encoded).
    pub fn loading_seconds(&self) -> f64 {
        self.loading
    }

    /// Seconds spent encoding those of `texts` that are in the cache.
    pub fn seconds(&self, texts: &[&str]) -> f64 {
        let distinct: std::collections::HashSet<&str> = texts.iter().copied().collect();
        distinct
            .iter()
            .filter_map(|t| self.rows.get(*t).map(|(_, s)| *s))
            .sum()
    }
}

/// `[L, dim]` without its trailing all-zero rows (at least one row is kept).
pub fn trim_padding(embeddings: &Tensor) -> Result<Tensor> {
    let nonzero: Vec<u8> = embeddings
        .abs()?
        .max(1)?
        .gt(0f64)?
        .to_device(&Device::Cpu)?
        .to_vec1()?;
    let keep = nonzero.iter().rposition(|&x| x != 0).map_or(1, |i| i + 1);
    Ok(embeddings.narrow(0, 0, keep)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimming then padding back is the identity, for prompts of any length.
    #[test]
    fn trim_then_pad_is_exact() -> Result<()> {
        let mut cache = PromptCache::default();
        for (text, len) in [("short", 3usize), ("full", 8), ("one", 1)] {
            let real = Tensor::randn(0f32, 1.0, (len, 4), &Device::Cpu)?;
            let padded = if len < 8 {
                Tensor::cat(
                    &[
                        &real,
                        &Tensor::zeros((8 - len, 4), DType::F32, &Device::Cpu)?,
                    ],
                    0,
                )?
            } else {
                real
            };
            let trimmed = trim_padding(&padded)?;
            assert_eq!(trimmed.dim(0)?, len);
            cache.insert(text, trimmed, 0.5);
            let back = cache.embeddings(text, 8)?;
            let diff: f32 = (back.squeeze(0)? - &padded)?
                .abs()?
                .max_all()?
                .to_scalar()?;
            assert_eq!(diff, 0.0, "{text}");
        }
        assert!(cache.embeddings("full", 7).is_err());
        assert_eq!(cache.seconds(&["short", "short", "one", "absent"]), 1.0);
        Ok(())
    }

    /// What needs the encoder depends on given embeddings and on guidance.
    #[test]
    fn texts_to_encode() {
        let mut input = PromptInput {
            prompt: Some("a kite".into()),
            ..Default::default()
        };
        assert_eq!(input.texts_to_encode(true), vec!["a kite", ""]);
        assert_eq!(input.texts_to_encode(false), vec!["a kite"]);
        input.negative_prompt = Some("blur".into());
        assert_eq!(input.texts_to_encode(true), vec!["a kite", "blur"]);
        input.prompt = None;
        input.prompt_embeds = Some("x.safetensors".into());
        assert_eq!(input.texts_to_encode(true), vec!["blur"]);
        assert!(input.validate().is_err()); // the file does not exist
    }
}
