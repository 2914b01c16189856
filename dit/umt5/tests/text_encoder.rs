//! Tokenization and the UMT5 encoder against transformers / diffusers (fixtures from
//! tests/fixtures/make_text_fixtures.py: a small SentencePiece T5 tokenizer and a tiny
//! random UMT5EncoderModel).
//!
//! Tolerances: token ids and masks identical; f32 embeddings within relative L2 1e-4 of
//! transformers (raw encoder output and WanPipeline's zero-padded prompt embeddings); bf16
//! within relative L2 3e-2 of transformers run in bf16.

use anyhow::Result;
use candle_core::{safetensors::load, DType, Device, IndexOp, Tensor};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use umt5::{PromptTokenizer, TextEncoder, Umt5Config, Umt5Encoder};
use vdit_core::metrics::relative_l2;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn io() -> Result<HashMap<String, Tensor>> {
    Ok(load(fixture("umt5_tiny_io.safetensors"), &Device::Cpu)?)
}

fn prompts() -> Result<Vec<String>> {
    Ok(serde_json::from_str(&std::fs::read_to_string(fixture(
        "umt5_tiny_prompts.json",
    ))?)?)
}

#[derive(Deserialize)]
struct TokenCase {
    prompt: String,
    max_len: usize,
    input_ids: Vec<u32>,
    attention_mask: Vec<u32>,
}

/// Every fixture prompt gives transformers' ids and mask, at 512 and at 16 tokens (truncated).
#[test]
fn tokenizer_matches_transformers() -> Result<()> {
    let cases: Vec<TokenCase> =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokens.json"))?)?;
    let tokenizer = PromptTokenizer::open(&fixture("tokenizer"))?;
    let mut truncated = 0;
    for case in &cases {
        let batch = tokenizer.tokenize(&[&case.prompt], case.max_len, &Device::Cpu)?;
        let ids: Vec<u32> = batch.input_ids.i(0)?.to_vec1()?;
        let mask: Vec<u32> = batch.attention_mask.i(0)?.to_vec1()?;
        assert_eq!(
            ids, case.input_ids,
            "ids of {:?} at {}",
            case.prompt, case.max_len
        );
        assert_eq!(mask, case.attention_mask, "mask of {:?}", case.prompt);
        assert_eq!(batch.lengths[0], mask.iter().sum::<u32>() as usize);
        truncated += usize::from(batch.lengths[0] == case.max_len);
    }
    assert!(
        cases.len() >= 16 && truncated >= 2,
        "{} cases, {truncated} truncated",
        cases.len()
    );
    // A batch tokenizes each prompt as it would alone.
    let all: Vec<&str> = cases
        .iter()
        .filter(|c| c.max_len == 16)
        .map(|c| c.prompt.as_str())
        .collect();
    let batch = tokenizer.tokenize(&all, 16, &Device::Cpu)?;
    let expected: Vec<Vec<u32>> = cases
        .iter()
        .filter(|c| c.max_len == 16)
        .map(|c| c.input_ids.clone())
        .collect();
    assert_eq!(batch.input_ids.to_vec2::<u32>()?, expected);
    Ok(())
}

fn tiny_encoder(folder: &str, dtype: DType) -> Result<Umt5Encoder> {
    let dir = fixture(folder);
    let cfg = Umt5Config::from_file(&dir.join("config.json"))?;
    let checkpoint = Arc::new(vdit_core::Checkpoint::open(&dir)?);
    let vb = checkpoint.var_builder(vdit_core::weights::same_keys(), dtype, &Device::Cpu);
    Ok(Umt5Encoder::new(&cfg, vb)?)
}

fn check(name: &str, got: &Tensor, expected: &Tensor, tolerance: f64) -> Result<()> {
    assert_eq!(got.dims(), expected.dims(), "{name}");
    let err = relative_l2(got, expected)?;
    println!("{name}: relative L2 {err:.3e}");
    assert!(
        err <= tolerance,
        "{name}: relative L2 {err:.3e} > {tolerance:e}"
    );
    Ok(())
}

/// The raw encoder output, padding positions included, matches UMT5EncoderModel in f32.
#[test]
fn encoder_matches_transformers_in_f32() -> Result<()> {
    let io = io()?;
    let ids = io["input_ids"].to_dtype(DType::U32)?;
    let mask = io["attention_mask"].to_dtype(DType::U32)?;
    let out = tiny_encoder("umt5_tiny", DType::F32)?.forward(&ids, &mask)?;
    check("raw f32", &out, &io["last_hidden_state_f32"], 1e-4)
}

