//! Training on the engine's own model code.
//!
//! - [`data`]: procedurally rendered videos of coloured shapes, deterministic by seed, with a
//!   caption from one documented grammar, and a split that holds some combinations out.
//! - [`optim`]: AdamW with f32 master weights, the learning-rate schedule, gradient clipping,
//!   EMA weights, checkpoints with optimiser state, and the loss log.
//! - [`eval`]: reads generated pixels back (colour, shape, motion) against the asked caption.
//! - [`recipe`]: the model sizes (`small`, `tiny`), their configs, initialisations and tokenizer.
//! - [`params`]: f32 master weights handed to the engine's own `new(vb)` constructors.
//! - [`trainer`]: the loop (objective, backward, clip, AdamW, EMA, log, checkpoints, resume).
//! - [`vae_stage`], [`dit_stage`]: the two objectives (reconstruction, flow matching), with
//!   [`clips`] and [`latent_set`] feeding them.
//! - [`run`]: each stage end to end, from options to a [`model_folder`] the engine loads.

pub mod clips;
pub mod data;
pub mod dit_stage;
pub mod error;
pub mod eval;
pub mod latent_set;
pub mod model_folder;
pub mod optim;
pub mod params;
pub mod recipe;
pub mod run;
pub mod trainer;
pub mod vae_stage;

pub use error::{Error, Result};
