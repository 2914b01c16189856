//! `vdit compare`: every attention method on every prompt and seed from the same initial noise
//! and text embeddings, the model loaded once and each prompt encoded once; timings, density
//! and fidelity against the dense run in `results.jsonl`, `report.md` and `report.html`.
//!
//! Runs are keyed by their job fingerprint (model, prompt, seed, settings, attention, LoRAs):
//! a re-run with more methods or seeds makes only the missing runs, and a killed comparison
//! resumes from the runs it finished (each is appended to `results.jsonl` when its frames are
//! complete).

use super::options::{LoraArgs, ModelArgs, RuntimeArgs, SettingArgs};
use crate::compare::report::{self, ExtraColumns};
use crate::compare::{append_result, load_results, measure_fidelity, RunResult};
use crate::render::{open_writer, render};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pipelines::t2v::{
    output_state, record_path, Job, Loaded, ModelContext, NoiseSource, OutputState, PromptInput,
    Silent,
};
use sparse::{MethodSpec, Registry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Arguments of `vdit compare`.
#[derive(Args)]
pub struct CompareArgs {
    /// Prompts, one per non-blank line.
    #[arg(long, value_name = "FILE")]
    pub prompts: PathBuf,
    /// A method to compare, as a spec: dense, vsa:sparsity=0.875, vmoba:threshold=0.25,
    /// paro:paro_calibration=FILE, sparsed:select_ratio=0.3, each with dense_steps=N or
    /// dense_layers=L if wanted (the option names of `generate`'s flags, `_` for `-`).
    /// Repeat for each; dense always runs as the reference.
    #[arg(long = "method", value_name = "SPEC", required = true)]
    pub methods: Vec<MethodSpec>,
    /// Seeds of the initial noise, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Folder for the runs' frames, results.jsonl, report.md and report.html (created).
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Generation settings of every run.
    #[command(flatten)]
    pub settings: SettingArgs,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// LoRAs of every run.
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Device and dtype.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One run to make or already made.
struct Planned {
    prompt_index: usize,
    prompt: String,
    seed: u64,
    method: String,
    job: Job,
    key: String,
}

/// Runs what is missing, measures fidelity and writes the report.
pub fn run(args: CompareArgs, registry: &Registry) -> Result<()> {
    compare(&args, registry, &mut |_| Ok(ExtraColumns::default()))?;
    Ok(())
}

/// [`run`]'s work: returns the comparison's runs (frames under `args.out_dir`, fidelity
/// filled), every prompt x seed x method. `extra` sees those runs before the report is
/// written and gives the summary's added columns.
pub fn compare(
    args: &CompareArgs,
    registry: &Registry,
    extra: &mut dyn FnMut(&[&RunResult]) -> Result<ExtraColumns>,
) -> Result<Vec<RunResult>> {
    let prompts = read_prompts(&args.prompts)?;
    if args.seeds.is_empty() {
        bail!("--seeds names no seed: give e.g. --seeds 0,1");
    }
    let context = ModelContext::new(&args.model.spec())?;
    let settings = context.settings(&args.settings.overrides(None)?)?;
    let mut methods = vec![MethodSpec::named("dense")];
    for spec in &args.methods {
        if !methods.contains(spec) {
            methods.push(spec.clone());
        }
    }
    let mut planned = Vec::new();
    for (prompt_index, prompt) in prompts.iter().enumerate() {
        for &seed in &args.seeds {
            for spec in &methods {
                let job = Job::plan(
                    &context,
                    settings.clone(),
                    PromptInput {
                        prompt: Some(prompt.clone()),
                        ..Default::default()
                    },
                    NoiseSource::Seed(seed),
                    registry
                        .schedule(spec)
                        .with_context(|| format!("method `{spec}`"))?,
                    None,
                    args.lora.set(),
                )
                .with_context(|| format!("method `{spec}`"))?;
                planned.push(Planned {
                    prompt_index,
                    prompt: prompt.clone(),
                    seed,
                    method: spec.to_string(),
                    key: job.fingerprint(&context.paths),
                    job,
                });
            }
        }
    }
    std::fs::create_dir_all(args.out_dir.join("runs"))
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let mut results = load_results(&args.out_dir)?;
    let missing: Vec<&Planned> = planned
        .iter()
        .filter(|p| !results.contains_key(&p.key))
        .collect();
    if !missing.is_empty() {
        make_runs(&missing, args, &context, &mut results)?;
    }
    let dense_keys: BTreeMap<(usize, u64), String> = planned
        .iter()
        .filter(|p| p.method == "dense")
        .map(|p| ((p.prompt_index, p.seed), p.key.clone()))
        .collect();
    measure_fidelity(&args.out_dir, &mut results, |run| {
        dense_keys.get(&(run.prompt_index, run.seed)).cloned()
    })?;
    let these: Vec<&RunResult> = planned.iter().filter_map(|p| results.get(&p.key)).collect();
    let kept: Vec<&RunResult> = results.values().collect();
    crate::compare::save_results(&args.out_dir, &kept)?;
    let columns = extra(&these)?;
    let written = report::write(&args.out_dir, &these, &settings, &columns)?;
    say!(
        "compare: {} runs ({} made now, {} from earlier); report in {}",
        these.len(),
        missing.len(),
        these.len() - missing.len(),
        written.display()
    );
    Ok(these.into_iter().cloned().collect())
}

/// The non-blank lines of the prompts file.
fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompts file {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if prompts.is_empty() {
        bail!(
            "the prompts file {} has no prompt: write one per line",
            path.display()
        );
    }
    Ok(prompts)
}

/// Encodes the prompts once, loads the model once and makes `missing`, appending each run to
/// `results.jsonl` as it completes.
fn make_runs(
    missing: &[&Planned],
    args: &CompareArgs,
    context: &ModelContext,
    results: &mut BTreeMap<String, RunResult>,
) -> Result<()> {
    let (device, dtype) = args.runtime.open()?;
    // the cache encodes each distinct text once
    let texts: Vec<&str> = missing.iter().flat_map(|p| p.job.texts()).collect();
    let encoded = context.encode(&texts, dtype, &device, &mut Silent)?;
    let mut loaded = Loaded::load(context, &missing[0].job.loras, dtype, &device, &mut Silent)?;
    loaded.kernel = args.runtime.kernel()?;
    loaded.time_attention = true;
    let bar = progress_bar(missing.len() as u64, args.quiet);
    for planned in missing {
        if crate::interrupt::requested() {
            bar.abandon();
            return Err(crate::interrupt::Interrupted.into());
        }
        bar.set_message(format!(
            "{} | prompt {} | seed {}",
            planned.method,
            planned.prompt_index + 1,
            planned.seed
        ));
        let frames = PathBuf::from("runs").join(&planned.key);
        let output = args.out_dir.join(&frames);
        clear_unrecorded(&output, &planned.key)?;
        let writer = open_writer(&planned.job, &output, true)?;
        let (outcome, _) = render(
            &loaded,
            &planned.job,
            &encoded,
            writer,
            &output,
            &mut Silent,
        )?;
        let (peak_gib, peak_of) = match outcome.peak_gpu_bytes {
            Some(bytes) => (Some(vdit_core::memory::gib(bytes)), "gpu"),
            None => (
                vdit_core::memory::peak_rss_bytes().map(vdit_core::memory::gib),
                "cpu_rss",
            ),
        };
        let result = RunResult {
            key: planned.key.clone(),
            prompt_index: planned.prompt_index,
            prompt: planned.prompt.clone(),
            seed: planned.seed,
            method: planned.method.clone(),
            text_encoding_s: encoded.seconds(&planned.job.texts()),
            step_s: outcome.step_seconds.clone(),
            attention_s: outcome.density.seconds,
            denoising_s: outcome.timings.denoising_s,
            decoding_s: outcome.timings.decoding_s,
            writing_s: outcome.timings.writing_s,
            density: outcome.density.overall(),
            layer_density: outcome.density.layer_densities(),
            step_layer_density: outcome.density.step_layer_densities(),
            attention_flops: outcome.density.flops,
            peak_gib,
            peak_of: peak_of.to_string(),
            frames,
            fidelity: None,
        };
        append_result(&args.out_dir, &result)?;
        results.insert(result.key.clone(), result);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Removes the frames of a run that vdit finished but whose result was not kept (a comparison
/// killed between the two): its record proves vdit made them. Anything else there is refused.
fn clear_unrecorded(output: &Path, key: &str) -> Result<()> {
    match output_state(output, key) {
        OutputState::Free => Ok(()),
        OutputState::Done | OutputState::Changed => {
            std::fs::remove_dir_all(output)
                .with_context(|| format!("cannot remove {}", output.display()))?;
            std::fs::remove_file(record_path(output))
                .with_context(|| format!("cannot remove the record of {}", output.display()))?;
            Ok(())
        }
        OutputState::Foreign(reason) => bail!(reason),
    }
}

/// One bar over every run, with the current method, prompt and seed and an ETA.
fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("compare [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
