//! Ctrl-C (SIGINT) and SIGTERM stop a run at the next step with its temporary files removed and
//! what was finished reported; a closed stdout never turns a finished run into a panic.

mod common;
mod t2v_common;

use common::names_in;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use t2v_common::{batch_args, small, spawn, write_kite_jobs};

/// Waits until `path` exists (the run reached that point), failing if the run ends first.
fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {} appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// A generation long enough to interrupt: many steps on the tiny model.
fn long_generate(video: &Path) -> Vec<String> {
    let mut args = small(video);
    let at = args.iter().position(|a| a == "--steps").unwrap();
    args[at + 1] = "400".into();
    args
}

#[test]
fn an_interrupted_generate_leaves_nothing_behind() {
    for name in ["INT", "TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let video = dir.path().join("kite.y4m");
        let mut child = spawn(&long_generate(&video));
        // The writer's temporary exists from before the first step.
        let temp = dir
            .path()
            .join(format!(".kite.y4m.vdit-{}.partial", child.id()));
        wait_for(&temp, &mut child);
        std::thread::sleep(Duration::from_millis(100));
        signal(&child, name);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "SIG{name}: {stderr}");
        assert!(stderr.contains("error: interrupted"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            names_in(dir.path()).is_empty(),
            "SIG{name} left {:?}",
            names_in(dir.path())
        );
    }
}

#[test]
fn an_interrupted_batch_keeps_finished_jobs_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    write_kite_jobs(&jobs, 5);
    let out: PathBuf = dir.path().join("out");
    let args = batch_args(
        &jobs,
        &out,
        &["--size", "64x48", "--frames", "9", "--steps", "150"],
    );
    let mut child = spawn(&args);
    wait_for(&out.join("job-0001.y4m.json"), &mut child);
    signal(&child, "INT");
    let result = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(130), "{stderr}");
    assert!(
        stdout.contains("batch: ") && stdout.contains("interrupted before the rest"),
        "{stdout}"
    );
    let names = names_in(&out);
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert!(names.contains(&"job-0001.y4m".to_string()), "{names:?}");
    assert!(!names.contains(&"job-0005.y4m".to_string()), "{names:?}");
}

#[test]
fn a_closed_stdout_is_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("kite.y4m");
    let mut child = spawn(&small(&video));
    // Close the reading end at once, as `vdit ... | true` does.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(video.is_file());
}
