//! Noise-level arithmetic shared by the flow-matching schedulers, evaluated in the same order
//! and precision as diffusers' numpy code so schedules agree to the last bit.

/// `num` evenly spaced values from `start` to `stop` inclusive, computed as numpy's `linspace`
/// does (`start + i * step`, the last value set to `stop` exactly).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// The flow shift `shift * s / (1 + (shift - 1) * s)`, which spends more steps at high noise.
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// [`shift_sigma`] in f32 arithmetic, as torch computes it on f32 tensors.
pub fn shift_sigma_f32(sigma: f32, shift: f64) -> f32 {
    (shift as f32) * sigma / (1.0 + ((shift - 1.0) as f32) * sigma)
}

/// Rounds to f32 and back, as diffusers stores sigmas in f32 tensors.
pub fn to_f32_precision(value: f64) -> f64 {
    value as f32 as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoints are exact, spacing is even and a single value is the start.
    #[test]
    fn linspace_endpoints_and_spacing() {
        let v = linspace(1.0, 0.001, 5);
        assert_eq!(v.len(), 5);
        assert_eq!(v[0], 1.0);
        assert_eq!(v[4], 0.001);
        assert!((v[2] - 0.5005).abs() < 1e-15);
        assert_eq!(linspace(3.0, 7.0, 1), vec![3.0]);
    }

    /// Shift 1 is the identity and the ends 0 and 1 are fixed points of any shift.
    #[test]
    fn shift_fixed_points() {
        for s in [0.0, 0.3, 1.0] {
            assert_eq!(shift_sigma(s, 1.0), s);
        }
        assert_eq!(shift_sigma(1.0, 5.0), 1.0);
        assert_eq!(shift_sigma(0.0, 5.0), 0.0);
        assert!((shift_sigma(0.5, 3.0) - 0.75).abs() < 1e-15);
        assert_eq!(shift_sigma_f32(1.0, 3.0), 1.0);
    }
}
