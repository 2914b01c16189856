//! Prompt cleaning and T5 tokenization as diffusers' WanPipeline does them.
//!
//! WanPipeline cleans each prompt (ftfy, HTML unescaping twice, whitespace runs to one space,
//! trimmed), then calls the T5 tokenizer with `</s>` appended, truncation and right padding to a
//! fixed length (transformers' T5 tokenizer always appends `</s>`, whatever post-processor the
//! `tokenizer.json` names). Only the whitespace cleaning is reproduced here: ftfy's mojibake
//! repair and HTML entity decoding are not, so prompts with `&amp;`-style entities or broken
//! encodings are tokenized as written.

use crate::error::{Error, Result};
use crate::WAN_TEXT_LEN;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tokenizers::{PaddingStrategy, Tokenizer};

const EOS: &str = "</s>";
const PAD: &str = "<pad>";

/// WanPipeline's whitespace cleaning: every run of Unicode whitespace becomes one space, then
/// whitespace (and the ASCII separators U+001C..U+001F, which Python's `str.strip` also removes)
/// is trimmed from both ends.
pub fn clean_prompt(prompt: &str) -> String {
    let mut cleaned = String::with_capacity(prompt.len());
    let mut in_space = false;
    for c in prompt.chars() {
        if c.is_whitespace() {
            if !in_space {
                cleaned.push(' ');
            }
            in_space = true;
        } else {
            cleaned.push(c);
            in_space = false;
        }
    }
    cleaned
        .trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .to_string()
}

/// Token ids and attention mask of a batch, both `[B, max_len]` u32.
pub struct TokenBatch {
    /// Token ids, `</s>` after each prompt, `<pad>` after that.
    pub input_ids: Tensor,
    /// 1 for prompt tokens (including `</s>`), 0 for padding.
    pub attention_mask: Tensor,
    /// Tokens of each prompt, `</s>` included (the count of ones in its mask row).
    pub lengths: Vec<usize>,
}

/// A T5 `tokenizer.json` used the way transformers' T5 tokenizer is: its own special-token
/// handling is bypassed and exactly one `</s>` is appended after truncation.
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    eos_id: u32,
    pad_id: u32,
    text_len: usize,
}

/// Checks that every `precompiled_charsmap` in a tokenizer's JSON is base64, which the
/// tokenizers crate assumes (it panics on anything else).
fn check_charsmaps(json: &serde_json::Value) -> std::result::Result<(), String> {
    match json {
        serde_json::Value::Object(map) => {
            if let Some(charsmap) = map.get("precompiled_charsmap") {
                let text = charsmap.as_str().unwrap_or("");
                let base64 = text.len() % 4 == 0
                    && text
                        .trim_end_matches('=')
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
                    && text.len() - text.trim_end_matches('=').len() <= 2;
                if !base64 {
                    return Err("its precompiled_charsmap is not base64".to_string());
                }
            }
            map.values().try_for_each(check_charsmaps)
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(check_charsmaps),
        _ => Ok(()),
    }
}

impl PromptTokenizer {
    /// Opens `tokenizer.json` in `path` (a folder) or `path` itself (a file).
    pub fn open(path: &Path) -> Result<Self> {
        let file = tokenizer_file(path)?;
        let damaged = |reason: String| {
            Error::Tokenizer(format!(
                "cannot read tokenizer {}: {reason}",
                file.display()
            ))
        };
        let text = std::fs::read_to_string(&file).map_err(|e| damaged(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        check_charsmaps(&json).map_err(damaged)?;
        // The tokenizers crate panics on some malformed files; a panic here is a damaged file.
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_str(&text))
            .map_err(|_| damaged("the file is damaged".to_string()))?;
        let mut tokenizer = parsed.map_err(|e| damaged(e.to_string()))?;
        // A fixed padding length is the model's text length; padding itself is done here.
        let text_len = match tokenizer.get_padding().map(|p| &p.strategy) {
            Some(PaddingStrategy::Fixed(0)) => {
                return Err(damaged("its fixed padding length is 0".to_string()))
            }
            Some(PaddingStrategy::Fixed(n)) => *n,
            _ => WAN_TEXT_LEN,
        };
        tokenizer.with_padding(None);
        let token_id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "tokenizer {} has no {token} token; a T5 tokenizer is needed",
                    file.display()
                ))
            })
        };
        let eos_id = token_id(EOS)?;
        let pad_id = token_id(PAD)?;
        Ok(Self {
            tokenizer,
            eos_id,
            pad_id,
            text_len,
        })
    }

    /// The model's text length: the fixed padding length the `tokenizer.json` names (a small
    /// model trained on short captions), else Wan's [`WAN_TEXT_LEN`].
    pub fn text_len(&self) -> usize {
        self.text_len
    }

    /// Cleans and tokenizes `prompts` into exactly `max_len` tokens each: the prompt's tokens cut
    /// to `max_len - 1`, then `</s>`, then `<pad>`s.
    pub fn tokenize(
        &self,
        prompts: &[&str],
        max_len: usize,
        device: &Device,
    ) -> Result<TokenBatch> {
        if max_len == 0 {
            return Err(Error::Tokenizer(
                "the text length must be at least 1 token".to_string(),
            ));
        }
        let cleaned: Vec<String> = prompts.iter().map(|p| clean_prompt(p)).collect();
        let encodings = self
            .tokenizer
            .encode_batch(cleaned, false)
            .map_err(|e| Error::Tokenizer(format!("cannot tokenize the prompts: {e}")))?;
        let mut ids = Vec::with_capacity(prompts.len() * max_len);
        let mut mask = Vec::with_capacity(prompts.len() * max_len);
        let mut lengths = Vec::with_capacity(prompts.len());
        for encoding in &encodings {
            let tokens = &encoding.get_ids()[..encoding.len().min(max_len - 1)];
            let len = tokens.len() + 1;
            ids.extend_from_slice(tokens);
            ids.push(self.eos_id);
            ids.resize(ids.len() + max_len - len, self.pad_id);
            mask.extend((0..max_len).map(|i| u32::from(i < len)));
            lengths.push(len);
        }
        Ok(TokenBatch {
            input_ids: Tensor::from_vec(ids, (prompts.len(), max_len), device)?,
            attention_mask: Tensor::from_vec(mask, (prompts.len(), max_len), device)?,
            lengths,
        })
    }
}

fn tokenizer_file(path: &Path) -> Result<PathBuf> {
    let file = if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    };
    if !file.is_file() {
        return Err(Error::Tokenizer(format!(
            "no tokenizer.json at {} (a SentencePiece spiece.model alone is not supported: save \
             the tokenizer with transformers' save_pretrained to get tokenizer.json)",
            path.display()
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace runs of any kind collapse to one space; both ends are trimmed.
    #[test]
    fn cleaning_collapses_and_trims_whitespace() {
        assert_eq!(clean_prompt("  a \t\n b\u{3000}\u{a0}c  "), "a b c");
        assert_eq!(clean_prompt("x \u{1c}"), "x");
        assert_eq!(clean_prompt("\u{1c}y"), "y");
        assert_eq!(clean_prompt("a\u{1c}b"), "a\u{1c}b");
        assert_eq!(clean_prompt(" \n\t "), "");
    }
}
