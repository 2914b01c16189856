//! Tensors joined end to end into one f32 vector and split back into views, for the updates
//! that run on whole vectors (AdamW, the EMA, the gradient norm): a few operations on one
//! vector instead of a few per tensor.

use candle_core::{DType, Shape, Tensor};

use crate::Result;

/// `tensors` in f32, flattened and joined end to end, in order (at least one).
pub(crate) fn join<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<Tensor> {
    let parts = tensors
        .into_iter()
        .map(|t| t.detach().to_dtype(DType::F32)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// Views of `flat`, in order, in `shapes` (which must add up to its length).
pub(crate) fn split<'a>(
    flat: &Tensor,
    shapes: impl IntoIterator<Item = &'a Shape>,
) -> Result<Vec<Tensor>> {
    let mut offset = 0;
    let mut views = vec![];
    for shape in shapes {
        let n = shape.elem_count();
        views.push(flat.narrow(0, offset, n)?.reshape(shape)?);
        offset += n;
    }
    Ok(views)
}

/// Copies of `views`, each in its own allocation at offset 0.
pub(crate) fn standalone<'a>(views: impl IntoIterator<Item = &'a Tensor>) -> Result<Vec<Tensor>> {
    Ok(views
        .into_iter()
        .map(Tensor::force_contiguous)
        .collect::<candle_core::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Splitting a join gives the tensors back, values and shapes, as f32.
    #[test]
    fn split_undoes_join() -> Result<()> {
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?;
        let b = Tensor::new(&[7f64, 8.0], &Device::Cpu)?;
        let flat = join([&a, &b])?;
        assert_eq!(flat.to_vec1::<f32>()?, [0., 1., 2., 3., 4., 5., 7., 8.]);
        let back = split(&flat, [a.shape(), b.shape()])?;
        assert_eq!(back[0].to_vec2::<f32>()?, a.to_vec2::<f32>()?);
        assert_eq!(back[1].to_vec1::<f32>()?, [7f32, 8.]);
        Ok(())
    }

    /// Standalone copies of views start at offset 0 of storage of their own size, with the
    /// views' values.
    #[test]
    fn standalone_copies_own_their_storage() -> Result<()> {
        let flat = Tensor::arange(0f32, 7.0, &Device::Cpu)?;
        let views = split(&flat, [&Shape::from(3), &Shape::from((2, 2))])?;
        assert_eq!(views[1].layout().start_offset(), 3);
        let copies = standalone(&views)?;
        for (copy, view) in copies.iter().zip(&views) {
            assert_eq!(copy.layout().start_offset(), 0);
            let owned = match &*copy.storage_and_layout().0 {
                candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
                _ => 0,
            };
            assert_eq!(owned, view.elem_count());
            assert_eq!(
                copy.flatten_all()?.to_vec1::<f32>()?,
                view.flatten_all()?.to_vec1::<f32>()?
            );
        }
        Ok(())
    }
}
