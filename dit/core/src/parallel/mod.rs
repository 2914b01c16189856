//! One generation spread over several devices: the collectives ranks exchange tensors through
//! ([`Collective`]: threads in one process, or NCCL between GPUs) and the arithmetic of the
//! split ([`TokenShards`] for sequence parallelism, [`heads_per_rank`] for its heads).
//!
//! Every rank calls the same collectives in the same order. A collective that waits longer
//! than its group's timeout, or whose group another rank marked failed ([`Collective::abort`]),
//! returns an error naming the rank, so a failing rank ends the whole run instead of hanging it.

mod collective;
mod local;
#[cfg(feature = "nccl")]
mod nccl;
mod split;

pub use collective::{Collective, GroupHealth, DEFAULT_TIMEOUT};
pub use local::LocalGroup;
#[cfg(feature = "nccl")]
pub use nccl::NcclGroup;
pub use split::{heads_per_rank, TokenShards};