/// In bf16 the encoder stays close to transformers run in bf16 (which is itself 1.8e-2 from
/// f32 on this random model), whether the weights are stored in f32 or, sharded, in bf16 with
/// the embedding under `encoder.embed_tokens.weight`.
#[test]
fn encoder_matches_transformers_in_bf16() -> Result<()> {
    let io = io()?;
    let ids = io["input_ids"].to_dtype(DType::U32)?;
    let mask = io["attention_mask"].to_dtype(DType::U32)?;
    for folder in ["umt5_tiny", "umt5_tiny_sharded_bf16"] {
        let out = tiny_encoder(folder, DType::BF16)?.forward(&ids, &mask)?;
        assert_eq!(out.dtype(), DType::BF16);
        let out = out.to_dtype(DType::F32)?;
        check(
            &format!("{folder} bf16"),
            &out,
            &io["last_hidden_state_bf16"],
            3e-2,
        )?;
    }
    Ok(())
}

/// Text to embeddings matches WanPipeline._get_t5_prompt_embeds: rows past each prompt's length
/// are exactly zero, the rest match.
#[test]
fn prompt_embeddings_match_wan_pipeline() -> Result<()> {
    let io = io()?;
    let prompts = prompts()?;
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let encoder = TextEncoder::load(
        &fixture("umt5_tiny"),
        &fixture("tokenizer"),
        DType::F32,
        &Device::Cpu,
    )?;
    let out = encoder.encode(&prompts, 512)?;
    let expected = &io["prompt_embeds_f32"];
    check("prompt embeddings f32", &out, expected, 1e-4)?;
    let mask: Vec<Vec<i64>> = io["attention_mask"].to_vec2()?;
    for (b, row) in mask.iter().enumerate() {
        let len = row.iter().sum::<i64>() as usize;
        let norms: Vec<f32> = out.i(b)?.sqr()?.sum(1)?.to_vec1()?;
        assert!(
            norms[..len].iter().all(|&n| n > 0.0),
            "prompt {b} has zero rows"
        );
        assert!(
            norms[len..].iter().all(|&n| n == 0.0),
            "prompt {b} padding not zeroed"
        );
    }
    Ok(())
}

fn load_error(encoder: &str, tokenizer: &str) -> String {
    let err = TextEncoder::load(
        &fixture(encoder),
        &fixture(tokenizer),
        DType::F32,
        &Device::Cpu,
    )
    .err()
    .expect("loading fails");
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    line
}

/// Missing or unusable inputs give one-line errors naming the problem.
#[test]
fn bad_inputs_are_clear_errors() -> Result<()> {
    let err = load_error("umt5_tiny", "no_such_dir");
    assert!(err.contains("no tokenizer.json"), "{err}");
    let err = load_error("tokenizer", "tokenizer");
    assert!(err.contains("no .safetensors weights"), "{err}");
    let tokenizer = PromptTokenizer::open(&fixture("tokenizer"))?;
    assert!(tokenizer.tokenize(&["x"], 0, &Device::Cpu).is_err());
    Ok(())
}

/// A `tokenizer.json` with fixed padding sets the model's text length and pads nothing itself:
/// the ids are those of the same tokenizer without padding; without it, Wan's 512 holds.
#[test]
fn fixed_padding_sets_the_text_length() -> Result<()> {
    let plain = PromptTokenizer::open(&fixture("tokenizer"))?;
    assert_eq!(plain.text_len(), umt5::WAN_TEXT_LEN);
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        fixture("tokenizer").join("tokenizer.json"),
    )?)?;
    json["padding"] = serde_json::json!({
        "strategy": {"Fixed": 24}, "direction": "Right", "pad_to_multiple_of": null,
        "pad_id": 0, "pad_type_id": 0, "pad_token": "<pad>"
    });
    let dir = std::env::temp_dir().join(format!("vdit-fixed-padding-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tokenizer.json"), json.to_string())?;
    let padded = PromptTokenizer::open(&dir)?;
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(padded.text_len(), 24);
    let prompts = [
        "a cat",
        "a dog runs across a field of flowers in the morning sun",
    ];
    for len in [4, 24, 40] {
        let a = plain.tokenize(&prompts, len, &Device::Cpu)?;
        let b = padded.tokenize(&prompts, len, &Device::Cpu)?;
        assert_eq!(a.input_ids.to_vec2::<u32>()?, b.input_ids.to_vec2::<u32>()?);
        assert_eq!(a.lengths, b.lengths);
    }
    Ok(())
}
