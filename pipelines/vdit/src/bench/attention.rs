//! `vdit bench attention`: our dense and block-sparse attention against density at the Wan
//! 1.3B 480p shape, forward alone and forward with backward (what a training step pays). Writes
//! the block masks it used so that FlexAttention can be timed on the same ones
//! (`pipelines/vdit/bench/attention_peers.py`).

use super::median_ms;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;
use sparse::vmoba::{vmoba_attention, vmoba_plan, ChunkKind, Selection, VmobaOptions};
use sparse::vsa::{vsa_attention, VsaOptions};
use sparse::{
    block_sparse_attention, block_sparse_attention_with, BlockLayout, BlockMask, ForwardKernel,
    SparsePlan, TokenGrid,
};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use vdit_core::metrics::relative_l2;

/// Densities benchmarked with random block masks.
pub const DENSITIES: [f64; 4] = [1.0, 0.5, 0.25, 0.125];
/// Block size of the random masks (FlexAttention's default).
pub const BLOCK: usize = 128;

/// A group of the benchmark's rows, to time a part of it (e.g. under a profiler).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    /// Dense and block-sparse forwards at every density, per kernel family.
    Dense,
    /// VSA's whole forward.
    Vsa,
    /// VMoBA's forward per chunk kind.
    Vmoba,
    /// Forward+backward of dense attention and the block-sparse kernels.
    Backward,
    /// Forward+backward of VSA and VMoBA.
    MethodBackward,
}

/// Shape of the benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Batch.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Token grid (the sequence is its size).
    pub grid: TokenGrid,
    /// Channels per head.
    pub head_dim: usize,
}

impl Shape {
    /// Wan 2.1 1.3B at 480x832, 81 frames: 21x30x52 tokens, 12 heads of 128.
    pub const WAN_1_3B_480P: Shape = Shape {
        batch: 1,
        heads: 12,
        grid: TokenGrid {
            t: 21,
            h: 30,
            w: 52,
        },
        head_dim: 128,
    };

    /// FLOPs of dense attention's forward (its backward does 2.5 times as many).
    fn dense_flops(&self) -> f64 {
        let s = self.grid.len() as f64;
        4.0 * (self.batch * self.heads) as f64 * s * s * self.head_dim as f64
    }
}

/// Key blocks per query block at `density`: a fixed pseudo-random choice per (head, query
/// block), the same for every batch element.
fn random_lists(heads: usize, blocks: usize, density: f64, seed: u64) -> Vec<Vec<u32>> {
    let keep = ((density * blocks as f64).round() as usize).clamp(1, blocks);
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    (0..heads * blocks)
        .map(|_| {
            let mut all: Vec<u32> = (0..blocks as u32).collect();
            for i in 0..keep {
                let j = i + next() % (blocks - i);
                all.swap(i, j);
            }
            let mut list = all[..keep].to_vec();
            list.sort_unstable();
            list
        })
        .collect()
}

/// The kernel families to time on `device`: (label, family), or the CPU engine.
fn families(device: &Device) -> Vec<(&'static str, ForwardKernel)> {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        let mut all = vec![("mma", ForwardKernel::Mma)];
        if sparse::cuda::is_hopper(device) {
            all.push(("wgmma", ForwardKernel::Wgmma));
        }
        return all;
    }
    let _ = device;
    vec![("cpu", ForwardKernel::Auto)]
}

