//! Checkpoints: bit-exact round trips, exact continuation of training, sharding under a file
//! size limit, refusal to touch folders vdit did not write, and shipped weights.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use train::optim::{
    checkpoint_dir, clip_grad_norm, is_checkpoint, latest, prune, save_weights, AdamW, AdamWConfig,
    Checkpoint, Ema, LrSchedule, Snapshot, WeightDtype, WeightsOptions, CHECKPOINT_FORMAT,
    DEFAULT_SHARD_BYTES,
};
use train::Error;

fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Deterministic values: a smooth pattern that differs by `seed`.
fn pattern(n: usize, seed: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 1.0) * 0.37 + seed).sin() * (1.0 + seed * 0.1))
        .collect()
}

/// The tiny model: a 2x3 matrix and a 3-vector.
fn tiny_params(seed: f32) -> BTreeMap<String, Var> {
    BTreeMap::from([
        (
            "layer.weight".to_string(),
            Var::from_tensor(&tensor(&pattern(6, seed), &[2, 3])).unwrap(),
        ),
        (
            "layer.bias".to_string(),
            Var::from_tensor(&tensor(&pattern(3, seed + 1.0), &[3])).unwrap(),
        ),
    ])
}

/// One training step of a quadratic loss whose targets move with the step.
fn train_step(
    params: &BTreeMap<String, Var>,
    adamw: &mut AdamW,
    ema: &mut Ema,
    schedule: &LrSchedule,
    step: u64,
) {
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for (i, var) in params.values().enumerate() {
        let target = tensor(
            &pattern(var.elem_count(), step as f32 * 0.5 + i as f32),
            var.dims(),
        );
        let term = (var.as_tensor() - target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        loss = (loss + term).unwrap();
    }
    let mut grads = loss.backward().unwrap();
    let norm = clip_grad_norm(params, &mut grads, 1.0).unwrap();
    assert!(norm.is_finite());
    adamw.step(params, &grads, schedule.lr(step)).unwrap();
    ema.update(params).unwrap();
}

fn schedule() -> LrSchedule {
    LrSchedule::new(0.05, 3, 10, 0.1).unwrap()
}

fn config() -> serde_json::Value {
    serde_json::json!({ "model": "tiny", "dim": 3, "seed": 7 })
}

fn save(
    folder: &Path,
    step: u64,
    params: &BTreeMap<String, Var>,
    adamw: &AdamW,
    ema: &Ema,
    limit: u64,
) -> Result<(), String> {
    Snapshot {
        step,
        cursor: 1000 + step,
        schedule: schedule(),
        config: &config(),
        params,
        adamw,
        ema: Some(ema),
    }
    .save(folder, limit)
    .map_err(|e| e.to_string())
}

#[test]
fn resuming_from_a_checkpoint_repeats_an_uninterrupted_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let adam_config = AdamWConfig::default();

    // Ten steps straight.
    let straight = tiny_params(0.0);
    let mut adamw = AdamW::new(adam_config).unwrap();
    let mut ema = Ema::new(0.9, &straight).unwrap();
    for step in 0..10 {
        train_step(&straight, &mut adamw, &mut ema, &schedule(), step);
    }

    // Five steps, a checkpoint, then everything rebuilt from it and five more steps.
    let first = tiny_params(0.0);
    let mut adamw_a = AdamW::new(adam_config).unwrap();
    let mut ema_a = Ema::new(0.9, &first).unwrap();
    for step in 0..5 {
        train_step(&first, &mut adamw_a, &mut ema_a, &schedule(), step);
    }
    let folder = checkpoint_dir(dir.path(), 5);
    save(&folder, 5, &first, &adamw_a, &ema_a, DEFAULT_SHARD_BYTES).unwrap();
    drop((first, adamw_a, ema_a));

    let resumed = tiny_params(42.0);
    let saved = Checkpoint::load(&latest(dir.path()).unwrap(), &Device::Cpu).unwrap();
    assert_eq!(saved.step, 5);
    assert_eq!(saved.cursor, 1005);
    assert_eq!(saved.config, config());
    assert_eq!(saved.schedule, schedule());
    saved.apply(&resumed).unwrap();
    let (mut adamw_b, mut ema_b) = (saved.adamw, saved.ema.unwrap());
    assert_eq!(adamw_b.step_count(), 5);
    for step in saved.step..10 {
        train_step(&resumed, &mut adamw_b, &mut ema_b, &saved.schedule, step);
    }

    for (name, var) in &straight {
        assert_eq!(
            bits(var.as_tensor()),
            bits(resumed[name].as_tensor()),
            "{name}"
        );
        assert_eq!(
            bits(&ema.weights()[name]),
            bits(&ema_b.weights()[name]),
            "EMA {name}"
        );
    }
    let (a, b) = (adamw.state(), adamw_b.state());
    assert_eq!(a.step, b.step);
    assert_eq!(a.param_steps, b.param_steps);
    for name in straight.keys() {
        assert_eq!(bits(&a.m[name]), bits(&b.m[name]));
        assert_eq!(bits(&a.v[name]), bits(&b.v[name]));
    }
    assert_eq!(ema.updates(), ema_b.updates());
}

