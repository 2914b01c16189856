//! Shared helpers of the CLI tests: running `vdit` (on the tiny random model unless a test
//! names another) and checking its one-line errors, text-to-video fixtures.

#![allow(dead_code)] // each test file uses its own subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The tiny random model the CLI tests run on, assets/tiny-wan: [`vdit`] and [`spawn`] make it
/// the default (`VDIT_DEFAULT_MODEL`), so a command without `--model` stays fast.
pub fn tiny_wan() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-wan")
}

/// Copies the folder `from` with everything below it to a new folder `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// A file of tests/fixtures/t2v.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/t2v")
        .join(name)
}

/// `vdit` with `args`, its output captured.
pub fn vdit<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("VDIT_DEFAULT_MODEL", tiny_wan())
        .output()
        .expect("vdit runs")
}

/// Starts `vdit` with `args`, stdout and stderr piped.
pub fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(args)
        .env("VDIT_DEFAULT_MODEL", tiny_wan())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vdit starts")
}

/// Runs `vdit args...`, expects success, returns stdout.
pub fn succeeds<S: AsRef<OsStr>>(args: &[S]) -> String {
    let out = vdit(args);
    assert!(
        out.status.success(),
        "vdit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `vdit args...`, expects failure with exactly one line on stderr starting with
/// `error: `, and returns that line.
pub fn fails<S: AsRef<OsStr>>(args: &[S]) -> String {
    one_line_error(vdit(args))
}

/// Expects a failed run with exactly one line on stderr starting with `error: ` and returns it.
pub fn one_line_error(out: Output) -> String {
    assert!(!out.status.success(), "vdit succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// `vdit batch JOBS --out-dir OUT` on the tiny model with `extra` settings, Y4M output.
pub fn batch_args(jobs: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "batch",
        jobs.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--model",
        tiny_wan().to_str().unwrap(),
        "--format",
        "y4m",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Writes a jobs file of `count` jobs, `{"prompt": "kite number I", "seed": I}` for I from 1.
pub fn write_kite_jobs(path: &Path, count: usize) {
    let lines: Vec<String> = (1..=count)
        .map(|i| format!(r#"{{"prompt": "kite number {i}", "seed": {i}}}"#))
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// Arguments of a small, quick generation on the tiny model (64x48, 9 frames, 2 steps).
pub fn small(output: &Path) -> Vec<String> {
    [
        "generate",
        "--model",
        tiny_wan().to_str().unwrap(),
        "--prompt",
        "a red kite over a windy beach",
        "--size",
        "64x48",
        "--frames",
        "9",
        "--steps",
        "2",
        "--seed",
        "1",
        "--quiet",
        "--output",
        output.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

/// The JSON of a file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}
