//! LoRA files merged into the transformer's weights as they load.
//!
//! A [`LoraSet`] names the files and their scales. [`LoraMerge::plan`] reads only the files'
//! headers: every key is matched to a weight of the transformer ([`keys`]), shapes are checked,
//! and a key that matches nothing is an error (or, with `lenient`, left out and listed). While
//! the transformer loads, each weight a LoRA changes gets
//! `scale * (alpha / rank) * up @ down` (plus full `diff` and bias `diff_b` differences, times
//! `scale`) added in f32 before it is converted to the model's dtype; several LoRAs add up.
//! Merging at load keeps the forward pass as fast as without LoRA and memory as it was (one
//! weight's f32 copy at a time); changing LoRAs means loading the transformer again.

pub mod keys;

use crate::error::{Error, Result};
use crate::layout::KeyLayout;
use candle_core::{DType, Device, Tensor};
use keys::{split_key, ModuleIndex, Part, Target};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use vdit_core::weights::{Checkpoint, WeightPatch};

/// One LoRA file and the strength it is applied at: `FILE[:SCALE]` (scale 1 when left out).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoraSpec {
    /// The safetensors file (or a folder holding it).
    pub path: PathBuf,
    /// Multiplies the LoRA's update.
    pub scale: f64,
}

impl FromStr for LoraSpec {
    type Err = String;

    /// `FILE` or `FILE:SCALE`, e.g. `style.safetensors:0.8` (a path that itself ends in
    /// `:text` that is not a number is taken whole).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let (path, scale) = match text.rsplit_once(':') {
            Some((path, scale)) if scale.trim().parse::<f64>().is_ok() => {
                (path, scale.trim().parse::<f64>().unwrap_or(1.0))
            }
            _ => (text, 1.0),
        };
        if path.is_empty() {
            return Err(format!(
                "`{text}` names no LoRA file: use FILE or FILE:SCALE"
            ));
        }
        if !scale.is_finite() {
            return Err(format!(
                "LoRA scale in `{text}` must be a finite number, e.g. FILE:0.8"
            ));
        }
        Ok(Self {
            path: PathBuf::from(path),
            scale,
        })
    }
}

/// The LoRAs of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoraSet {
    /// The files and their scales, applied in this order (their updates add up).
    pub loras: Vec<LoraSpec>,
    /// Leave out keys that match no weight (listed by [`LoraMerge::ignored`]) instead of
    /// refusing the file.
    pub lenient: bool,
}

impl LoraSet {
    /// True when there is no LoRA.
    pub fn is_empty(&self) -> bool {
        self.loras.is_empty()
    }
}

/// What one LoRA adds to one tensor.
#[derive(Debug)]
enum Update {
    /// `factor * up @ down`, reshaped to the weight.
    LowRank {
        file: usize,
        down: String,
        up: String,
        factor: f64,
    },
    /// `factor * diff` (a full weight or bias difference).
    Difference {
        file: usize,
        key: String,
        factor: f64,
    },
}

/// LoRAs matched to a transformer's weights, ready to add to them as they load.
pub struct LoraMerge {
    files: Vec<Checkpoint>,
    /// Updates by the diffusers name of the tensor they change.
    updates: HashMap<String, Vec<Update>>,
    /// The shapes of the tensors they change.
    shapes: HashMap<String, Vec<usize>>,
    ignored: Vec<String>,
    merged: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for LoraMerge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraMerge")
            .field("tensors", &self.updates.len())
            .field("ignored", &self.ignored)
            .finish()
    }
}

/// The LoRA parts of one module of one file: the key of each.
type ModuleParts = BTreeMap<Part, String>;

impl LoraMerge {
    /// Matches every LoRA of `set` to the weights of the transformer `checkpoint` (stored in
    /// `layout`), reading headers and alphas only.
    pub fn plan(set: &LoraSet, checkpoint: &Checkpoint, layout: &KeyLayout) -> Result<Self> {
        let index = ModuleIndex::new(checkpoint, layout);
        let mut merge = Self {
            files: Vec::new(),
            updates: HashMap::new(),
            shapes: HashMap::new(),
            ignored: Vec::new(),
            merged: Mutex::new(HashSet::new()),
        };
        for (file, spec) in set.loras.iter().enumerate() {
            let lora = Checkpoint::open(&spec.path)?;
            let modules = group_keys(&lora, &index, set.lenient, &mut merge.ignored)?;
            let metadata_alpha = metadata_alpha(&lora);
            for (target, parts) in modules {
                let context = LoraContext {
                    lora: &lora,
                    index: &index,
                    target: &target,
                    file,
                    scale: spec.scale,
                    metadata_alpha,
                };
                for (tensor, update) in context.updates(&parts)? {
                    if let Some(shape) = index.shape(&tensor) {
                        merge.shapes.insert(tensor.clone(), shape.to_vec());
                    }
                    merge.updates.entry(tensor).or_default().push(update);
                }
            }
            merge.files.push(lora);
        }
        Ok(merge)
    }

