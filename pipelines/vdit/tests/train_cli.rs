//! `vdit train` and `vdit eval` on the tiny preset (CPU): a base from `train vae`, a model
//! from `train dit`, the two runs' loss logs as one plot, a video from that model, and an
//! evaluation with a table and eval.json.

mod t2v_common;

use t2v_common::vdit;

fn ok(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn train_then_generate_then_eval() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |name: &str| dir.path().join(name).display().to_string();
    let out = ok(&vdit(&[
        "train",
        "vae",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch",
        "1",
        "--out",
        &run("vae"),
        "--quiet",
    ]));
    assert!(out.contains("trained 2 steps"), "{out}");
    assert!(out.contains("VAE reconstruction of unseen clips"), "{out}");
    assert!(out.contains("seconds per step: forward"), "{out}");
    let base = format!("{}/model", run("vae"));
    let out = ok(&vdit(&[
        "train",
        "dit",
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--batch",
        "2",
        "--clips",
        "4",
        "--base",
        &base,
        "--out",
        &run("dit"),
        "--attention",
        "vsa:sparsity=0.5",
        "--sparsity-ramp",
        "2",
        "--quiet",
    ]));
    assert!(out.contains("trained 3 steps"), "{out}");
    // the two runs' logs as one curve; an existing plot is kept unless --overwrite
    let plot = run("joined.png");
    let args = [
        "train",
        "plot",
        &run("vae"),
        &format!("{}/loss.csv", run("dit")),
        "--out",
        &plot,
    ];
    let out = ok(&vdit(&args));
    assert!(out.contains("plotted 2 runs, 5 steps"), "{out}");
    let first = std::fs::read(&plot).expect("plot");
    assert_eq!(&first[..4], b"\x89PNG");
    let again = vdit(&args);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("already exists"),
        "{err}"
    );
    ok(&vdit(&[&args[..], &["--overwrite"]].concat()));
    for file in [
        "loss.csv",
        "loss.png",
        "model/transformer/diffusion_pytorch_model.safetensors",
    ] {
        assert!(dir.path().join("dit").join(file).is_file(), "{file}");
    }
    // the trained method is the folder's default attention
    let generation = std::fs::read_to_string(dir.path().join("dit/model/generation_config.json"))
        .expect("config");
    assert!(generation.contains("vsa:"), "{generation}");

    // a second run into the same folder is refused unless resumed
    let again = vdit(&[
        "train",
        "dit",
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--base",
        &base,
        "--out",
        &run("dit"),
        "--quiet",
    ]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("--resume") && err.lines().count() == 1,
        "{err}"
    );

    let model = format!("{}/model", run("dit"));
    let video = run("a.gif");
    ok(&vdit(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "a red circle moves to the right",
        "--output",
        &video,
        "--quiet",
    ]));
    assert!(std::path::Path::new(&video).is_file());

    let out = ok(&vdit(&[
        "eval",
        "--model",
        &model,
        "--count",
        "2",
        "--out-dir",
        &run("eval"),
        "--method",
        "vsa:sparsity=0.5",
        "--quiet",
    ]));
    assert!(
        out.contains("| dense |") && out.contains("| vsa:sparsity=0.5 |"),
        "{out}"
    );
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("eval/eval.json")).expect("eval.json"),
    )
    .expect("json");
    assert_eq!(report["methods"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["captions"].as_array().map(Vec::len), Some(2));
    // every video's verdict, per asked object, adding up to the dense row's counts
    let videos = report["videos"].as_array().expect("videos");
    assert_eq!(videos.len(), 4, "2 captions x 2 methods");
    let dense_colour: u64 = videos
        .iter()
        .filter(|v| v["method"] == "dense")
        .flat_map(|v| v["objects"].as_array().expect("objects"))
        .map(|o| u64::from(o["colour"].as_bool().expect("colour")))
        .sum();
    assert_eq!(report["methods"][0]["accuracy"]["colour"], dense_colour);
    // the comparison report's summary carries the same accuracies, as its last columns
    let summary = std::fs::read_to_string(dir.path().join("eval/report.md")).expect("report.md");
    let header = summary
        .lines()
        .find(|l| l.starts_with("| method |"))
        .expect("summary");
    assert!(
        header.ends_with("| colour | shape | motion | all three |"),
        "{header}"
    );
    let dense = summary
        .lines()
        .find(|l| l.starts_with("| dense |"))
        .expect("dense row");
    let cells: Vec<&str> = dense.trim_matches('|').split('|').map(str::trim).collect();
    let colour = report["methods"][0]["colour"].as_f64().expect("colour");
    assert_eq!(cells.len(), 15, "{dense}");
    assert_eq!(cells[11], format!("{colour:.3}"), "{dense}");
    let html = std::fs::read_to_string(dir.path().join("eval/report.html")).expect("report.html");
    assert!(
        html.contains("<th>all three</th>"),
        "summary without accuracies"
    );
}

/// A bad attention spec or a missing base is one line naming the problem.
#[test]
fn bad_training_input_is_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("x").display().to_string();
    let missing = dir.path().join("nothing").display().to_string();
    let output = vdit(&[
        "train", "dit", "--preset", "tiny", "--steps", "1", "--base", &missing, "--out", &out,
    ]);
    assert_ne!(output.status.code(), Some(0));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("vdit train vae") && err.lines().count() == 1,
        "{err}"
    );
}

/// `--gpus` on a build without NCCL says how to get one, in one line; next to `--device` it is
/// refused as a conflict.
#[test]
#[cfg(not(feature = "nccl"))]
fn training_on_several_gpus_needs_nccl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("x").display().to_string();
    let base = dir.path().display().to_string();
    let args = [
        "train", "dit", "--preset", "tiny", "--steps", "1", "--base", &base, "--out", &out,
        "--gpus", "2",
    ];
    let output = vdit(&args);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("built with NCCL") && err.lines().count() == 1,
        "{err}"
    );
    let output = vdit(&[&args[..], &["--device", "cpu"]].concat());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && err.contains("cannot be used with"),
        "{err}"
    );
}
