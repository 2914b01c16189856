//! Which key blocks each query block attends to.
//!
//! A [`SparsePlan`] pairs a query [`BlockLayout`] and a key layout with a [`BlockMask`]: for
//! every (batch, head, query block) a list of key blocks. Every sparse method produces one; the
//! CPU engine and the GPU kernels consume it. Dense attention is the plan with every block.

use crate::layout::BlockLayout;
use candle_core::{DType, Device, Result, Tensor};
use std::borrow::Cow;
use std::sync::Arc;

/// Compressed lists of key blocks, one list per (group, query block), where a group is one
/// (batch, head) pair, `group = b * heads + h`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMask {
    groups: usize,
    q_blocks: usize,
    k_blocks: usize,
    /// `offsets[g * q_blocks + qb] .. offsets[.. + 1]` indexes `indices`.
    offsets: Vec<u32>,
    indices: Vec<u32>,
}

impl BlockMask {
    /// Builds a mask from one list of key blocks per (group, query block), in that order.
    pub fn from_lists(
        groups: usize,
        q_blocks: usize,
        k_blocks: usize,
        lists: &[Vec<u32>],
    ) -> Result<Self> {
        if lists.len() != groups * q_blocks {
            candle_core::bail!(
                "block mask: {} lists for {groups} x {q_blocks} query blocks",
                lists.len()
            )
        }
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        let mut indices = Vec::new();
        offsets.push(0);
        for list in lists {
            if let Some(&bad) = list.iter().find(|&&k| k as usize >= k_blocks) {
                candle_core::bail!("block mask: key block {bad} out of range ({k_blocks} blocks)")
            }
            indices.extend_from_slice(list);
            offsets.push(indices.len() as u32);
        }
        Ok(Self {
            groups,
            q_blocks,
            k_blocks,
            offsets,
            indices,
        })
    }

    /// Lists of exactly `k` blocks each, from a row-major `[lists, k]` array.
    pub fn from_uniform(
        groups: usize,
        q_blocks: usize,
        k_blocks: usize,
        k: usize,
        indices: Vec<u32>,
    ) -> Result<Self> {
        if indices.len() != groups * q_blocks * k {
            candle_core::bail!(
                "block mask: {} indices for {groups} x {q_blocks} lists of {k}",
                indices.len()
            )
        }
        if let Some(&bad) = indices.iter().find(|&&i| i as usize >= k_blocks) {
            candle_core::bail!("block mask: key block {bad} out of range ({k_blocks} blocks)")
        }
        let offsets = (0..=groups * q_blocks).map(|i| (i * k) as u32).collect();
        Ok(Self {
            groups,
            q_blocks,
            k_blocks,
            offsets,
            indices,
        })
    }

    /// Every query block attends to every key block.
    pub fn full(groups: usize, q_blocks: usize, k_blocks: usize) -> Self {
        let all: Vec<u32> = (0..k_blocks as u32).collect();
        let mut indices = Vec::with_capacity(groups * q_blocks * k_blocks);
        let mut offsets = Vec::with_capacity(groups * q_blocks + 1);
        offsets.push(0);
        for _ in 0..groups * q_blocks {
            indices.extend_from_slice(&all);
            offsets.push(indices.len() as u32);
        }
        Self {
            groups,
            q_blocks,
            k_blocks,
            offsets,
            indices,
        }
    }

    /// Number of (batch, head) groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Query blocks per group.
    pub fn q_blocks(&self) -> usize {
        self.q_blocks
    }

    /// Key blocks per group.
    pub fn k_blocks(&self) -> usize {
        self.k_blocks
    }