/// A model with one tensor larger than a small file limit and several small ones.
fn mixed_params() -> BTreeMap<String, Var> {
    let mut params = BTreeMap::new();
    for i in 0..6 {
        let t = tensor(&pattern(300, i as f32), &[20, 15]);
        params.insert(format!("blocks.{i}.weight"), Var::from_tensor(&t).unwrap());
    }
    let big = tensor(&pattern(5000, 9.0), &[50, 100]);
    params.insert("embed.weight".to_string(), Var::from_tensor(&big).unwrap());
    let gain = tensor(&pattern(7, 3.0), &[7]);
    params.insert("norm.gain".to_string(), Var::from_tensor(&gain).unwrap());
    params
}

/// A few optimiser steps so that the moments are not zero.
fn trained(params: &BTreeMap<String, Var>) -> (AdamW, Ema) {
    let mut adamw = AdamW::new(AdamWConfig::default()).unwrap();
    let mut ema = Ema::new(0.99, params).unwrap();
    for step in 0..3 {
        train_step(params, &mut adamw, &mut ema, &schedule(), step);
    }
    (adamw, ema)
}

fn file_names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_small_file_limit_shards_every_part_and_round_trips_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let params = mixed_params();
    let (adamw, ema) = trained(&params);
    let folder = checkpoint_dir(dir.path(), 3);
    let limit = 4096;
    save(&folder, 3, &params, &adamw, &ema, limit).unwrap();

    let names = file_names(&folder);
    assert!(names.contains(&"state.json".to_string()));
    for part in ["model", "ema", "adam_m", "adam_v"] {
        let shards: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(&format!("{part}-")))
            .collect();
        // 20 000 bytes of the big tensor alone need at least 5 files of 4 KiB.
        assert!(shards.len() >= 6, "{part}: {shards:?}");
        let count = shards.len();
        for (i, name) in shards.iter().enumerate() {
            assert_eq!(
                **name,
                format!("{part}-{:05}-of-{count:05}.safetensors", i + 1)
            );
        }
    }
    for name in &names {
        let size = std::fs::metadata(folder.join(name)).unwrap().len();
        assert!(size <= limit, "{name} is {size} bytes");
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["format"], CHECKPOINT_FORMAT);
    assert_eq!(state["step"], 3);
    assert_eq!(state["cursor"], 1003);

    let saved = Checkpoint::load(&folder, &Device::Cpu).unwrap();
    assert_eq!(saved.model.len(), params.len());
    for (name, var) in &params {
        assert_eq!(saved.model[name].dims(), var.dims());
        assert_eq!(bits(&saved.model[name]), bits(var.as_tensor()), "{name}");
        assert_eq!(
            bits(&saved.ema.as_ref().unwrap().weights()[name]),
            bits(&ema.weights()[name])
        );
    }
    let (a, b) = (adamw.state(), saved.adamw.state());
    assert_eq!(a.param_steps, b.param_steps);
    assert_eq!(a.step, b.step);
    for name in params.keys() {
        assert_eq!(bits(&a.m[name]), bits(&b.m[name]), "m of {name}");
        assert_eq!(bits(&a.v[name]), bits(&b.v[name]), "v of {name}");
    }
    assert_eq!(saved.adamw.config(), AdamWConfig::default());
    let saved_ema = saved.ema.as_ref().unwrap();
    assert_eq!((saved_ema.decay(), saved_ema.updates()), (0.99, 3));

    // A checkpoint without EMA loads without one.
    let plain = dir.path().join("plain");
    Snapshot {
        step: 3,
        cursor: 0,
        schedule: schedule(),
        config: &serde_json::Value::Null,
        params: &params,
        adamw: &adamw,
        ema: None,
    }
    .save(&plain, limit)
    .unwrap();
    let loaded = Checkpoint::load(&plain, &Device::Cpu).unwrap();
    assert!(loaded.ema.is_none());
    assert!(!file_names(&plain).iter().any(|n| n.starts_with("ema")));
}

fn checkpoint_error(result: train::Result<Checkpoint>) -> String {
    match result {
        Err(Error::Checkpoint(msg)) => {
            assert!(!msg.contains('\n'), "one line: {msg}");
            msg
        }
        Err(other) => panic!("not a checkpoint error: {other}"),
        Ok(_) => panic!("a broken checkpoint loaded"),
    }
}

