//! The shipped default model, assets/shapes-wan: with no `--model`, `vdit eval` loads it on the
//! CPU, generates a held-out caption at the model's own settings and finds in the pixels the
//! object the caption asked for.

use std::process::Command;

#[test]
fn the_default_model_draws_a_held_out_caption() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let run = Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(["eval", "--count", "1", "--quiet", "--out-dir"])
        .arg(&out)
        .env_remove("VDIT_DEFAULT_MODEL")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["split"], "held");
    let dense = &report["methods"][0];
    assert_eq!(dense["method"], "dense");
    assert_eq!(dense["accuracy"]["judged"], 1, "{dense}");
    // The first held-out caption (a purple square moving down on green) at seed 0: the model
    // draws an object of the asked colour moving the asked way.
    assert_eq!(dense["accuracy"]["colour"], 1, "{dense}");
    assert_eq!(dense["accuracy"]["motion"], 1, "{dense}");
    let record = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert!(record.contains("a purple square moves down"), "{record}");
}
