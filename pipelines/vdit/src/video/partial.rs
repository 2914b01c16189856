//! Outputs that appear whole or not at all: writers fill a temporary name next to the target,
//! unique to the process (`.NAME.vdit-PID.partial`, a file or a folder, see
//! [`vdit_core::output`]), and rename it into place when complete; anything left at the temporary
//! name when the guard is dropped is removed.

use super::VideoError;
use std::path::{Path, PathBuf};

/// The temporary name of one output until [`PartialOutput::commit`] moves it into place.
pub(crate) struct PartialOutput {
    target: PathBuf,
    temp: PathBuf,
    committed: bool,
}

impl PartialOutput {
    /// Reserves this process's temporary name for `target`, whose folder must exist;
    /// temporaries of `target` left by processes that have ended are removed.
    pub(crate) fn new(target: &Path) -> Result<Self, VideoError> {
        let folder = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !folder.is_dir() {
            return Err(VideoError::MissingFolder {
                path: target.to_path_buf(),
                folder,
            });
        }
        if target.file_name().is_none() {
            return Err(VideoError::write(
                target,
                "the path names no file or folder",
            ));
        }
        vdit_core::output::remove_stale_temps(target);
        let partial = Self {
            target: target.to_path_buf(),
            temp: vdit_core::output::temp_path(target),
            committed: false,
        };
        partial.remove_temp();
        Ok(partial)
    }

    /// Where the writer puts the output while it is incomplete.
    pub(crate) fn temp(&self) -> &Path {
        &self.temp
    }

    /// The final path.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the completed output into place, replacing a file (or empty folder) there.
    pub(crate) fn commit(mut self) -> Result<(), VideoError> {
        std::fs::rename(&self.temp, &self.target)
            .map_err(|e| VideoError::write(&self.target, e))?;
        self.committed = true;
        Ok(())
    }

    fn remove_temp(&self) {
        // Best effort: nothing may be there, and a failure leaves only a hidden temporary.
        let _ = if self.temp.is_dir() {
            std::fs::remove_dir_all(&self.temp)
        } else {
            std::fs::remove_file(&self.temp)
        };
    }
}

impl Drop for PartialOutput {
    fn drop(&mut self) {
        if !self.committed {
            self.remove_temp();
        }
    }
}
