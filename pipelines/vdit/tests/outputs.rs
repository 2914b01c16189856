//! What vdit promises about the files it writes: two runs on one output never corrupt each
//! other, nothing vdit did not make is deleted or replaced, an existing output is replaced only
//! with --overwrite and only by a complete one, and a batch re-run decides "done" from the
//! record's fingerprint and the video's size, not from names.

mod common;
mod t2v_common;

use common::names_in;
use std::path::Path;
use std::process::Command;
use t2v_common::{
    batch_args, copy_tree, fails, read_json, small, spawn, succeeds, tiny_wan, write_kite_jobs,
};
use vdit::video::Y4mReader;

/// Frames of a `.y4m`, all of which must read.
fn frames_in(path: &Path) -> usize {
    let frames: Vec<_> = Y4mReader::open(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    frames.len()
}

/// `vdit batch JOBS --out-dir OUT` on the tiny model, small videos, Y4M.
fn batch(jobs: &Path, out: &Path) -> Vec<String> {
    batch_args(
        jobs,
        out,
        &["--size", "64x48", "--frames", "9", "--steps", "2"],
    )
}

/// The count before `label` in a batch summary line such as `batch: 2 done, 1 skipped, ...`.
fn summary_count(stdout: &str, label: &str) -> usize {
    let line = stdout.lines().find(|l| l.starts_with("batch:")).unwrap();
    let before = &line[..line.find(label).unwrap_or_else(|| panic!("{line}"))];
    before
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn two_generates_on_one_output_never_both_write_it() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("kite.y4m");
    let mut args = small(&video);
    for (flag, value) in [("--frames", "17"), ("--steps", "4")] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
    }
    let (a, b) = (spawn(&args), spawn(&args));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let outcomes = [&a, &b].map(|o| o.status.success());
    assert_eq!(
        outcomes.iter().filter(|&&ok| ok).count(),
        1,
        "exactly one run writes the video: {} / {}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let loser = if outcomes[0] { &b } else { &a };
    let message = String::from_utf8_lossy(&loser.stderr);
    assert!(
        message.contains("being written by another vdit process")
            || message.contains("already exists"),
        "{message}"
    );
    assert_eq!(frames_in(&video), 17);
    assert_eq!(names_in(dir.path()), ["kite.y4m", "kite.y4m.json"]);
}

#[test]
fn two_batches_on_one_folder_make_each_video_once() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    write_kite_jobs(&jobs, 4);
    let out = dir.path().join("out");
    let args = batch(&jobs, &out);
    let (a, b) = (spawn(&args), spawn(&args));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for run in [&a, &b] {
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let made: usize = [&a, &b]
        .map(|run| summary_count(&String::from_utf8_lossy(&run.stdout), "done"))
        .iter()
        .sum();
    assert_eq!(made, 4, "every job made exactly once");
    for i in 1..=4 {
        assert_eq!(frames_in(&out.join(format!("job-000{i}.y4m"))), 9);
        let record = read_json(&out.join(format!("job-000{i}.y4m.json")));
        assert_eq!(record["seed"], i);
    }
    assert!(
        names_in(&out).iter().all(|n| !n.starts_with('.')),
        "{:?}",
        names_in(&out)
    );
}

#[test]
fn a_batch_never_deletes_or_replaces_what_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        [
            r#"{"prompt": "a", "seed": 1, "id": "mine"}"#,
            r#"{"prompt": "b", "seed": 2, "id": "theirs"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    // A user's folder named like a job's video, and a user's file named like another's.
    std::fs::create_dir_all(out.join("mine.y4m")).unwrap();
    std::fs::write(out.join("mine.y4m/notes.txt"), "keep me").unwrap();
    std::fs::write(out.join("theirs.y4m"), "not a video").unwrap();
    let run = t2v_common::vdit(&batch(&jobs, &out));
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("line 1: error:") && stderr.contains("no vdit record describes it"),
        "{stderr}"
    );
    assert!(stderr.contains("line 2: error:"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.join("mine.y4m/notes.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("theirs.y4m")).unwrap(),
        "not a video"
    );
}

#[test]
fn a_rerun_redoes_changed_jobs_and_refuses_emptied_videos() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    let out = dir.path().join("out");
    let write_jobs = |seed: u64| {
        let text = [
            format!(r#"{{"prompt": "a", "seed": {seed}, "id": "a"}}"#),
            r#"{"prompt": "b", "seed": 5, "id": "b"}"#.to_string(),
        ]
        .join("\n");
        std::fs::write(&jobs, text).unwrap();
    };
    write_jobs(1);
    let first = succeeds(&batch(&jobs, &out));
    assert_eq!(summary_count(&first, "done"), 2, "{first}");
    // Same id, another seed: made again, and the record says so.
    write_jobs(2);
    let second = succeeds(&batch(&jobs, &out));
    assert_eq!(
        (
            summary_count(&second, "done"),
            summary_count(&second, "skipped")
        ),
        (1, 1),
        "{second}"
    );
    assert_eq!(read_json(&out.join("a.y4m.json"))["seed"], 2);
    // An emptied video is not done, and vdit does not take it for its own either.
    std::fs::write(out.join("b.y4m"), "").unwrap();
    let run = t2v_common::vdit(&batch(&jobs, &out));
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("changed or incomplete"), "{stderr}");
}

#[test]
fn generate_replaces_only_with_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("kite.y4m");
    std::fs::write(&video, "a user's file").unwrap();
    let err = fails(&small(&video));
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&video).unwrap(), "a user's file");
    let mut args = small(&video);
    args.push("--overwrite".into());
    succeeds(&args);
    assert_eq!(frames_in(&video), 9);
    // The record of an earlier run is also kept unless --overwrite is given.
    std::fs::remove_file(&video).unwrap();
    let err = fails(&small(&video));
    assert!(err.contains("kite.y4m.json already exists"), "{err}");
}

