//! Token reorderings and their cut into blocks.
//!
//! A [`Permutation`] lists tokens in a new order (`order[slot] = natural token`), with its
//! inverse. A [`BlockLayout`] is a permutation (shared by all heads, or one per head) cut into
//! consecutive blocks of at most `tile` tokens; edge blocks of a tiling may hold fewer tokens
//! (their valid count is `len`).

use crate::TokenGrid;
use candle_core::{Result, Tensor};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Order of the three grid axes, outermost first: `Thw` is the natural order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AxisOrder {
    /// frames, rows, columns (natural)
    Thw,
    /// frames, columns, rows
    Twh,
    /// rows, frames, columns
    Htw,
    /// rows, columns, frames
    Hwt,
    /// columns, frames, rows
    Wth,
    /// columns, rows, frames
    Wht,
}

impl AxisOrder {
    /// All six orders, natural first.
    pub const ALL: [AxisOrder; 6] = [
        Self::Thw,
        Self::Twh,
        Self::Htw,
        Self::Hwt,
        Self::Wth,
        Self::Wht,
    ];

    /// Axis indices (0 = t, 1 = h, 2 = w), outermost first.
    pub fn axes(self) -> [usize; 3] {
        match self {
            Self::Thw => [0, 1, 2],
            Self::Twh => [0, 2, 1],
            Self::Htw => [1, 0, 2],
            Self::Hwt => [1, 2, 0],
            Self::Wth => [2, 0, 1],
            Self::Wht => [2, 1, 0],
        }
    }

    /// Index in [`AxisOrder::ALL`].
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|&o| o == self).unwrap_or(0)
    }

    /// The innermost (contiguous) axis: 0 = t, 1 = h, 2 = w.
    pub fn innermost(self) -> usize {
        self.axes()[2]
    }
}

impl fmt::Display for AxisOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = ['t', 'h', 'w'];
        let s: String = self.axes().iter().map(|&a| names[a]).collect();
        f.write_str(&s)
    }
}

/// A reordering of `n` tokens: `order[slot]` is the natural index of the token at `slot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permutation {
    order: Vec<u32>,
}

impl Permutation {
    /// The identity on `n` tokens.
    pub fn identity(n: usize) -> Self {
        Self {
            order: (0..n as u32).collect(),
        }
    }

    /// Wraps an explicit order, checking that it is a bijection of `0..order.len()`.
    pub fn from_order(order: Vec<u32>) -> Result<Self> {
        let mut seen = vec![false; order.len()];
        for &t in &order {
            let t = t as usize;
            if t >= seen.len() || seen[t] {
                candle_core::bail!("not a permutation: token {t} out of range or repeated")
            }
            seen[t] = true;
        }
        Ok(Self { order })
    }

    /// Tokens of `grid` listed with the axes nested as `axes` says (outermost first).
    pub fn axis_order(grid: TokenGrid, axes: AxisOrder) -> Self {
        let dims = grid.dims();
        let [a, b, c] = axes.axes();
        let mut order = Vec::with_capacity(grid.len());
        let mut pos = [0usize; 3];
        for i in 0..dims[a] {
            for j in 0..dims[b] {
                for k in 0..dims[c] {
                    pos[a] = i;
                    pos[b] = j;
                    pos[c] = k;
                    order.push(grid.index(pos[0], pos[1], pos[2]) as u32);
                }
            }
        }
        Self { order }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True for the permutation of no tokens.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `order[slot]` = natural token index.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// The inverse: `inverse.order()[token]` = slot of that token.
    pub fn inverse(&self) -> Self {
        let mut inv = vec![0u32; self.order.len()];
        for (slot, &t) in self.order.iter().enumerate() {
            inv[t as usize] = slot as u32;
        }
        Self { order: inv }
    }

    /// Reorders `x` along `dim`: `out[.., slot, ..] = x[.., order[slot], ..]`.
    pub fn apply(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let index = Tensor::from_slice(&self.order, self.order.len(), x.device())?;
        x.index_select(&index, dim)
    }
}

/// A token order cut into consecutive blocks; the order may differ per head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    /// One permutation shared by all heads, or one per head.
    orders: Vec<Permutation>,
    /// Block boundaries in slots: block `i` is `starts[i]..starts[i + 1]`.
    starts: Vec<u32>,
    /// Largest block size (the nominal tile; GPU kernels pad blocks to it).
    tile: usize,
}

