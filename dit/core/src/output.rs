//! Files vdit writes, kept safe from concurrent runs, interruptions and files already there:
//!
//! - every output is written under a temporary name unique to the writing process
//!   ([`PartialOutput`] at [`temp_path`], `.NAME.vdit-PID.partial`) and renamed into place when
//!   complete, so two processes never write into one temporary file and a reader never sees half
//!   an output;
//! - a [`Claim`] (an advisory lock on `.NAME.vdit-lock`, released by the kernel when its process
//!   ends, however it ends) keeps two runs off the same output; the second is told who holds it;
//! - temporaries left by processes that are gone are recognised by their name and removed
//!   ([`remove_stale_temps`]); nothing else is ever removed;
//! - an existing output is replaced only when the caller says so ([`check_new`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Why an output cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Another process holds the claim on the output.
    #[error(
        "{} is being written by another vdit process{}: wait for it to finish, or choose another \
         output",
        path.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Busy {
        /// The output.
        path: PathBuf,
        /// The process holding it, when it could be read.
        holder: Option<u32>,
    },
    /// The output path is a symbolic link to nothing.
    #[error(
        "{} is a symbolic link that leads nowhere (a loop or a missing target): remove it or \
         choose another path",
        .0.display()
    )]
    BrokenLink(PathBuf),
    /// The output exists and replacing it was not asked for.
    #[error("{} already exists: pass --overwrite to replace it, or choose another path", .0.display())]
    Exists(PathBuf),
    /// The folder of the output does not exist.
    #[error("cannot write {}: folder {} does not exist (create it first)", path.display(), folder.display())]
    MissingFolder {
        /// The output.
        path: PathBuf,
        /// Its folder.
        folder: PathBuf,
    },
    /// Writing or moving the output into place failed.
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        /// The output.
        path: PathBuf,
        /// What failed (not a `source`: the message already holds it).
        reason: std::io::Error,
    },
    /// The file system refused the claim.
    #[error("cannot claim {}: {reason}", path.display())]
    Io {
        /// The output.
        path: PathBuf,
        /// What failed (not a `source`: the message already holds it).
        reason: std::io::Error,
    },
}

/// The folder `target` is in (`.` for a bare name) and its file name.
fn split(target: &Path) -> Option<(PathBuf, String)> {
    let name = target.file_name()?.to_string_lossy().into_owned();
    let folder = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Some((folder, name))
}

/// The folder `target` will be written in and its file name; the folder must exist.
fn folder_of(target: &Path) -> Result<(PathBuf, String), OutputError> {
    let (folder, name) = split(target).ok_or_else(|| OutputError::Write {
        path: target.to_path_buf(),
        reason: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path names no file or folder",
        ),
    })?;
    if !folder.is_dir() {
        return Err(OutputError::MissingFolder {
            path: target.to_path_buf(),
            folder,
        });
    }
    Ok((folder, name))
}

/// Checks that the folder `target` will be written in exists.
pub fn check_folder(target: &Path) -> Result<(), OutputError> {
    folder_of(target).map(|_| ())
}

/// True when something is at `path`: a file, a link, or a folder with anything in it (an empty
/// folder counts as free).
pub fn is_occupied(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Err(_) => false,
        Ok(meta) if meta.is_dir() => {
            std::fs::read_dir(path).map_or(true, |mut entries| entries.next().is_some())
        }
        Ok(_) => true,
    }
}

/// One output (a file or a folder) filled at this process's temporary name until
/// [`PartialOutput::commit`] moves it into place; dropped before then, it removes what was
/// written.
pub struct PartialOutput {
    target: PathBuf,
    temp: PathBuf,
    committed: bool,
}

impl PartialOutput {
    /// Reserves this process's temporary name for `target`, whose folder must exist;
    /// temporaries of `target` left by processes that have ended are removed.
    pub fn new(target: &Path) -> Result<Self, OutputError> {
        folder_of(target)?;
        remove_stale_temps(target);
        let partial = Self {
            target: target.to_path_buf(),
            temp: temp_path(target),
            committed: false,
        };
        partial.remove_temp();
        Ok(partial)
    }

