//! Seeded Gaussian noise for the initial latents, drawn on the CPU so that a seed gives the same
//! noise whatever device the model runs on.
//!
//! The generator is xoshiro256++ (Blackman and Vigna) with its state filled by SplitMix64 from the
//! 64-bit seed; normal values come from the Box–Muller transform in f64, two per pair of uniform
//! draws (cosine branch first), rounded to f32, and fill the tensor in row-major order. The
//! stream is fixed by this code alone (no dependency can change it between versions). It is not
//! torch's `randn`: to reproduce a diffusers run exactly, pass its latents with `--latents`.

use candle_core::{Device, Result, Tensor};

/// xoshiro256++ seeded through SplitMix64.
#[derive(Clone, Debug)]
pub struct NoiseGenerator {
    state: [u64; 4],
}

impl NoiseGenerator {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut mix = seed;
        let mut state = [0u64; 4];
        for word in &mut state {
            *word = splitmix64(&mut mix);
        }
        Self { state }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform value in (0, 1]: the top 53 bits, shifted off zero.
    fn next_open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `n` standard normal values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut values = Vec::with_capacity(n + 1);
        while values.len() < n {
            let radius = (-2.0 * self.next_open_unit().ln()).sqrt();
            let angle = std::f64::consts::TAU * self.next_open_unit();
            values.push((radius * angle.cos()) as f32);
            values.push((radius * angle.sin()) as f32);
        }
        values.truncate(n);
        values
    }
}

/// One step of SplitMix64: advances `state` and returns the mixed output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Standard normal noise of `shape` for `seed`, f32 on the CPU.
pub fn seeded_noise(seed: u64, shape: &[usize]) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_vec(NoiseGenerator::new(seed).normals(n), shape, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64's published first output for seed 0, and xoshiro256++'s first output from the
    /// state [1, 2, 3, 4] (rotl(1 + 4, 23) + 1), worked out by hand.
    #[test]
    fn generators_match_the_reference_algorithms() {
        assert_eq!(splitmix64(&mut 0), 0xe220_a839_7b1d_cdaf);
        let mut g = NoiseGenerator {
            state: [1, 2, 3, 4],
        };
        assert_eq!(g.next_u64(), (5u64 << 23) + 1);
    }

    /// Same seed, same noise; another seed, other noise; moments of a standard normal.
    #[test]
    fn seeded_and_standard_normal() {
        let a = NoiseGenerator::new(7).normals(200_001);
        assert_eq!(a, NoiseGenerator::new(7).normals(200_001));
        assert_ne!(a[..8], NoiseGenerator::new(8).normals(8)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let beyond_2 = a.iter().filter(|x| x.abs() > 2.0).count() as f64 / n;
        // standard errors: mean 0.0022, variance 0.0032, tail share 0.0005
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.015, "variance {var}");
        assert!((beyond_2 - 0.0455).abs() < 0.003, "P(|x| > 2) = {beyond_2}");
        // a prefix of a longer draw is the shorter draw
        assert_eq!(NoiseGenerator::new(7).normals(5)[..], a[..5]);
    }
}
