//! T5's bidirectional relative-position buckets and the learned per-head bias over them.

use super::config::Umt5Config;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{embedding, Embedding, Module, VarBuilder};

/// The bucket of key position minus query position `relative`: half the buckets for keys after
/// the query; within each half, exact buckets for small distances and logarithmically wider ones
/// up to `max_distance`, computed in f32 as transformers does.
pub fn relative_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = num_buckets / 2;
    let offset = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let max_exact = half / 2;
    let within = if distance < max_exact {
        distance
    } else {
        let log_ratio = (distance as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32);
        let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
        large.min(half - 1)
    };
    (offset + within) as u32
}

/// The `[len, len]` bucket indices of a sequence, row = query, column = key.
pub fn bucket_grid(len: usize, cfg: &Umt5Config, device: &Device) -> Result<Tensor> {
    let buckets: Vec<u32> = (0..len as i64)
        .flat_map(|q| (0..len as i64).map(move |k| k - q))
        .map(|r| {
            relative_bucket(
                r,
                cfg.relative_attention_num_buckets,
                cfg.relative_attention_max_distance,
            )
        })
        .collect();
    Tensor::from_vec(buckets, (len, len), device)
}

/// One layer's learned bias per (bucket, head), added to the attention logits.
#[derive(Clone, Debug)]
pub struct RelativePositionBias {
    table: Embedding,
}

impl RelativePositionBias {
    /// Reads `weight` `[num_buckets, num_heads]`.
    pub fn new(cfg: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            table: embedding(cfg.relative_attention_num_buckets, cfg.num_heads, vb)?,
        })
    }

    /// `[len, len]` buckets to a `[1, heads, len, len]` f32 bias.
    pub fn forward(&self, buckets: &Tensor) -> Result<Tensor> {
        self.table
            .forward(buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed buckets for T5's defaults (32 buckets, max distance 128): exact below 8,
    /// logarithmic to 128, direction in the upper half.
    #[test]
    fn buckets_match_hand_computed_values() {
        let b = |r| relative_bucket(r, 32, 128);
        assert_eq!(b(0), 0);
        assert_eq!(b(-7), 7);
        assert_eq!(b(7), 16 + 7);
        // 8 * 2^(k/2) starts bucket 8 + k: 8 -> 8, 11 -> 8, 12 -> 9, 16 -> 10, 32 -> 12, 64 -> 14.
        assert_eq!(b(-8), 8);
        assert_eq!(b(-11), 8);
        assert_eq!(b(-12), 9);
        assert_eq!(b(-16), 10);
        assert_eq!(b(-32), 12);
        assert_eq!(b(-64), 14);
        assert_eq!(b(-127), 15);
        assert_eq!(b(-5000), 15);
        assert_eq!(b(5000), 31);
    }
}
