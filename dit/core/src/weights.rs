//! Safetensors checkpoints: memory-mapped, single-file or sharded, read through a key layout.
//!
//! A [`Checkpoint`] indexes every tensor name of one model component across its files without
//! reading tensor data. [`Checkpoint::var_builder`] turns it into a candle `VarBuilder` whose
//! lookups are renamed by the component's key layout and whose failures name the key, the
//! expected shape and the file.

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failure to find or read weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The folder holds no safetensors file.
    #[error("no .safetensors weights in {dir}{hint}")]
    NoWeights {
        /// Folder searched.
        dir: PathBuf,
        /// Extra advice (e.g. about .pth files found instead).
        hint: String,
    },
    /// A path that should exist does not.
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    /// A file could not be opened or parsed.
    #[error("cannot read {path}: {reason}")]
    Unreadable {
        /// File that failed.
        path: PathBuf,
        /// Underlying error.
        reason: String,
    },
    /// Two files of one checkpoint hold a tensor of the same name.
    #[error(
        "tensor `{key}` is in both {first} and {second}: one checkpoint must hold each tensor \
         once (remove the stray file, or give the file itself instead of the folder)"
    )]
    Duplicate {
        /// The tensor name.
        key: String,
        /// The file read first.
        first: PathBuf,
        /// The other file.
        second: PathBuf,
    },
}

struct ShardFile {
    path: PathBuf,
    tensors: MmapedSafetensors,
}

/// The tensors of one model component, memory-mapped from one or more safetensors files.
pub struct Checkpoint {
    /// Where the files came from, for messages.
    origin: PathBuf,
    files: Vec<ShardFile>,
    index: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens a safetensors file, or a folder: through its `*.safetensors.index.json` when it has
    /// one, else every `*.safetensors` file in it.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        if !path.exists() {
            return Err(WeightError::NotFound(path.to_path_buf()));
        }
        if path.is_file() {
            return Self::from_files(path, &[path.to_path_buf()]);
        }
        let entries = list_dir(path)?;
        if let Some(index) = entries
            .iter()
            .find(|p| name_ends(p, ".safetensors.index.json"))
        {
            let files = shards_of_index(index)?;
            return Self::from_files(path, &files);
        }
        let files: Vec<PathBuf> = entries
            .iter()
            .filter(|p| name_ends(p, ".safetensors"))
            .cloned()
            .collect();
        if files.is_empty() {
            let other = entries
                .iter()
                .any(|p| name_ends(p, ".pth") || name_ends(p, ".bin"));
            let hint = if other {
                " (found .pth/.bin files: convert them to safetensors first)".to_string()
            } else {
                String::new()
            };
            return Err(WeightError::NoWeights {
                dir: path.to_path_buf(),
                hint,
            });
        }
        Self::from_files(path, &files)
    }

    /// Opens an explicit list of safetensors files as one checkpoint.
    pub fn from_files(origin: &Path, paths: &[PathBuf]) -> Result<Self, WeightError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            if !path.exists() {
                return Err(WeightError::NotFound(path.clone()));
            }
            // SAFETY: the file is mapped read-only; the engine never writes to its inputs.
            let tensors =
                unsafe { MmapedSafetensors::new(path) }.map_err(|e| WeightError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            for (name, _) in tensors.tensors() {
                if let Some(&first) = index.get(&name) {
                    let first: &ShardFile = &files[first];
                    return Err(WeightError::Duplicate {
                        key: name,
                        first: first.path.clone(),
                        second: path.clone(),
                    });
                }
                index.insert(name, i);
            }
            files.push(ShardFile {
                path: path.clone(),
                tensors,
            });
        }
        Ok(Self {
            origin: origin.to_path_buf(),
            files,
            index,
        })
    }

    /// Where this checkpoint was opened from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// True when a tensor of that name is stored.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Every stored tensor name, sorted.
    pub fn keys(&self) -> BTreeSet<&str> {
        self.index.keys().map(String::as_str).collect()
    }

    /// Total number of stored scalars (parameters) across all tensors.
    pub fn num_parameters(&self) -> usize {
        self.index
            .keys()
            .filter_map(|k| self.shape(k))
            .map(|s| s.iter().product::<usize>())
            .sum()
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let file = &self.files[*self.index.get(key)?];
        file.tensors.get(key).ok().map(|view| view.shape().to_vec())
    }

    /// Loads one tensor as stored (no renaming, no conversion) onto `device`.
    pub fn load_raw(&self, key: &str, device: &Device) -> candle_core::Result<Tensor> {
        let file = self.file_of(key)?;
        file.tensors.get(key)?.load(device)
    }

    fn file_of(&self, key: &str) -> candle_core::Result<&ShardFile> {
        match self.index.get(key) {
            Some(&i) => Ok(&self.files[i]),
            None => Err(candle_core::Error::Msg(format!(
                "missing weight `{key}` in {}",
                self.origin.display()
            ))),
        }
    }

    /// A `VarBuilder` over this checkpoint: model code asks for canonical names, `rename` maps
    /// them to the names stored in the files; tensors are converted to `dtype` on `device`.
    pub fn var_builder(
        self: &Arc<Self>,
        rename: KeyRename,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        self.patched_var_builder(rename, None, dtype, device)
    }

    /// [`Checkpoint::var_builder`] with `patch`'s changes added to the weights it names, in
    /// f32, before the conversion to `dtype` (one weight at a time: memory does not double).
    pub fn patched_var_builder(
        self: &Arc<Self>,
        rename: KeyRename,
        patch: Option<Arc<dyn WeightPatch>>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let source = RenamedSource {
            checkpoint: Arc::clone(self),
            rename,
            patch,
        };
        VarBuilder::from_backend(Box::new(source), dtype, device.clone())
    }

    /// The value of `key` in the `__metadata__` of the checkpoint's files' headers (the first
    /// file that has it).
    pub fn metadata(&self, key: &str) -> Option<String> {
        self.files
            .iter()
            .find_map(|file| safetensors_metadata(&file.path)?.remove(key))
    }
}

