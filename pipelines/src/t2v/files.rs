//! Small files a generation reads and writes: named tensors in safetensors files, and outputs
//! written under a temporary name unique to the process ([`vdit_core::output::temp_path`]) then
//! renamed, so that a file at its final name is always complete.

use crate::error::{fail, ResultExt};
use crate::Result;
use candle_core::{safetensors, Device, Tensor};
use std::path::Path;
use vdit_core::output::PartialOutput;

/// True when every value of the float tensor `t` is finite: `t * 0` is 0 where `t` is finite
/// and NaN where it is not, so its sum is 0 exactly when all are.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let zeros = (t * 0.0)?.to_dtype(candle_core::DType::F32)?;
    Ok(zeros.sum_all()?.to_scalar::<f32>()? == 0.0)
}

/// The tensor `name` of the safetensors file `path`, on the CPU; float tensors must hold only
/// finite values.
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor> {
    let mut tensors = safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("cannot read {} as safetensors", path.display()))?;
    match tensors.remove(name) {
        Some(t) if t.dtype().is_float() && !all_finite(&t)? => fail!(
            Input,
            "`{name}` in {} holds NaN or infinite values",
            path.display()
        ),
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
    Ok(vdit_core::output::check_folder(target)?)
}

/// Writes `target` through this process's temporary name ([`PartialOutput`]): `write` fills
/// the temporary file, which is then renamed into place; on failure it is removed.
pub fn write_atomically(target: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let partial = PartialOutput::new(target)?;
    write(partial.temp())?;
    Ok(partial.commit()?)
}

/// Saves `tensor` as the only tensor `name` of a safetensors file, atomically.
pub fn save_tensor(target: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    let tensor = tensor.contiguous()?;
    let bytes = ::safetensors::tensor::serialize([(name, &tensor)], None)
        .map_err(|e| crate::Error::write(target, e))?;
    // Written as any file the process creates (the safetensors crate's own writer makes 0600
    // files).
    write_atomically(target, |temp| {
        std::fs::write(temp, bytes).with_context(|| format!("cannot write {}", target.display()))
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
