//! Ulysses sequence parallelism. Each rank of a [`Collective`] holds a run of the tokens through
//! the token-wise parts of every block (norms, projections, cross-attention, feed-forward).
//! Around self-attention an all-to-all turns each rank's tokens of all heads into all tokens of
//! `heads / ranks` heads, so every attention method runs unchanged on whole sequences; a second
//! all-to-all turns the output back. Token counts that do not divide are padded at the end.

use candle_core::{Result, Tensor};
use sparse::{AttentionCall, SelfAttention};
use std::ops::Range;
use vdit_core::parallel::{heads_per_rank, Collective, TokenShards};

/// One rank's view of a sequence split over a group.
pub struct SequenceParallel<'a> {
    comm: &'a dyn Collective,
    shards: TokenShards,
    heads: usize,
}

impl<'a> SequenceParallel<'a> {
    /// `tokens` of a model with `heads` attention heads split over `comm`'s ranks; the heads
    /// must divide among them.
    pub fn new(comm: &'a dyn Collective, tokens: usize, heads: usize) -> Result<Self> {
        heads_per_rank(heads, comm.size()).map_err(candle_core::Error::Msg)?;
        Ok(Self {
            comm,
            shards: TokenShards::new(tokens, comm.size()),
            heads,
        })
    }

    /// The real tokens this rank holds, and the padding after them.
    pub fn rows(&self) -> (Range<usize>, usize) {
        let rank = self.comm.rank();
        (self.shards.range(rank), self.shards.padding(rank))
    }

    /// This rank's run of `x: [B, S, C]`, padded with zeros to `per_rank` tokens.
    pub fn scatter(&self, x: &Tensor) -> Result<Tensor> {
        let (rows, padding) = self.rows();
        let part = x.narrow(1, rows.start, rows.len())?;
        pad(&part, 1, padding)
    }

    /// Every rank's run `[B, per_rank, C]` put back together: `[B, S, C]` on every rank.
    pub fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let (n, per) = (self.comm.size(), self.shards.per_rank());
        let (b, _, c) = x.dims3()?;
        self.comm
            .all_gather(x)?
            .transpose(0, 1)?
            .reshape((b, n * per, c))?
            .narrow(1, 0, self.shards.tokens)
    }

    /// Tensors `[B, H, per_rank, D]` (this rank's tokens of all heads; views of
    /// `[B, per_rank, H, D]` as the projections leave them) to `[B, H / n, S, D]` (all tokens
    /// of this rank's heads, views of `[B, S, H / n, D]`), in one exchange.
    fn to_heads(&self, parts: &[&Tensor]) -> Result<Vec<Tensor>> {
        let (n, per) = (self.comm.size(), self.shards.per_rank());
        let (b, h, _, d) = parts[0].dims4()?;
        let hn = h / n;
        // [n, G, B, per, H / n, D]: slice r (heads r * H / n ..) goes to rank r; one copy.
        let views = parts
            .iter()
            .map(|x| {
                x.transpose(1, 2)?
                    .reshape((b, per, n, hn, d))?
                    .permute((2, 0, 1, 3, 4))
            })
            .collect::<Result<Vec<_>>>()?;
        let received = self.comm.all_to_all(&Tensor::stack(&views, 1)?)?;
        // [source rank, G, B, per, H / n, D]: source rank r held tokens r * per .. Each
        // source's block is contiguous, so putting them side by side is a 2D copy.
        (0..parts.len())
            .map(|g| {
                let blocks = (0..n)
                    .map(|r| received.get(r)?.get(g)?.reshape((b, per * hn * d)))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&blocks, 1)?
                    .reshape((b, n * per, hn, d))?
                    .narrow(1, 0, self.shards.tokens)?
                    .transpose(1, 2)
            })
            .collect()
    }

    /// `[B, H / n, S, D]` back to `[B, H, per_rank, D]` (a view of `[B, per_rank, H, D]`,
    /// the layout the output projection reads).
    fn to_tokens(&self, x: &Tensor) -> Result<Tensor> {
        let (n, per) = (self.comm.size(), self.shards.per_rank());
        let (b, hn, s, d) = x.dims4()?;
        // [n, B, per, H / n, D]: slice r (tokens r * per ..) goes to rank r; one copy.
        let x = pad(x, 2, n * per - s)?;
        let slices = (0..n)
            .map(|r| x.narrow(2, r * per, per)?.transpose(1, 2))
            .collect::<Result<Vec<_>>>()?;
        let send = Tensor::stack(&slices, 0)?;
        // [source rank, B, per, H / n, D]: source rank r held heads r * H / n .. Each
        // source's block is contiguous, so putting them side by side is a 2D copy.
        let received = self.comm.all_to_all(&send)?;
        let blocks = (0..n)
            .map(|r| received.get(r)?.reshape((b, per, hn * d)))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&blocks, 2)?
            .reshape((b, per, n * hn, d))?
            .transpose(1, 2)
    }

    /// `inner` behind the all-to-alls: a [`SelfAttention`] for this rank's run of tokens.
    pub fn attention(&'a self, inner: &'a dyn SelfAttention) -> impl SelfAttention + 'a {
        Ulysses { sp: self, inner }
    }
}

/// `x` with `count` zero rows appended along `dim`.
fn pad(x: &Tensor, dim: usize, count: usize) -> Result<Tensor> {
    if count == 0 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = count;
    let zeros = Tensor::zeros(dims, x.dtype(), x.device())?;
    Tensor::cat(&[x, &zeros], dim)
}

/// Self-attention of one rank: the all-to-alls around the method that attends.
struct Ulysses<'a> {
    sp: &'a SequenceParallel<'a>,
    inner: &'a dyn SelfAttention,
}

impl SelfAttention for Ulysses<'_> {
    fn attend(&self, call: &AttentionCall<'_>) -> Result<Tensor> {
        let mut parts = vec![call.q, call.k, call.v];
        parts.extend(call.gate);
        let mut heads = self.sp.to_heads(&parts)?.into_iter();
        let mut next = || heads.next().expect("one tensor per part");
        let (q, k, v) = (next(), next(), next());
        let gate = call.gate.map(|_| next());
        let per_rank = self.sp.heads / self.sp.comm.size();
        let out = self.inner.attend(&AttentionCall {
            q: &q,
            k: &k,
            v: &v,
            gate: gate.as_ref(),
            grid: call.grid,
            site: call.site,
            first_head: call.first_head + self.sp.comm.rank() * per_rank,
        })?;
        self.sp.to_tokens(&out)
    }
}