/// Layouts built once per key and shared (see [`BlockLayout::tiled_shared`]).
type SharedLayouts<K> = Mutex<Option<HashMap<K, Arc<BlockLayout>>>>;

impl BlockLayout {
    /// Natural order in blocks of `block` tokens (the last may be shorter).
    pub fn natural(tokens: usize, block: usize) -> Self {
        Self::from_order(Permutation::identity(tokens), block)
    }

    /// One order cut every `block` slots.
    pub fn from_order(order: Permutation, block: usize) -> Self {
        Self::per_head(vec![order], block)
    }

    /// One order per head (all of the same length), each cut every `block` slots.
    pub fn per_head(orders: Vec<Permutation>, block: usize) -> Self {
        let n = orders.first().map_or(0, Permutation::len);
        let block = block.max(1);
        let mut starts: Vec<u32> = (0..n).step_by(block).map(|s| s as u32).collect();
        starts.push(n as u32);
        Self {
            orders,
            starts,
            tile: block.min(n.max(1)),
        }
    }

    /// Tiles `grid` into boxes of `tile = [t, h, w]` tokens (edge boxes partial), box-major in
    /// t-h-w order of boxes and t-h-w order inside a box: VSA cubes, VMoBA chunks.
    pub fn tiled(grid: TokenGrid, tile: [usize; 3]) -> Self {
        let dims = grid.dims();
        let tile = [0, 1, 2].map(|a| tile[a].clamp(1, dims[a].max(1)));
        let boxes = [0, 1, 2].map(|a| dims[a].div_ceil(tile[a]));
        let mut order = Vec::with_capacity(grid.len());
        let mut starts = vec![0u32];
        for bt in 0..boxes[0] {
            for bh in 0..boxes[1] {
                for bw in 0..boxes[2] {
                    let lo = [bt * tile[0], bh * tile[1], bw * tile[2]];
                    let hi = [0, 1, 2].map(|a| (lo[a] + tile[a]).min(dims[a]));
                    for t in lo[0]..hi[0] {
                        for h in lo[1]..hi[1] {
                            for w in lo[2]..hi[2] {
                                order.push(grid.index(t, h, w) as u32);
                            }
                        }
                    }
                    starts.push(order.len() as u32);
                }
            }
        }
        Self {
            orders: vec![Permutation { order }],
            starts,
            tile: tile.iter().product(),
        }
    }

    /// [`BlockLayout::tiled`], built once per (grid, tile) and shared, so that device copies
    /// are made once too.
    pub fn tiled_shared(grid: TokenGrid, tile: [usize; 3]) -> Arc<Self> {
        static CACHE: SharedLayouts<(TokenGrid, [usize; 3])> = Mutex::new(None);
        let mut cache = CACHE.lock().expect("layout cache lock");
        let map = cache.get_or_insert_with(HashMap::new);
        Arc::clone(
            map.entry((grid, tile))
                .or_insert_with(|| Arc::new(Self::tiled(grid, tile))),
        )
    }

    /// [`BlockLayout::natural`], built once per (tokens, block) and shared.
    pub fn natural_shared(tokens: usize, block: usize) -> Arc<Self> {
        static CACHE: SharedLayouts<(usize, usize)> = Mutex::new(None);
        let mut cache = CACHE.lock().expect("layout cache lock");
        let map = cache.get_or_insert_with(HashMap::new);
        Arc::clone(
            map.entry((tokens, block))
                .or_insert_with(|| Arc::new(Self::natural(tokens, block))),
        )
    }

