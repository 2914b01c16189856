//! `vdit batch`: many generations from a JSON-lines file, the model loaded once.
//!
//! Each non-blank line is a job: a JSON object with `prompt` and `seed`, optionally
//! `negative_prompt` and `id`, and any `vdit generate` setting or attention option (snake_case
//! names, e.g. `"size": "832x480"`, `"attention": "vsa"`, `"dense_steps": 0.2`) overriding the
//! command line's. A job's video is `OUT_DIR/<id>.<ext>` (else `job-<line>`, the line counted from
//! 1) with its record `<video>.json` beside it.
//!
//! Every job is checked first; then the prompts of all jobs to run are encoded and the text
//! encoder dropped (the embeddings wait on the CPU without their zero padding), then the
//! transformer and the VAE are loaded once and the jobs run in order (jobs with other LoRAs,
//! `"lora": "FILE:SCALE"` or a list, run after those of the first set, the transformer loaded
//! again once per set). Videos and records are
//! written under temporary names unique to the process and renamed when complete, the record
//! last. A job is done when its record has the job's fingerprint and its video the size the record
//! gives ([`pipelines::t2v::output_state`]): a re-run skips it, so a killed batch resumes where it
//! was, and regenerates a job whose prompt, seed or settings changed. An output no vdit record
//! describes is never touched: that job fails. Each job is claimed while it runs
//! ([`vdit_core::output::Claim`]), so batches sharing an output folder never write the same video;
//! a job another process holds is passed over. A failing job is reported with its line number and
//! the others go on; the exit code is non-zero if any failed.

use super::bars::Bars;
use super::options::{warn_ignored, LoraArgs, ModelArgs, ParallelArgs, RuntimeArgs, SettingArgs};
use crate::render::{open_writer, render};
use crate::video::WrittenVideo;
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, ValueEnum};
use dit::LoraSet;
use pipelines::t2v::parallel::Placement;
use pipelines::t2v::{
    check_fits, device_name, output_state, parse_timesteps, Job, Loaded, MemoryNeed, ModelContext,
    NoiseSource, OutputState, PromptCache, PromptInput, Sampler, SettingOverrides, Size,
};
use serde::Deserialize;
use sparse::options::OptionValues;
use sparse::{MethodSpec, Registry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;
use vdit_core::memory::available_bytes;
use vdit_core::output::{Claim, OutputError};

/// Arguments of `vdit batch`.
#[derive(Args)]
pub struct BatchArgs {
    /// Jobs, one JSON object per line: {"prompt": ..., "seed": ..., "id"?: ...,
    /// "negative_prompt"?: ..., and any generate option, e.g. "size": "832x480", "steps": 30}.
    pub jobs: PathBuf,
    /// Folder for the videos and their records (created if missing).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Video format of every job (png: a folder of frames per job).
    #[arg(long, value_enum, default_value_t = OutputFormat::default())]
    pub format: OutputFormat,
    /// Run only every N-th job starting at job I (0-based, counting non-blank lines), e.g.
    /// 0/2 and 1/2 on two machines.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Frame rate (default: the model's, else 16).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Settings of every job unless the job sets its own.
    #[command(flatten)]
    pub settings: SettingArgs,
    /// Attention of every job unless the job sets its own (the flags come from the method
    /// registry).
    #[arg(skip)]
    pub attention: MethodSpec,
    /// Whether `--attention` was given (else the model's default method applies).
    #[arg(skip)]
    pub attention_named: bool,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// LoRAs of every job unless the job names its own (`"lora"`).
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Device and dtype.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Several GPUs, every job spread over all of them.
    #[command(flatten)]
    pub parallel: ParallelArgs,
    /// No progress bars or per-job lines (failures and the summary are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Check every job (settings, attention, outputs, memory) and say which would run, without
    /// loading the model or generating anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Video formats a batch writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// H.264 MP4 (needs FFmpeg).
    Mp4,
    /// Animated GIF.
    Gif,
    /// Uncompressed YUV4MPEG2.
    Y4m,
    /// A folder of PNG frames.
    Png,
}

impl Default for OutputFormat {
    /// MP4, or Y4M in a build without FFmpeg.
    fn default() -> Self {
        if cfg!(feature = "ffmpeg") {
            Self::Mp4
        } else {
            Self::Y4m
        }
    }
}

impl OutputFormat {
    /// The output path of a job called `name` in `dir`.
    fn path(self, dir: &Path, name: &str) -> PathBuf {
        match self {
            Self::Mp4 => dir.join(format!("{name}.mp4")),
            Self::Gif => dir.join(format!("{name}.gif")),
            Self::Y4m => dir.join(format!("{name}.y4m")),
            Self::Png => dir.join(name),
        }
    }
}

/// Shard `index` of `count`: the jobs whose 0-based position is `index` modulo `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a shard: use I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// One line of the jobs file: the prompt, the seed, the job's name and settings, and the
/// attention method with its options under the same keys as the flags (`"attention": "vsa",
/// "sparsity": 0.9`), which are checked against the method registry.
#[derive(Deserialize)]
struct JobLine {
    prompt: String,
    seed: u64,
    negative_prompt: Option<String>,
    id: Option<String>,
    size: Option<Size>,
    frames: Option<usize>,
    steps: Option<usize>,
    guidance: Option<f64>,
    shift: Option<f64>,
    scheduler: Option<Sampler>,
    fps: Option<u32>,
    timesteps: Option<Timesteps>,
    lora: Option<Loras>,
    /// `attention` and the attention options, and any unknown key (refused by name).
    #[serde(flatten)]
    attention: BTreeMap<String, serde_json::Value>,
}

/// Characters of a job id at most (with its extension and vdit's temporary suffixes the name
/// stays under the usual 255-byte limit of file names).
const MAX_ID: usize = 200;

/// The keys of a job line besides the attention method and its options.
const JOB_KEYS: &str = "prompt, seed, negative_prompt, id, size, frames, steps, guidance, shift, \
                        scheduler, fps, timesteps, lora";

/// A job's dmd timesteps: `"1000,757,522"` as on the command line, or `[1000, 757, 522]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Timesteps {
    Text(String),
    List(Vec<u32>),
}

