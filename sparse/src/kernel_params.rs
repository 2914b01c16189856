//! The parameter structs of the attention kernels, defined once: the build checks that the C
//! structs of the same names (`attention_params.cuh`, `bwd_params.cuh`, `lists.cu`) have this size and
//! these field offsets (see `kernel_build::kernel_params!`).

kernel_build::kernel_params! {
    /// Launch parameters of `bsattn_fwd_*`: tensors as addresses with element strides over
    /// (batch, head, token), the plan's layouts and key lists, and the gathered mode's tiles.
    pub struct AttnParams {
        pub q: u64,
        pub k: u64,
        pub v: u64,
        pub out: u64,
        pub lse: u64,
        pub q_strides: [i64; 3],
        pub k_strides: [i64; 3],
        pub v_strides: [i64; 3],
        pub o_strides: [i64; 3],
        pub q_order: u64,
        pub q_starts: u64,
        pub k_order: u64,
        pub k_starts: u64,
        pub offsets: u64,
        pub indices: u64,
        pub b: i32,
        pub h: i32,
        pub s: i32,
        pub sk: i32,
        pub q_per_head: i32,
        pub k_per_head: i32,
        pub nqb: i32,
        pub uniform_k: i32,
        pub all_keys: i32,
        pub scale_log2: f32,
        pub tiles: u64,
        pub k_natural: i32,
    }

    /// Launch parameters of `bsattn_bwd_*`: as [`AttnParams`], plus the output gradient, the
    /// forward's log-sum-exp and `rowsum(dout * out)`, and the f32 gradients.
    pub struct BwdParams {
        pub q: u64,
        pub k: u64,
        pub v: u64,
        pub dout: u64,
        pub q_strides: [i64; 3],
        pub k_strides: [i64; 3],
        pub v_strides: [i64; 3],
        pub o_strides: [i64; 3],
        pub lse: u64,
        pub delta: u64,
        pub dq: u64,
        pub dk: u64,
        pub dv: u64,
        pub q_order: u64,
        pub q_starts: u64,
        pub k_order: u64,
        pub k_starts: u64,
        pub offsets: u64,
        pub indices: u64,
        pub b: i32,
        pub h: i32,
        pub s: i32,
        pub sk: i32,
        pub q_per_head: i32,
        pub k_per_head: i32,
        pub rows_blocks: i32,
        pub row_chunks: i32,
        pub all_cols: i32,
        pub uniform_cols: i32,
        pub scale: f32,
    }

    /// The shape of a uniform-list transpose (`kernels/lists.cu`): `groups * nq` lists of `k`
    /// key blocks out of `nk`, query rows cut into `chunks` chunks of `chunk_rows` per group.
    pub struct ListShape {
        pub groups: i32,
        pub nq: i32,
        pub k: i32,
        pub nk: i32,
        pub chunk_rows: i32,
        pub chunks: i32,
    }
}
