//! 3D rotary position embedding: the head dim is split into a frame, a row and a column part,
//! each rotated by its own axis position, on interleaved channel pairs.

use candle_core::{DType, Device, Result, Tensor};
use sparse::TokenGrid;
use std::ops::Range;

/// RoPE base.
const THETA: f64 = 10_000.0;

/// Channels of the head dim given to the (frame, row, column) axes: rows and columns get
/// `2 * (head_dim / 6)` each, frames the rest.
pub fn axis_split(head_dim: usize) -> [usize; 3] {
    let hw = 2 * (head_dim / 6);
    [head_dim - 2 * hw, hw, hw]
}

/// Rotation angles per token for one grid: `cos` and `sin` of shape `[S, head_dim / 2]`, f32.
#[derive(Clone, Debug)]
pub struct Rope3d {
    cos: Tensor,
    sin: Tensor,
    /// `[S, D/2, 2]`: (cos, sin) pairs, the layout the fused GPU kernel reads.
    cos_sin: Tensor,
}

impl Rope3d {
    /// Tables for every token of `grid`, computed in f64 and stored as f32. The angles of
    /// each axis are computed once per position and copied into every token that has it.
    pub fn new(head_dim: usize, grid: TokenGrid, device: &Device) -> Result<Self> {
        let split = axis_split(head_dim);
        let half = head_dim / 2;
        // angles[axis][pos * (dim / 2) + i] = (cos, sin) of pos / THETA^(2i / dim)
        let angles: Vec<Vec<(f32, f32)>> = grid
            .dims()
            .into_iter()
            .zip(split)
            .map(|(len, dim)| {
                (0..len)
                    .flat_map(|pos| {
                        (0..dim / 2).map(move |i| {
                            let angle = pos as f64 / THETA.powf((2 * i) as f64 / dim as f64);
                            (angle.cos() as f32, angle.sin() as f32)
                        })
                    })
                    .collect()
            })
            .collect();
        let mut cos = Vec::with_capacity(grid.len() * half);
        let mut sin = Vec::with_capacity(grid.len() * half);
        for t in 0..grid.t {
            for h in 0..grid.h {
                for w in 0..grid.w {
                    for (axis, pos) in [t, h, w].into_iter().enumerate() {
                        let n = split[axis] / 2;
                        for &(c, s) in &angles[axis][pos * n..(pos + 1) * n] {
                            cos.push(c);
                            sin.push(s);
                        }
                    }
                }
            }
        }
        let shape = (grid.len(), half);
        let cos = Tensor::from_vec(cos, shape, device)?;
        let sin = Tensor::from_vec(sin, shape, device)?;
        let cos_sin = Tensor::stack(&[&cos, &sin], 2)?;
        Ok(Self { cos, sin, cos_sin })
    }