/// `vdit` with `args` in a process limited to 4 GB of address space: a request that would
/// allocate more fails with an allocation abort instead of vdit's own message.
fn limited(args: &[String]) -> std::process::Output {
    let mut script = String::from("ulimit -v 4000000; exec \"$0\"");
    for i in 1..=args.len() {
        script += &format!(" \"${{{i}}}\"");
    }
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_vdit"))
        .args(args)
        .env("VDIT_DEFAULT_MODEL", tiny_wan())
        .output()
        .unwrap()
}

#[test]
fn sizes_that_cannot_fit_are_refused_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("huge.y4m");
    for (flag, value, expected) in [
        ("--size", "99984x99984", "needs about"),
        ("--frames", "4294967297", "needs about"),
        (
            "--frames",
            "18446744073709551613",
            "more tokens than can be counted",
        ),
    ] {
        let mut args = small(&video);
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
        let err = t2v_common::one_line_error(limited(&args));
        assert!(err.contains(expected), "{flag} {value}: {err}");
    }
    assert!(
        names_in(dir.path()).is_empty(),
        "{:?}",
        names_in(dir.path())
    );
    // In a batch, such a job fails alone and the others run.
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        [
            r#"{"prompt": "a", "seed": 1, "size": "99984x99984"}"#,
            r#"{"prompt": "b", "seed": 2}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = limited(&batch(&jobs, &out));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("1 done") && stdout.contains("1 failed (lines 1)"),
        "{stdout}"
    );
    assert_eq!(frames_in(&out.join("job-0002.y4m")), 9);
}

#[test]
fn every_file_vdit_writes_gets_the_same_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let video = dir.path().join("kite.y4m");
    let latents = dir.path().join("latents.safetensors");
    let mut args = small(&video);
    args.extend([
        "--save-latents".to_string(),
        latents.to_str().unwrap().to_string(),
    ]);
    succeeds(&args);
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a kite\n").unwrap();
    let paro = dir.path().join("paro.safetensors");
    succeeds(&[
        "calibrate",
        "paro",
        "--model",
        tiny_wan().to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--size",
        "64x48",
        "--frames",
        "9",
        "--steps",
        "2",
        "--quiet",
        "--output",
        paro.to_str().unwrap(),
    ]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let video_mode = mode(&video);
    for file in [dir.path().join("kite.y4m.json"), latents, paro] {
        assert_eq!(mode(&file), video_mode, "{}", file.display());
    }
}

#[test]
fn messages_say_what_is_really_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let looped = dir.path().join("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let file = dir.path().join("model.txt");
    std::fs::write(&file, "not a model").unwrap();
    let video = dir.path().join("v.y4m");
    for (model, expected) in [(&looped, "leads nowhere"), (&file, "is a file")] {
        let mut args = small(&video);
        let at = args.iter().position(|a| a == "--model").unwrap();
        args[at + 1] = model.to_str().unwrap().to_string();
        let err = fails(&args);
        assert!(err.contains(expected), "{err}");
    }
    let err = fails(&small(&looped));
    assert!(err.contains("symbolic link that leads nowhere"), "{err}");
    // A byte-order mark before the first job is not part of it; an overlong id says so.
    let jobs = dir.path().join("jobs.jsonl");
    let long_id = "x".repeat(300);
    std::fs::write(
        &jobs,
        format!(
            "\u{feff}{{\"prompt\": \"a\", \"seed\": 1}}\n{{\"prompt\": \"b\", \"seed\": 2, \"id\": \"{long_id}\"}}\n"
        ),
    )
    .unwrap();
    let mut args = batch(&jobs, &dir.path().join("out"));
    args.push("--dry-run".into());
    let out = t2v_common::vdit(&args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        stdout.contains("1 would run") && stdout.contains("(lines 2)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("is 300 characters long: ids are at most 200"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out").exists(),
        "a dry run creates nothing"
    );
}

/// A model retrained in place (same paths, new files) makes a re-run redo every job: the
/// fingerprint follows the model's files, not only their paths.
#[test]
fn a_rerun_after_the_model_changed_redoes_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tree(&tiny_wan(), &model);
    let jobs = dir.path().join("jobs.jsonl");
    let out = dir.path().join("out");
    write_kite_jobs(&jobs, 2);
    let mut args = batch(&jobs, &out);
    let at = args.iter().position(|a| a == "--model").unwrap();
    args[at + 1] = model.to_str().unwrap().to_string();
    let first = succeeds(&args);
    assert_eq!(summary_count(&first, "done"), 2, "{first}");
    let second = succeeds(&args);
    assert_eq!(summary_count(&second, "skipped"), 2, "{second}");
    // the same weights written again, an hour later
    let weights = model.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let third = succeeds(&args);
    assert_eq!(
        (
            summary_count(&third, "done"),
            summary_count(&third, "skipped")
        ),
        (2, 0),
        "{third}"
    );
}
