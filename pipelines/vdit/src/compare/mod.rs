//! `vdit compare`'s results: one [`RunResult`] per (prompt, seed, method), kept in
//! `results.jsonl` so that a re-run computes only what is missing, the fidelity of each run
//! against the dense run of the same prompt and seed, and the report made from them.

mod label;
pub mod plots;
pub mod report;

use crate::video::{PngFolderReader, VideoQuality};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file of results in the output folder.
pub const RESULTS: &str = "results.jsonl";

/// What one run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// The job's fingerprint: model, prompt, seed, settings, attention and LoRAs.
    pub key: String,
    /// The prompt's position in the prompts file (from 0).
    pub prompt_index: usize,
    /// The prompt.
    pub prompt: String,
    /// The seed.
    pub seed: u64,
    /// The method spec as given (`vsa:sparsity=0.875`).
    pub method: String,
    /// Seconds: text encoding of this prompt, each denoising step, attention (all calls,
    /// device synchronised around each), VAE decoding, writing.
    pub text_encoding_s: f64,
    /// Seconds of each denoising step.
    pub step_s: Vec<f64>,
    /// Seconds in attention calls.
    pub attention_s: Option<f64>,
    /// The whole sampling loop.
    pub denoising_s: f64,
    /// VAE decoding.
    pub decoding_s: f64,
    /// Writing the frames.
    pub writing_s: f64,
    /// Attention density over the run.
    pub density: f64,
    /// Density per layer.
    pub layer_density: Vec<f64>,
    /// Density per step and layer (`[step][layer]`).
    pub step_layer_density: Vec<Vec<f64>>,
    /// Attention FLOPs computed (4 head_dim per query-key pair computed).
    pub attention_flops: f64,
    /// Most GPU memory in use (GiB), or the process's peak resident memory on the CPU.
    pub peak_gib: Option<f64>,
    /// What `peak_gib` measures: `gpu` or `cpu_rss`.
    pub peak_of: String,
    /// The run's frames: a PNG folder under the output folder.
    pub frames: PathBuf,
    /// Against the dense run of the same prompt and seed (filled when the report is made).
    pub fidelity: Option<Fidelity>,
}

/// A run's fidelity to the dense run of its prompt and seed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Fidelity {
    /// Mean PSNR over frames (dB; identical frames count as 100).
    pub psnr_mean: f64,
    /// PSNR of the worst frame.
    pub psnr_worst: f64,
    /// Mean SSIM over frames.
    pub ssim_mean: f64,
    /// SSIM of the worst frame.
    pub ssim_worst: f64,
    /// Mean absolute difference of frame-to-frame changes (fraction of full scale).
    pub temporal_error: f64,
    /// PSNR of each frame.
    pub psnr: Vec<f64>,
    /// SSIM of each frame.
    pub ssim: Vec<f64>,
}

impl From<VideoQuality> for Fidelity {
    fn from(q: VideoQuality) -> Self {
        Self {
            psnr_mean: q.psnr_mean(),
            psnr_worst: q.psnr_worst(),
            ssim_mean: q.ssim_mean(),
            ssim_worst: q.ssim_worst(),
            temporal_error: q.temporal_error,
            psnr: q.psnr,
            ssim: q.ssim,
        }
    }
}

/// The results already in `dir`, by key (lines that do not parse are reported and skipped:
/// their runs are made again).
pub fn load_results(dir: &Path) -> Result<BTreeMap<String, RunResult>> {
    let path = dir.join(RESULTS);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut results = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<RunResult>(line) {
            Ok(result) if dir.join(&result.frames).is_dir() => {
                results.insert(result.key.clone(), result);
            }
            Ok(_) => {}
            Err(e) => eprintln!(
                "warning: {} line {}: {e}; that run is made again",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(results)
}

/// Appends one finished run to `dir/results.jsonl` (flushed, so a killed comparison keeps it).
pub fn append_result(dir: &Path, result: &RunResult) -> Result<()> {
    let path = dir.join(RESULTS);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(result)?)?;
    file.sync_data()?;
    Ok(())
}

/// Rewrites `dir/results.jsonl` with `results` (atomically: a new file renamed over it).
pub fn save_results(dir: &Path, results: &[&RunResult]) -> Result<()> {
    let mut text = String::new();
    for result in results {
        text += &serde_json::to_string(result)?;
        text.push('\n');
    }
    pipelines::t2v::save_text(&dir.join(RESULTS), &text)?;
    Ok(())
}

/// The frames of a run, read back from its PNG folder.
pub fn read_frames(dir: &Path, result: &RunResult) -> Result<Vec<crate::video::Frame>> {
    let folder = dir.join(&result.frames);
    PngFolderReader::open(&folder)?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read the frames of {}", folder.display()))
}

/// Fills the fidelity of every run against the dense run of its prompt and seed (`dense_key`
/// gives that run's key); dense against itself is exact.
pub fn measure_fidelity(
    dir: &Path,
    results: &mut BTreeMap<String, RunResult>,
    dense_key: impl Fn(&RunResult) -> Option<String>,
) -> Result<()> {
    let mut cache: BTreeMap<String, Vec<crate::video::Frame>> = BTreeMap::new();
    let keys: Vec<String> = results.keys().cloned().collect();
    for key in keys {
        let run = &results[&key];
        let Some(reference_key) = dense_key(run) else {
            continue;
        };
        let Some(reference) = results.get(&reference_key) else {
            continue;
        };
        if !cache.contains_key(&reference_key) {
            cache.insert(reference_key.clone(), read_frames(dir, reference)?);
        }
        let test = read_frames(dir, run)?;
        let quality = VideoQuality::measure(&cache[&reference_key], &test)?;
        if let Some(run) = results.get_mut(&key) {
            run.fidelity = Some(quality.into());
        }
    }
    Ok(())
}
