//! Data parallelism: replicas of one model on several devices each take the gradient of their
//! share of a batch, and [`average_gradients`] replaces it by the mean over all replicas, so
//! that every replica then clips and steps with the same gradient and their weights stay equal.
//! The replicas' losses and their wish to stop travel in the same exchange.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use vdit_core::parallel::Collective;

use super::flat;
use crate::Result;

/// What the replicas agreed on in one exchange.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// The mean of the replicas' losses.
    pub loss: f64,
    /// Whether any replica asked to stop.
    pub stop: bool,
}

/// Replaces the gradients of `params` in `grads` by their mean over the replicas of `group`
/// (every replica calls this at the same step, with the same parameters), and agrees on the
/// mean `loss` and on whether any replica `wants_stop`.
pub fn average_gradients(
    group: &dyn Collective,
    params: &BTreeMap<String, Var>,
    grads: &mut GradStore,
    loss: f64,
    wants_stop: bool,
) -> Result<Agreement> {
    let present: Vec<(&Var, Tensor)> = params
        .values()
        .filter_map(|var| grads.get(var.as_tensor()).map(|g| (var, g.clone())))
        .collect();
    let device = present
        .first()
        .map_or(Device::Cpu, |(var, _)| var.device().clone());
    let tail = Tensor::new(
        &[loss as f32, f32::from(u8::from(wants_stop))],
        &Device::Cpu,
    )?
    .to_device(&device)?;
    let gradients = present.iter().map(|(_, g)| g);
    let local = flat::join(gradients.chain(std::iter::once(&tail)))?;
    // [replicas, n]: summed in rank order, the same on every replica
    let mean = group.all_gather(&local)?.mean(0)?;
    let n = mean.dim(0)? - 2;
    let agreed = mean.narrow(0, n, 2)?.to_vec1::<f32>()?;
    let shapes: Vec<_> = present.iter().map(|(_, g)| g.shape().clone()).collect();
    let views = flat::split(&mean.narrow(0, 0, n)?, shapes.iter())?;
    for ((var, old), view) in present.iter().zip(views) {
        let dtype: DType = old.dtype();
        grads.insert(var.as_tensor(), view.to_dtype(dtype)?);
    }
    Ok(Agreement {
        loss: f64::from(agreed[0]),
        stop: agreed[1] > 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdit_core::parallel::{GroupHealth, LocalGroup, DEFAULT_TIMEOUT};

    /// Two replicas with different gradients both end with their mean (checked element by
    /// element against the arithmetic), the mean loss, and a stop that one of them asked for.
    #[test]
    fn replicas_end_with_the_mean_gradient() -> Result<()> {
        let groups = LocalGroup::new(2, DEFAULT_TIMEOUT, GroupHealth::new());
        let mut rng = pipelines::t2v::noise::NoiseGenerator::new(11);
        // per replica: gradients of a [2, 3] and a [4] parameter
        let values: Vec<(Vec<f32>, Vec<f32>)> =
            (0..2).map(|_| (rng.normals(6), rng.normals(4))).collect();
        let results: Vec<(Agreement, Vec<f32>, Vec<f32>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = groups
                .iter()
                .zip(&values)
                .enumerate()
                .map(|(rank, (group, (ga, gb)))| {
                    scope.spawn(move || -> Result<_> {
                        let a = Var::zeros((2, 3), DType::F32, &Device::Cpu)?;
                        let b = Var::zeros(4, DType::F32, &Device::Cpu)?;
                        let loss = (a.as_tensor().sum_all()? + b.as_tensor().sum_all()?)?;
                        let mut grads = loss.backward()?;
                        grads.insert(
                            a.as_tensor(),
                            Tensor::from_vec(ga.clone(), (2, 3), &Device::Cpu)?,
                        );
                        grads.insert(
                            b.as_tensor(),
                            Tensor::from_vec(gb.clone(), 4, &Device::Cpu)?,
                        );
                        let params = BTreeMap::from([
                            ("a".to_string(), a.clone()),
                            ("b".to_string(), b.clone()),
                        ]);
                        let agreed = average_gradients(
                            group,
                            &params,
                            &mut grads,
                            rank as f64 + 1.0,
                            rank == 1,
                        )?;
                        let ga = grads.get(a.as_tensor()).unwrap().flatten_all()?.to_vec1()?;
                        let gb = grads.get(b.as_tensor()).unwrap().to_vec1()?;
                        Ok((agreed, ga, gb))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Result<_>>()
        })?;
        for (agreed, ga, gb) in &results {
            assert_eq!(
                *agreed,
                Agreement {
                    loss: 1.5,
                    stop: true
                }
            );
            for (i, g) in ga.iter().enumerate() {
                let want = (values[0].0[i] + values[1].0[i]) / 2.0;
                assert!((g - want).abs() < 1e-6, "a[{i}]: {g} vs {want}");
            }
            for (i, g) in gb.iter().enumerate() {
                let want = (values[0].1[i] + values[1].1[i]) / 2.0;
                assert!((g - want).abs() < 1e-6, "b[{i}]: {g} vs {want}");
            }
        }
        Ok(())
    }
}
