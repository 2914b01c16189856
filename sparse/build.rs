//! Compiles the CUDA kernels in `kernels/` to PTX when the `cuda` feature is on.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    // PTX for compute_80 runs on sm_80 and (JIT-compiled) on sm_90; the wgmma kernels need
    // Hopper's architecture-specific target.
    let kernels = [
        ("attention_fwd", "compute_80"),
        ("attention_fwd_sm90", "compute_90a"),
        ("attention_bwd", "compute_80"),
        ("topk", "compute_80"),
        ("pool", "compute_80"),
        ("vmoba", "compute_80"),
    ];
    for (kernel, arch) in kernels {
        let src = format!("kernels/{kernel}.cu");
        let dst = out.join(format!("{kernel}.ptx"));
        let status = std::process::Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", &format!("-arch={arch}"), "--use_fast_math", "-o"])
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} for {src}: {e} (set NVCC or put nvcc on PATH; see ../shared/tools/README.md)"));
        assert!(status.success(), "nvcc failed on {src}");
    }
}
