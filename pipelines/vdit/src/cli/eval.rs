//! `vdit eval`: generates distinct held-out captions (colour x shape x motion combinations
//! training never saw) with each attention method through `vdit compare`'s machinery, then
//! reads the pixels back: is the asked colour there, with the asked shape, moving the asked
//! way? Reports those accuracies next to each method's PSNR/SSIM against the dense video from
//! the same seed, in a table, in the comparison report's summary and in `eval.json` (with each
//! video's verdict per asked object).

use super::compare::{compare, CompareArgs};
use super::options::{LoraArgs, ModelArgs, RuntimeArgs, SettingArgs};
use crate::compare::report::ExtraColumns;
use crate::compare::{read_frames, RunResult};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use sparse::{MethodSpec, Registry};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use train::data::{parse, Split, Video};
use train::eval::{eval_captions, judge, Accuracy};

/// Which captions to ask for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    /// Held-out combinations (never in training).
    Held,
    /// Training combinations.
    Train,
}

/// Arguments of `vdit eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// A method to evaluate besides dense (which always runs, as the reference): e.g.
    /// vsa:sparsity=0.875. Repeat for each.
    #[arg(long = "method", value_name = "SPEC")]
    pub methods: Vec<MethodSpec>,
    /// Distinct captions to generate.
    #[arg(long, default_value_t = 24)]
    pub count: usize,
    /// Which captions: held (combinations training never saw) or train.
    #[arg(long, value_enum, default_value = "held")]
    pub split: SplitArg,
    /// Seeds of the initial noise, comma-separated (every caption with every seed).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub seeds: Vec<u64>,
    /// Folder for the videos' frames, results, eval.json and the comparison report.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Generation settings.
    #[command(flatten)]
    pub settings: SettingArgs,
    /// The model (default: the embedded one).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Device and dtype.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Seed of the caption draws (fixed, so every evaluation asks for the same captions).
const CAPTION_SEED: u64 = 0x5EED;
/// The captions file written into the output folder.
const PROMPTS_FILE: &str = "eval-prompts.txt";

/// Generates, judges and reports.
pub fn run(args: EvalArgs, registry: &Registry) -> Result<()> {
    let split = match args.split {
        SplitArg::Held => Split::Held,
        SplitArg::Train => Split::Train,
    };
    let captions = eval_captions(split, args.count, CAPTION_SEED)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let prompts = args.out_dir.join(PROMPTS_FILE);
    write_prompts(&prompts, &captions)?;
    let mut accuracies: BTreeMap<String, Accuracy> = BTreeMap::new();
    let mut videos: Vec<serde_json::Value> = Vec::new();
    let runs = compare(
        &CompareArgs {
            prompts,
            methods: if args.methods.is_empty() {
                vec![MethodSpec::named("dense")]
            } else {
                args.methods.clone()
            },
            seeds: args.seeds.clone(),
            out_dir: args.out_dir.clone(),
            settings: args.settings.clone(),
            model: args.model.clone(),
            lora: LoraArgs::default(),
            runtime: args.runtime.clone(),
            quiet: args.quiet,
        },
        registry,
        &mut |runs| {
            for run in runs {
                let asked = parse(&run.prompt)?;
                let video = video_of(&args.out_dir, run)?;
                let judgements = judge(&asked, &video);
                let accuracy = accuracies.entry(run.method.clone()).or_default();
                accuracy.extend(&judgements);
                videos.push(json!({
                    "caption": run.prompt,
                    "seed": run.seed,
                    "method": run.method,
                    "objects": judgements.iter().map(|j| json!({
                        "colour": j.colour, "shape": j.shape, "motion": j.motion,
                    })).collect::<Vec<_>>(),
                }));
            }
            Ok(accuracy_columns(&accuracies))
        },
    )?;
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    let mut order = vec![];
    for run in &runs {
        let score = scores.entry(run.method.clone()).or_insert_with(|| {
            order.push(run.method.clone());
            Score {
                accuracy: accuracies.get(&run.method).copied().unwrap_or_default(),
                runs: vec![],
            }
        });
        score.runs.push(run);
    }
    let rows: Vec<serde_json::Value> = order.iter().map(|m| scores[m].json(m)).collect();
    let report = json!({
        "split": format!("{:?}", args.split).to_lowercase(),
        "captions": captions,
        "seeds": args.seeds,
        "methods": rows,
        "videos": videos,
    });
    let path = args.out_dir.join("eval.json");
    pipelines::t2v::save_text(&path, &(serde_json::to_string_pretty(&report)? + "\n"))?;
    say!("| method | colour | shape | motion | all three | PSNR vs dense (dB) | SSIM vs dense | density |");
    say!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for method in &order {
        say!("{}", scores[method].table_row(method));
    }
    say!(
        "eval: {} videos of {} {} captions; eval.json in {}",
        runs.len(),
        captions.len(),
        report["split"].as_str().unwrap_or(""),
        args.out_dir.display()
    );
    Ok(())
}