/// A job's LoRAs: `"FILE[:SCALE]"`, or a list of them (`[]` for none).
#[derive(Deserialize)]
#[serde(untagged)]
enum Loras {
    One(String),
    List(Vec<String>),
}

impl JobLine {
    /// The LoRAs of this job: its own when it names them (replacing the command line's),
    /// else `base`'s.
    fn loras(&self, base: &LoraSet) -> Result<LoraSet> {
        let texts = match &self.lora {
            None => return Ok(base.clone()),
            Some(Loras::One(text)) => vec![text.clone()],
            Some(Loras::List(texts)) => texts.clone(),
        };
        let loras = texts
            .iter()
            .map(|t| t.parse().map_err(|e: String| anyhow::anyhow!("lora: {e}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraSet {
            loras,
            lenient: base.lenient,
        })
    }

    /// The settings this job sets.
    fn settings(&self) -> Result<SettingOverrides> {
        let timesteps = match &self.timesteps {
            None => None,
            Some(Timesteps::List(list)) => Some(list.clone()),
            Some(Timesteps::Text(text)) => Some(parse_timesteps(text)?),
        };
        Ok(SettingOverrides {
            size: self.size,
            frames: self.frames,
            steps: self.steps,
            guidance: self.guidance,
            shift: self.shift,
            scheduler: self.scheduler,
            fps: self.fps,
            timesteps,
        }
        .checked()?)
    }

    /// The attention of this job: its method (else `base`'s) with `base`'s options that the
    /// method takes, then the job's own options, which must all be the method's.
    fn attention(&self, base: &MethodSpec, registry: &Registry) -> Result<MethodSpec> {
        let mut name = base.name.clone();
        let mut own = OptionValues::new();
        for (key, value) in &self.attention {
            let text = match value {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => bail!("`{key}` must be a string or a number, not {other}"),
            };
            if key == "attention" {
                name = text;
            } else if registry.is_option(key) {
                own.set(key, text);
            } else {
                let options: Vec<&str> = registry.options().iter().map(|(o, _)| o.key).collect();
                bail!(
                    "unknown field `{key}`: a job takes {JOB_KEYS}, attention and the attention \
                     options ({})",
                    options.join(", ")
                );
            }
        }
        let inherited = registry.applicable(&MethodSpec {
            name: name.clone(),
            options: base.options.clone(),
        })?;
        Ok(MethodSpec {
            name,
            options: inherited.options.then(&own),
        })
    }

    /// The file name of the job: its id, checked to be a plain name.
    fn name(&self, line: usize) -> Result<String> {
        let Some(id) = &self.id else {
            return Ok(format!("job-{line:04}"));
        };
        if id.len() > MAX_ID {
            bail!(
                "id `{}...` is {} characters long: ids are at most {MAX_ID} (the video's file \
                 name must fit the file system)",
                id.chars().take(24).collect::<String>(),
                id.len()
            );
        }
        let plain = id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if id.is_empty() || id.starts_with('.') || !plain {
            bail!(
                "id `{id}` must be a plain file name: letters, digits, '.', '_' or '-', not \
                 starting with '.'"
            );
        }
        Ok(id.clone())
    }
}

/// A job ready to run.
struct Ready {
    line: usize,
    name: String,
    output: PathBuf,
    job: Job,
    /// [`Job::fingerprint`] of the job.
    fingerprint: String,
}

/// Checks one line into a job; `line` is its number from 1.
fn plan_line(
    text: &str,
    line: usize,
    args: &BatchArgs,
    context: &ModelContext,
    registry: &Registry,
) -> Result<Ready> {
    let job: JobLine = serde_json::from_str(text).context("not a valid job")?;
    let name = job.name(line)?;
    let overrides = args.settings.overrides(args.fps)?.then(&job.settings()?);
    let settings = context.settings(&overrides)?;
    let prompts = PromptInput {
        prompt: Some(job.prompt.clone()),
        negative_prompt: job.negative_prompt.clone(),
        ..Default::default()
    };
    let base = context.attention(&args.attention, args.attention_named)?;
    let schedule = registry.schedule(&job.attention(&base, registry)?)?;
    let planned = Job::plan(
        context,
        settings,
        prompts,
        NoiseSource::Seed(job.seed),
        schedule,
        None,
        job.loras(&args.lora.set())?,
    )?;
    Ok(Ready {
        line,
        output: args.format.path(&args.out_dir, &name),
        name,
        fingerprint: planned.fingerprint(&context.paths),
        job: planned,
    })
}

/// What to do with a job given the state of its output: `None` when it is done, else whether
/// its run replaces a video vdit made for other settings; an error for an output vdit cannot
/// vouch for.
fn next_step(ready: &Ready) -> Result<Option<bool>> {
    match output_state(&ready.output, &ready.fingerprint) {
        OutputState::Done => Ok(None),
        OutputState::Free => Ok(Some(false)),
        OutputState::Changed => Ok(Some(true)),
        OutputState::Foreign(reason) => bail!(reason),
    }
}

/// Failed jobs with their line numbers.
struct Failures(Vec<(usize, String)>);

/// Failed lines listed at most.
const LISTED_LINES: usize = 20;

impl Failures {
    /// The failed line numbers, `4, 7, 9`, the first [`LISTED_LINES`] with a count of the rest.
    fn lines(&self) -> String {
        let mut text: Vec<String> = self
            .0
            .iter()
            .take(LISTED_LINES)
            .map(|(l, _)| l.to_string())
            .collect();
        if self.0.len() > LISTED_LINES {
            text.push(format!("and {} more", self.0.len() - LISTED_LINES));
        }
        text.join(", ")
    }

