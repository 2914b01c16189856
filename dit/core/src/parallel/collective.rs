//! The collective operations sequence and guidance parallelism need, and the health of a group.

use candle_core::{Result, Tensor};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a rank waits in one collective for the others before it gives up: long enough for
/// the slowest denoising step of a 14B model on one rank, short enough that a hang ends.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One rank's end of a group of ranks that exchange tensors.
///
/// Every rank of the group calls the same collectives, with tensors of the same shape and
/// dtype, in the same order.
pub trait Collective: Send + Sync {
    /// This rank, from 0.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn size(&self) -> usize;

    /// `x: [size, ...]`: slice `j` goes to rank `j`. Returns `[size, ...]` whose slice `j` is
    /// what rank `j` sent to this rank.
    fn all_to_all(&self, x: &Tensor) -> Result<Tensor>;

    /// Every rank's `x`, stacked in rank order: `[size, ...x]`.
    fn all_gather(&self, x: &Tensor) -> Result<Tensor>;

    /// Marks the group failed with `reason`: collectives waiting now, and every later one, on
    /// every rank return an error saying it.
    fn abort(&self, reason: &str);
}

/// Whether a group is still healthy, shared by its ranks (and by groups that run together,
/// such as the sequence and guidance groups of one generation).
#[derive(Clone, Debug, Default)]
pub struct GroupHealth {
    failure: Arc<Mutex<Option<String>>>,
}

impl GroupHealth {
    /// A healthy group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the first failure (later ones are consequences of it).
    pub fn fail(&self, reason: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_none() {
            *failure = Some(reason.to_string());
        }
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// An error for `rank` when the group has failed.
    pub fn check(&self, rank: usize) -> Result<()> {
        match self.failure() {
            Some(reason) => candle_core::bail!("rank {rank} stopped: {reason}"),
            None => Ok(()),
        }
    }
}
