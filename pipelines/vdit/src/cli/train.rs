//! `vdit train vae` and `vdit train dit`: train the engine's own small text-to-video model
//! on procedurally rendered clips (see the `train` crate), with a progress bar showing the
//! loss and throughput, a CSV loss log, its PNG plot, checkpoints and `--resume`; `vdit train
//! plot` draws the logs of runs that continued one another as one curve.

use crate::cli::options::{GpuList, RuntimeArgs};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sparse::{MethodSpec, Registry};
use std::io::IsTerminal;
use std::path::PathBuf;
use train::optim::LossRow;
use train::recipe::Preset;
use train::run::{self, Common, DitStage, Outcome, TrainProgress, VaeStage};

/// Arguments of `vdit train`.
#[derive(Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Subcommand)]
enum Stage {
    /// Train the VAE for reconstruction; writes a base model folder for `train dit`.
    Vae(VaeArgs),
    /// Train the transformer with flow matching over a base folder (CUDA or CPU).
    Dit(DitArgs),
    /// Plot the loss logs of runs that continued one another (each `--base` the one before) as
    /// one curve, steps counted on from run to run.
    Plot(PlotArgs),
}

/// Arguments of `vdit train plot`.
#[derive(Args)]
struct PlotArgs {
    /// The runs' loss logs (`RUN/loss.csv`) or run folders, in training order.
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
    /// The PNG to write.
    #[arg(long, value_name = "PNG")]
    out: PathBuf,
    /// Title drawn above the plot.
    #[arg(long, default_value = "TRAINING LOSS")]
    title: String,
    /// A logarithmic loss axis.
    #[arg(long)]
    log_y: bool,
    /// Replace an existing `--out`.
    #[arg(long)]
    overwrite: bool,
}

/// Settings both stages take.
#[derive(Args)]
struct CommonArgs {
    /// Run folder: checkpoints/, loss.csv, loss.png and the trained model/ go here.
    #[arg(long)]
    out: PathBuf,
    /// Model size: small (128x128x17, 1280 tokens) or tiny (a seconds-long stand-in for tests).
    #[arg(long, default_value = "small", value_parser = parse_preset)]
    preset: Preset,
    /// Training steps of the whole run.
    #[arg(long)]
    steps: u64,
    /// Examples per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate (AdamW, linear warm-up then cosine decay to a tenth).
    #[arg(long)]
    lr: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    warmup: Option<u64>,
    /// Global gradient-norm clipping.
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// EMA decay of the weights written to model/.
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// Seed of the data and the fresh weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Continue the run in --out from its latest checkpoint (same settings).
    #[arg(long)]
    resume: bool,
    /// No progress bar; a line every --log-every steps instead.
    #[arg(long)]
    quiet: bool,
    /// Steps between printed lines when no bar shows.
    #[arg(long, default_value_t = 100)]
    log_every: u64,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct VaeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Side of the square training crops, in pixels (a multiple of 8; default 64, or the whole
    /// frame when smaller).
    #[arg(long)]
    crop: Option<usize>,
    /// Frames per training crop (1 + 4k; default the whole clip, so that the causal history of
    /// every chunk is trained as decoding a whole clip uses it: with 9-frame crops of 17-frame
    /// clips, the frames after the ninth came out ever worse).
    #[arg(long)]
    crop_frames: Option<usize>,
    /// Weight of the KL term.
    #[arg(long, default_value_t = 1e-4)]
    kl_weight: f64,
    /// Start from the VAE of this model folder (an earlier run's model/), with a fresh
    /// optimiser, instead of fresh weights.
    #[arg(long)]
    from: Option<PathBuf>,
}

#[derive(Args)]
struct DitArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Base model folder: `vdit train vae`'s model/ (or a trained model to fine-tune).
    #[arg(long)]
    base: PathBuf,
    /// Start from fresh transformer weights even when the base has a transformer.
    #[arg(long)]
    from_scratch: bool,
    /// Clips in the training set (rendered and encoded once).
    #[arg(long, default_value_t = 4096)]
    clips: usize,
    /// Attention to train through: dense, or a method spec such as vsa:sparsity=0.875 or
    /// vmoba:topk=3.
    #[arg(long, default_value = "dense")]
    attention: MethodSpec,
    /// Steps over which the method's sparsity ramps up from 0 (dense) to its target.
    #[arg(long, default_value_t = 0)]
    sparsity_ramp: u64,
    /// Share of captions replaced by the empty caption (for classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    caption_dropout: f64,
    /// GPUs that train together, a count (2) or a list (0,1): each trains a replica of the
    /// transformer on its share of every step's batch, which --batch gives whole (data
    /// parallelism). Needs a build with NCCL.
    #[arg(long, conflicts_with = "device")]
    gpus: Option<GpuList>,
}

fn parse_preset(text: &str) -> std::result::Result<Preset, String> {
    Preset::from_name(text).ok_or_else(|| format!("`{text}` is not a preset: use small or tiny"))
}

impl CommonArgs {
    fn common(&self, batch: usize, lr: f64, warmup: u64) -> Result<Common> {
        let (device, _) = self.runtime.open()?;
        Ok(Common {
            preset: self.preset,
            run_dir: self.out.clone(),
            steps: self.steps,
            batch: self.batch.unwrap_or(batch),
            lr: self.lr.unwrap_or(lr),
            warmup: self.warmup.unwrap_or(warmup).min(self.steps),
            clip: self.clip,
            ema_decay: self.ema,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            device,
        })
    }
}