/// The string entries of the `__metadata__` in the header of the safetensors file at `path`,
/// when it is one (headers over 100 MiB are not read).
pub fn safetensors_metadata(path: &Path) -> Option<HashMap<String, String>> {
    use std::io::Read;
    /// Headers past this size are not read for metadata.
    const MAX_HEADER: u64 = 100 << 20;
    let mut file = std::fs::File::open(path).ok()?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).ok()?;
    let length = u64::from_le_bytes(length);
    if length > MAX_HEADER {
        return None;
    }
    let mut header = vec![0u8; usize::try_from(length).ok()?];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(
        header
            .get("__metadata__")?
            .as_object()?
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
    )
}

/// Changes to some weights, added as they load (LoRA merging).
pub trait WeightPatch: Send + Sync {
    /// The change to the weight of canonical name `name`, f32 on `device`, if it has one.
    fn delta(&self, name: &str, device: &Device) -> candle_core::Result<Option<Tensor>>;
}

/// Maps a canonical tensor name to the name stored in a checkpoint.
pub type KeyRename = Box<dyn Fn(&str) -> String + Send + Sync>;

/// The identity renaming, for checkpoints already in the canonical layout.
pub fn same_keys() -> KeyRename {
    Box::new(str::to_string)
}

struct RenamedSource {
    checkpoint: Arc<Checkpoint>,
    rename: KeyRename,
    patch: Option<Arc<dyn WeightPatch>>,
}

impl RenamedSource {
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let key = (self.rename)(name);
        let file = self.checkpoint.file_of(&key)?;
        let view = file.tensors.get(&key)?;
        if !matches!(
            view.dtype(),
            safetensors::Dtype::F32
                | safetensors::Dtype::F16
                | safetensors::Dtype::BF16
                | safetensors::Dtype::F64
        ) {
            return Err(candle_core::Error::Msg(format!(
                "weight `{key}` in {} is stored as {:?}; model weights must be F32, F16 or BF16",
                file.path.display(),
                view.dtype()
            )));
        }
        let mut tensor = view.load(dev)?;
        if let Some(delta) = match &self.patch {
            Some(patch) => patch.delta(name, dev)?,
            None => None,
        } {
            tensor = (tensor.to_dtype(DType::F32)? + delta)?;
        }
        if tensor.dtype() == dtype {
            Ok(tensor)
        } else {
            tensor.to_dtype(dtype)
        }
    }
}

impl SimpleBackend for RenamedSource {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let key = (self.rename)(name);
        let file = self.checkpoint.file_of(&key).map_err(|_| {
            candle_core::Error::Msg(format!(
                "missing weight `{key}` (expected shape {:?}) in {}",
                shape.dims(),
                self.checkpoint.origin.display()
            ))
        })?;
        let stored = file.tensors.get(&key)?.shape().to_vec();
        if stored != shape.dims() {
            return Err(candle_core::Error::Msg(format!(
                "weight `{key}` in {} has shape {stored:?}, expected {:?}",
                file.path.display(),
                shape.dims()
            )));
        }
        self.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.checkpoint.contains(&(self.rename)(name))
    }
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let read = std::fs::read_dir(dir).map_err(|e| WeightError::Unreadable {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut entries: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    Ok(entries)
}

fn name_ends(path: &Path, suffix: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(suffix))
}

fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let unreadable = |reason: String| WeightError::Unreadable {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| unreadable(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| unreadable("no `weight_map` object".to_string()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    fn save(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(name, t)| (name.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vdit-weights-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_tensor_in_two_files_of_a_folder_is_refused() {
        let dir = folder("duplicate");
        let ones = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
        save(
            &dir.join("a.safetensors"),
            &[("x", ones.clone()), ("y", ones.clone())],
        );
        save(&dir.join("b.safetensors"), &[("x", ones)]);
        let err = Checkpoint::open(&dir).err().expect("refused").to_string();
        assert!(
            err.contains("tensor `x` is in both") && err.contains("b.safetensors"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn integer_weights_are_refused_by_name() {
        let dir = folder("dtype");
        let file = dir.join("model.safetensors");
        let ints = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
        save(&file, &[("w", ints)]);
        let checkpoint = Arc::new(Checkpoint::open(&file).unwrap());
        let vb = checkpoint.var_builder(same_keys(), DType::F32, &Device::Cpu);
        let err = vb.get(3, "w").unwrap_err().to_string();
        assert!(err.contains("weight `w`") && err.contains("U32"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