#[test]
fn broken_checkpoints_are_refused_with_the_problem_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let params = mixed_params();
    let (adamw, ema) = trained(&params);
    let folder = checkpoint_dir(dir.path(), 3);
    save(&folder, 3, &params, &adamw, &ema, 4096).unwrap();

    // A missing shard.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for name in file_names(&folder) {
        std::fs::copy(folder.join(&name), copy.join(&name)).unwrap();
    }
    let shard = file_names(&copy)
        .into_iter()
        .find(|n| n.starts_with("adam_v-00002-of-"))
        .unwrap();
    std::fs::remove_file(copy.join(&shard)).unwrap();
    let msg = checkpoint_error(Checkpoint::load(&copy, &Device::Cpu));
    assert!(msg.contains(&format!("missing {shard}")), "{msg}");
    assert!(msg.contains("copy the whole checkpoint folder"), "{msg}");

    // A wrong marker.
    let state_path = folder.join("state.json");
    let text = std::fs::read_to_string(&state_path).unwrap();
    std::fs::write(
        &state_path,
        text.replace(CHECKPOINT_FORMAT, "vdit-train-checkpoint/9"),
    )
    .unwrap();
    let msg = checkpoint_error(Checkpoint::load(&folder, &Device::Cpu));
    assert!(msg.contains("vdit-train-checkpoint/9"), "{msg}");
    std::fs::write(
        &state_path,
        text.replace(CHECKPOINT_FORMAT, "something-else"),
    )
    .unwrap();
    let msg = checkpoint_error(Checkpoint::load(&folder, &Device::Cpu));
    assert!(msg.contains("something-else"), "{msg}");
    std::fs::write(&state_path, "{}").unwrap();
    let msg = checkpoint_error(Checkpoint::load(&folder, &Device::Cpu));
    assert!(msg.contains("not a vdit checkpoint"), "{msg}");
    std::fs::remove_file(&state_path).unwrap();
    let msg = checkpoint_error(Checkpoint::load(&folder, &Device::Cpu));
    assert!(msg.contains("no readable state.json"), "{msg}");
    let msg = checkpoint_error(Checkpoint::load(&dir.path().join("nowhere"), &Device::Cpu));
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn a_checkpoint_of_another_model_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let params = tiny_params(0.0);
    let (adamw, ema) = trained(&params);
    let folder = checkpoint_dir(dir.path(), 3);
    save(&folder, 3, &params, &adamw, &ema, DEFAULT_SHARD_BYTES).unwrap();
    let saved = Checkpoint::load(&folder, &Device::Cpu).unwrap();

    let expect_checkpoint_error = |other: &BTreeMap<String, Var>, needle: &str| {
        let before: Vec<Vec<u32>> = other.values().map(|v| bits(v.as_tensor())).collect();
        match saved.apply(other) {
            Err(Error::Checkpoint(msg)) => {
                assert!(msg.contains(needle), "{msg}");
                assert!(msg.contains("model configuration"), "{msg}");
            }
            other => panic!("expected a checkpoint error, got {other:?}"),
        }
        let after: Vec<Vec<u32>> = other.values().map(|v| bits(v.as_tensor())).collect();
        assert_eq!(
            before, after,
            "a refused checkpoint must not change the parameters"
        );
    };

    let mut wrong_shape = tiny_params(1.0);
    wrong_shape.insert(
        "layer.weight".to_string(),
        Var::from_tensor(&tensor(&pattern(8, 0.0), &[2, 4])).unwrap(),
    );
    expect_checkpoint_error(&wrong_shape, "layer.weight is [2, 3]");

    let mut extra = tiny_params(1.0);
    extra.insert(
        "layer2.weight".to_string(),
        Var::from_tensor(&tensor(&pattern(4, 0.0), &[2, 2])).unwrap(),
    );
    expect_checkpoint_error(&extra, "lacks layer2.weight");

    let mut fewer = tiny_params(1.0);
    fewer.remove("layer.bias");
    expect_checkpoint_error(&fewer, "holds layer.bias");
}