    fn add(&mut self, line: usize, error: &anyhow::Error) {
        eprintln!("line {line}: error: {}", super::error_line(error));
        self.0.push((line, super::error_line(error)));
    }
}

/// What became of the jobs.
#[derive(Default)]
struct Tally {
    done: usize,
    skipped: usize,
    /// Jobs another process held.
    busy: usize,
    /// Ctrl-C stopped the batch before every job ran.
    interrupted: bool,
    /// In a dry run, the jobs found ready to run.
    would_run: Option<usize>,
}

/// Jobs whose prompts are encoded together, at most: the first videos start after a few
/// prompts, and the text encoder is loaded once per chunk.
const MAX_CHUNK: usize = 256;

/// The non-blank lines of `text` (numbered from 1) in `shard`.
fn shard_lines(text: &str, shard: Shard) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .enumerate()
        .filter(|(position, _)| position % shard.count == shard.index)
        .map(|(_, line)| line)
        .collect()
}

/// Checks every line into a job; returns the jobs to run (the done ones are counted in
/// `tally`, the bad ones in `failures`).
fn plan_jobs(
    lines: &[(usize, &str)],
    args: &BatchArgs,
    context: &ModelContext,
    registry: &Registry,
    failures: &mut Failures,
    tally: &mut Tally,
) -> Vec<Ready> {
    let mut names: Vec<(String, usize)> = Vec::new();
    let mut pending = Vec::new();
    for &(line, text) in lines {
        let ready = match plan_line(text, line, args, context, registry) {
            Ok(ready) => ready,
            Err(e) => {
                failures.add(line, &e);
                continue;
            }
        };
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == ready.name) {
            let e = anyhow::anyhow!(
                "output name `{}` is already used by line {first}: give the job another id",
                ready.name
            );
            failures.add(line, &e);
            continue;
        }
        names.push((ready.name.clone(), line));
        match next_step(&ready) {
            Ok(None) => tally.skipped += 1,
            Ok(Some(replaces)) => {
                if replaces && !args.quiet {
                    eprintln!(
                        "line {line}: the job changed since {} was made; it is made again",
                        ready.output.display()
                    );
                }
                pending.push(ready);
            }
            Err(e) => failures.add(line, &e),
        }
    }
    // Jobs with the same LoRAs run together, so the transformer loads once per set (the sets
    // in the order they first appear, the jobs of a set in line order).
    let mut sets: Vec<LoraSet> = Vec::new();
    for ready in &pending {
        if !sets.contains(&ready.job.loras) {
            sets.push(ready.job.loras.clone());
        }
    }
    // a stable sort: line order within a set
    pending.sort_by_key(|r| sets.iter().position(|s| *s == r.job.loras));
    pending
}

