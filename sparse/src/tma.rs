//! TMA tensor maps (`kernels/tma_sm90.cuh`): K and V for the Hopper forward (`KvMaps`), where
//! the key order is the identity and the kernel's producer copies each run of contiguous keys
//! as bulk tensor copies; the one-pass backward's f32 dq sum ([`TileMap::for_dq_sum`]), into
//! which it adds a tile of contiguous query tokens by bulk tensor reductions; and VMoBA's
//! partial output rows ([`TileMap::for_rows`]), which its chunk-stationary kernel stores by bulk
//! tensor stores. Maps are encoded on the host for every launch (a driver call, no device work);
//! inputs TMA cannot describe get disabled maps and the per-chunk copies (or per-row
//! reductions).

use crate::kernel_params::AttnParams;
use candle_core::cuda_backend::cudarc::driver::sys::{
    self, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::DType;

/// `KvMaps` of tma_sm90.cuh: two 128-byte tensor maps, what map dims 1..3 are (0 batch, 1
/// head, 2 token) and whether the maps are set.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
pub(crate) struct KvMaps {
    k: [u64; 16],
    v: [u64; 16],
    role: [i32; 3],
    enabled: i32,
}
const _: () = assert!(std::mem::size_of::<KvMaps>() == 384);

/// `Sm90Args` of tma_sm90.cuh: the one parameter of a Hopper kernel that reads tensor maps,
/// its parameter struct followed by its maps (the forward's `KvMaps`, the one-pass backward's
/// dq sum and VMoBA's partial rows as a `TileMap`).
#[repr(C)]
pub(crate) struct Sm90Args<P, M> {
    pub(crate) params: P,
    pub(crate) maps: M,
}
// SAFETY: plain old data with the C layout of `Sm90Args<P, M>` where both halves are (the
// parameter structs are checked by the build, the maps by the size assertions on both sides).
unsafe impl<P: DeviceRepr, M: TensorMaps> DeviceRepr for Sm90Args<P, M> {}

/// Tensor maps with the C layout of their namesakes in tma_sm90.cuh.
pub(crate) trait TensorMaps: Copy {}
impl TensorMaps for KvMaps {}
impl TensorMaps for TileMap {}

/// `TileMap` of tma_sm90.cuh: a 128-byte tensor map with the 128-byte swizzle and whether it is
/// set.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
pub(crate) struct TileMap {
    map: [u64; 16],
    enabled: i32,
}
const _: () = assert!(std::mem::size_of::<TileMap>() == 256);

/// Channels of one box of the dq map (`tma_add_3d` in attention_bwd_sm90.cu): 128 bytes of
/// f32, the swizzle's span.
const DQ_BOX_CHANNELS: u32 = 32;

/// Channels of one box of a map of 16-bit rows (`TileMap::for_rows`): 128 bytes, the swizzle's
/// span; and its rows (the chunk-stationary kernel's rows per consumer).
const ROW_BOX: [u32; 2] = [64, 64];

impl TileMap {
    /// The map of an f32 dq sum at `address`, `[heads, tokens, d]` contiguous, with boxes of
    /// `columns` tokens (the kernel's query columns per tile), or a disabled one where the
    /// driver cannot encode it.
    pub(crate) fn for_dq_sum(
        address: u64,
        heads: usize,
        tokens: usize,
        d: usize,
        columns: usize,
    ) -> Self {
        let row_bytes = (d * 4) as u64;
        Self::encode(
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            address,
            &[d as u64, tokens as u64, heads as u64],
            &[row_bytes, row_bytes * tokens as u64],
            &[DQ_BOX_CHANNELS, columns as u32, 1],
        )
    }

    /// The map of `rows` contiguous rows of `d` channels of `dtype` (16-bit) at `address`, with
    /// boxes of 64 channels x 64 rows, or `None` where the driver cannot encode it.
    pub(crate) fn for_rows(address: u64, rows: usize, d: usize, dtype: DType) -> Option<Self> {
        let map = Self::encode(
            sixteen_bit(dtype)?,
            address,
            &[d as u64, rows as u64],
            &[(d * 2) as u64],
            &ROW_BOX,
        );
        (map.enabled != 0).then_some(map)
    }

    /// A map of these dims, strides and boxes ([`encode_tiled`]), disabled where the driver
    /// refuses.
    fn encode(
        data_type: CUtensorMapDataType,
        address: u64,
        global_dim: &[u64],
        global_strides: &[u64],
        box_dim: &[u32],
    ) -> Self {
        let mut map = TileMap {
            map: [0; 16],
            enabled: 0,
        };
        if encode_tiled(
            &mut map.map,
            data_type,
            address,
            global_dim,
            global_strides,
            box_dim,
        ) {
            map.enabled = 1;
        }
        map
    }
}

/// The tensor-map element type of a 16-bit `dtype`.
fn sixteen_bit(dtype: DType) -> Option<CUtensorMapDataType> {
    match dtype {
        DType::BF16 => Some(CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16),
        DType::F16 => Some(CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16),
        _ => None,
    }
}

/// Encodes a tiled tensor map with the 128-byte swizzle into `map`: dims `global_dim`
/// (innermost first), byte strides of the outer ones, boxes of `box_dim`; false where the
/// driver refuses.
fn encode_tiled(
    map: &mut [u64; 16],
    data_type: CUtensorMapDataType,
    address: u64,
    global_dim: &[u64],
    global_strides: &[u64],
    box_dim: &[u32],
) -> bool {
    debug_assert!(global_dim.len() == box_dim.len() && global_strides.len() + 1 == box_dim.len());
    let element_strides = [1u32; 5];
    // SAFETY: `map` is a 128-byte, 128-aligned buffer (the fields holding it are); the arrays
    // hold `box_dim.len()` dims (strides one fewer) and outlive the call.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr().cast(),
            data_type,
            box_dim.len() as u32,
            address as *mut std::ffi::c_void,
            global_dim.as_ptr(),
            global_strides.as_ptr(),
            box_dim.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    status == sys::CUresult::CUDA_SUCCESS
}

impl KvMaps {
    /// Maps that tell the kernel to copy chunk by chunk.
    pub(crate) fn disabled() -> Self {
        KvMaps {
            k: [0; 16],
            v: [0; 16],
            role: [0; 3],
            enabled: 0,
        }
    }

    /// Maps of `params`' K and V for tiles of `key_tile` tokens of `d` channels, or disabled
    /// ones where the key order is permuted or TMA cannot take the tensors.
    pub(crate) fn for_keys(params: &AttnParams, dtype: DType, d: usize, key_tile: usize) -> Self {
        let Some(data_type) = sixteen_bit(dtype) else {
            return Self::disabled();
        };
        if params.k_natural <= 0 || !d.is_multiple_of(64) {
            return Self::disabled();
        }
        let mut maps = Self::disabled();
        let tensors = [
            (params.k, params.k_strides, &mut maps.k),
            (params.v, params.v_strides, &mut maps.v),
        ];
        // Outer dims (batch, head, token) by increasing stride, as TMA walks them.
        let extents = [params.b, params.h, params.sk];
        let mut roles = [[0i32; 3]; 2];
        for ((address, strides, map), role) in tensors.into_iter().zip(&mut roles) {
            let mut dims = [0usize, 1, 2];
            dims.sort_by_key(|&i| strides[i]);
            if !address.is_multiple_of(16)
                || dims.iter().any(|&i| strides[i] <= 0 || strides[i] % 8 != 0)
            {
                return Self::disabled();
            }
            let global_dim: [u64; 4] = [
                d as u64,
                extents[dims[0]] as u64,
                extents[dims[1]] as u64,
                extents[dims[2]] as u64,
            ];
            let global_strides: [u64; 3] = dims.map(|i| (strides[i] * 2) as u64);
            let boxed = |i: usize| if dims[i] == 2 { key_tile as u32 } else { 1 };
            let box_dim: [u32; 4] = [64, boxed(0), boxed(1), boxed(2)];
            if !encode_tiled(
                map,
                data_type,
                address,
                &global_dim,
                &global_strides,
                &box_dim,
            ) {
                return Self::disabled();
            }
            *role = dims.map(|i| i as i32);
        }
        // One role list serves both maps.
        if roles[0] != roles[1] {
            return Self::disabled();
        }
        maps.role = roles[0];
        maps.enabled = 1;
        maps
    }
}