    /// Key blocks attended by query block `qb` of `group`.
    pub fn keys(&self, group: usize, qb: usize) -> &[u32] {
        let i = group * self.q_blocks + qb;
        &self.indices[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// CSR offsets (`groups * q_blocks + 1` entries).
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    /// CSR key-block indices.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// The transposed mask: for every (group, key block), the query blocks that attend to it.
    pub fn transpose(&self) -> BlockMask {
        let mut counts = vec![0u32; self.groups * self.k_blocks];
        for g in 0..self.groups {
            for qb in 0..self.q_blocks {
                for &kb in self.keys(g, qb) {
                    counts[g * self.k_blocks + kb as usize] += 1;
                }
            }
        }
        let mut offsets = Vec::with_capacity(counts.len() + 1);
        offsets.push(0u32);
        for c in &counts {
            offsets.push(offsets.last().unwrap() + c);
        }
        let mut fill = offsets.clone();
        let mut indices = vec![0u32; self.indices.len()];
        for g in 0..self.groups {
            for qb in 0..self.q_blocks {
                for &kb in self.keys(g, qb) {
                    let slot = &mut fill[g * self.k_blocks + kb as usize];
                    indices[*slot as usize] = qb as u32;
                    *slot += 1;
                }
            }
        }
        BlockMask {
            groups: self.groups,
            q_blocks: self.k_blocks,
            k_blocks: self.q_blocks,
            offsets,
            indices,
        }
    }
}

/// The key blocks of every (group, query block), wherever they were computed.
#[derive(Clone, Debug)]
pub enum KeyBlocks {
    /// Lists of any length, on the host.
    Lists(BlockMask),
    /// Exactly `k` key blocks per query block: a u32 tensor `[groups * q_blocks, k]` on the
    /// device that selected them (VSA and SparseD top-k), so selection never leaves the GPU.
    Uniform(Tensor),
    /// Every key block (dense attention), with nothing to store.
    All,
}

/// A complete block-sparse attention plan for `batch x heads` groups.
#[derive(Clone, Debug)]
pub struct SparsePlan {
    /// Batch size.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// How queries are grouped into blocks.
    pub q_layout: Arc<BlockLayout>,
    /// How keys (and values) are grouped into blocks.
    pub k_layout: Arc<BlockLayout>,
    /// Key blocks per (group, query block).
    pub keys: KeyBlocks,
}

impl SparsePlan {
    /// A plan with host lists, checking that the parts fit together.
    pub fn new(
        batch: usize,
        heads: usize,
        q_layout: Arc<BlockLayout>,
        k_layout: Arc<BlockLayout>,
        mask: BlockMask,
    ) -> Result<Self> {
        if mask.groups() != batch * heads
            || mask.q_blocks() != q_layout.num_blocks()
            || mask.k_blocks() != k_layout.num_blocks()
        {
            candle_core::bail!(
                "sparse plan: mask is {}x{}x{} but layouts give {}x{}x{}",
                mask.groups(),
                mask.q_blocks(),
                mask.k_blocks(),
                batch * heads,
                q_layout.num_blocks(),
                k_layout.num_blocks()
            )
        }
        check_orders(heads, &q_layout, &k_layout)?;
        Ok(Self {
            batch,
            heads,
            q_layout,
            k_layout,
            keys: KeyBlocks::Lists(mask),
        })
    }

    /// A plan keeping the same number of key blocks for every query block: `indices` is a
    /// u32 tensor `[batch * heads * q_blocks, k]` on any device.
    pub fn uniform(
        batch: usize,
        heads: usize,
        q_layout: Arc<BlockLayout>,
        k_layout: Arc<BlockLayout>,
        indices: Tensor,
    ) -> Result<Self> {
        let (rows, k) = indices.dims2()?;
        if rows != batch * heads * q_layout.num_blocks()
            || k == 0
            || k > k_layout.num_blocks()
            || indices.dtype() != DType::U32
        {
            candle_core::bail!(
                "sparse plan: key-block indices {:?} {:?} do not fit {batch} x {heads} x {} query blocks of {} key blocks",
                indices.dims(),
                indices.dtype(),
                q_layout.num_blocks(),
                k_layout.num_blocks()
            )
        }
        check_orders(heads, &q_layout, &k_layout)?;
        Ok(Self {
            batch,
            heads,
            q_layout,
            k_layout,
            keys: KeyBlocks::Uniform(indices),
        })
    }

    /// The dense plan: one layout for queries and keys, every block pair kept.
    pub fn dense(batch: usize, heads: usize, layout: Arc<BlockLayout>) -> Self {
        Self::all(batch, heads, layout.clone(), layout)
    }

    /// Every query block attends to every key block; queries and keys may differ in number
    /// (cross-attention).
    pub fn all(
        batch: usize,
        heads: usize,
        q_layout: Arc<BlockLayout>,
        k_layout: Arc<BlockLayout>,
    ) -> Self {
        Self {
            batch,
            heads,
            q_layout,
            k_layout,
            keys: KeyBlocks::All,
        }
    }

    /// The key-block lists on the host (a uniform tensor is read back).
    pub fn host_mask(&self) -> Result<Cow<'_, BlockMask>> {
        match &self.keys {
            KeyBlocks::Lists(mask) => Ok(Cow::Borrowed(mask)),
            KeyBlocks::All => Ok(Cow::Owned(BlockMask::full(
                self.batch * self.heads,
                self.q_layout.num_blocks(),
                self.k_layout.num_blocks(),
            ))),
            KeyBlocks::Uniform(t) => {
                let k = t.dim(1)?;
                let indices = t.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<u32>()?;
                let (nq, nk) = (self.q_layout.num_blocks(), self.k_layout.num_blocks());
                Ok(Cow::Owned(BlockMask::from_uniform(
                    self.batch * self.heads,
                    nq,
                    nk,
                    k,
                    indices,
                )?))
            }
        }
    }

    /// All query-key pairs, `batch * heads * Sq * Sk`.
    pub fn possible_pairs(&self) -> f64 {
        (self.batch * self.heads) as f64
            * self.q_layout.tokens() as f64
            * self.k_layout.tokens() as f64
    }

    /// Query-key pairs computed (reads a uniform plan's indices back to the host).
    pub fn pairs(&self) -> Result<u64> {
        if let KeyBlocks::All = self.keys {
            return Ok(self.possible_pairs() as u64);
        }
        let mask = self.host_mask()?;
        let mut total = 0u64;
        for g in 0..mask.groups() {
            for qb in 0..mask.q_blocks() {
                let keys: usize = mask
                    .keys(g, qb)
                    .iter()
                    .map(|&kb| self.k_layout.block_len(kb as usize))
                    .sum();
                total += (self.q_layout.block_len(qb) * keys) as u64;
            }
        }
        Ok(total)
    }

    /// Query-key pairs computed, as an f32 scalar tensor: on the host for lists, and for a
    /// uniform plan on the device holding its indices (no host round trip).
    pub fn pairs_tensor(&self) -> Result<Tensor> {
        match &self.keys {
            KeyBlocks::Lists(_) | KeyBlocks::All => Tensor::new(self.pairs()? as f32, &Device::Cpu),
            KeyBlocks::Uniform(t) => {
                let lens = |l: &BlockLayout| -> Vec<f32> {
                    (0..l.num_blocks()).map(|b| l.block_len(b) as f32).collect()
                };
                let nq = self.q_layout.num_blocks();
                let k_lens =
                    Tensor::from_vec(lens(&self.k_layout), self.k_layout.num_blocks(), t.device())?;
                let q_lens = Tensor::from_vec(lens(&self.q_layout), (1, nq, 1), t.device())?;
                let per_row = k_lens.index_select(&t.flatten_all()?, 0)?.reshape((
                    self.batch * self.heads,
                    nq,
                    t.dim(1)?,
                ))?;
                per_row.broadcast_mul(&q_lens)?.sum_all()
            }
        }
    }

    /// Fraction of all query-key pairs the plan computes.
    pub fn density(&self) -> Result<f64> {
        let all = self.possible_pairs();
        Ok(if all == 0.0 {
            0.0
        } else {
            self.pairs()? as f64 / all
        })
    }
}

fn check_orders(heads: usize, q: &BlockLayout, k: &BlockLayout) -> Result<()> {
    for layout in [q, k] {
        if layout.num_orders() != 1 && layout.num_orders() != heads {
            candle_core::bail!(
                "sparse plan: {} orders for {heads} heads",
                layout.num_orders()
            )
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_lists_the_queries_of_each_key_block() -> Result<()> {
        let m = BlockMask::from_lists(1, 3, 2, &[vec![0], vec![0, 1], vec![1]])?;
        let t = m.transpose();
        assert_eq!(t.keys(0, 0), &[0, 1]);
        assert_eq!(t.keys(0, 1), &[1, 2]);
        assert_eq!(t.transpose(), m);
        assert!(BlockMask::from_lists(1, 1, 2, &[vec![2]]).is_err());
        Ok(())
    }

    #[test]
    fn density_counts_valid_tokens_of_partial_blocks() -> Result<()> {
        let layout = Arc::new(BlockLayout::natural(10, 4)); // blocks of 4, 4, 2
        let full = SparsePlan::dense(1, 1, layout.clone());
        assert_eq!(full.density()?, 1.0);
        let mask = BlockMask::from_lists(1, 3, 3, &[vec![0], vec![1], vec![2]])?;
        let diag = SparsePlan::new(1, 1, layout.clone(), layout.clone(), mask)?;
        assert_eq!(diag.pairs()?, 16 + 16 + 4);
        assert!((diag.density()? - 36.0 / 100.0).abs() < 1e-12);
        // The same selection as a uniform tensor: same count on the host and as a tensor.
        let indices = Tensor::new(&[[0u32], [1], [2]], &Device::Cpu)?;
        let uniform = SparsePlan::uniform(1, 1, layout.clone(), layout, indices)?;
        assert_eq!(uniform.pairs()?, 36);
        assert_eq!(uniform.pairs_tensor()?.to_scalar::<f32>()?, 36.0);
        assert_eq!(*uniform.host_mask()?, *diag.host_mask()?);
        Ok(())
    }
}
