//! The parameter struct of the column kernels (`kernels/columns.cu`), defined once: the build
//! checks that the C struct of the same name has this size and these field offsets (see
//! `kernel_build::kernel_params!`).

kernel_build::kernel_params! {
    /// Launch parameters of `shift_columns_*` and `shift_columns_adjoint_*`: the input and
    /// output addresses, the output's element count, and the gather of
    /// [`crate::columns::ShiftColumns`] over frames `[b, l, c, pixels]`.
    pub struct ColumnParams {
        pub input: u64,
        pub output: u64,
        pub total: i64,
        pub pixels: i64,
        pub start: i64,
        pub len: i64,
        pub frames: i32,
        pub channels: i32,
        pub taps: i32,
        pub kernel: i32,
        pub row: i32,
        pub stride: i32,
        pub frames_out: i32,
    }
}
