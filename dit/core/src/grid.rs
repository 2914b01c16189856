//! The latent token grid that video-aware attention methods tile.

use std::fmt;

/// Size of the patchified latent video: `t` frames of `h` x `w` tokens, flattened t-major
/// (token index = (ti * h + hi) * w + wi).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenGrid {
    /// Latent frames after temporal patching.
    pub t: usize,
    /// Token rows per frame.
    pub h: usize,
    /// Token columns per frame.
    pub w: usize,
}

impl TokenGrid {
    /// A grid of `t` x `h` x `w` tokens.
    pub fn new(t: usize, h: usize, w: usize) -> Self {
        Self { t, h, w }
    }

    /// Number of tokens, `t * h * w`.
    pub fn len(&self) -> usize {
        self.t * self.h * self.w
    }

    /// True when any side is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sides as an array in (t, h, w) order.
    pub fn dims(&self) -> [usize; 3] {
        [self.t, self.h, self.w]
    }

    /// Flat index of token (t, h, w) in natural order.
    pub fn index(&self, t: usize, h: usize, w: usize) -> usize {
        (t * self.h + h) * self.w + w
    }
}

impl fmt::Display for TokenGrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.t, self.h, self.w)
    }
}
