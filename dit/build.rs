//! Compiles the fused CUDA kernels in `kernels/` to PTX when the `cuda` feature is on.

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let status = std::process::Command::new(&nvcc)
        .args(["-ptx", "-O3", "-std=c++17", "-arch=compute_80", "-o"])
        .arg(out.join("fused.ptx"))
        .arg("kernels/fused.cu")
        .status()
        .unwrap_or_else(|e| panic!("cannot run {nvcc}: {e} (set NVCC or put nvcc on PATH)"));
    assert!(status.success(), "nvcc failed on kernels/fused.cu");
}
