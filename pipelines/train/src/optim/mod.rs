//! The optimiser side of training: AdamW on f32 master weights, the learning-rate schedule,
//! gradient clipping, EMA weights, checkpoints with optimiser state, and the loss log.
//!
//! The parameters are f32 [`Var`](candle_core::Var)s keyed by weight name in a
//! `BTreeMap<String, Var>`. One training step:
//!
//! 1. forward (possibly in bf16 through `to_dtype` on the vars) and the loss;
//! 2. `let mut grads = loss.backward()?;` (with replicas on several devices, then
//!    [`average_gradients`] over them);
//! 3. `let norm = clip_grad_norm(&params, &mut grads, max_norm)?;` — when `norm` is not finite,
//!    skip steps 4–5 (the gradients are left as they were);
//! 4. `adamw.step(&params, &grads, schedule.lr(step))?;` with `step` the steps taken so far;
//! 5. `ema.update(&params)?;`
//! 6. `log.append(&LossRow { step: step + 1, loss, lr, grad_norm: norm, seconds })?;`
//! 7. every so often, [`Snapshot::save`] into [`checkpoint_dir`]`(run, step + 1)` (then
//!    [`prune`] to keep the last few), [`plot_png`] of [`loss_csv`]`(run)`.
//!
//! Resuming: `Checkpoint::load(&latest(run).unwrap(), &device)?`, then
//! [`Checkpoint::apply`] to the freshly built parameters, take its `adamw`, `ema`, `schedule`,
//! `cursor` (the data position) and `step`, and [`LossLog::resume`] at that step. Continuing
//! gives bit for bit the updates of an uninterrupted run. For shipping, [`save_weights`] writes
//! chosen tensors (e.g. [`Ema::weights`] in bf16) in the layouts the engine loads.

mod adamw;
mod checkpoint;
mod clip;
mod ema;
mod flat;
mod font;
mod log;
mod plot;
mod replicas;
mod schedule;
mod shards;
mod weights;

pub use adamw::{decays, AdamW, AdamWConfig, AdamWState};
pub use checkpoint::{
    checkpoint_dir, is_checkpoint, latest, prune, Checkpoint, Snapshot, CHECKPOINT_FORMAT,
};
pub use clip::{clip_grad_norm, grad_norm};
pub use ema::Ema;
pub use log::{loss_csv, read_loss_csv, LossLog, LossRow, LOSS_HEADER};
pub use plot::{
    plot_png, plot_png_with, plot_runs_png, render as render_plot, PlotOptions, AVERAGE_COLOR,
    RAW_COLOR,
};
pub use replicas::{average_gradients, Agreement};
pub use schedule::LrSchedule;
pub use shards::{WeightDtype, DEFAULT_SHARD_BYTES, MIN_SHARD_BYTES};
pub(crate) use weights::check_replaceable;
pub use weights::{save_weights, WeightsOptions, FORMAT_KEY, WEIGHTS_FORMAT};
