//! One generation over several devices of a host: a [`ParallelPlan`] says how the ranks split
//! the work (Ulysses sequence parallelism inside each forward pass, the conditional and
//! unconditional passes of guidance on different groups, or both), and [`Ranks`] runs the
//! ranks other than 0 on threads of their own, each with its own copy of the transformer.
//!
//! The calling thread is rank 0: it encodes the text, runs its share of the sampling loop, and
//! decodes the latents with the VAE, as a single-device run does. Every rank ends each step
//! with the same latents, so rank 0's are the result. A rank that fails marks the group failed;
//! the others stop at their next collective, and the run ends with the first rank's error.

mod plan;
mod ranks;

pub use plan::{ParallelPlan, Placement};
pub use ranks::{collectives, RankJob, RankLinks, Ranks};
