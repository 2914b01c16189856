//! What the model crates share, below all of them: checkpoint loading ([`weights`]), the
//! latent token grid ([`TokenGrid`]), the place of a forward pass in the sampling loop
//! ([`Step`]), error measures ([`metrics`]), a bitmap font for labels ([`font`]), peak GPU
//! memory ([`memory`]), safe output files ([`output`]), the collectives and splits of
//! multi-device runs ([`parallel`]), custom operations' CPU inputs ([`storage`]) and, with the `cuda` feature, the helpers that launch the
//! engine's CUDA kernels on candle's storage ([`cuda`]).

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod font;
mod grid;
pub mod memory;
pub mod metrics;
pub mod output;
pub mod parallel;
mod step;
pub mod storage;
pub mod weights;

pub use grid::TokenGrid;
pub use step::Step;
pub use weights::{Checkpoint, KeyRename, WeightError, WeightPatch};
