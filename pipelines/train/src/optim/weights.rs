//! Weights for shipping: given tensors (e.g. the EMA weights) as one safetensors file, or as
//! size-limited shards with a `*.safetensors.index.json`, the layouts the engine's loader reads.
//!
//! For `out/model.safetensors`: when everything fits under the limit, that one file; otherwise
//! `out/model-00001-of-00003.safetensors` ... and `out/model.safetensors.index.json` (the usual
//! `weight_map`). Every file carries `vdit_format = vdit-train-weights/1` in its header (the
//! index in its `metadata`): only files so marked are ever replaced or removed, and a previous
//! export at the same path in the other layout is removed once the new one is in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use vdit_core::output::PartialOutput;

use super::shards::{self, WeightDtype, DEFAULT_SHARD_BYTES};
use crate::{Error, Result};

/// The header metadata key marking files written by vdit's trainer.
pub const FORMAT_KEY: &str = "vdit_format";

/// The marker of shipped weights.
pub const WEIGHTS_FORMAT: &str = "vdit-train-weights/1";

/// How [`save_weights`] writes.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsOptions {
    /// Element type of the file (default bf16).
    pub dtype: WeightDtype,
    /// Largest file in bytes (default [`DEFAULT_SHARD_BYTES`], 15 MiB).
    pub max_file_bytes: u64,
    /// Extra header metadata (e.g. the model config as JSON).
    pub metadata: BTreeMap<String, String>,
}

impl Default for WeightsOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::Bf16,
            max_file_bytes: DEFAULT_SHARD_BYTES,
            metadata: BTreeMap::new(),
        }
    }
}

/// True when the file at `path` is a safetensors file or an index this module wrote.
fn is_ours(path: &Path) -> bool {
    if path.to_string_lossy().ends_with(".index.json") {
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        return json
            .get("metadata")
            .and_then(|m| m.get(FORMAT_KEY))
            .and_then(|f| f.as_str())
            .is_some_and(|f| f.starts_with("vdit-train-weights/"));
    }
    vdit_core::weights::safetensors_metadata(path)
        .and_then(|m| m.get(FORMAT_KEY).cloned())
        .is_some_and(|f| f.starts_with("vdit-train-weights/"))
}

/// The shard files an index of ours names (plain names in its folder only).
fn shards_of_index(index: &Path, folder: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(index) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
        return Vec::new();
    };
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    names
        .into_iter()
        .filter(|n| Path::new(n).file_name() == Some(std::ffi::OsStr::new(n)))
        .map(|n| folder.join(n))
        .collect()
}

/// Refuses to write over `path` unless nothing is there or it is a file that `ours` accepts
/// (one vdit train wrote, by its header).
pub(crate) fn check_replaceable(path: &Path, ours: impl FnOnce(&Path) -> bool) -> Result<()> {
    vdit_core::output::check_link(path)?;
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_file() && ours(path) => Ok(()),
        Ok(_) => Err(Error::Usage(format!(
            "{} exists and was not written by vdit train: move it away or choose another path",
            path.display()
        ))),
    }
}

/// Writes `bytes` at `path` through a temporary beside it, so a reader never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = PartialOutput::new(path)?;
    shards::write_synced(partial.temp(), bytes)?;
    partial.commit().map_err(Error::from)
}

/// Writes `weights` for shipping at `path` (a `.safetensors` name; its folder is created) in
/// `options.dtype`, as one file or as shards with an index when one file would exceed
/// `options.max_file_bytes`; returns the files written (shards first, then the index).
///
/// Refuses to replace anything at those paths that vdit train did not write. A tensor larger
/// than the limit by itself is refused (raise the limit or write bf16).
pub fn save_weights(
    weights: &BTreeMap<String, Tensor>,
    path: &Path,
    options: &WeightsOptions,
) -> Result<Vec<PathBuf>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(stem) = name.strip_suffix(".safetensors").filter(|s| !s.is_empty()) else {
        return Err(Error::Usage(format!(
            "{} does not name a .safetensors file: give e.g. out/model.safetensors",
            path.display()
        )));
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&folder).map_err(|e| Error::io("write", &folder, e))?;

    let mut metadata: HashMap<String, String> = options
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    metadata.insert(FORMAT_KEY.to_string(), WEIGHTS_FORMAT.to_string());
    let tensors: Vec<(&str, &Tensor)> = weights.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let plan = shards::plan(
        &tensors,
        options.dtype,
        options.max_file_bytes,
        &metadata,
        false,
    )?;

    let index = folder.join(format!("{stem}.safetensors.index.json"));
    let count = plan.len();
    let files: Vec<PathBuf> = if count == 1 {
        vec![path.to_path_buf()]
    } else {
        (1..=count)
            .map(|i| folder.join(format!("{stem}-{i:05}-of-{count:05}.safetensors")))
            .collect()
    };
    // What an earlier export of ours left at this path, in either layout.
    let mut previous = Vec::new();
    for old in [path.to_path_buf(), index.clone()] {
        if old.is_file() && is_ours(&old) {
            if old == index {
                previous.extend(
                    shards_of_index(&index, &folder)
                        .into_iter()
                        .filter(|p| is_ours(p)),
                );
            }
            previous.push(old);
        }
    }
    let mut targets = files.clone();
    if count > 1 {
        targets.push(index.clone());
    }
    for target in &targets {
        check_replaceable(target, is_ours)?;
    }

    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    for (i, file) in files.iter().enumerate() {
        let bytes = shards::serialize(&plan, i, options.dtype, &metadata)?;
        if bytes.len() as u64 > options.max_file_bytes {
            return Err(Error::Usage(format!(
                "{} would take {} bytes, over the limit of {}: report this as a vdit bug",
                file.display(),
                bytes.len(),
                options.max_file_bytes
            )));
        }
        total = total.saturating_add(bytes.len() as u64);
        write_atomic(file, &bytes)?;
        let file_name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for tensor in plan.names(i) {
            weight_map.insert(
                tensor.to_string(),
                serde_json::Value::String(file_name.clone()),
            );
        }
    }
    if count > 1 {
        let json = serde_json::json!({
            "metadata": { FORMAT_KEY: WEIGHTS_FORMAT, "total_size": total },
            "weight_map": weight_map,
        });
        let text =
            serde_json::to_string_pretty(&json).map_err(|e| Error::io("write", &index, e))?;
        write_atomic(&index, text.as_bytes())?;
    }
    // A stale index would send loaders to the old shards: it must go; the old shards are
    // removed best effort (a leftover is harmless once no index names it).
    if count == 1 && previous.contains(&index) {
        std::fs::remove_file(&index).map_err(|e| Error::io("write", &index, e))?;
    }
    for old in previous {
        if !targets.contains(&old) && old != index {
            let _ = std::fs::remove_file(&old);
        }
    }
    Ok(targets)
}
