//! Where a forward pass sits in the sampling loop.

/// A denoising step: its index and the number of steps of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    /// Step index, from 0.
    pub index: usize,
    /// Total steps of the run (1 for a lone forward pass).
    pub count: usize,
}

impl Step {
    /// A lone forward pass (tests, probes, training): step 0 of 1.
    pub const SINGLE: Step = Step { index: 0, count: 1 };

    /// Step `index` of `count`.
    pub fn new(index: usize, count: usize) -> Self {
        Self { index, count }
    }

    /// The step after this one, if the run has one.
    pub fn next(self) -> Option<Self> {
        (self.index + 1 < self.count).then_some(Self {
            index: self.index + 1,
            ..self
        })
    }
}