/// VMoBA per chunk kind with its published top-k (selection on the device, gathered-query
/// kernel, log-sum-exp merge). The spatio-temporal row also runs the plan path (its selection,
/// block-sparse kernel with one query per block) once and reports how far the two agree.
fn vmoba_rows(
    device: &Device,
    shape: Shape,
    [q, k, v]: [&Tensor; 3],
    runs: usize,
) -> Result<Vec<serde_json::Value>> {
    let flops = shape.dense_flops();
    let mut rows = Vec::new();
    for (i, kind) in [
        ChunkKind::Temporal,
        ChunkKind::Spatial,
        ChunkKind::Spatiotemporal,
    ]
    .into_iter()
    .enumerate()
    {
        let opts = VmobaOptions {
            kind: Some(kind),
            selection: Selection::TopK(None),
            ..Default::default()
        };
        let first = vmoba_attention(q, k, v, shape.grid, kind, &opts)?;
        let ms = median_ms(device, 2, runs, || {
            Ok(vmoba_attention(q, k, v, shape.grid, kind, &opts).map(|_| ())?)
        })?;
        let mut row = json!({
            "impl": format!("vdit VMoBA {kind} top-{} (gathered)", opts.topk[i]),
            "density": first.density()?, "ms": ms, "tflops_effective": flops / ms * 1e-9,
        });
        if kind == ChunkKind::Spatiotemporal {
            let chunks = BlockLayout::tiled_shared(shape.grid, opts.tile(kind, shape.grid));
            let plan = vmoba_plan(q, k, &chunks, kind, &opts)?;
            device.synchronize()?;
            let start = std::time::Instant::now();
            let reference = block_sparse_attention(q, k, v, &plan)?;
            device.synchronize()?;
            row["plan_path_kernel_ms"] = json!(start.elapsed().as_secs_f64() * 1e3);
            row["rel_l2_vs_plan_path"] = json!(relative_l2(
                &first.out.to_dtype(DType::F32)?,
                &reference.to_dtype(DType::F32)?
            )?);
            row["plan_path_density"] = json!(plan.density()?);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The root of a backward that hands `dout` to its input as that input's gradient, whatever
/// gradient it gets itself (its forward is one zero), as PyTorch's `out.backward(dout)` does:
/// candle seeds a root with ones, and a product `out * dout` as the root would add elementwise
/// work on full-size tensors that is not the attention's cost.
struct SeedGradient(Tensor);

impl candle_core::CustomOp1 for SeedGradient {
    fn name(&self) -> &'static str {
        "seed-gradient"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        Ok((candle_core::CpuStorage::F32(vec![0.0]), 1.into()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        _: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let dev = storage.device();
        let zero = dev.alloc_zeros::<f32>(1)?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(zero, dev.clone()),
            1.into(),
        ))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(self.0.clone()))
    }
}

/// Forward then backward of one attention path, as training runs it: gradients of `inputs`
/// for the output gradient `dout` (`[B, H, S, D]`, the output's dtype), passed to the output
/// as the peers pass it to `backward`. Fails when an input got no gradient, so that a path that
/// silently detaches is not timed as cheap.
fn forward_backward(inputs: &[&Var], dout: &Tensor, out: Tensor) -> Result<()> {
    let grads = out.apply_op1(SeedGradient(dout.clone()))?.backward()?;
    for (i, var) in inputs.iter().enumerate() {
        grads
            .get(var.as_tensor())
            .with_context(|| format!("attention input {i} got no gradient"))?;
    }
    Ok(())
}

/// One trainable attention path's output.
type Attend<'a> = &'a dyn Fn() -> Result<Tensor>;
/// The density that path computes, read once before it is timed (reading a plan's density
/// walks its mask on the host, which must stay out of the timed calls).
type Density<'a> = &'a dyn Fn() -> Result<f64>;

/// Times trainable paths forward plus backward for one fixed output gradient, collecting one
/// row per path. `tflops_effective` counts dense attention's forward and backward FLOPs (3.5
/// times the forward's). A path that fails (e.g. out of memory) gets a row with its `error`,
/// and the others still run.
struct BackwardTimer<'a> {
    device: &'a Device,
    dout: Tensor,
    flops: f64,
    runs: usize,
    rows: Vec<serde_json::Value>,
}

impl<'a> BackwardTimer<'a> {
    fn new(device: &'a Device, shape: Shape, dtype: DType, runs: usize) -> Result<Self> {
        let (b, h, s, d) = (shape.batch, shape.heads, shape.grid.len(), shape.head_dim);
        Ok(Self {
            device,
            dout: Tensor::randn(0f32, 1.0, (b, h, s, d), device)?.to_dtype(dtype)?,
            flops: 3.5 * shape.dense_flops(),
            runs,
            rows: Vec::new(),
        })
    }

