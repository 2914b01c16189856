//! The attention methods, one module each, behind [`crate::AttentionMethod`] (see METHODS.md):
//! the method's options, its algorithm as functions, the method type and its registry entry.

pub mod dense;
pub mod paro;
pub mod sparsed;
pub mod vmoba;
#[cfg(feature = "cuda")]
mod vmoba_cuda;
pub mod vsa;
mod vsa_coarse;
