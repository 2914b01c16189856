//! The per-step pieces of the optimiser against naive f64 references: AdamW, the schedule,
//! gradient clipping and the EMA.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use train::optim::{clip_grad_norm, decays, AdamW, AdamWConfig, Ema, LrSchedule};

/// A deterministic stream of roughly normal f32 values (sum of uniforms).
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        ((0..4).map(|_| self.uniform()).sum::<f64>() - 2.0) as f32 * 1.7
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

fn tensor(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn shapes() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("blocks.0.attn.to_q.weight", vec![4, 6]),
        ("blocks.0.attn.to_q.bias", vec![6]),
        ("patch.weight", vec![2, 3, 2]),
        ("norm.gain", vec![3]),
    ]
}

fn params(noise: &mut Noise) -> BTreeMap<String, Var> {
    shapes()
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let var = Var::from_tensor(&tensor(&noise.vec(n), &shape)).unwrap();
            (name.to_string(), var)
        })
        .collect()
}

/// `|a - b| <= rel * max(|b|, floor)` for every element.
fn assert_close(what: &str, ours: &[f32], reference: &[f64], rel: f64, floor: f64) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let tol = rel * b.abs().max(floor);
        assert!(
            (f64::from(*a) - b).abs() <= tol,
            "{what}[{i}]: {a} vs reference {b} (tolerance {tol:e})"
        );
    }
}

/// PyTorch's AdamW for one tensor, in f64.
struct RefAdamW {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
    decay: bool,
}

impl RefAdamW {
    fn step(&mut self, g: &[f32], lr: f64, c: &AdamWConfig) {
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        for i in 0..self.p.len() {
            let g = f64::from(g[i]);
            if self.decay {
                self.p[i] *= 1.0 - lr * c.weight_decay;
            }
            self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
            self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
            let denom = self.v[i].sqrt() / bc2.sqrt() + c.eps;
            self.p[i] -= lr / bc1 * self.m[i] / denom;
        }
    }
}

#[test]
fn adamw_matches_pytorch_semantics_in_f64() {
    // Tolerance: 1e-6 relative to max(|reference|, 0.1) for parameters, to max(|reference|, 1)
    // for first moments (which cancel to small values from terms of size ~1) and to
    // max(|reference|, 1e-9) for second moments (sums of positive terms). f32 rounding over six
    // steps stays near 4e-7.
    let mut noise = Noise(0x5EED_1234);
    let params = params(&mut noise);
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut adamw = AdamW::new(config).unwrap();
    let mut reference: BTreeMap<String, RefAdamW> = params
        .iter()
        .map(|(name, var)| {
            let p: Vec<f64> = values(var.as_tensor()).into_iter().map(f64::from).collect();
            let n = p.len();
            let r = RefAdamW {
                p,
                m: vec![0.0; n],
                v: vec![0.0; n],
                t: 0,
                decay: var.as_tensor().rank() >= 2,
            };
            (name.clone(), r)
        })
        .collect();
    for step in 0..6 {
        let lr = 1e-2 * (step + 1) as f64 / 6.0;
        let mut grads = GradStore::default();
        for (name, var) in &params {
            // The norm gain has a gradient on even steps only: odd steps skip it.
            if name == "norm.gain" && step % 2 == 1 {
                continue;
            }
            let g = noise.vec(var.elem_count());
            grads.insert(var.as_tensor(), tensor(&g, var.dims()));
            reference.get_mut(name).unwrap().step(&g, lr, &config);
        }
        adamw.step(&params, &grads, lr).unwrap();
    }
    assert_eq!(adamw.step_count(), 6);
    let state = adamw.state();
    assert_eq!(state.param_steps["norm.gain"], 3);
    assert_eq!(state.param_steps["patch.weight"], 6);
    for (name, var) in &params {
        let r = &reference[name];
        assert_close(name, &values(var.as_tensor()), &r.p, 1e-6, 0.1);
        assert_close(
            &format!("m of {name}"),
            &values(&state.m[name]),
            &r.m,
            1e-6,
            1.0,
        );
        assert_close(
            &format!("v of {name}"),
            &values(&state.v[name]),
            &r.v,
            1e-6,
            1e-9,
        );
    }
}

