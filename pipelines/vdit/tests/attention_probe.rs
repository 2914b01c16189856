//! `vdit attention` on tensors from a file: outputs, densities and one-line errors.

use candle_core::{safetensors, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

fn vdit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(args)
        .output()
        .expect("vdit runs")
}

fn write_qkv(path: &Path, tokens: usize) -> HashMap<String, Tensor> {
    let r = || Tensor::randn(0f32, 1.0, (2, 3, tokens, 8), &Device::Cpu).unwrap();
    let map = HashMap::from([
        ("q".to_string(), r()),
        ("k".to_string(), r()),
        ("v".to_string(), r()),
    ]);
    safetensors::save(&map, path).unwrap();
    map
}

/// Runs the probe (replacing the last output) and returns (density, output).
fn probe(dir: &Path, extra: &[&str]) -> (f64, Tensor) {
    let (input, output) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    let mut args = vec![
        "attention",
        "--overwrite",
        "--grid",
        "5,6,10",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = vdit(&args);
    assert!(
        out.status.success(),
        "{extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let tensor = safetensors::load(&output, &Device::Cpu)
        .unwrap()
        .remove("out")
        .unwrap();
    (json["density"].as_f64().unwrap(), tensor)
}

#[test]
fn probe_runs_each_method_and_reports_density() {
    let dir = tempfile::tempdir().unwrap();
    let qkv = write_qkv(&dir.path().join("in.safetensors"), 300);
    let dense = sparse::dense::attention(&qkv["q"], &qkv["k"], &qkv["v"]).unwrap();
    let (d, out) = probe(dir.path(), &["--method", "vsa", "--sparsity", "0"]);
    assert_eq!(d, 1.0);
    assert!(vdit_core::metrics::relative_l2(&out, &dense).unwrap() < 1e-5);
    assert_eq!(out.dims(), dense.dims());
    let (d, out) = probe(dir.path(), &["--method", "vsa", "--sparsity", "0.75"]);
    assert!(d < 0.5, "vsa density {d}");
    assert!(vdit_core::metrics::relative_l2(&out, &dense).unwrap() > 1e-3);
    let (d, _) = probe(
        dir.path(),
        &[
            "--method",
            "vmoba",
            "--chunk-kind",
            "spatial",
            "--chunk",
            "3x4",
            "--select",
            "topk",
            "--topk",
            "2",
        ],
    );
    assert!(d < 0.5, "vmoba density {d}");
    let (d, _) = probe(
        dir.path(),
        &[
            "--method",
            "vmoba",
            "--chunk-kind",
            "temporal",
            "--chunk",
            "2",
            "--scope",
            "head-global",
        ],
    );
    assert!(d < 1.0, "vmoba head-global density {d}");
    let (d, _) = probe(
        dir.path(),
        &[
            "--method",
            "sparsed",
            "--select-ratio",
            "0.5",
            "--block",
            "32",
        ],
    );
    assert!(d > 0.3 && d < 0.7, "sparsed density {d}");
}

#[test]
fn probe_rejects_bad_options_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    write_qkv(&dir.path().join("in.safetensors"), 300);
    let input = dir.path().join("in.safetensors");
    let output = dir.path().join("out.safetensors");
    let base = [
        "attention",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    let cases: [(&[&str], &str); 5] = [
        (
            &["--grid", "5,6,10", "--method", "vsa", "--sparsity", "1.5"],
            "outside [0, 1)",
        ),
        (
            &[
                "--grid",
                "5,6,10",
                "--method",
                "vmoba",
                "--chunk-kind",
                "temporal",
                "--chunk",
                "9",
            ],
            "larger than the token grid",
        ),
        (
            &["--grid", "5,6,10", "--method", "magic"],
            "invalid value 'magic'",
        ),
        (
            &["--grid", "5,6,9", "--method", "dense"],
            "has 270 tokens but `q` has 300",
        ),
        (
            &["--grid", "5,6,10", "--method", "vmoba", "--chunk", "3x4"],
            "--chunk needs --chunk-kind",
        ),
    ];
    for (extra, expected) in cases {
        let out = vdit(&[&base[..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!output.exists(), "{extra:?} left an output file");
    }
}
