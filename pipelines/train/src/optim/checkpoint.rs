//! Training checkpoints: a folder holding everything needed to continue a run exactly.
//!
//! ```text
//! <run>/checkpoints/step-000500/
//!   state.json                            format marker, step, data cursor, schedule, config,
//!                                         AdamW hyper-parameters and counts, EMA decay and count,
//!                                         and the files (and chunked tensors) of every part
//!   model-00001-of-00001.safetensors      f32 parameters
//!   ema-00001-of-00001.safetensors        f32 EMA shadows (only when the run keeps an EMA)
//!   adam_m-00001-of-00001.safetensors     AdamW first moments (f32)
//!   adam_v-00001-of-00001.safetensors     AdamW second moments (f32)
//! ```
//!
//! Every file stays under a byte limit (default 15 MiB): a part is spread over as many shards as
//! needed (`model-00002-of-00003.safetensors`), and a single tensor larger than the limit is
//! stored as flat chunks recorded in `state.json`.
//!
//! A checkpoint is written into a hidden sibling folder (`.step-000500.vdit-PID.partial`) and
//! renamed into place once complete, so a crash never leaves half a checkpoint. An existing
//! folder is replaced only when its `state.json` carries the vdit checkpoint marker; anything
//! else there is refused, and [`prune`] removes only marked folders.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use vdit_core::output::{self, Claim, PartialOutput};

use super::adamw::{AdamW, AdamWConfig, AdamWState};
use super::ema::Ema;
use super::schedule::LrSchedule;
use super::shards::{self, Split, WeightDtype};
use crate::{Error, Result};

/// The marker in `state.json` of the checkpoints this version writes and reads.
pub const CHECKPOINT_FORMAT: &str = "vdit-train-checkpoint/1";

/// The marker prefix of vdit checkpoints of any version (those may be replaced and pruned).
const FORMAT_FAMILY: &str = "vdit-train-checkpoint/";

/// The file holding everything but tensors.
const STATE_FILE: &str = "state.json";

/// The folder under a run that holds its checkpoints.
const CHECKPOINTS: &str = "checkpoints";

/// The tensor parts of a checkpoint, by file stem.
const MODEL: &str = "model";
const EMA: &str = "ema";
const ADAM_M: &str = "adam_m";
const ADAM_V: &str = "adam_v";

/// What `state.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StateFile {
    format: String,
    step: u64,
    cursor: u64,
    schedule: LrSchedule,
    config: serde_json::Value,
    adamw: AdamWRecord,
    ema: Option<EmaRecord>,
    parts: BTreeMap<String, PartRecord>,
}

/// AdamW besides its moments.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AdamWRecord {
    config: AdamWConfig,
    step: u64,
    param_steps: BTreeMap<String, u64>,
}

/// The EMA besides its shadows.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct EmaRecord {
    decay: f64,
    updates: u64,
}

/// The files of one part.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PartRecord {
    /// Shard file names, in order.
    files: Vec<String>,
    /// How many tensors the part holds (chunked tensors count once).
    tensors: usize,
    /// Tensors stored as chunks.
    #[serde(default)]
    split: BTreeMap<String, Split>,
}

/// The folder of the checkpoint at `step` of the run in `run_dir`:
/// `<run_dir>/checkpoints/step-000500`.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(CHECKPOINTS).join(format!("step-{step:06}"))
}

/// The `format` field of `folder/state.json`, when that is a JSON object with one.
fn format_of(folder: &Path) -> Option<String> {
    let text = std::fs::read_to_string(folder.join(STATE_FILE)).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(json.get("format")?.as_str()?.to_string())
}

/// True when `folder` is a vdit training checkpoint (of any format version) by the marker in
/// its `state.json`.
pub fn is_checkpoint(folder: &Path) -> bool {
    folder.is_dir() && format_of(folder).is_some_and(|f| f.starts_with(FORMAT_FAMILY))
}