    /// Keys left out because they match no weight (with `lenient`), as `FILE: KEY`.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Checks that every update was added: a LoRA for a tensor the model does not read would
    /// otherwise be silently dropped.
    pub fn check_all_merged(&self) -> Result<()> {
        let merged = self.merged.lock().map_err(|_| lock_error())?;
        let mut missed: Vec<&String> = self
            .updates
            .keys()
            .filter(|k| !merged.contains(*k))
            .collect();
        missed.sort();
        match missed.first() {
            None => Ok(()),
            Some(name) => Err(Error::Lora(format!(
                "a LoRA changes `{name}`, which this transformer has but does not use{}",
                if missed.len() > 1 {
                    format!(" (and {} more)", missed.len() - 1)
                } else {
                    String::new()
                }
            ))),
        }
    }

    fn tensor(&self, file: usize, key: &str, device: &Device) -> candle_core::Result<Tensor> {
        self.files[file].load_raw(key, device)?.to_dtype(DType::F32)
    }
}

fn lock_error() -> Error {
    Error::Lora("a thread loading the transformer panicked".into())
}

impl WeightPatch for LoraMerge {
    fn delta(&self, name: &str, device: &Device) -> candle_core::Result<Option<Tensor>> {
        let Some(updates) = self.updates.get(name) else {
            return Ok(None);
        };
        let mut total: Option<Tensor> = None;
        for update in updates {
            let delta = match update {
                Update::LowRank {
                    file,
                    down,
                    up,
                    factor,
                } => {
                    let down = self.tensor(*file, down, device)?;
                    let up = self.tensor(*file, up, device)?;
                    let rank = down.dim(0)?;
                    let down = down.reshape((rank, ()))?;
                    let up = up.reshape((up.dim(0)?, rank))?;
                    (up.matmul(&down)? * *factor)?
                }
                Update::Difference { file, key, factor } => {
                    (self.tensor(*file, key, device)? * *factor)?.flatten_all()?
                }
            };
            total = Some(match total {
                None => delta,
                Some(sum) => (sum + delta)?,
            });
        }
        let total = match (total, self.shapes.get(name)) {
            (Some(delta), Some(shape)) => Some(delta.reshape(shape.as_slice())?),
            (total, _) => total,
        };
        self.merged
            .lock()
            .map_err(|_| candle_core::Error::Msg("LoRA merge lock poisoned".into()))?
            .insert(name.to_string());
        Ok(total)
    }
}

/// Groups the keys of `lora` by the transformer module they change; keys that match nothing
/// are refused, or listed in `ignored` when `lenient`.
fn group_keys(
    lora: &Checkpoint,
    index: &ModuleIndex,
    lenient: bool,
    ignored: &mut Vec<String>,
) -> Result<Vec<(Target, ModuleParts)>> {
    let mut modules: BTreeMap<String, (Target, ModuleParts)> = BTreeMap::new();
    for key in lora.keys() {
        let found = split_key(key).and_then(|(module, part)| Some((index.find(module)?, part)));
        let Some((target, part)) = found else {
            if lenient {
                ignored.push(format!("{}: {key}", lora.origin().display()));
                continue;
            }
            return Err(Error::Lora(format!(
                "LoRA {}: key `{key}` matches no weight of this transformer (pass \
                 --lora-lenient to leave such keys out)",
                lora.origin().display()
            )));
        };
        let entry = modules
            .entry(target.module.clone())
            .or_insert_with(|| (target.clone(), ModuleParts::new()));
        if let Some(other) = entry.1.insert(part, key.to_string()) {
            return Err(Error::Lora(format!(
                "LoRA {}: keys `{other}` and `{key}` are the same part of `{}`",
                lora.origin().display(),
                target.module
            )));
        }
    }
    Ok(modules.into_values().collect())
}

/// The LoRA's alpha from diffusers' `lora_adapter_metadata` (`transformer.lora_alpha`), used
/// for modules without an `alpha` key.
fn metadata_alpha(lora: &Checkpoint) -> Option<f64> {
    let text = lora.metadata("lora_adapter_metadata")?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    ["transformer.lora_alpha", "lora_alpha"]
        .iter()
        .find_map(|k| json.get(k)?.as_f64())
}

/// One module of one LoRA file, being turned into updates.
struct LoraContext<'a> {
    lora: &'a Checkpoint,
    index: &'a ModuleIndex,
    target: &'a Target,
    file: usize,
    scale: f64,
    metadata_alpha: Option<f64>,
}

