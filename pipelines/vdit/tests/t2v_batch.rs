//! `vdit batch` on the tiny random model: failing jobs are reported by line while the others
//! run, a re-run skips finished jobs, and a batch killed mid-way resumes without redoing
//! finished jobs or leaving half-written files under final names.

mod common;
mod t2v_common;

use common::names_in;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};
use t2v_common::{batch_args, vdit, write_kite_jobs};
use vdit::video::Y4mReader;

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// A malformed line, a bad size and an unknown key fail with their line numbers while the
/// other jobs run; the exit code is non-zero; a second run redoes nothing.
#[test]
fn failures_are_reported_and_reruns_skip_done_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        [
            r#"{"prompt": "a red kite", "seed": 1}"#,
            r#"{"prompt": "broken"#,
            r#"{"prompt": "a cat", "seed": 2, "size": "100x64"}"#,
            r#"{"prompt": "a dog", "seed": 3, "id": "dog", "steps": 1, "guidance": 1.0}"#,
            "",
            r#"{"prompt": "a fox", "seed": 4, "sizee": "64x48"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let args = batch_args(
        &jobs,
        &out,
        &["--size", "64x48", "--frames", "9", "--steps", "2"],
    );
    let first = vdit(&args);
    assert!(!first.status.success());
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        stdout.contains("batch: 2 done, 0 skipped, 3 failed (lines 2, 3, 6)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 2: error: not a valid job"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3: error: size 100x64 is not a multiple of 16"),
        "{stderr}"
    );
    assert!(stderr.contains("line 6: error:") && stderr.contains("unknown field `sizee`"));
    assert!(
        stderr.contains("error: 3 of 5 jobs failed (lines 2, 3, 6)"),
        "{stderr}"
    );
    assert_eq!(
        names_in(&out),
        [
            "dog.y4m",
            "dog.y4m.json",
            "job-0001.y4m",
            "job-0001.y4m.json"
        ]
    );
    let dog = t2v_common::read_json(&out.join("dog.y4m.json"));
    assert_eq!(
        (dog["settings"]["steps"].as_u64(), dog["seed"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(dog["negative_prompt"], serde_json::Value::Null);
    let times: Vec<SystemTime> = names_in(&out)
        .iter()
        .map(|n| modified(&out.join(n)))
        .collect();

    let second = vdit(&args);
    assert!(!second.status.success());
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("batch: 0 done, 2 skipped, 3 failed (lines 2, 3, 6)"),
        "{stdout}"
    );
    let again: Vec<SystemTime> = names_in(&out)
        .iter()
        .map(|n| modified(&out.join(n)))
        .collect();
    assert_eq!(times, again, "finished jobs were rewritten");

    let shard = vdit(&batch_args(
        &jobs,
        &dir.path().join("shard"),
        &[
            "--shard", "1/2", "--size", "64x48", "--frames", "9", "--steps", "1",
        ],
    ));
    let stdout = String::from_utf8_lossy(&shard.stdout);
    // jobs 0..5 are lines 1, 2, 3, 4, 6: shard 1/2 takes lines 2 and 4
    assert!(
        stdout.contains("batch: 1 done, 0 skipped, 1 failed (lines 2)"),
        "{stdout}"
    );
}

/// Killed after one job finished and the next started, the batch leaves only complete files
/// under final names; the re-run finishes the rest without touching the finished job.
#[test]
fn a_killed_batch_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    write_kite_jobs(&jobs, 4);
    let out = dir.path().join("out");
    let args = batch_args(
        &jobs,
        &out,
        &["--size", "128x128", "--frames", "17", "--steps", "6"],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first_done = out.join("job-0001.y4m.json");
    let second_started = out.join(format!(".job-0002.y4m.vdit-{}.partial", child.id()));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(first_done.is_file() && second_started.is_file()) {
        assert!(
            Instant::now() < deadline,
            "the batch never reached its second job"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the batch ended too soon"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // every file under a final name is complete
    for name in names_in(&out).iter().filter(|n| !n.starts_with('.')) {
        let path = out.join(name);
        if name.ends_with(".json") {
            t2v_common::read_json(&path);
        } else {
            let frames = Y4mReader::open(&path).unwrap().count();
            assert_eq!(frames, 17, "{name} is incomplete");
        }
    }
    assert!(
        !out.join("job-0002.y4m").exists(),
        "the interrupted job looks finished"
    );
    let finished = modified(&out.join("job-0001.y4m"));

    let rerun = vdit(&args);
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(stdout.contains("3 done, 1 skipped, 0 failed"), "{stdout}");
    assert_eq!(
        modified(&out.join("job-0001.y4m")),
        finished,
        "job 1 was redone"
    );
    let expected: Vec<String> = (1..=4)
        .flat_map(|i| [format!("job-000{i}.y4m"), format!("job-000{i}.y4m.json")])
        .collect();
    assert_eq!(names_in(&out), expected, "temporary files left behind");
}