    fn time(&mut self, name: String, inputs: &[&Var], density: Density, attend: Attend) {
        let measured = density().and_then(|density| {
            let ms = median_ms(self.device, 1, self.runs.min(5), || {
                forward_backward(inputs, &self.dout, attend()?)
            })?;
            Ok((density, ms))
        });
        self.rows.push(match measured {
            Ok((density, ms)) => json!({"impl": name, "pass": "forward+backward",
                "density": density, "ms": ms, "tflops_effective": self.flops / ms * 1e-9}),
            Err(e) => json!({"impl": name, "pass": "forward+backward", "error": format!("{e:#}")}),
        });
    }
}

/// Forward plus backward of the kernels themselves: dense (per kernel family, so that the
/// Hopper backward is timed next to the warp-MMA one) and the block-sparse kernels at each of
/// `plans`' densities.
fn kernel_backward_rows(
    device: &Device,
    shape: Shape,
    [q, k, v]: [&Tensor; 3],
    plans: &[(f64, Arc<SparsePlan>)],
    runs: usize,
) -> Result<Vec<serde_json::Value>> {
    let [q, k, v] = [q, k, v].map(Var::from_tensor);
    let (q, k, v) = (q?, k?, v?);
    let qkv = [&q, &k, &v];
    let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
    let mut timer = BackwardTimer::new(device, shape, q.dtype(), runs)?;
    for (label, family) in families(device) {
        timer.time(
            format!("vdit dense fwd+bwd ({label})"),
            &qkv,
            &|| Ok(1.0),
            &|| Ok(sparse::dense::attention_with(qt, kt, vt, family)?),
        );
    }
    for (_, plan) in plans {
        timer.time(
            "vdit block-sparse fwd+bwd".into(),
            &qkv,
            &|| Ok(plan.density()?),
            &|| Ok(block_sparse_attention(qt, kt, vt, plan)?),
        );
    }
    Ok(timer.rows)
}

/// Forward plus backward of the trainable methods: VSA at sparsity 0.875 (gate and coarse
/// branch included) and VMoBA's spatio-temporal top-k (the plan path that training takes),
/// each also with its chosen plan alone (no selection, no coarse branch; VSA's per kernel
/// family), which splits the method's time.
fn method_backward_rows(
    device: &Device,
    shape: Shape,
    [q, k, v, gate]: [&Tensor; 4],
    runs: usize,
) -> Result<Vec<serde_json::Value>> {
    let [q, k, v, gate] = [q, k, v, gate].map(Var::from_tensor);
    let (q, k, v, gate) = (q?, k?, v?, gate?);
    let qkv = [&q, &k, &v];
    let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
    let mut timer = BackwardTimer::new(device, shape, q.dtype(), runs)?;
    let vsa = VsaOptions {
        sparsity: 0.875,
        ..Default::default()
    };
    let run_vsa = || vsa_attention(qt, kt, vt, Some(gate.as_tensor()), shape.grid, &vsa);
    timer.time(
        "vdit VSA fwd+bwd (coarse + top-k + fine, gate)".into(),
        &[&q, &k, &v, &gate],
        &|| Ok(run_vsa()?.plan.density()?),
        &|| Ok(run_vsa()?.out),
    );
    // The fine stage alone on the plan VSA chose, to split the whole call's time.
    let vsa_plan = run_vsa()?.plan;
    for (label, family) in families(device) {
        timer.time(
            format!("vdit VSA fine stage alone fwd+bwd (its plan, {label})"),
            &qkv,
            &|| Ok(vsa_plan.density()?),
            &|| Ok(block_sparse_attention_with(qt, kt, vt, &vsa_plan, family)?),
        );
    }
    let kind = ChunkKind::Spatiotemporal;
    let vmoba = VmobaOptions {
        kind: Some(kind),
        selection: Selection::TopK(None),
        ..Default::default()
    };
    let run_vmoba = || vmoba_attention(qt, kt, vt, shape.grid, kind, &vmoba);
    timer.time(
        format!("vdit VMoBA {kind} fwd+bwd (plan path)"),
        &qkv,
        &|| Ok(run_vmoba()?.density()?),
        &|| Ok(run_vmoba()?.out),
    );
    let chunks = BlockLayout::tiled_shared(shape.grid, vmoba.tile(kind, shape.grid));
    let chosen = vmoba_plan(qt, kt, &chunks, kind, &vmoba)?;
    timer.time(
        format!("vdit VMoBA {kind} plan alone fwd+bwd (one query per block)"),
        &qkv,
        &|| Ok(chosen.density()?),
        &|| Ok(block_sparse_attention(qt, kt, vt, &chosen)?),
    );
    Ok(timer.rows)
}

