//! Whether a job's output is already made: each job has a fingerprint of everything that decides
//! its video, which its record keeps with the size of the output it describes. A re-run skips a
//! job only when both still match; it regenerates one whose settings changed, and it never
//! touches an output that no vdit record describes.

use crate::t2v::model::{Located, ModelPaths};
use crate::t2v::pipeline::Job;
use crate::t2v::record::record_path;
use serde_json::{json, Value};
use std::path::Path;

/// FNV-1a, 64 bits: a stable hash (std's hashers may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Job {
    /// 16 hex digits that change whenever the prompts, the initial noise, a setting, the
    /// attention schedule or the model's files change.
    pub fn fingerprint(&self, model: &ModelPaths) -> String {
        let decides = json!({
            "prompts": self.prompts,
            "noise": self.noise,
            "settings": self.settings,
            "attention": self.schedule.describe(),
            "model": format!("{model:?}"),
            "model_files": model_files(model),
            "save_latents": self.save_latents,
        });
        format!("{:016x}", fnv1a(decides.to_string().as_bytes()))
    }
}

/// The model's files as they are now: each one's path, size and modification time (ns since
/// the epoch), in path order. A model retrained or replaced at the same paths changes them, and
/// with them every fingerprint, without a byte of its weights being read.
fn model_files(model: &ModelPaths) -> Vec<(String, u64, u128)> {
    let located = [
        &model.transformer,
        &model.vae,
        &model.text_encoder,
        &model.tokenizer,
    ];
    let mut roots: Vec<&Path> = located
        .into_iter()
        .filter_map(|l| match l {
            Located::Found(path) => Some(path.as_path()),
            Located::Missing(_) => None,
        })
        .collect();
    roots.extend(model.scheduler_config.as_deref());
    roots.extend(model.generation_config.as_deref());
    let mut files = vec![];
    for root in roots {
        collect_files(root, &mut files);
    }
    files.sort();
    files.dedup();
    files
}

/// `path` (a file) or the files below it (a folder), as (path, size, modification time);
/// what cannot be read is left out (loading the model reports it).
fn collect_files(path: &Path, files: &mut Vec<(String, u64, u128)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            collect_files(&entry.path(), files);
        }
        return;
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    files.push((path.display().to_string(), meta.len(), modified));
}

/// Bytes of an output: a file's length, or the total of a folder's files.
pub fn output_bytes(output: &Path) -> std::io::Result<u64> {
    if output.is_dir() {
        let mut total = 0;
        for entry in std::fs::read_dir(output)? {
            total += entry?.metadata()?.len();
        }
        Ok(total)
    } else {
        Ok(std::fs::metadata(output)?.len())
    }
}

/// What is at a job's output path.
#[derive(Debug, PartialEq, Eq)]
pub enum OutputState {
    /// Nothing (or an empty folder, or a record without its video): the job runs.
    Free,
    /// The job's video, complete, with a record of the same fingerprint: the job is skipped.
    Done,
    /// A video vdit made for other settings (its record says so): the job runs and replaces it
    /// once the new video is complete.
    Changed,
    /// Something vdit cannot vouch for (no record of it, or it changed since its record was
    /// written): left alone, and the job fails with this reason.
    Foreign(String),
}

/// The state of `output` for a job with `fingerprint`.
pub fn output_state(output: &Path, fingerprint: &str) -> OutputState {
    let present = vdit_core::output::is_occupied(output);
    let record_file = record_path(output);
    let record: Option<Value> = std::fs::read(&record_file)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).unwrap_or(Value::Null));
    let shown = output.display();
    match (present, record) {
        (false, None) => OutputState::Free,
        (_, Some(record)) if record.get("vdit_version").is_none() => OutputState::Foreign(format!(
            "{} is not a vdit record: move it away or give the job another id",
            record_file.display()
        )),
        (false, Some(_)) => OutputState::Free,
        (true, None) => OutputState::Foreign(format!(
            "{shown} exists and no vdit record describes it: move it away or give the job \
             another id"
        )),
        (true, Some(record)) => {
            let recorded = record.pointer("/output/bytes").and_then(Value::as_u64);
            let actual = output_bytes(output).ok();
            if recorded.is_none() || recorded != actual {
                return OutputState::Foreign(format!(
                    "{shown} is not the video its record describes (changed or incomplete): move \
                     it and its record away to regenerate it"
                ));
            }
            match record.get("fingerprint").and_then(Value::as_str) {
                Some(f) if f == fingerprint => OutputState::Done,
                _ => OutputState::Changed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a's published test vectors.
    #[test]
    fn fnv1a_matches_its_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    fn record(dir: &Path, bytes: u64, fingerprint: &str) {
        let text =
            json!({"vdit_version": "0", "fingerprint": fingerprint, "output": {"bytes": bytes}});
        std::fs::write(dir.join("v.y4m.json"), text.to_string()).unwrap();
    }

    #[test]
    fn states_of_an_output() {
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("v.y4m");
        assert_eq!(output_state(&video, "f"), OutputState::Free);
        std::fs::write(&video, "12345").unwrap();
        assert!(
            matches!(output_state(&video, "f"), OutputState::Foreign(r) if r.contains("no vdit record"))
        );
        record(dir.path(), 5, "f");
        assert_eq!(output_state(&video, "f"), OutputState::Done);
        assert_eq!(output_state(&video, "g"), OutputState::Changed);
        // an empty or truncated video is not done
        std::fs::write(&video, "").unwrap();
        assert!(
            matches!(output_state(&video, "f"), OutputState::Foreign(r) if r.contains("changed or incomplete"))
        );
        std::fs::remove_file(&video).unwrap();
        assert_eq!(output_state(&video, "f"), OutputState::Free);
        std::fs::write(dir.path().join("v.y4m.json"), "{}").unwrap();
        assert!(
            matches!(output_state(&video, "f"), OutputState::Foreign(r) if r.contains("not a vdit record"))
        );
    }
}
