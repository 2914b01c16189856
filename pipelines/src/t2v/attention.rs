//! The attention schedule of a generation, checked against the token grid and the transformer
//! before any heavy work.

use crate::error::fail;
use crate::t2v::settings::{Settings, VAE_SPATIAL, VAE_TEMPORAL};
use crate::{Error, Result};
use dit::WanConfig;
use sparse::{AttentionSchedule, AttentionTarget, TokenGrid};

/// The transformer's token grid for a generation with `settings`.
pub fn token_grid(settings: &Settings, config: &WanConfig) -> Result<TokenGrid> {
    let [_, _, t, h, w] = settings.latent_shape(config.in_channels);
    let [pt, ph, pw] = config.patch_size;
    if t % pt != 0 || h % ph != 0 || w % pw != 0 {
        fail!(
            Usage,
            "latents {t}x{h}x{w} of size {} and {} frames do not divide into the transformer's \
             {pt}x{ph}x{pw} patches",
            settings.size,
            settings.frames
        );
    }
    let (t, h, w) = (t / pt, h / ph, w / pw);
    if t.checked_mul(h).and_then(|th| th.checked_mul(w)).is_none() {
        fail!(
            Usage,
            "a {} video of {} frames has more tokens than can be counted: use a smaller --size \
             or fewer --frames",
            settings.size,
            settings.frames
        );
    }
    Ok(TokenGrid::new(t, h, w))
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

/// Checks that every method of `schedule` can run on `grid` with this transformer (a PARO
/// calibration must be for this grid and model, VMoBA's chunks must fit the grid, ...); a
/// grid mismatch is told in video sizes.
pub fn check_schedule(
    schedule: &AttentionSchedule,
    grid: TokenGrid,
    config: &WanConfig,
) -> Result<()> {
    let target = AttentionTarget {
        grid,
        layers: Some(config.num_layers),
        heads: config.num_heads,
        head_dim: config.head_dim,
    };
    schedule.validate(&target).map_err(|e| match e {
        sparse::Error::WrongGrid {
            what,
            made_for,
            this_run,
            fix,
        } => Error::Usage(format!(
            "the {what} is for {} (token grid {made_for}), this generation is {} (token grid \
             {this_run}): {fix}",
            video_of_grid(made_for, config),
            video_of_grid(this_run, config)
        )),
        other => other.into(),
    })
}
