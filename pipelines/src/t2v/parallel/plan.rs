//! How the ranks of a multi-device run split a generation.

use crate::error::fail;
use crate::Result;
use candle_core::Device;
use serde::Serialize;
use vdit_core::parallel::heads_per_rank;

/// The split of one generation over `devices` ranks: rank `r` is in guidance group
/// `r / sequence` (0: the conditional pass, 1: the unconditional one) at place `r % sequence`
/// of its sequence-parallel group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ParallelPlan {
    /// Ranks, one per device.
    pub devices: usize,
    /// Ranks that split each forward pass's tokens (Ulysses); 1 for none.
    pub sequence: usize,
    /// Whether the conditional and unconditional passes run on different ranks.
    pub guidance_split: bool,
}

impl ParallelPlan {
    /// One device, nothing split.
    pub const SINGLE: Self = Self {
        devices: 1,
        sequence: 1,
        guidance_split: false,
    };

    /// The plan for `devices` devices of a model with `heads` attention heads. `sequence` and
    /// `guidance_split` are taken as asked; left open, guidance is split when the generation is
    /// `guided` and the device count is even (its passes need no communication), and the
    /// remaining factor splits the sequence.
    pub fn choose(
        devices: usize,
        sequence: Option<usize>,
        guidance_split: Option<bool>,
        guided: bool,
        heads: usize,
    ) -> Result<Self> {
        if devices == 0 {
            fail!(Usage, "a run needs at least one GPU");
        }
        if sequence == Some(0) {
            fail!(Usage, "--sp 0 is not a split: give 1 or more");
        }
        let split = match (guidance_split, sequence) {
            (Some(split), _) => split,
            (None, Some(sp)) => guided && sp.checked_mul(2) == Some(devices),
            (None, None) => guided && devices.is_multiple_of(2),
        };
        if split && !guided {
            fail!(
                Usage,
                "--cfg-parallel splits the conditional and unconditional passes, but guidance is \
                 off (1.0): set --guidance above 1 or drop --cfg-parallel"
            );
        }
        if split && !devices.is_multiple_of(2) {
            fail!(
                Usage,
                "--cfg-parallel needs an even number of GPUs, got {devices}: use --sp {devices} \
                 alone"
            );
        }
        let groups = if split { 2 } else { 1 };
        let sp = sequence.unwrap_or(devices / groups);
        if sp.checked_mul(groups) != Some(devices) {
            let how = if split { " with --cfg-parallel" } else { "" };
            fail!(
                Usage,
                "--sp {sp}{how} needs {} GPUs, but {devices} are given: use --sp {}",
                sp.saturating_mul(groups),
                devices / groups
            );
        }
        heads_per_rank(heads, sp).map_err(crate::Error::Usage)?;
        Ok(Self {
            devices,
            sequence: sp,
            guidance_split: split,
        })
    }

    /// Rank `rank`'s (guidance group, place in its sequence group).
    pub fn place(&self, rank: usize) -> (usize, usize) {
        (rank / self.sequence, rank % self.sequence)
    }

    /// The ranks of each sequence-parallel group.
    pub fn sequence_groups(&self) -> Vec<Vec<usize>> {
        let groups = self.devices / self.sequence;
        (0..groups)
            .map(|g| (0..self.sequence).map(|s| g * self.sequence + s).collect())
            .collect()
    }

    /// The rank pairs that exchange their guidance passes (empty without the split).
    pub fn guidance_pairs(&self) -> Vec<Vec<usize>> {
        match self.guidance_split {
            true => (0..self.sequence)
                .map(|s| vec![s, self.sequence + s])
                .collect(),
            false => Vec::new(),
        }
    }
}

/// The devices of a run, rank `r` on `devices[r]`, and how the run splits over them.
#[derive(Clone, Debug)]
pub struct Placement {
    /// One device per rank; rank 0's also encodes the text and decodes the video.
    pub devices: Vec<Device>,
    /// The split.
    pub plan: ParallelPlan,
}

impl Placement {
    /// Everything on `device`.
    pub fn single(device: &Device) -> Self {
        Self {
            devices: vec![device.clone()],
            plan: ParallelPlan::SINGLE,
        }
    }

    /// `plan` over `devices` (one per rank).
    pub fn new(devices: Vec<Device>, plan: ParallelPlan) -> Result<Self> {
        if devices.len() != plan.devices || devices.is_empty() {
            fail!(
                Usage,
                "the split has {} ranks but {} devices were opened",
                plan.devices,
                devices.len()
            );
        }
        Ok(Self { devices, plan })
    }

    /// Rank 0's device.
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        devices: usize,
        sp: Option<usize>,
        cfg: Option<bool>,
        guided: bool,
    ) -> Result<ParallelPlan> {
        ParallelPlan::choose(devices, sp, cfg, guided, 12)
    }

    #[test]
    fn defaults_split_guidance_first_then_the_sequence() {
        let p = plan(2, None, None, true).unwrap();
        assert_eq!((p.sequence, p.guidance_split), (1, true));
        let p = plan(4, None, None, true).unwrap();
        assert_eq!((p.sequence, p.guidance_split), (2, true));
        assert_eq!(p.sequence_groups(), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(p.guidance_pairs(), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(p.place(3), (1, 1));
        let p = plan(3, None, None, true).unwrap();
        assert_eq!((p.sequence, p.guidance_split), (3, false));
        let p = plan(2, None, None, false).unwrap();
        assert_eq!((p.sequence, p.guidance_split), (2, false));
        let p = plan(2, Some(2), None, true).unwrap();
        assert_eq!((p.sequence, p.guidance_split), (2, false));
        assert_eq!(plan(1, None, None, true).unwrap(), ParallelPlan::SINGLE);
    }

    #[test]
    fn impossible_splits_say_what_works() {
        let e = |r: Result<ParallelPlan>| r.unwrap_err().to_string();
        assert!(e(plan(2, None, Some(true), false)).contains("guidance is off"));
        assert!(e(plan(3, None, Some(true), true)).contains("even number of GPUs, got 3"));
        assert!(e(plan(4, Some(3), None, true)).contains("use --sp 4"));
        assert!(e(plan(4, Some(1), Some(true), true)).contains("use --sp 2"));
        assert!(e(plan(5, None, None, false)).contains("1, 2, 3, 4, 6, 12"));
        assert!(e(plan(0, None, None, true)).contains("at least one GPU"));
    }
}