/// Drops the jobs that cannot fit in `available` bytes (each fails alone), and tells whether
/// the text encoder fits beside the loaded transformer (then prompts are encoded chunk by chunk
/// as the jobs need them, else all of them before the transformer is loaded).
fn keep_jobs_that_fit(
    pending: &mut Vec<Ready>,
    context: &ModelContext,
    dtype: DType,
    (available, device): (Option<u64>, &str),
    failures: &mut Failures,
) -> Result<bool> {
    let mut largest = MemoryNeed {
        text_encoding: 0,
        generation: 0,
    };
    let encodes = pending.iter().any(|r| !r.job.texts().is_empty());
    pending.retain(|ready| {
        let need = context.memory_need(&ready.job.settings, encodes, dtype);
        let fits = need.and_then(|need| {
            let generation = MemoryNeed {
                text_encoding: 0,
                ..need
            };
            check_fits(&generation, available, device)?;
            largest.text_encoding = largest.text_encoding.max(need.text_encoding);
            largest.generation = largest.generation.max(need.generation);
            Ok(())
        });
        if let Err(e) = &fits {
            failures.add(ready.line, &anyhow::anyhow!("{e}"));
        }
        fits.is_ok()
    });
    check_fits(&largest, available, device)?;
    let together = largest.text_encoding.saturating_add(largest.generation);
    Ok(available.is_none_or(|available| together <= available))
}