#[test]
fn folders_vdit_did_not_write_are_never_replaced_or_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let params = tiny_params(0.0);
    let (adamw, ema) = trained(&params);

    // A foreign folder where a checkpoint would go.
    let foreign = checkpoint_dir(dir.path(), 20);
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let err = save(&foreign, 20, &params, &adamw, &ema, DEFAULT_SHARD_BYTES)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step-000020") && err.contains("not a vdit checkpoint"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(file_names(&foreign), vec!["notes.txt"]);

    // A state.json without the marker does not make a folder ours either.
    let unmarked = checkpoint_dir(dir.path(), 30);
    std::fs::create_dir_all(&unmarked).unwrap();
    std::fs::write(unmarked.join("state.json"), r#"{"step": 30}"#).unwrap();
    assert!(save(&unmarked, 30, &params, &adamw, &ema, DEFAULT_SHARD_BYTES).is_err());
    assert!(!is_checkpoint(&unmarked));

    // A file where the folder would go.
    let file = checkpoint_dir(dir.path(), 40);
    std::fs::write(&file, "x").unwrap();
    assert!(save(&file, 40, &params, &adamw, &ema, DEFAULT_SHARD_BYTES).is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    // Our own checkpoints are replaced in place.
    for step in [5, 10, 15] {
        let folder = checkpoint_dir(dir.path(), step);
        save(&folder, step, &params, &adamw, &ema, DEFAULT_SHARD_BYTES).unwrap();
        assert!(is_checkpoint(&folder));
    }
    let moved = tiny_params(3.0);
    let folder = checkpoint_dir(dir.path(), 15);
    save(&folder, 15, &moved, &adamw, &ema, DEFAULT_SHARD_BYTES).unwrap();
    let saved = Checkpoint::load(&folder, &Device::Cpu).unwrap();
    assert_eq!(
        bits(&saved.model["layer.bias"]),
        bits(moved["layer.bias"].as_tensor())
    );
    // No temporaries left beside the checkpoints.
    let left = file_names(&dir.path().join("checkpoints"));
    assert_eq!(
        left,
        vec![
            "step-000005",
            "step-000010",
            "step-000015",
            "step-000020",
            "step-000030",
            "step-000040"
        ]
    );

    // The latest is the highest step that is a checkpoint; foreign folders do not count.
    assert_eq!(latest(dir.path()), Some(checkpoint_dir(dir.path(), 15)));
    assert!(prune(dir.path(), 0).is_err());
    let removed = prune(dir.path(), 2).unwrap();
    assert_eq!(removed, vec![checkpoint_dir(dir.path(), 5)]);
    let left = file_names(&dir.path().join("checkpoints"));
    assert_eq!(
        left,
        vec![
            "step-000010",
            "step-000015",
            "step-000020",
            "step-000030",
            "step-000040"
        ]
    );
    assert_eq!(latest(&dir.path().join("elsewhere")), None);
}

fn header_format(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let n = u64::from_le_bytes(bytes[..8].try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).ok()?;
    Some(header["__metadata__"]["vdit_format"].as_str()?.to_string())
}

#[test]
fn shipped_weights_are_single_or_sharded_and_load_in_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let params = mixed_params();
    let (_, ema) = trained(&params);
    let mut weights = ema.weights().clone();
    weights.remove("embed.weight");
    let out = dir.path().join("ship").join("model.safetensors");

    // Everything fits: one bf16 file.
    let written = save_weights(&weights, &out, &WeightsOptions::default()).unwrap();
    assert_eq!(written, vec![out.clone()]);
    assert_eq!(header_format(&out).as_deref(), Some("vdit-train-weights/1"));
    let back = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    for (name, t) in &weights {
        assert_eq!(back[name].dtype(), DType::BF16);
        assert_eq!(
            bits(&back[name]),
            bits(&t.to_dtype(DType::BF16).unwrap()),
            "{name}"
        );
    }

    // A small limit: shards and an index, which the engine's loader follows; the single file
    // of the earlier export is removed.
    let options = WeightsOptions {
        dtype: WeightDtype::F32,
        max_file_bytes: 4096,
        ..WeightsOptions::default()
    };
    let written = save_weights(&weights, &out, &options).unwrap();
    let folder = out.parent().unwrap();
    assert!(written.len() >= 3, "{written:?}");
    assert!(!out.exists());
    let index = folder.join("model.safetensors.index.json");
    assert_eq!(written.last(), Some(&index));
    for path in &written {
        assert!(std::fs::metadata(path).unwrap().len() <= 4096);
    }
    let engine = vdit_core::weights::Checkpoint::open(folder).unwrap();
    assert_eq!(engine.keys().len(), weights.len());
    for (name, t) in &weights {
        let loaded = engine.load_raw(name, &Device::Cpu).unwrap();
        assert_eq!(bits(&loaded), bits(t), "{name}");
    }

    // A tensor over the limit cannot ship in one file.
    let err = save_weights(ema.weights(), &out, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("embed.weight") && err.contains("raise"),
        "{err}"
    );

    // Back to one file: the shards and the index go.
    save_weights(&weights, &out, &WeightsOptions::default()).unwrap();
    assert_eq!(file_names(folder), vec!["model.safetensors"]);

    // A file vdit did not write is never replaced.
    let foreign = dir.path().join("theirs.safetensors");
    std::fs::write(&foreign, "not ours").unwrap();
    let err = save_weights(&weights, &foreign, &WeightsOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not written by vdit"), "{err}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "not ours");
    assert!(save_weights(&weights, &dir.path().join("model.bin"), &options).is_err());
}