/// Runs one stage and prints where its results are.
pub fn run(args: TrainArgs, registry: &Registry) -> Result<()> {
    let outcome = match args.stage {
        Stage::Vae(a) => {
            let stage = VaeStage {
                common: a.common.common(4, 1e-3, 100)?,
                crop: a.crop.unwrap_or(a.common.preset.clip().1.min(64)),
                crop_frames: a.crop_frames.unwrap_or(a.common.preset.clip().0),
                kl_weight: a.kl_weight,
                from: a.from,
            };
            let mut bar = Bar::new(a.common.quiet, a.common.log_every);
            run::train_vae(&stage, &mut bar).context("vdit train vae")?
        }
        Stage::Dit(a) => {
            let mut common = a.common.common(16, 3e-4, 200)?;
            let mut replica_devices = vec![];
            if let Some(gpus) = &a.gpus {
                let mut devices = gpus.open()?.into_iter();
                if let Some(first) = devices.next() {
                    common.device = first;
                }
                replica_devices = devices.collect();
            }
            let stage = DitStage {
                common,
                base: a.base,
                from_scratch: a.from_scratch,
                clips: a.clips,
                attention: a.attention,
                sparsity_ramp: a.sparsity_ramp,
                caption_dropout: a.caption_dropout,
                replica_devices,
            };
            let mut bar = Bar::new(a.common.quiet, a.common.log_every);
            run::train_dit(&stage, registry, &mut bar).context("vdit train dit")?
        }
        Stage::Plot(a) => return plot(&a),
    };
    report(&outcome);
    Ok(())
}

/// `vdit train plot`: the joined curve, and a line on what it holds.
fn plot(args: &PlotArgs) -> Result<()> {
    if args.out.exists() && !args.overwrite {
        return Err(train::Error::Usage(format!(
            "{} already exists: add --overwrite or give another --out",
            args.out.display()
        ))
        .into());
    }
    let logs: Vec<PathBuf> = args
        .logs
        .iter()
        .map(|p| {
            if p.is_dir() {
                train::optim::loss_csv(p)
            } else {
                p.clone()
            }
        })
        .collect();
    let paths: Vec<&std::path::Path> = logs.iter().map(PathBuf::as_path).collect();
    let rows = train::optim::plot_runs_png(
        &paths,
        &args.out,
        &args.title,
        &train::optim::PlotOptions {
            log_y: args.log_y,
            ..Default::default()
        },
    )
    .context("vdit train plot")?;
    let last = rows
        .iter()
        .rev()
        .take(50)
        .map(|r| r.loss)
        .collect::<Vec<_>>();
    say!(
        "plotted {} runs, {} steps (loss {:.4} over the last {}) to {}",
        logs.len(),
        rows.last().map_or(0, |r| r.step),
        last.iter().sum::<f64>() / last.len().max(1) as f64,
        last.len(),
        args.out.display()
    );
    Ok(())
}

fn report(outcome: &Outcome) {
    let frames = &outcome.reconstruction_psnr;
    let worst = frames.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1));
    if let Some((frame, db)) = worst {
        say!(
            "VAE reconstruction of unseen clips: {:.1} dB PSNR (mean over frames), worst frame {frame} at {db:.1} dB",
            frames.iter().sum::<f64>() / frames.len() as f64
        );
    }
    let p = &outcome.phases;
    say!(
        "seconds per step: forward {:.3}, backward {:.3}, gradient clipping {:.3}, AdamW {:.3}, EMA {:.3}",
        p.forward,
        p.backward,
        p.clip,
        p.optimiser,
        p.ema
    );
    if outcome.finished {
        say!(
            "trained {} steps ({} parameters, {:.3} s/step); model: {}; loss plot: {}",
            outcome.steps,
            outcome.parameters,
            outcome.seconds_per_step,
            outcome.model_dir.display(),
            outcome.plot.display()
        );
    } else {
        say!(
            "stopped after step {} (checkpoint written); continue with the same command and --resume",
            outcome.steps
        );
    }
}

/// A progress bar with the loss and throughput, or a printed line every `log_every` steps
/// when stderr is not a terminal (logs of GPU runs).
struct Bar {
    shown: bool,
    quiet: bool,
    log_every: u64,
    bar: Option<ProgressBar>,
    what: String,
    average: Option<f64>,
}

impl Bar {
    fn new(quiet: bool, log_every: u64) -> Self {
        Self {
            shown: !quiet && std::io::stderr().is_terminal(),
            quiet,
            log_every: log_every.max(1),
            bar: None,
            what: String::new(),
            average: None,
        }
    }
}

impl TrainProgress for Bar {
    fn begin(&mut self, what: &str, total: u64) {
        self.what = what.to_string();
        if !self.shown {
            return;
        }
        let bar = ProgressBar::new(total);
        let template = "{prefix:>14} [{bar:30}] {pos}/{len} {elapsed} (eta {eta}) {msg}";
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_prefix(what.to_string());
        self.bar = Some(bar);
    }

    fn advance(&mut self, row: Option<&LossRow>) {
        if let Some(row) = row {
            let average = match self.average {
                Some(a) => 0.98 * a + 0.02 * row.loss,
                None => row.loss,
            };
            self.average = Some(average);
            let message = format!(
                "loss {:.4} (avg {average:.4}) lr {:.2e} {:.2} steps/s",
                row.loss,
                row.lr,
                1.0 / row.seconds.max(1e-9)
            );
            if let Some(bar) = &self.bar {
                bar.set_message(message);
            } else if !self.quiet && row.step % self.log_every == 0 {
                eprintln!("{} step {}: {message}", self.what, row.step);
            }
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn stop_requested(&self) -> bool {
        crate::interrupt::requested()
    }
}