/// Runs the benchmark's `cases` (all when empty) and writes `attention.json` and
/// `masks.safetensors` into `out_dir`.
pub fn run(
    device: &Device,
    shape: Shape,
    dtype: DType,
    runs: usize,
    out_dir: &Path,
    cases: &[Case],
) -> Result<()> {
    let wanted = |case: Case| cases.is_empty() || cases.contains(&case);
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let (b, h, s, d) = (shape.batch, shape.heads, shape.grid.len(), shape.head_dim);
    let r = || -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, (b, h, s, d), device)?.to_dtype(dtype)?)
    };
    let (q, k, v) = (r()?, r()?, r()?);
    let flops = shape.dense_flops();
    let layout = Arc::new(BlockLayout::natural(s, BLOCK));
    let n = layout.num_blocks();
    let mut masks = HashMap::new();
    let mut plans = Vec::new();
    for (i, &density) in DENSITIES.iter().enumerate() {
        let per_head = random_lists(h, n, density, 17 + i as u64);
        let lists: Vec<Vec<u32>> = (0..b).flat_map(|_| per_head.iter().cloned()).collect();
        let mask = BlockMask::from_lists(b * h, n, n, &lists)?;
        plans.push((
            density,
            Arc::new(SparsePlan::new(b, h, layout.clone(), layout.clone(), mask)?),
        ));
        let mut bits = vec![0u8; h * n * n];
        for (row, list) in per_head.iter().enumerate() {
            list.iter().for_each(|&kb| bits[row * n + kb as usize] = 1);
        }
        masks.insert(
            format!("mask_{density}"),
            Tensor::from_vec(bits, (h, n, n), &Device::Cpu)?,
        );
    }
    let mut rows = Vec::new();
    let families = if wanted(Case::Dense) {
        families(device)
    } else {
        Vec::new()
    };
    for (label, family) in families {
        let dense_ms = median_ms(device, 3, runs, || {
            Ok(sparse::dense::attention_with(&q, &k, &v, family).map(|_| ())?)
        })?;
        rows.push(json!({"impl": format!("vdit dense ({label})"), "density": 1.0, "ms": dense_ms, "tflops_effective": flops / dense_ms * 1e-9}));
        for (density, plan) in &plans {
            let actual = plan.density()?;
            let ms = median_ms(device, 3, runs, || {
                Ok(block_sparse_attention_with(&q, &k, &v, plan, family).map(|_| ())?)
            })?;
            rows.push(json!({
                "impl": format!("vdit block-sparse ({label})"), "density": actual, "target_density": density, "ms": ms,
                "tflops_effective": flops / ms * 1e-9, "tflops_actual": flops * actual / ms * 1e-9,
            }));
        }
    }

    // VSA as a whole (coarse stage, top-k on the device, fine stage) at sparsity 0.875.
    let gate = r()?;
    let opts = VsaOptions {
        sparsity: 0.875,
        ..Default::default()
    };
    if wanted(Case::Vsa) {
        let vsa = vsa_attention(&q, &k, &v, Some(&gate), shape.grid, &opts)?;
        let vsa_density = vsa.plan.density()?;
        let ms = median_ms(device, 3, runs, || {
            Ok(vsa_attention(&q, &k, &v, Some(&gate), shape.grid, &opts).map(|_| ())?)
        })?;
        rows.push(json!({"impl": "vdit VSA (coarse + top-k + fine)", "density": vsa_density, "ms": ms, "tflops_effective": flops / ms * 1e-9}));
    }
    if wanted(Case::Vmoba) {
        rows.extend(vmoba_rows(device, shape, [&q, &k, &v], runs)?);
    }
    if wanted(Case::Backward) {
        rows.extend(kernel_backward_rows(
            device,
            shape,
            [&q, &k, &v],
            &plans,
            runs,
        )?);
    }
    if wanted(Case::MethodBackward) {
        rows.extend(method_backward_rows(
            device,
            shape,
            [&q, &k, &v, &gate],
            runs,
        )?);
    }

    let report = json!({
        "shape": {"batch": b, "heads": h, "tokens": s, "head_dim": d, "grid": shape.grid.dims(), "block": BLOCK},
        "dtype": format!("{dtype:?}"), "device": format!("{device:?}"), "runs": runs, "results": rows,
    });
    std::fs::write(
        out_dir.join("attention.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    candle_core::safetensors::save(&masks, out_dir.join("masks.safetensors"))?;
    for row in report["results"].as_array().into_iter().flatten() {
        say!("{row}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole benchmark on a small grid on the CPU: every case runs, and each trainable path
    /// also runs forward and backward with gradients reaching its inputs (`forward_backward`
    /// fails otherwise), with a finite positive time.
    #[test]
    fn every_case_runs_forward_and_backward_on_a_small_grid() -> Result<()> {
        let shape = Shape {
            batch: 1,
            heads: 2,
            grid: TokenGrid { t: 8, h: 8, w: 8 },
            head_dim: 32,
        };
        let dir = std::env::temp_dir().join(format!("vdit-bench-attention-{}", std::process::id()));
        run(&Device::Cpu, shape, DType::F32, 1, &dir, &[])?;
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("attention.json"))?)?;
        std::fs::remove_dir_all(&dir)?;
        let rows = report["results"].as_array().context("no results")?;
        let backward: Vec<&serde_json::Value> = rows
            .iter()
            .filter(|r| r["pass"] == "forward+backward")
            .collect();
        // dense, one per density, VSA and its fine stage alone, VMoBA and its plan alone (one
        // kernel family on the CPU)
        assert_eq!(backward.len(), 1 + DENSITIES.len() + 4, "{backward:?}");
        for row in backward {
            assert!(row.get("error").is_none(), "{row}");
            let ms = row["ms"].as_f64().context("no time")?;
            let density = row["density"].as_f64().context("no density")?;
            assert!(ms.is_finite() && ms > 0.0, "{row}");
            assert!(density > 0.0 && density <= 1.0, "{row}");
        }
        Ok(())
    }

    /// `--case` keeps only the rows asked for (here VSA's forward).
    #[test]
    fn a_case_filter_times_only_its_rows() -> Result<()> {
        let shape = Shape {
            batch: 1,
            heads: 1,
            grid: TokenGrid { t: 4, h: 4, w: 8 },
            head_dim: 16,
        };
        let dir = std::env::temp_dir().join(format!("vdit-bench-case-{}", std::process::id()));
        run(&Device::Cpu, shape, DType::F32, 1, &dir, &[Case::Vsa])?;
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("attention.json"))?)?;
        std::fs::remove_dir_all(&dir)?;
        let names: Vec<&str> = report["results"]
            .as_array()
            .context("no results")?
            .iter()
            .filter_map(|r| r["impl"].as_str())
            .collect();
        assert_eq!(names, ["vdit VSA (coarse + top-k + fine)"]);
        Ok(())
    }
}
