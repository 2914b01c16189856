//! `vdit compare` on the tiny random model: dense, VSA, VMoBA, PARO (calibrated here) and
//! SparseD on two prompts and two seeds; every method reported with finite numbers, dense
//! against itself exact, and a re-run computing nothing new.

mod t2v_common;

use std::path::Path;
use t2v_common::{fails, succeeds, tiny_wan};

const SETTINGS: [&str; 6] = ["--size", "128x128", "--frames", "5", "--steps", "3"];

fn compare(dir: &Path, methods: &[String]) -> String {
    let mut args: Vec<String> = [
        "compare",
        "--model",
        tiny_wan().to_str().unwrap(),
        "--prompts",
        dir.join("prompts.txt").to_str().unwrap(),
        "--seeds",
        "0,1",
        "--out-dir",
        dir.join("out").to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    args.extend(SETTINGS.map(String::from));
    for m in methods {
        args.extend(["--method".to_string(), m.clone()]);
    }
    succeeds(&args)
}

#[test]
fn compare_reports_every_method_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prompts.txt"),
        "a red kite\n\na blue square moves up\n",
    )
    .unwrap();
    let calibration = dir.path().join("paro.json");
    let mut calibrate: Vec<String> = [
        "calibrate",
        "paro",
        "--model",
        tiny_wan().to_str().unwrap(),
        "--prompts",
        dir.path().join("prompts.txt").to_str().unwrap(),
        "--output",
        calibration.to_str().unwrap(),
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    calibrate.extend(SETTINGS.map(String::from));
    succeeds(&calibrate);
    let methods = [
        "vsa:sparsity=0.75".to_string(),
        "vmoba:chunk_kind=temporal,threshold=0.25".to_string(),
        format!("paro:paro_calibration={}", calibration.display()),
        "sparsed:select_ratio=0.3".to_string(),
    ];
    let summary = compare(dir.path(), &methods);
    assert!(
        summary.contains("20 runs (20 made now, 0 from earlier)"),
        "{summary}"
    );
    let out = dir.path().join("out");
    let results: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 20);
    for r in &results {
        let f = &r["fidelity"];
        for key in [
            "psnr_mean",
            "psnr_worst",
            "ssim_mean",
            "ssim_worst",
            "temporal_error",
        ] {
            assert!(f[key].as_f64().unwrap().is_finite(), "{key} of {r}");
        }
        for key in ["denoising_s", "density", "attention_flops", "attention_s"] {
            assert!(r[key].as_f64().unwrap().is_finite(), "{key} of {r}");
        }
        assert_eq!(r["step_s"].as_array().unwrap().len(), 3);
        if r["method"] == "dense" {
            assert_eq!(
                (f["psnr_worst"].as_f64(), f["ssim_worst"].as_f64()),
                (Some(100.0), Some(1.0))
            );
            assert_eq!(f["temporal_error"].as_f64(), Some(0.0));
        }
    }
    assert!(
        results
            .iter()
            .any(|r| r["density"].as_f64().unwrap() < 0.99),
        "nothing was sparse"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for method in
        std::iter::once("dense").chain(methods.iter().map(|m| m.split(':').next().unwrap()))
    {
        assert!(
            md.contains(&format!("| {method}")),
            "{method} missing from report.md"
        );
        assert!(html.contains(method), "{method} missing from report.html");
    }
    assert!(!md.contains("NaN") && !md.contains("inf"), "{md}");
    // SVG's namespace is a name, not a download; nothing else may point off the machine
    let fetched = ["src=\"http", "href=\"http", "url(http", "@import"];
    assert!(
        html.contains("<svg") && !fetched.iter().any(|f| html.contains(f)),
        "the page must be self-contained"
    );
    assert_eq!(std::fs::read_dir(out.join("tiles")).unwrap().count(), 4);

    let again = compare(dir.path(), &methods);
    assert!(
        again.contains("20 runs (0 made now, 20 from earlier)"),
        "{again}"
    );
    let err = fails(&[
        "compare",
        "--prompts",
        dir.path().join("missing.txt").to_str().unwrap(),
        "--method",
        "vsa",
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("cannot read the prompts file"), "{err}");
}
