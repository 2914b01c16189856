//! A model's trainable parameters: f32 master [`Var`]s by weight name, handed to the engine's
//! own model code (the same `new(vb)` constructors inference uses) through a var builder that
//! casts each to the compute dtype. The cast is part of the autograd graph, so gradients reach
//! the f32 masters while the forward pass runs in bf16.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use pipelines::t2v::noise::NoiseGenerator;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How a parameter starts: its values from its name and shape, drawn from `rng`.
pub type Initialiser<'a> = &'a dyn Fn(&str, &[usize], &mut NoiseGenerator) -> Vec<f32>;

/// Trainable f32 parameters by weight name.
pub struct Params {
    vars: BTreeMap<String, Var>,
}

impl Params {
    /// The names and shapes of the weights `build` reads from its var builder.
    pub fn shapes_of(
        build: impl FnOnce(VarBuilder) -> Result<()>,
    ) -> Result<BTreeMap<String, Vec<usize>>> {
        let recorder = VarMap::new();
        build(VarBuilder::from_varmap(&recorder, DType::F32, &Device::Cpu))?;
        let data = recorder
            .data()
            .lock()
            .map_err(|_| Error::Usage("the parameter recorder was poisoned".to_string()))?;
        Ok(data
            .iter()
            .map(|(name, var)| (name.clone(), var.dims().to_vec()))
            .collect())
    }

    /// Fresh parameters of `shapes` on `device`, each from `init` with one generator seeded by
    /// `seed` and visited in name order (so a seed gives the same model on every device).
    pub fn initialised(
        shapes: &BTreeMap<String, Vec<usize>>,
        init: Initialiser<'_>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = NoiseGenerator::new(seed);
        let mut vars = BTreeMap::new();
        for (name, dims) in shapes {
            let values = init(name, dims, &mut rng);
            let tensor =
                Tensor::from_vec(values, dims.as_slice(), &Device::Cpu)?.to_device(device)?;
            vars.insert(name.clone(), Var::from_tensor(&tensor)?);
        }
        Ok(Self { vars })
    }

    /// Parameters from tensors (converted to f32 on `device`); `shapes`, when given, must name
    /// exactly the same weights with the same shapes.
    pub fn from_tensors(
        tensors: BTreeMap<String, Tensor>,
        shapes: Option<&BTreeMap<String, Vec<usize>>>,
        device: &Device,
        source: &Path,
    ) -> Result<Self> {
        if let Some(shapes) = shapes {
            check_same(shapes, &tensors, source)?;
        }
        let vars = tensors
            .into_iter()
            .map(|(name, t)| {
                Ok((
                    name,
                    Var::from_tensor(&t.to_dtype(DType::F32)?.to_device(device)?)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { vars })
    }

    /// Reads every tensor of a safetensors file (one file, f32 or bf16), checked against
    /// `shapes` when given.
    pub fn load(
        file: &Path,
        shapes: Option<&BTreeMap<String, Vec<usize>>>,
        device: &Device,
    ) -> Result<Self> {
        let tensors = candle_core::safetensors::load(file, &Device::Cpu)
            .map_err(|e| Error::io("read", file, e))?;
        Self::from_tensors(tensors.into_iter().collect(), shapes, device, file)
    }

    /// The master variables by name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// The current values by name (f32, sharing storage with the variables).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect()
    }

    /// Total number of scalars.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// A var builder over the parameters in `dtype` (a tracked cast of the f32 masters).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let tensors = self.tensors().into_iter().collect();
        VarBuilder::from_backend(Box::new(CastBackend { tensors }), dtype, device.clone())
    }

    /// A var builder over fixed `tensors` (EMA weights, a frozen model) in `dtype`.
    pub fn frozen_var_builder(
        tensors: &BTreeMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> VarBuilder<'static> {
        let tensors = tensors
            .iter()
            .map(|(k, v)| (k.clone(), v.detach()))
            .collect();
        VarBuilder::from_backend(Box::new(CastBackend { tensors }), dtype, device.clone())
    }
}

/// Checks that `tensors` hold exactly the weights of `shapes`.
fn check_same(
    shapes: &BTreeMap<String, Vec<usize>>,
    tensors: &BTreeMap<String, Tensor>,
    source: &Path,
) -> Result<()> {
    let shown = source.display();
    if let Some(missing) = shapes.keys().find(|k| !tensors.contains_key(*k)) {
        return Err(Error::Checkpoint(format!(
            "{shown} has no weight {missing}; it is not a checkpoint of this model (start without it, or give the matching one)"
        )));
    }
    if let Some(extra) = tensors.keys().find(|k| !shapes.contains_key(*k)) {
        return Err(Error::Checkpoint(format!(
            "{shown} holds {extra}, which this model does not have; it is not a checkpoint of this model"
        )));
    }
    for (name, dims) in shapes {
        if tensors[name].dims() != dims.as_slice() {
            return Err(Error::Checkpoint(format!(
                "{shown}: weight {name} has shape {:?}, this model's is {dims:?}",
                tensors[name].dims()
            )));
        }
    }
    Ok(())
}

/// Hands out stored tensors cast to the asked dtype and device.
struct CastBackend {
    tensors: HashMap<String, Tensor>,
}

impl CastBackend {
    fn fetch(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let tensor =
            self.tensors
                .get(name)
                .ok_or_else(|| candle_core::Error::CannotFindTensor {
                    path: name.to_string(),
                })?;
        tensor.to_dtype(dtype)?.to_device(device)
    }
}

impl SimpleBackend for CastBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.fetch(name, dtype, device)?;
        if tensor.shape() != &shape {
            candle_core::bail!(
                "weight {name} has shape {:?}, the model expects {:?}",
                tensor.dims(),
                shape.dims()
            )
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.fetch(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gradients through the bf16 cast reach the f32 masters: d(sum(w * x))/dw = x.
    #[test]
    fn gradients_reach_the_masters_through_the_cast() -> Result<()> {
        let shapes = BTreeMap::from([("w".to_string(), vec![4])]);
        let init = |_: &str, dims: &[usize], rng: &mut NoiseGenerator| rng.normals(dims[0]);
        let params = Params::initialised(&shapes, &init, 7, &Device::Cpu)?;
        let x = Tensor::new(&[1f32, -2.0, 0.5, 3.0], &Device::Cpu)?;
        let vb = params.var_builder(DType::BF16, &Device::Cpu);
        let w = vb.get(4, "w")?;
        assert_eq!(w.dtype(), DType::BF16);
        let loss = w.to_dtype(DType::F32)?.mul(&x)?.sum_all()?;
        let grads = loss.backward()?;
        let g: Vec<f32> = grads
            .get(params.vars()["w"].as_tensor())
            .expect("gradient of w")
            .to_vec1()?;
        assert_eq!(g, vec![1.0, -2.0, 0.5, 3.0]);
        Ok(())
    }
}
