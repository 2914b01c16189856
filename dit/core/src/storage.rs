//! The CPU side of the engine's custom operations: their input storage as plain values.

use candle_core::{CpuStorage, Layout, Result};

/// The f32 values `s` holds under layout `l`, which must be contiguous; otherwise an error
/// naming `op`, the operation that needs them.
pub fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("{op}: the CPU version takes contiguous f32 tensors"),
    }
}