    /// Rotates `x: [B, H, S, D]`: for each pair (x₂ᵢ, x₂ᵢ₊₁),
    /// (x₂ᵢ cos − x₂ᵢ₊₁ sin, x₂ᵢ sin + x₂ᵢ₊₁ cos). Computed in f32; returns `x`'s dtype.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        let rotated = if x32.track_op() {
            candle_nn::rotary_emb::rope_i_slow(&x32, &self.cos, &self.sin)?
        } else {
            candle_nn::rotary_emb::rope_i(&x32, &self.cos, &self.sin)?
        };
        rotated.to_dtype(dtype)
    }

    /// The tables of tokens `rows` followed by `padding` rows that rotate by nothing (a rank's
    /// share of a sequence-parallel run).
    pub fn rows(&self, rows: Range<usize>, padding: usize) -> Result<Self> {
        let part = |t: &Tensor, fill: f64| -> Result<Tensor> {
            let part = t.narrow(0, rows.start, rows.len())?;
            if padding == 0 {
                return part.contiguous();
            }
            let pad = (Tensor::ones((padding, t.dim(1)?), t.dtype(), t.device())? * fill)?;
            Tensor::cat(&[&part, &pad], 0)
        };
        let cos = part(&self.cos, 1.0)?;
        let sin = part(&self.sin, 0.0)?;
        let cos_sin = Tensor::stack(&[&cos, &sin], 2)?;
        Ok(Self { cos, sin, cos_sin })
    }

    /// `(cos, sin)` pairs `[S, D/2, 2]`.
    pub fn cos_sin(&self) -> &Tensor {
        &self.cos_sin
    }

    /// The cosine table `[S, D/2]`.
    pub fn cos(&self) -> &Tensor {
        &self.cos
    }

    /// The sine table `[S, D/2]`.
    pub fn sin(&self) -> &Tensor {
        &self.sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_wan_for_common_head_dims() {
        assert_eq!(axis_split(128), [44, 42, 42]);
        assert_eq!(axis_split(12), [4, 4, 4]);
        assert_eq!(axis_split(64), [24, 20, 20]);
    }

    /// Token (t=2, h=1, w=3) of a 3x2x4 grid, head dim 12 (4 channels per axis): the angle of
    /// pair i of an axis part of width 4 is pos / 10000^(2i/4).
    #[test]
    fn tables_hold_axis_positions_times_inverse_frequencies() -> Result<()> {
        let grid = TokenGrid::new(3, 2, 4);
        let rope = Rope3d::new(12, grid, &Device::Cpu)?;
        let token = grid.index(2, 1, 3);
        let cos: Vec<f32> = rope.cos().get(token)?.to_vec1()?;
        let sin: Vec<f32> = rope.sin().get(token)?.to_vec1()?;
        let expected: Vec<f64> = [2.0, 1.0, 3.0]
            .iter()
            .flat_map(|&pos: &f64| [pos, pos / 100.0])
            .collect();
        for (i, angle) in expected.iter().enumerate() {
            assert!((cos[i] as f64 - angle.cos()).abs() < 1e-6, "cos pair {i}");
            assert!((sin[i] as f64 - angle.sin()).abs() < 1e-6, "sin pair {i}");
        }
        Ok(())
    }

    /// A run of rows is those rows of the whole table; padding rows leave a vector as it is.
    #[test]
    fn rows_are_a_run_of_the_table_then_identity() -> Result<()> {
        let rope = Rope3d::new(12, TokenGrid::new(2, 3, 2), &Device::Cpu)?;
        let run = rope.rows(7..12, 2)?;
        let whole: Vec<Vec<f32>> = rope.cos_sin().narrow(0, 7, 5)?.flatten_from(1)?.to_vec2()?;
        let got: Vec<Vec<f32>> = run.cos_sin().flatten_from(1)?.to_vec2()?;
        assert_eq!(got[..5], whole[..]);
        let x = Tensor::randn(0f32, 1., (1, 1, 7, 12), &Device::Cpu)?;
        let y = run.apply(&x)?;
        assert_eq!(
            y.narrow(2, 5, 2)?.flatten_all()?.to_vec1::<f32>()?,
            x.narrow(2, 5, 2)?.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    /// Rotating pair (1, 0) by the angle of token 1 along the frame axis gives (cos, sin), and
    /// the differentiable path agrees with the fast one.
    #[test]
    fn rotation_acts_on_interleaved_pairs() -> Result<()> {
        let grid = TokenGrid::new(2, 1, 1);
        let rope = Rope3d::new(12, grid, &Device::Cpu)?;
        let mut x = vec![0f32; 2 * 12];
        x[12] = 1.0; // token 1, channel 0 (first frame-axis pair, real part)
        let x = Tensor::from_vec(x, (1, 1, 2, 12), &Device::Cpu)?;
        let y: Vec<f32> = rope.apply(&x)?.flatten_all()?.to_vec1()?;
        assert!((y[12] - 1f32.cos()).abs() < 1e-6 && (y[13] - 1f32.sin()).abs() < 1e-6);
        let var = candle_core::Var::from_tensor(&x)?;
        let slow: Vec<f32> = rope.apply(var.as_tensor())?.flatten_all()?.to_vec1()?;
        assert_eq!(y, slow);
        Ok(())
    }
}