/// Where each chunk of `total` jobs ends: after 1 job, then 4, 16 and 64 more, then
/// [`MAX_CHUNK`] at a time; one chunk of all when not `chunked`.
fn chunk_ends(total: usize, chunked: bool) -> Vec<usize> {
    if !chunked {
        return vec![total];
    }
    let (mut ends, mut end, mut size) = (Vec::new(), 0, 1);
    while end < total {
        end = (end + size).min(total);
        ends.push(end);
        size = (size * 4).min(MAX_CHUNK);
    }
    ends
}

/// The texts the jobs need encoded.
fn texts(jobs: &[Ready]) -> Vec<&str> {
    jobs.iter().flat_map(|r| r.job.texts()).collect()
}

/// Runs `pending` in order with the model loaded once, encoding prompts chunk by chunk when
/// `chunked`, else all at first.
fn run_jobs(
    pending: &[Ready],
    args: &BatchArgs,
    context: &ModelContext,
    (placement, dtype): (&Placement, DType),
    chunked: bool,
    failures: &mut Failures,
    tally: &mut Tally,
) -> Result<()> {
    let mut bars = Bars::new(args.quiet);
    let device = placement.main();
    // An interrupted encoding ends the batch with its summary, as an interrupted job does.
    let encode =
        |jobs: &[Ready], bars: &mut Bars| match context.encode(&texts(jobs), dtype, device, bars) {
            Err(e) if e.is_interrupted() => Ok(None),
            other => other.map(Some),
        };
    let first = if chunked { &pending[..0] } else { pending };
    let Some(mut encoded) = encode(first, &mut bars)? else {
        tally.interrupted = true;
        return Ok(());
    };
    let loras = &pending[0].job.loras;
    let mut loaded = Loaded::load_on(context, loras, dtype, placement, &mut bars)?;
    warn_ignored(loaded.lora_ignored());
    loaded.kernel = args.runtime.kernel()?;
    let total = pending.len();
    let mut start = 0;
    for end in chunk_ends(total, chunked) {
        if chunked {
            let Some(chunk_encoded) = encode(&pending[start..end], &mut bars)? else {
                tally.interrupted = true;
                return Ok(());
            };
            encoded = chunk_encoded;
        }
        for (i, ready) in pending.iter().enumerate().take(end).skip(start) {
            if crate::interrupt::requested() {
                tally.interrupted = true;
                return Ok(());
            }
            bars.set_prefix(&format!("[{}/{total}] {}", i + 1, ready.name));
            if ready.job.loras != loaded.model.denoiser.transformer().loras {
                loaded = loaded.with_loras(&ready.job.loras, &mut bars)?;
                warn_ignored(loaded.lora_ignored());
            }
            match run_job(ready, &loaded, &encoded, &mut bars) {
                Ok(JobEnd::Made(video)) => {
                    tally.done += 1;
                    if !args.quiet {
                        eprintln!("line {}: {video}", ready.line);
                    }
                }
                Ok(JobEnd::AlreadyDone) => tally.skipped += 1,
                Ok(JobEnd::Busy(message)) => {
                    tally.busy += 1;
                    eprintln!("line {}: {message}; passed over", ready.line);
                }
                Err(e) if crate::interrupt::caused(&e) => {
                    tally.interrupted = true;
                    return Ok(());
                }
                Err(e) => failures.add(ready.line, &e),
            }
        }
        start = end;
    }
    Ok(())
}

/// How one job ended, short of failing.
enum JobEnd {
    Made(WrittenVideo),
    /// Another process made it since the jobs were checked.
    AlreadyDone,
    /// Another process holds it (the message says which).
    Busy(String),
}