/// The accuracies as the comparison report's added summary columns.
fn accuracy_columns(accuracies: &BTreeMap<String, Accuracy>) -> ExtraColumns {
    ExtraColumns {
        names: ["colour", "shape", "motion", "all three"]
            .map(String::from)
            .to_vec(),
        values: accuracies
            .iter()
            .map(|(method, a)| {
                let rates = vec![
                    a.colour_rate(),
                    a.shape_rate(),
                    a.motion_rate(),
                    a.all_rate(),
                ];
                (method.clone(), rates)
            })
            .collect(),
    }
}

/// One method's judgements and runs.
struct Score<'a> {
    accuracy: Accuracy,
    runs: Vec<&'a RunResult>,
}

impl Score<'_> {
    fn mean(&self, value: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.runs.iter().filter_map(|r| value(r)).collect();
        (!values.is_empty()).then(|| crate::video::mean(values))
    }

    fn psnr(&self) -> Option<f64> {
        self.mean(|r| r.fidelity.as_ref().map(|f| f.psnr_mean))
    }

    fn ssim(&self) -> Option<f64> {
        self.mean(|r| r.fidelity.as_ref().map(|f| f.ssim_mean))
    }

    fn json(&self, method: &str) -> serde_json::Value {
        json!({
            "method": method,
            "accuracy": self.accuracy,
            "colour": self.accuracy.colour_rate(),
            "shape": self.accuracy.shape_rate(),
            "motion": self.accuracy.motion_rate(),
            "all": self.accuracy.all_rate(),
            "psnr_mean": self.psnr(),
            "ssim_mean": self.ssim(),
            "density": self.mean(|r| Some(r.density)),
            "denoising_s": self.mean(|r| Some(r.denoising_s)),
        })
    }

    fn table_row(&self, method: &str) -> String {
        let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.3}"));
        let number =
            |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
        format!(
            "| {method} | {} | {} | {} | {} | {} | {} | {} |",
            rate(self.accuracy.colour_rate()),
            rate(self.accuracy.shape_rate()),
            rate(self.accuracy.motion_rate()),
            rate(self.accuracy.all_rate()),
            number(self.psnr(), 2),
            number(self.ssim(), 4),
            number(self.mean(|r| Some(r.density)), 3),
        )
    }
}

/// The frames of a run as one video.
fn video_of(dir: &Path, run: &RunResult) -> Result<Video> {
    let frames = read_frames(dir, run)?;
    let Some(first) = frames.first() else {
        bail!("the run of `{}` has no frames", run.prompt)
    };
    let (w, h) = (first.width() as usize, first.height() as usize);
    let rgb: Vec<u8> = frames
        .iter()
        .flat_map(|f| f.rgb().iter().copied())
        .collect();
    Ok(Video::new(frames.len(), h, w, rgb)?)
}

/// Writes the captions file, or checks that the one there holds the same captions.
fn write_prompts(path: &Path, captions: &[String]) -> Result<()> {
    let text = captions.join("\n") + "\n";
    match std::fs::read_to_string(path) {
        Ok(existing) if existing == text => Ok(()),
        Ok(_) => bail!(
            "{} exists with other captions: use another --out-dir (or remove it if it is an old evaluation's)",
            path.display()
        ),
        Err(_) if path.exists() => bail!("cannot read {}", path.display()),
        Err(_) => Ok(pipelines::t2v::save_text(path, &text)?),
    }
}