impl LoraContext<'_> {
    fn fail(&self, what: String) -> Error {
        Error::Lora(format!("LoRA {}: {what}", self.lora.origin().display()))
    }

    fn shape(&self, key: &str) -> Vec<usize> {
        self.lora.shape(key).unwrap_or_default()
    }

    /// The updates of this module's parts, by the diffusers name of the tensor each changes.
    fn updates(&self, parts: &ModuleParts) -> Result<Vec<(String, Update)>> {
        let weight_shape = self
            .index
            .shape(&self.target.weight)
            .unwrap_or_default()
            .to_vec();
        let mut updates = Vec::new();
        match (parts.get(&Part::Down), parts.get(&Part::Up)) {
            (Some(down), Some(up)) => {
                let factor =
                    self.low_rank_factor(down, up, parts.get(&Part::Alpha), &weight_shape)?;
                updates.push((
                    self.target.weight.clone(),
                    Update::LowRank {
                        file: self.file,
                        down: down.clone(),
                        up: up.clone(),
                        factor,
                    },
                ));
            }
            (Some(one), None) | (None, Some(one)) => {
                return Err(self.fail(format!(
                    "`{one}` has no partner (a LoRA module needs both its down/A and up/B \
                     matrices)"
                )))
            }
            (None, None) => {
                if let Some(alpha) = parts.get(&Part::Alpha) {
                    return Err(self.fail(format!("`{alpha}` has no down/up matrices")));
                }
            }
        }
        if let Some(diff) = parts.get(&Part::Diff) {
            self.expect_shape(diff, &weight_shape)?;
            updates.push((
                self.target.weight.clone(),
                Update::Difference {
                    file: self.file,
                    key: diff.clone(),
                    factor: self.scale,
                },
            ));
        }
        if let Some(diff) = parts.get(&Part::DiffBias) {
            let Some(bias) = &self.target.bias else {
                return Err(self.fail(format!(
                    "`{diff}` changes a bias, but `{}` has none",
                    self.target.module
                )));
            };
            let bias_shape = self.index.shape(bias).unwrap_or_default().to_vec();
            self.expect_shape(diff, &bias_shape)?;
            updates.push((
                bias.clone(),
                Update::Difference {
                    file: self.file,
                    key: diff.clone(),
                    factor: self.scale,
                },
            ));
        }
        Ok(updates)
    }

    fn expect_shape(&self, key: &str, want: &[usize]) -> Result<()> {
        let shape = self.shape(key);
        if shape != want {
            return Err(self.fail(format!(
                "`{key}` has shape {shape:?}, the weight it changes {want:?}"
            )));
        }
        Ok(())
    }

    /// `scale * alpha / rank` after checking that `up @ down` has the weight's shape.
    fn low_rank_factor(
        &self,
        down: &str,
        up: &str,
        alpha: Option<&String>,
        weight: &[usize],
    ) -> Result<f64> {
        let (down_shape, up_shape) = (self.shape(down), self.shape(up));
        let rank = down_shape.first().copied().unwrap_or(0);
        let fits = rank > 0
            && weight.len() >= 2
            && up_shape.len() >= 2
            && up_shape[0] == weight[0]
            && up_shape[1] == rank
            && up_shape[2..].iter().all(|&d| d == 1)
            && down_shape[1..].iter().product::<usize>() == weight[1..].iter().product::<usize>();
        if !fits {
            return Err(self.fail(format!(
                "`{up}` {up_shape:?} times `{down}` {down_shape:?} does not make the shape \
                 {weight:?} of `{}`",
                self.target.weight
            )));
        }
        let alpha = match alpha {
            Some(key) => self.read_scalar(key)?,
            None => self.metadata_alpha.unwrap_or(rank as f64),
        };
        Ok(self.scale * alpha / rank as f64)
    }

    fn read_scalar(&self, key: &str) -> Result<f64> {
        let value = self.lora.load_raw(key, &Device::Cpu)?;
        if value.elem_count() != 1 {
            return Err(self.fail(format!(
                "`{key}` should be one number, it has shape {:?}",
                value.dims()
            )));
        }
        let value = value
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?[0];
        if !value.is_finite() {
            return Err(self.fail(format!("`{key}` is {value}")));
        }
        Ok(value)
    }
}

/// Checks `set` against the transformer at `transformer` (headers only) and returns the keys
/// left out as `lenient` allows.
pub fn check(set: &LoraSet, transformer: &Path) -> Result<Vec<String>> {
    if set.is_empty() {
        return Ok(Vec::new());
    }
    let checkpoint = Checkpoint::open(transformer)?;
    let layout = KeyLayout::detect(&checkpoint)?;
    Ok(LoraMerge::plan(set, &checkpoint, &layout)?
        .ignored()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `FILE[:SCALE]`, with colons in paths kept when what follows is no number.
    #[test]
    fn specs() {
        let spec: LoraSpec = "a/style.safetensors:0.75".parse().unwrap();
        assert_eq!(spec.path, PathBuf::from("a/style.safetensors"));
        assert_eq!(spec.scale, 0.75);
        let spec: LoraSpec = "c:/loras/x.safetensors".parse().unwrap();
        assert_eq!(
            (spec.path.to_str().unwrap(), spec.scale),
            ("c:/loras/x.safetensors", 1.0)
        );
        let spec: LoraSpec = "x.safetensors:-1".parse().unwrap();
        assert_eq!(spec.scale, -1.0);
        assert!(":0.5".parse::<LoraSpec>().is_err());
        assert!("x:inf".parse::<LoraSpec>().is_err());
    }
}