/// Claims the job's output and makes its video and record.
fn run_job(
    ready: &Ready,
    loaded: &Loaded,
    encoded: &PromptCache,
    bars: &mut Bars,
) -> Result<JobEnd> {
    // Held until the record is written.
    let _claim = match Claim::acquire(&ready.output) {
        Ok(claim) => claim,
        Err(e @ OutputError::Busy { .. }) => return Ok(JobEnd::Busy(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let Some(replaces) = next_step(ready)? else {
        return Ok(JobEnd::AlreadyDone);
    };
    let writer = open_writer(&ready.job, &ready.output, replaces)?;
    let (_, video) = render(loaded, &ready.job, encoded, writer, &ready.output, bars)?;
    Ok(JobEnd::Made(video))
}

impl Tally {
    /// `batch: 12 done, 3 skipped, 1 failed (lines 7) in 845.2 s`, with the jobs passed over and
    /// an interruption when there were any.
    fn summary(&self, failures: &Failures, seconds: f64) -> String {
        let mut text = format!("batch: {} done, {} skipped", self.done, self.skipped);
        if let Some(would_run) = self.would_run {
            text = format!(
                "batch (dry run): {would_run} would run, {} skipped",
                self.skipped
            );
        }
        if self.busy > 0 {
            text += &format!(", {} passed over (another process holds them)", self.busy);
        }
        text += &format!(", {} failed", failures.0.len());
        if !failures.0.is_empty() {
            text += &format!(" (lines {})", failures.lines());
        }
        if self.interrupted {
            text += ", interrupted before the rest";
        }
        text + &format!(" in {seconds:.1} s")
    }
}

/// Runs the batch and prints a summary; fails when any job failed.
pub fn run(args: BatchArgs, registry: &Registry) -> Result<()> {
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.jobs)
        .with_context(|| format!("cannot read the jobs file {}", args.jobs.display()))?;
    if !args.dry_run {
        std::fs::create_dir_all(&args.out_dir)
            .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    }
    let context = ModelContext::new(&args.model.spec())?;
    // Editors on Windows start UTF-8 files with a byte-order mark; it is not part of the job.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let lines = shard_lines(text, args.shard.unwrap_or(Shard { index: 0, count: 1 }));
    let (mut failures, mut tally) = (Failures(Vec::new()), Tally::default());
    let mut pending = plan_jobs(&lines, &args, &context, registry, &mut failures, &mut tally);
    if !pending.is_empty() {
        let guided = pending.iter().any(|r| r.job.settings.guided());
        let heads = context.config()?.num_heads;
        let (placement, dtype) = args.parallel.open(&args.runtime, guided, heads)?;
        let device = placement.main();
        let available = (available_bytes(device)?, device_name(device));
        let available = (available.0, available.1.as_str());
        let chunked = keep_jobs_that_fit(&mut pending, &context, dtype, available, &mut failures)?;
        if args.dry_run {
            for ready in &pending {
                if !args.quiet {
                    eprintln!("line {}: would make {}", ready.line, ready.output.display());
                }
            }
            tally.would_run = Some(pending.len());
        } else if !pending.is_empty() {
            let runtime = (&placement, dtype);
            run_jobs(
                &pending,
                &args,
                &context,
                runtime,
                chunked,
                &mut failures,
                &mut tally,
            )?;
        }
    }
    say!(
        "{}",
        tally.summary(&failures, started.elapsed().as_secs_f64())
    );
    if tally.interrupted {
        return Err(crate::interrupt::Interrupted.into());
    }
    if !failures.0.is_empty() {
        let failed = failures.0.len();
        bail!(
            "{failed} of {} jobs failed (lines {})",
            failed + tally.done + tally.skipped + tally.busy + tally.would_run.unwrap_or(0),
            failures.lines()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first job waits for one prompt only; chunks grow to MAX_CHUNK and cover every job.
    #[test]
    fn chunks_start_small_and_cover_all_jobs() {
        assert_eq!(chunk_ends(3, true), [1, 3]);
        assert_eq!(chunk_ends(1000, true), [1, 5, 21, 85, 341, 597, 853, 1000]);
        assert_eq!(chunk_ends(7, false), [7]);
        assert!(chunk_ends(0, true).is_empty());
    }

    /// Shards are 0-based and must name one of N.
    #[test]
    fn shard_syntax() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
    }

    /// Unknown keys are refused by name; ids must be plain names; a job's options override the
    /// command line's.
    #[test]
    fn job_lines() {
        let line: JobLine =
            serde_json::from_str(r#"{"prompt": "a", "seed": 1, "sizee": "1x1"}"#).unwrap();
        let err = line
            .attention(&MethodSpec::named("dense"), &Registry::builtin())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `sizee`"), "{err}");
        let job: JobLine = serde_json::from_str(
            r#"{"prompt": "a", "seed": 1, "id": "../x", "attention": "vsa", "sparsity": 0.5, "dense_steps": 0.2}"#,
        )
        .unwrap();
        assert!(job.name(3).is_err());
        let registry = Registry::builtin();
        let base: MethodSpec = "dense:dense_layers=0,block=32".parse().unwrap();
        let merged = job.attention(&base, &registry).unwrap();
        assert_eq!(merged.name, "vsa");
        assert_eq!(
            (
                merged.options.get("sparsity"),
                merged.options.get("dense_layers")
            ),
            (Some("0.5"), Some("0"))
        );
        assert_eq!(merged.options.get("dense_steps"), Some("0.2"));
        // the command line's SparseD block does not follow a job that picks VSA
        assert_eq!(merged.options.get("block"), None);
        let plain: JobLine = serde_json::from_str(r#"{"prompt": "a", "seed": 1}"#).unwrap();
        assert_eq!(plain.name(7).unwrap(), "job-0007");
    }

    /// A job's timesteps, as text or a list, imply the dmd sampler; next to another sampler
    /// they are refused. Its LoRAs replace the command line's, `[]` for none.
    #[test]
    fn job_timesteps_and_loras() {
        for text in [
            r#"{"prompt": "a", "seed": 1, "timesteps": "1000, 757,522"}"#,
            r#"{"prompt": "a", "seed": 1, "timesteps": [1000, 757, 522]}"#,
        ] {
            let job: JobLine = serde_json::from_str(text).unwrap();
            let settings = job.settings().unwrap();
            assert_eq!(settings.timesteps, Some(vec![1000, 757, 522]));
            assert_eq!(settings.scheduler, Some(Sampler::Dmd));
        }
        let job: JobLine = serde_json::from_str(
            r#"{"prompt": "a", "seed": 1, "scheduler": "euler", "timesteps": "1000,500"}"#,
        )
        .unwrap();
        let err = job.settings().unwrap_err().to_string();
        assert!(err.contains("--timesteps is for --scheduler dmd"), "{err}");
        let bad: JobLine =
            serde_json::from_str(r#"{"prompt": "a", "seed": 1, "timesteps": "1000,x"}"#).unwrap();
        assert!(bad.settings().is_err());

        let base = LoraSet {
            loras: vec!["base.safetensors".parse().unwrap()],
            lenient: true,
        };
        let own: JobLine =
            serde_json::from_str(r#"{"prompt": "a", "seed": 1, "lora": ["a.st:0.5", "b.st"]}"#)
                .unwrap();
        let set = own.loras(&base).unwrap();
        assert_eq!(set.loras.len(), 2);
        assert_eq!((set.loras[0].scale, set.lenient), (0.5, true));
        let none: JobLine =
            serde_json::from_str(r#"{"prompt": "a", "seed": 1, "lora": []}"#).unwrap();
        assert!(none.loras(&base).unwrap().is_empty());
        let inherit: JobLine = serde_json::from_str(r#"{"prompt": "a", "seed": 1}"#).unwrap();
        assert_eq!(inherit.loras(&base).unwrap(), base);
    }
}