    /// Each token its own block, natural order (per-query selections).
    pub fn singletons(tokens: usize) -> Self {
        Self::natural(tokens, 1)
    }

    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.orders[0].len()
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.starts.len() - 1
    }

    /// Largest block size.
    pub fn tile(&self) -> usize {
        self.tile
    }

    /// True when every head shares one order.
    pub fn is_shared(&self) -> bool {
        self.orders.len() == 1
    }

    /// The order used by `head`.
    pub fn order(&self, head: usize) -> &Permutation {
        &self.orders[if self.orders.len() == 1 { 0 } else { head }]
    }

    /// Number of distinct orders (1 when shared).
    pub fn num_orders(&self) -> usize {
        self.orders.len()
    }

    /// Slot range of `block`.
    pub fn block(&self, block: usize) -> std::ops::Range<usize> {
        self.starts[block] as usize..self.starts[block + 1] as usize
    }

    /// Tokens (valid slots) in `block`.
    pub fn block_len(&self, block: usize) -> usize {
        (self.starts[block + 1] - self.starts[block]) as usize
    }

    /// Block boundaries in slots (`num_blocks + 1` entries).
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }

    /// For `head`, the block holding each natural token.
    pub fn block_of_token(&self, head: usize) -> Vec<u32> {
        let order = self.order(head).order();
        let mut out = vec![0u32; order.len()];
        for b in 0..self.num_blocks() {
            for slot in self.block(b) {
                out[order[slot] as usize] = b as u32;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn permutation_then_inverse_is_the_identity() -> Result<()> {
        let grid = TokenGrid::new(3, 5, 7);
        let x = Tensor::randn(0f32, 1.0, (2, grid.len(), 4), &Device::Cpu)?;
        for order in AxisOrder::ALL {
            let p = Permutation::axis_order(grid, order);
            Permutation::from_order(p.order().to_vec())?; // a bijection
            let back = p.inverse().apply(&p.apply(&x, 1)?, 1)?;
            assert_eq!(back.to_vec3::<f32>()?, x.to_vec3::<f32>()?, "{order}");
        }
        let tiled = BlockLayout::tiled(grid, [2, 2, 3]);
        let p = tiled.order(0);
        Permutation::from_order(p.order().to_vec())?;
        let back = p.inverse().apply(&p.apply(&x, 1)?, 1)?;
        assert_eq!(back.to_vec3::<f32>()?, x.to_vec3::<f32>()?);
        Ok(())
    }

    #[test]
    fn axis_orders_make_the_innermost_axis_contiguous() {
        let grid = TokenGrid::new(2, 3, 4);
        let p = Permutation::axis_order(grid, AxisOrder::Hwt);
        // first two slots: token (t=0,h=0,w=0) then (t=1,h=0,w=0)
        assert_eq!(&p.order()[..3], &[0, 12, 1]);
        assert_eq!(AxisOrder::Hwt.innermost(), 0);
        assert_eq!(
            Permutation::axis_order(grid, AxisOrder::Thw),
            Permutation::identity(24)
        );
        assert!(Permutation::from_order(vec![0, 0, 1]).is_err());
    }

    #[test]
    fn tiling_keeps_partial_edge_tiles_and_valid_counts() {
        // 5x6x10 with 4x4x4 cubes: 2 x 2 x 3 cubes
        let grid = TokenGrid::new(5, 6, 10);
        let l = BlockLayout::tiled(grid, [4, 4, 4]);
        assert_eq!(l.num_blocks(), 12);
        assert_eq!(l.tile(), 64);
        assert_eq!(l.block_len(0), 64);
        assert_eq!(l.block_len(2), 4 * 4 * 2); // t full, h full, w partial (8..10)
        assert_eq!(l.block_len(11), 2 * 2); // one frame (t=4), h=4..6, w=8..10
        let total: usize = (0..l.num_blocks()).map(|b| l.block_len(b)).sum();
        assert_eq!(total, grid.len());
        // inside the first cube the order is t, h, w
        assert_eq!(&l.order(0).order()[..5], &[0, 1, 2, 3, 10]);
        let owner = l.block_of_token(0);
        assert_eq!(owner[grid.index(4, 5, 9)], 11);
    }
}
