//! The draws a scene is sampled with, all from one seeded xoshiro256++ stream.

use pipelines::t2v::noise::NoiseGenerator;

/// Uniform draws from one seeded stream.
pub(crate) struct Draws {
    stream: NoiseGenerator,
}

impl Draws {
    /// The draws for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            stream: NoiseGenerator::new(seed),
        }
    }

    /// A uniform value in [0, 1): the top 53 bits of the next word.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.stream.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform value in [low, high).
    pub(crate) fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A uniform element of `items`, `None` when it is empty.
    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        // multiply-shift: the high word of word * len is uniform in 0..len (bias below 2^-64 * len)
        let index = (u128::from(self.stream.next_u64()) * items.len() as u128) >> 64;
        items.get(usize::try_from(index).ok()?).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws stay in range, and every element of a small list gets picked about equally often.
    #[test]
    fn draws_are_in_range_and_even() {
        let mut draws = Draws::new(3);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            let x = draws.between(2.0, 3.0);
            assert!((2.0..3.0).contains(&x));
            let i = draws.pick(&[0, 1, 2, 3, 4]).expect("non-empty");
            counts[i] += 1;
        }
        // expected 10_000 each, standard deviation about 90
        assert!(
            counts.iter().all(|&c| c.abs_diff(10_000) < 500),
            "{counts:?}"
        );
        assert_eq!(draws.pick::<u8>(&[]), None);
    }
}