    /// Where the writer puts the output while it is incomplete.
    pub fn temp(&self) -> &Path {
        &self.temp
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Moves the completed output into place, replacing a file (or empty folder) there.
    pub fn commit(mut self) -> Result<(), OutputError> {
        std::fs::rename(&self.temp, &self.target).map_err(|reason| OutputError::Write {
            path: self.target.clone(),
            reason,
        })?;
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

/// The prefix of the temporaries of `name`: `.NAME.vdit-`.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.vdit-")
}

/// This process's temporary name for `target`: `.NAME.vdit-PID.partial` beside it.
pub fn temp_path(target: &Path) -> PathBuf {
    let (folder, name) = split(target).unwrap_or_else(|| (PathBuf::from("."), "output".into()));
    folder.join(format!(
        "{}{}.partial",
        temp_prefix(&name),
        std::process::id()
    ))
}

/// True when process `pid` is running (on Linux; elsewhere every process counts as running, so
/// nothing is taken for stale).
fn is_running(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Removes the temporaries of `target` (files or folders named `.NAME.vdit-PID.partial`) whose
/// process is no longer running: what an interrupted run of vdit left. Best effort.
pub fn remove_stale_temps(target: &Path) {
    let Some((folder, name)) = split(target) else {
        return;
    };
    let prefix = temp_prefix(&name);
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let pid = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".partial"))
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| pid != std::process::id() && !is_running(pid)) {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Refuses a `target` that is a symbolic link to nothing (writing through it would fail with
/// an unhelpful system error).
pub fn check_link(target: &Path) -> Result<(), OutputError> {
    let is_link = std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && std::fs::metadata(target).is_err() {
        return Err(OutputError::BrokenLink(target.to_path_buf()));
    }
    Ok(())
}

/// Refuses an existing `target` (a file, or a folder with anything in it) unless `overwrite`;
/// an empty folder counts as free. With `overwrite` the old output stays until the new one is
/// complete and renamed over it.
pub fn check_new(target: &Path, overwrite: bool) -> Result<(), OutputError> {
    check_link(target)?;
    if is_occupied(target) && !overwrite {
        return Err(OutputError::Exists(target.to_path_buf()));
    }
    Ok(())
}

/// The exclusive right to write one output, held until dropped (or until the process ends).
#[derive(Debug)]
pub struct Claim {
    lock: PathBuf,
    file: File,
}

impl Claim {
    /// Claims `target` through `.NAME.vdit-lock` beside it; fails with [`OutputError::Busy`]
    /// when another process holds it.
    pub fn acquire(target: &Path) -> Result<Self, OutputError> {
        let io = |reason| OutputError::Io {
            path: target.to_path_buf(),
            reason,
        };
        let (folder, name) = folder_of(target)?;
        let lock = folder.join(format!(".{name}.vdit-lock"));
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&lock)
                .map_err(io)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut text = String::new();
                    let holder = file
                        .read_to_string(&mut text)
                        .ok()
                        .and_then(|_| text.trim().parse().ok());
                    return Err(OutputError::Busy {
                        path: target.to_path_buf(),
                        holder,
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            // The holder before us removes the lock file before releasing it: if the file we
            // locked is no longer the one at the path, start again.
            if !same_file(&file, &lock) {
                continue;
            }
            file.set_len(0).map_err(io)?;
            write!(file, "{}", std::process::id()).map_err(io)?;
            return Ok(Self { lock, file });
        }
    }
}

/// True when `path` is the file `file` has open.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

impl Drop for Claim {
    /// Removes the lock file while still holding it, then releases it.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.lock);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_excludes_a_second_until_dropped() {
        let dir = std::env::temp_dir().join(format!("vdit-claim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.mp4");
        let first = Claim::acquire(&target).unwrap();
        // flock locks belong to the open file, so a second open in this process is refused too.
        let busy = Claim::acquire(&target).unwrap_err().to_string();
        assert!(
            busy.contains(&format!("pid {}", std::process::id())),
            "{busy}"
        );
        drop(first);
        assert!(!dir.join(".out.mp4.vdit-lock").exists());
        let again = Claim::acquire(&target).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_temporaries_of_gone_processes_are_removed() {
        let dir = std::env::temp_dir().join(format!("vdit-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = dir.join("out.y4m");
        // pid 0 is never a running process's; this process's own temporary stays.
        let names = [
            ".out.y4m.vdit-0.partial",
            &format!(".out.y4m.vdit-{}.partial", std::process::id()),
            ".out.y4m.partial",
            ".out.y4m.vdit-x.partial",
            "out.y4m",
        ];
        for name in names {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        remove_stale_temps(&target);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected: Vec<String> = names[1..].iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(left, expected);
        assert_eq!(temp_path(&target), dir.join(names[1]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn existing_outputs_need_overwrite() {
        let dir = std::env::temp_dir().join(format!("vdit-exists-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        std::fs::write(dir.join("file"), "x").unwrap();
        assert!(check_new(&dir.join("missing"), false).is_ok());
        assert!(check_new(&dir.join("empty"), false).is_ok());
        let err = check_new(&dir.join("file"), false).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        assert!(check_new(&dir.join("file"), true).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