/// The vdit checkpoints under `run_dir/checkpoints` by step (folders named `step-N` with the
/// marker).
fn checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(run_dir.join(CHECKPOINTS)) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digits = name.strip_prefix("step-")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let step = digits.parse::<u64>().ok()?;
            let path = entry.path();
            is_checkpoint(&path).then_some((step, path))
        })
        .collect();
    found.sort();
    found
}

/// The checkpoint of `run_dir` with the highest step, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    checkpoints(run_dir).pop().map(|(_, path)| path)
}

/// Removes all but the `keep_last` newest checkpoints of `run_dir` and returns what it removed.
/// Only folders marked as vdit checkpoints are touched.
pub fn prune(run_dir: &Path, keep_last: usize) -> Result<Vec<PathBuf>> {
    if keep_last == 0 {
        return Err(Error::Usage(
            "keeping 0 checkpoints would remove them all: keep at least 1".to_string(),
        ));
    }
    let found = checkpoints(run_dir);
    let remove = found.len().saturating_sub(keep_last);
    let mut removed = Vec::new();
    for (_, path) in found.into_iter().take(remove) {
        // Checked again just before removal: only marked folders go.
        if is_checkpoint(&path) {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The state of a run to checkpoint, borrowed from the trainer.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// Optimiser steps taken.
    pub step: u64,
    /// The caller's data/RNG position, restored as given.
    pub cursor: u64,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// The run's configuration, free-form, restored as given.
    pub config: &'a serde_json::Value,
    /// The f32 master parameters by name.
    pub params: &'a BTreeMap<String, Var>,
    /// The optimiser.
    pub adamw: &'a AdamW,
    /// The EMA, when the run keeps one.
    pub ema: Option<&'a Ema>,
}

impl Snapshot<'_> {
    /// Checks that the optimiser and EMA state belong to these parameters.
    fn check(&self) -> Result<()> {
        let state = self.adamw.state();
        for (name, m) in &state.m {
            match self.params.get(name) {
                Some(p) if p.dims() == m.dims() => {}
                _ => {
                    return Err(Error::Usage(format!(
                        "AdamW holds moments for {name} that the parameters lack or shape \
                         differently: checkpoint the optimiser of these parameters"
                    )))
                }
            }
        }
        if let Some(ema) = self.ema {
            let weights = ema.weights();
            let same = weights.len() == self.params.len()
                && weights
                    .iter()
                    .all(|(name, t)| self.params.get(name).is_some_and(|p| p.dims() == t.dims()));
            if !same {
                return Err(Error::Usage(
                    "the EMA shadows other tensors than the parameters: checkpoint the EMA of \
                     these parameters"
                        .to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Writes the checkpoint into `folder` (e.g. [`checkpoint_dir`]), no file larger than
    /// `max_file_bytes` (e.g. [`shards::DEFAULT_SHARD_BYTES`]); replaces an earlier vdit
    /// checkpoint there, refuses anything else.
    pub fn save(&self, folder: &Path, max_file_bytes: u64) -> Result<()> {
        shards::check_limit(max_file_bytes)?;
        self.check()?;
        output::check_link(folder)?;
        let replacing = output::is_occupied(folder);
        if replacing && !is_checkpoint(folder) {
            return Err(Error::Usage(format!(
                "{} exists and is not a vdit checkpoint (no state.json marked {CHECKPOINT_FORMAT}): \
                 move it away or save the run elsewhere",
                folder.display()
            )));
        }
        let parent = match folder.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io("write", &parent, e))?;
        let _claim = Claim::acquire(folder)?;
        let partial = PartialOutput::new(folder)?;
        let temp = partial.temp().to_path_buf();
        std::fs::create_dir(&temp).map_err(|e| Error::io("write", &temp, e))?;

        let mut parts = BTreeMap::new();
        let model: Vec<(&str, &Tensor)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_tensor()))
            .collect();
        parts.insert(
            MODEL.to_string(),
            write_part(&temp, MODEL, &model, max_file_bytes)?,
        );
        let ema = match self.ema {
            Some(ema) => {
                let tensors: Vec<(&str, &Tensor)> =
                    ema.weights().iter().map(|(k, v)| (k.as_str(), v)).collect();
                parts.insert(
                    EMA.to_string(),
                    write_part(&temp, EMA, &tensors, max_file_bytes)?,
                );
                Some(EmaRecord {
                    decay: ema.decay(),
                    updates: ema.updates(),
                })
            }
            None => None,
        };
        let state = self.adamw.state();
        for (stem, moments) in [(ADAM_M, &state.m), (ADAM_V, &state.v)] {
            let tensors: Vec<(&str, &Tensor)> =
                moments.iter().map(|(k, v)| (k.as_str(), v)).collect();
            parts.insert(
                stem.to_string(),
                write_part(&temp, stem, &tensors, max_file_bytes)?,
            );
        }
        let record = StateFile {
            format: CHECKPOINT_FORMAT.to_string(),
            step: self.step,
            cursor: self.cursor,
            schedule: self.schedule,
            config: self.config.clone(),
            adamw: AdamWRecord {
                config: self.adamw.config(),
                step: state.step,
                param_steps: state.param_steps,
            },
            ema,
            parts,
        };
        let state_path = temp.join(STATE_FILE);
        let text = serde_json::to_string_pretty(&record)
            .map_err(|e| Error::io("write", &state_path, e))?;
        shards::write_synced(&state_path, text.as_bytes())?;
        sync_dir(&temp);

        if replacing {
            // Move the old checkpoint aside (hidden, named as a temporary of this process so an
            // interrupted run's leftover is recognised and removed later), then put the new one
            // in place and only then drop the old.
            let aside_target = parent.join(format!(
                "{}.old",
                folder
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            output::remove_stale_temps(&aside_target);
            let aside = output::temp_path(&aside_target);
            std::fs::rename(folder, &aside).map_err(|e| Error::io("write", folder, e))?;
            if let Err(e) = partial.commit() {
                let _ = std::fs::rename(&aside, folder);
                return Err(e.into());
            }
            let _ = std::fs::remove_dir_all(&aside);
        } else {
            partial.commit()?;
        }
        sync_dir(&parent);
        Ok(())
    }
}

/// Makes a folder's entries durable (best effort; not every platform can).
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

/// Writes one part as `STEM-0000i-of-0000n.safetensors` files in `dir`, f32.
fn write_part(
    dir: &Path,
    stem: &str,
    tensors: &[(&str, &Tensor)],
    limit: u64,
) -> Result<PartRecord> {
    let metadata = HashMap::from([
        ("vdit_format".to_string(), CHECKPOINT_FORMAT.to_string()),
        ("part".to_string(), stem.to_string()),
    ]);
    let plan = shards::plan(tensors, WeightDtype::F32, limit, &metadata, true)?;
    let count = plan.len();
    let files: Vec<String> = (1..=count)
        .map(|i| format!("{stem}-{i:05}-of-{count:05}.safetensors"))
        .collect();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    shards::write_plan(&plan, &paths, WeightDtype::F32, &metadata, limit)?;
    Ok(PartRecord {
        files,
        tensors: tensors.len(),
        split: plan.split,
    })
}

/// A checkpoint read back: everything needed to continue the run.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The folder it was read from.
    pub folder: PathBuf,
    /// Optimiser steps taken.
    pub step: u64,
    /// The caller's data/RNG position, as saved.
    pub cursor: u64,
    /// The learning-rate schedule.
    pub schedule: LrSchedule,
    /// The run's configuration, as saved.
    pub config: serde_json::Value,
    /// The f32 parameters by name.
    pub model: BTreeMap<String, Tensor>,
    /// The optimiser, with its moments on the device.
    pub adamw: AdamW,
    /// The EMA, when the run kept one.
    pub ema: Option<Ema>,
}

/// A checkpoint error for `folder`: what is wrong, and the usual fix.
fn broken(folder: &Path, problem: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!(
        "checkpoint {} {problem}: copy the whole checkpoint folder again or resume from an \
         earlier checkpoint",
        folder.display()
    ))
}

impl Checkpoint {
    /// Reads the checkpoint in `folder` onto `device`, checking that it is complete and
    /// consistent; [`Checkpoint::apply`] then checks it against the run's parameters.
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        if !folder.is_dir() {
            return Err(Error::Checkpoint(format!(
                "checkpoint folder {} does not exist: give a folder such as \
                 <run>/checkpoints/step-000500",
                folder.display()
            )));
        }
        let state_path = folder.join(STATE_FILE);
        let text = std::fs::read_to_string(&state_path).map_err(|_| {
            broken(
                folder,
                "has no readable state.json (it is not a complete vdit checkpoint)",
            )
        })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| broken(folder, format!("has a state.json that is not JSON ({e})")))?;
        match json.get("format").and_then(|f| f.as_str()) {
            Some(CHECKPOINT_FORMAT) => {}
            Some(other) => {
                return Err(Error::Checkpoint(format!(
                    "checkpoint {} has format {other:?}, not {CHECKPOINT_FORMAT:?}: resume it \
                     with the vdit version that wrote it, or start a new run",
                    folder.display()
                )))
            }
            None => {
                return Err(Error::Checkpoint(format!(
                    "{} has a state.json without the format marker {CHECKPOINT_FORMAT:?}: it \
                     is not a vdit checkpoint; give a folder such as \
                     <run>/checkpoints/step-000500",
                    folder.display()
                )))
            }
        }
        let state: StateFile = serde_json::from_value(json)
            .map_err(|e| broken(folder, format!("has an incomplete state.json ({e})")))?;

        let model = read_part(folder, &state, MODEL, device)?;
        let adam_m = read_part(folder, &state, ADAM_M, device)?;
        let adam_v = read_part(folder, &state, ADAM_V, device)?;
        let ema = match state.ema {
            Some(record) => {
                let weights = read_part(folder, &state, EMA, device)?;
                check_same(folder, EMA, &weights, &model, true)?;
                Some(Ema::from_state(record.decay, record.updates, weights)?)
            }
            None => None,
        };
        check_same(folder, ADAM_M, &adam_m, &model, false)?;
        check_same(folder, ADAM_V, &adam_v, &model, false)?;
        let adamw = AdamW::from_state(
            state.adamw.config,
            AdamWState {
                step: state.adamw.step,
                m: adam_m,
                v: adam_v,
                param_steps: state.adamw.param_steps,
            },
        )
        .map_err(|e| broken(folder, format!("has inconsistent AdamW state ({e})")))?;
        Ok(Self {
            folder: folder.to_path_buf(),
            step: state.step,
            cursor: state.cursor,
            schedule: state.schedule,
            config: state.config,
            model,
            adamw,
            ema,
        })
    }

    /// Checks that the checkpoint holds exactly the tensors of `params`, with their shapes.
    pub fn check_fits(&self, params: &BTreeMap<String, Var>) -> Result<()> {
        let fix = "resume with the model configuration the checkpoint was trained with (its \
                   state.json config), or start a new run";
        let missing: Vec<&String> = params
            .keys()
            .filter(|k| !self.model.contains_key(*k))
            .collect();
        if let Some(first) = missing.first() {
            return Err(Error::Checkpoint(format!(
                "checkpoint {} lacks {first}{} that the model has: {fix}",
                self.folder.display(),
                others(missing.len())
            )));
        }
        let extra: Vec<&String> = self
            .model
            .keys()
            .filter(|k| !params.contains_key(*k))
            .collect();
        if let Some(first) = extra.first() {
            return Err(Error::Checkpoint(format!(
                "checkpoint {} holds {first}{} that the model lacks: {fix}",
                self.folder.display(),
                others(extra.len())
            )));
        }
        for (name, var) in params {
            if let Some(saved) = self.model.get(name) {
                if saved.dims() != var.dims() {
                    return Err(Error::Checkpoint(format!(
                        "{name} is {:?} in checkpoint {} but {:?} in the model: {fix}",
                        saved.dims(),
                        self.folder.display(),
                        var.dims()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sets `params` to the checkpoint's values after [`Checkpoint::check_fits`]; nothing is
    /// changed when they do not fit. The optimiser and EMA are taken from `adamw` and `ema`.
    pub fn apply(&self, params: &BTreeMap<String, Var>) -> Result<()> {
        self.check_fits(params)?;
        for (name, var) in params {
            if let Some(saved) = self.model.get(name) {
                var.set(&saved.to_dtype(var.dtype())?)?;
            }
        }
        Ok(())
    }
}

/// ` (and N others)` for a list of `count` names of which the first is shown.
fn others(count: usize) -> String {
    match count {
        0 | 1 => String::new(),
        n => format!(" (and {} others)", n - 1),
    }
}

/// Checks that `part`'s tensors are the model's (all of them when `all`, else a subset) with
/// the same shapes.
fn check_same(
    folder: &Path,
    part: &str,
    tensors: &BTreeMap<String, Tensor>,
    model: &BTreeMap<String, Tensor>,
    all: bool,
) -> Result<()> {
    if all && tensors.len() != model.len() {
        return Err(broken(
            folder,
            format!(
                "holds {} {part} tensors for {} model tensors",
                tensors.len(),
                model.len()
            ),
        ));
    }
    for (name, t) in tensors {
        match model.get(name) {
            Some(m) if m.dims() == t.dims() => {}
            Some(m) => {
                return Err(broken(
                    folder,
                    format!(
                        "has {part} {name} of shape {:?} but the model tensor is {:?}",
                        t.dims(),
                        m.dims()
                    ),
                ))
            }
            None => {
                return Err(broken(
                    folder,
                    format!("has {part} {name} that the model part lacks"),
                ))
            }
        }
    }
    Ok(())
}

/// Reads part `stem` of the checkpoint in `folder` as f32 tensors by name.
fn read_part(
    folder: &Path,
    state: &StateFile,
    stem: &str,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let record = state.parts.get(stem).ok_or_else(|| {
        broken(
            folder,
            format!("has no {stem} part listed in its state.json"),
        )
    })?;
    let mut tensors = BTreeMap::new();
    for file in &record.files {
        if Path::new(file).file_name() != Some(std::ffi::OsStr::new(file)) {
            return Err(broken(folder, format!("lists a shard outside it ({file})")));
        }
        let path = folder.join(file);
        if !path.is_file() {
            return Err(broken(
                folder,
                format!(
                    "is missing {file} (one of the {} {stem} shards)",
                    record.files.len()
                ),
            ));
        }
        for (name, tensor) in shards::read_file(&path, device)? {
            if tensors.insert(name.clone(), tensor).is_some() {
                return Err(broken(
                    folder,
                    format!("holds {name} twice in its {stem} shards"),
                ));
            }
        }
    }
    shards::join_chunks(&mut tensors, &record.split, folder)?;
    if tensors.len() != record.tensors {
        return Err(broken(
            folder,
            format!(
                "holds {} {stem} tensors where its state.json lists {}",
                tensors.len(),
                record.tensors
            ),
        ));
    }
    tensors
        .into_iter()
        .map(|(name, t)| {
            let t = if t.dtype() == DType::F32 {
                t
            } else {
                t.to_dtype(DType::F32)?
            };
            Ok((name, t))
        })
        .collect()
}
