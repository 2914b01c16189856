//! The attention schedule of a generation: checked against the token grid and the transformer
//! before any heavy work, and described for the record.

use crate::t2v::settings::{Settings, VAE_SPATIAL, VAE_TEMPORAL};
use anyhow::{bail, Result};
use dit::WanConfig;
use serde_json::{json, Value};
use sparse::{AttentionSchedule, Method, StepCount, TokenGrid};

/// The transformer's token grid for a generation with `settings`.
pub fn token_grid(settings: &Settings, config: &WanConfig) -> Result<TokenGrid> {
    let [_, _, t, h, w] = settings.latent_shape(config.in_channels);
    let [pt, ph, pw] = config.patch_size;
    if t % pt != 0 || h % ph != 0 || w % pw != 0 {
        bail!(
            "latents {t}x{h}x{w} of size {} and {} frames do not divide into the transformer's \
             {pt}x{ph}x{pw} patches",
            settings.size,
            settings.frames
        );
    }
    Ok(TokenGrid::new(t / pt, h / ph, w / pw))
}

/// The video size and frame count whose tokens form `grid` (the inverse of [`token_grid`]).
fn video_of_grid(grid: TokenGrid, config: &WanConfig) -> String {
    let [pt, ph, pw] = config.patch_size;
    let frames = (grid.t * pt - 1) * VAE_TEMPORAL + 1;
    format!(
        "{}x{}, {frames} frames",
        grid.w * pw * VAE_SPATIAL,
        grid.h * ph * VAE_SPATIAL
    )
}

/// Checks that every method of `schedule` can run on `grid` with this transformer: a PARO
/// calibration must be for this grid and model, VMoBA's chunks must fit the grid.
pub fn check_schedule(
    schedule: &AttentionSchedule,
    grid: TokenGrid,
    config: &WanConfig,
) -> Result<()> {
    let methods =
        std::iter::once(&schedule.default).chain(schedule.rules.iter().map(|r| &r.method));
    for method in methods {
        match method {
            Method::Paro(calibration) => {
                if calibration.grid != grid {
                    bail!(
                        "the PARO calibration is for {} (token grid {}), this generation is {} \
                         (token grid {grid}): calibrate at this size with `vdit calibrate paro`",
                        video_of_grid(calibration.grid, config),
                        calibration.grid,
                        video_of_grid(grid, config)
                    );
                }
                if (calibration.layers, calibration.heads) != (config.num_layers, config.num_heads)
                {
                    bail!(
                        "the PARO calibration covers {} layers of {} heads, the transformer has {} \
                         of {}: calibrate with this model",
                        calibration.layers,
                        calibration.heads,
                        config.num_layers,
                        config.num_heads
                    );
                }
            }
            Method::Vmoba(options) => options.validate(Some(grid)).map_err(anyhow::Error::msg)?,
            _ => {}
        }
    }
    Ok(())
}

/// The schedule as JSON: the default method and the rules in order, with resolved options.
pub fn describe_schedule(schedule: &AttentionSchedule) -> Value {
    let rules: Vec<Value> = schedule
        .rules
        .iter()
        .map(|rule| {
            json!({
                "layers": rule.layers.as_ref().map_or("all".to_string(), |l| l.to_string()),
                "from_step": step_count(rule.from),
                "to_step": rule.to.map(step_count),
                "method": describe_method(&rule.method),
            })
        })
        .collect();
    json!({ "default": describe_method(&schedule.default), "rules": rules })
}

fn step_count(count: StepCount) -> Value {
    match count {
        StepCount::Steps(n) => json!({ "steps": n }),
        StepCount::Fraction(f) => json!({ "fraction": f }),
    }
}

/// A method's name and every option it runs with.
pub fn describe_method(method: &Method) -> Value {
    let options = match method {
        Method::Dense => json!({}),
        Method::Vsa(o) => json!({ "sparsity": o.sparsity, "tile": o.tile }),
        Method::Vmoba(o) => json!({
            "chunk_kind": o.kind.map_or("cycle by layer".to_string(), |k| k.to_string()),
            "temporal_chunk": o.temporal_chunk,
            "spatial_chunk": o.spatial_chunk,
            "st_chunk": o.st_chunk,
            "topk": o.topk,
            "selection": format!("{:?}", o.selection),
            "scope": format!("{:?}", o.scope),
        }),
        Method::Paro(c) => json!({
            "grid": [c.grid.t, c.grid.h, c.grid.w],
            "block": c.block,
            "density": c.density,
            "layers": c.layers,
            "heads": c.heads,
            "step_groups": c.groups,
        }),
        Method::Sparsed(o) => json!({ "select": o.select, "block": o.block }),
    };
    json!({ "name": method.name(), "options": options })
}