#[test]
fn weight_decay_spares_vectors_and_a_missing_gradient_skips_the_parameter() {
    let mut noise = Noise(7);
    let params = params(&mut noise);
    let before: BTreeMap<String, Vec<f32>> = params
        .iter()
        .map(|(k, v)| (k.clone(), values(v.as_tensor())))
        .collect();
    let mut adamw = AdamW::new(AdamWConfig {
        weight_decay: 0.5,
        ..AdamWConfig::default()
    })
    .unwrap();
    // Zero gradients: the Adam update is 0, only the decay moves a parameter.
    let mut grads = GradStore::default();
    for (name, var) in &params {
        if name != "patch.weight" {
            grads.insert(var.as_tensor(), var.as_tensor().zeros_like().unwrap());
        }
    }
    adamw.step(&params, &grads, 0.1).unwrap();
    for (name, var) in &params {
        let after = values(var.as_tensor());
        let expected: Vec<f32> = if decays(var.as_tensor()) && name != "patch.weight" {
            before[name].iter().map(|x| x * 0.95).collect()
        } else {
            before[name].clone()
        };
        for (a, e) in after.iter().zip(&expected) {
            assert!(
                (a - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{name}: {a} vs {e}"
            );
        }
    }
    let state = adamw.state();
    assert!(
        !state.m.contains_key("patch.weight"),
        "a skipped parameter has no moments"
    );
    assert_eq!(state.m.len(), 3);
    assert!(!decays(params["norm.gain"].as_tensor()));
    assert!(decays(params["patch.weight"].as_tensor()));
}

#[test]
fn adamw_refuses_bad_settings() {
    for config in [
        AdamWConfig {
            beta1: 1.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            eps: 0.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            weight_decay: -1.0,
            ..AdamWConfig::default()
        },
    ] {
        assert!(AdamW::new(config).is_err(), "{config:?}");
    }
    let mut adamw = AdamW::new(AdamWConfig::default()).unwrap();
    let params = params(&mut Noise(3));
    let err = adamw
        .step(&params, &GradStore::default(), f64::NAN)
        .unwrap_err()
        .to_string();
    assert!(err.contains("learning rate"), "{err}");
}

#[test]
fn schedule_has_the_documented_values() {
    let s = LrSchedule::new(1e-3, 10, 110, 0.1).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-15;
    assert_eq!(s.lr(0), 0.0);
    assert!(close(s.lr(5), 5e-4));
    assert!(close(s.lr(10), 1e-3));
    // Half-way through the cosine: the mean of peak and floor.
    assert!(close(s.lr(60), 5.5e-4));
    // A quarter: floor + (peak - floor) * (1 + cos(pi/4)) / 2.
    let quarter = 1e-4 + 9e-4 * (1.0 + std::f64::consts::FRAC_1_SQRT_2) / 2.0;
    assert!(close(s.lr(35), quarter), "{} vs {quarter}", s.lr(35));
    assert!(close(s.lr(110), 1e-4));
    assert!(close(s.lr(10_000), 1e-4));
    // Monotone: up during warm-up, down after.
    assert!((0..10).all(|i| s.lr(i) < s.lr(i + 1)));
    assert!((10..110).all(|i| s.lr(i) > s.lr(i + 1)));

    let flat = LrSchedule::new(2e-4, 0, 50, 1.0).unwrap();
    assert!((0..60).all(|i| close(flat.lr(i), 2e-4)));
    let warm_only = LrSchedule::new(1.0, 4, 4, 0.0).unwrap();
    assert_eq!(warm_only.lr(2), 0.5);
    assert_eq!(warm_only.lr(4), 0.0);
}

#[test]
fn schedule_refuses_impossible_settings() {
    let err = LrSchedule::new(1e-3, 100, 50, 0.1).unwrap_err().to_string();
    assert!(err.contains("warm-up of 100 steps"), "{err}");
    assert!(LrSchedule::new(0.0, 0, 10, 0.1).is_err());
    assert!(LrSchedule::new(f64::INFINITY, 0, 10, 0.1).is_err());
    assert!(LrSchedule::new(1e-3, 0, 0, 0.1).is_err());
    assert!(LrSchedule::new(1e-3, 0, 10, 1.5).is_err());
    assert!(LrSchedule::new(1e-3, 0, 10, -0.1).is_err());
}

fn grads_for(params: &BTreeMap<String, Var>, noise: &mut Noise, scale: f32) -> GradStore {
    let mut grads = GradStore::default();
    for var in params.values() {
        let g: Vec<f32> = noise
            .vec(var.elem_count())
            .iter()
            .map(|x| x * scale)
            .collect();
        grads.insert(var.as_tensor(), tensor(&g, var.dims()));
    }
    grads
}

fn grad_values(params: &BTreeMap<String, Var>, grads: &GradStore) -> Vec<Vec<f32>> {
    params
        .values()
        .map(|v| values(grads.get(v.as_tensor()).unwrap()))
        .collect()
}

#[test]
fn clipping_matches_pytorch() {
    let mut noise = Noise(99);
    let params = params(&mut noise);
    let mut grads = grads_for(&params, &mut noise, 3.0);
    let before = grad_values(&params, &grads);
    let naive: f64 = before
        .iter()
        .flatten()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();

    // Under the limit: nothing changes, bit for bit.
    let norm = clip_grad_norm(&params, &mut grads, naive * 2.0).unwrap();
    assert!((norm - naive).abs() <= 1e-12 * naive, "{norm} vs {naive}");
    assert_eq!(grad_values(&params, &grads), before);

    // Over: every gradient scaled by max / (norm + 1e-6).
    let max = naive / 4.0;
    let norm = clip_grad_norm(&params, &mut grads, max).unwrap();
    assert!((norm - naive).abs() <= 1e-12 * naive);
    let factor = max / (naive + 1e-6);
    let after = grad_values(&params, &grads);
    for (a, b) in after.iter().flatten().zip(before.iter().flatten()) {
        let expected = f64::from(*b) * factor;
        assert!(
            (f64::from(*a) - expected).abs() <= 1e-6 * expected.abs().max(1e-3),
            "{a} vs {expected}"
        );
    }
    let clipped: f64 = after
        .iter()
        .flatten()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    assert!((clipped - max).abs() <= 1e-5 * max, "{clipped} vs {max}");
}

#[test]
fn a_non_finite_norm_is_returned_and_leaves_the_gradients() {
    let mut noise = Noise(5);
    let params = params(&mut noise);
    let mut grads = grads_for(&params, &mut noise, 1.0);
    let var = &params["norm.gain"];
    grads.insert(var.as_tensor(), tensor(&[1.0, f32::NAN, 2.0], &[3]));
    let before = grad_values(&params, &grads);
    let norm = clip_grad_norm(&params, &mut grads, 1e-3).unwrap();
    assert!(norm.is_nan());
    let after = grad_values(&params, &grads);
    let bits =
        |v: &Vec<Vec<f32>>| -> Vec<u32> { v.iter().flatten().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&after), bits(&before));
    assert!(clip_grad_norm(&params, &mut grads, 0.0).is_err());
}

