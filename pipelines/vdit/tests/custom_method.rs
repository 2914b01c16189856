//! A method added from outside the engine, in one place: a fixed local window registered
//! through the `AttentionMethod` trait and a registry entry, then driven from the command line
//! (`--attention window --window 2`) and from a batch job line (`"window": 1`) with its own
//! option, which the records carry.

mod t2v_common;

use candle_core::Tensor;
use sparse::options::OptionSpec;
use sparse::{
    block_sparse_attention_with, Attended, AttentionMethod, BlockLayout, BlockMask, Computed,
    MethodCall, MethodEntry, Registry, SparsePlan,
};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use t2v_common::{read_json, tiny_wan};

/// Blocks of this many tokens (natural order).
const BLOCK: usize = 8;

/// Each query block attends to the key blocks within `radius` blocks of it.
struct LocalWindow {
    radius: usize,
}

impl AttentionMethod for LocalWindow {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "radius": self.radius, "block": BLOCK })
    }

    fn attend(&self, call: &MethodCall<'_>) -> candle_core::Result<Attended> {
        let c = call.call;
        let (b, h, s, _) = c.q.dims4()?;
        let layout = BlockLayout::natural_shared(s, BLOCK);
        let n = layout.num_blocks();
        let window = |qb: usize| -> Vec<u32> {
            (qb.saturating_sub(self.radius)..=(qb + self.radius).min(n - 1))
                .map(|kb| kb as u32)
                .collect()
        };
        let lists: Vec<Vec<u32>> = (0..b * h).flat_map(|_| (0..n).map(window)).collect();
        let mask = BlockMask::from_lists(b * h, n, n, &lists)?;
        let plan = Arc::new(SparsePlan::new(b, h, layout.clone(), layout, mask)?);
        let out: Tensor = block_sparse_attention_with(c.q, c.k, c.v, &plan, call.kernel)?;
        Ok(Attended {
            out,
            computed: Computed::Plan(plan),
        })
    }
}

const ENTRY: MethodEntry = MethodEntry {
    name: "window",
    about: "a fixed local window of key blocks around each query block",
    options: &[OptionSpec {
        key: "window",
        value: "R",
        help: "key blocks on each side of the query block (1)",
    }],
    dense_steps: "0",
    dense_layers: "",
    build: |values| {
        let radius = values.take("window", "not a block count: use e.g. 1")?;
        Ok(Arc::new(LocalWindow {
            radius: radius.unwrap_or(1),
        }))
    },
};

/// Density of the window over the tiny model's 64x48, 9-frame grid (3 x 3 x 4 = 36 tokens in
/// blocks of 8, 8, 8, 8 and 4): the pairs inside the window over all pairs.
fn expected_density(radius: usize) -> f64 {
    let sizes = [8usize, 8, 8, 8, 4];
    let pairs: usize = (0..sizes.len())
        .map(|qb| {
            let keys: usize = (qb.saturating_sub(radius)..=(qb + radius).min(sizes.len() - 1))
                .map(|kb| sizes[kb])
                .sum();
            sizes[qb] * keys
        })
        .sum();
    pairs as f64 / (36.0 * 36.0)
}

fn args(model: &Path, extra: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["vdit"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    all.extend(
        [
            "--model",
            model.to_str().unwrap(),
            "--size",
            "64x48",
            "--frames",
            "9",
            "--steps",
            "2",
            "--quiet",
        ]
        .map(String::from),
    );
    all
}

fn attention_of(record: &Path) -> (String, serde_json::Value, f64) {
    let record = read_json(record);
    let attention = &record["attention"];
    (
        attention["method"].as_str().unwrap().to_string(),
        attention["schedule"]["default"]["options"].clone(),
        attention["density"]["overall"].as_f64().unwrap(),
    )
}

#[test]
fn a_method_registered_in_one_place_runs_from_the_cli_and_a_batch_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::builtin();
    registry.register(ENTRY).unwrap();
    assert!(registry.register(ENTRY).is_err(), "names are unique");

    let video = dir.path().join("window.y4m");
    let generate = args(
        &tiny_wan(),
        &[
            "generate",
            "--prompt",
            "a red kite",
            "--seed",
            "1",
            "--attention",
            "window",
            "--window",
            "2",
            "--output",
            video.to_str().unwrap(),
        ],
    );
    assert_eq!(vdit::cli::run(&registry, &generate), ExitCode::SUCCESS);
    let (method, options, density) = attention_of(&dir.path().join("window.y4m.json"));
    assert_eq!(method, "window");
    assert_eq!(options["radius"], 2);
    assert!((density - expected_density(2)).abs() < 1e-9, "{density}");

    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        concat!(
            r#"{"prompt": "a red kite", "seed": 3, "id": "narrow", "attention": "window", "window": 1}"#,
            "\n",
            r#"{"prompt": "a red kite", "seed": 3, "id": "wrong", "attention": "window", "sparsity": 0.5}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let batch = args(
        &tiny_wan(),
        &[
            "batch",
            jobs.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "--format",
            "y4m",
        ],
    );
    // the second job gives the window method an option of VSA's: that job fails alone
    assert_eq!(vdit::cli::run(&registry, &batch), ExitCode::FAILURE);
    let (method, options, density) = attention_of(&out.join("narrow.y4m.json"));
    assert_eq!(method, "window");
    assert_eq!(options["radius"], 1);
    assert!((density - expected_density(1)).abs() < 1e-9, "{density}");
    assert!(!out.join("wrong.y4m").exists());

    // without the registration the name is refused as a usage error
    assert_eq!(
        vdit::cli::run(&Registry::builtin(), &generate),
        ExitCode::from(2)
    );
}
