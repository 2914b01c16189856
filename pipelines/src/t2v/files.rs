//! Small files a generation reads and writes: named tensors in safetensors files, and outputs
//! written under a temporary name unique to the process ([`vdit_core::output::temp_path`]) then
//! renamed, so that a file at its final name is always complete.

use crate::error::{fail, ResultExt};
use crate::Result;
use candle_core::{safetensors, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// The tensor `name` of the safetensors file `path`, on the CPU.
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor> {
    let mut tensors = safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read {} as safetensors", path.display()))?;
    match tensors.remove(name) {
        Some(t) => Ok(t),
        None => {
            let mut names: Vec<_> = tensors.keys().cloned().collect();
            names.sort();
            fail!(
                Input,
                "{} has no tensor `{name}` (it has: {})",
                path.display(),
                names.join(", ")
            )
        }
    }
}

/// Checks that the folder `target` will be written in exists.
pub fn check_parent(target: &Path) -> Result<()> {
    match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => fail!(
            Input,
            "cannot write {}: folder {} does not exist (create it first)",
            target.display(),
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// Writes `target` through its temporary name: `write` fills the temporary file, which is then
/// renamed into place; on failure the temporary file is removed.
pub fn write_atomically(target: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_parent(target)?;
    vdit_core::output::remove_stale_temps(target);
    let temp = vdit_core::output::temp_path(target);
    let result = write(&temp).and_then(|()| {
        std::fs::rename(&temp, target).with_context(|| format!("cannot write {}", target.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Saves `tensor` as the only tensor `name` of a safetensors file, atomically.
pub fn save_tensor(target: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    let map = HashMap::from([(name.to_string(), tensor.contiguous()?)]);
    write_atomically(target, |temp| {
        safetensors::save(&map, temp).with_context(|| format!("cannot write {}", target.display()))
    })
}

/// Writes `text` to `target`, atomically.
pub fn save_text(target: &Path, text: &str) -> Result<()> {
    write_atomically(target, |temp| {
        std::fs::write(temp, text).with_context(|| format!("cannot write {}", target.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed write leaves neither the target nor the temporary file; a good one only the
    /// target.
    #[test]
    fn atomic_writes() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let target = dir.path().join("out.json");
        let failed = write_atomically(&target, |temp| {
            std::fs::write(temp, "half")?;
            fail!(Input, "interrupted")
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0);
        save_text(&target, "{}")?;
        let names: Vec<_> = std::fs::read_dir(dir.path())?
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.json")]);
        assert!(save_text(&dir.path().join("missing/x.json"), "{}")
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        Ok(())
    }
}