#[test]
fn ema_matches_the_naive_average_with_warm_up() {
    let mut noise = Noise(2024);
    let params = params(&mut noise);
    let decay = 0.5;
    let mut ema = Ema::new(decay, &params).unwrap();
    let mut shadow: BTreeMap<String, Vec<f64>> = params
        .iter()
        .map(|(k, v)| {
            let x = values(v.as_tensor()).into_iter().map(f64::from).collect();
            (k.clone(), x)
        })
        .collect();
    let mut used = Vec::new();
    for n in 0..12u32 {
        for (name, var) in &params {
            let next = tensor(&noise.vec(var.elem_count()), var.dims());
            var.set(&next).unwrap();
            // The shadow does not share the parameter's storage.
            if n == 0 {
                let s = values(&ema.weights()[name]);
                assert_close(name, &s, &shadow[name], 0.0, 1.0);
            }
        }
        let d = decay.min((1.0 + f64::from(n)) / (10.0 + f64::from(n)));
        assert!((ema.current_decay() - d).abs() < 1e-15);
        used.push(d);
        ema.update(&params).unwrap();
        for (name, var) in &params {
            let p = values(var.as_tensor());
            for (s, x) in shadow.get_mut(name).unwrap().iter_mut().zip(p) {
                *s = d * *s + (1.0 - d) * f64::from(x);
            }
        }
    }
    assert_eq!(ema.updates(), 12);
    // The warm-up limits the decay early, the configured decay rules later.
    assert_eq!(used[0], 0.1);
    assert_eq!(*used.last().unwrap(), decay);
    for (name, s) in ema.weights() {
        assert_close(name, &values(s), &shadow[name], 1e-6, 0.1);
    }
    let mut fewer = params.clone();
    fewer.remove("norm.gain");
    assert!(ema.update(&fewer).is_err());
    assert!(Ema::new(1.5, &params).is_err());
}

/// The whole-vector update (every parameter with a gradient) and the per-parameter one (forced
/// here by an extra parameter that never gets a gradient) give the same bits, with decay on.
#[test]
fn whole_vector_and_per_parameter_updates_agree_bit_for_bit() {
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut noise = Noise(11);
    let flat = params(&mut noise);
    let mut each: BTreeMap<String, Var> = flat
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    each.insert(
        "unused.weight".to_string(),
        Var::from_tensor(&tensor(&noise.vec(4), &[2, 2])).unwrap(),
    );
    let (mut a, mut b) = (AdamW::new(config).unwrap(), AdamW::new(config).unwrap());
    for step in 0..4 {
        let grads = grads_for(&flat, &mut noise, 1.0);
        let mut same = GradStore::default();
        for (name, var) in &flat {
            same.insert(
                each[name].as_tensor(),
                grads.get(var.as_tensor()).unwrap().clone(),
            );
        }
        a.step(&flat, &grads, 0.01).unwrap();
        b.step(&each, &same, 0.01).unwrap();
        for (name, var) in &flat {
            let (x, y) = (values(var.as_tensor()), values(each[name].as_tensor()));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x), bits(&y), "{name} after step {step}");
            let (sa, sb) = (a.state(), b.state());
            assert_eq!(
                bits(&values(&sa.v[name])),
                bits(&values(&sb.v[name])),
                "{name} v"
            );
        }
    }
    assert!(!b.state().m.contains_key("unused.weight"));
}
