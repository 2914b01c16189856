//! SSIM and PSNR against scikit-image's values for one pair of frames (fixture from
//! tests/fixtures/quality/make_ssim_fixture.py: 53x37 RGB, a pattern against a shifted, dimmed
//! and noisier copy). Tolerance: 1e-9 absolute (both are f64 computations of the same formula).

use candle_core::{safetensors, Device, Tensor};
use std::path::Path;
use vdit::video::{frame_psnr, frame_ssim, Frame};

fn frame(tensor: &Tensor) -> Frame {
    let (h, w, _) = tensor.dims3().unwrap();
    let rgb = tensor.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    Frame::new(w as u32, h as u32, rgb).unwrap()
}

#[test]
fn ssim_and_psnr_match_scikit_image() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quality/ssim_pair.safetensors");
    let t = safetensors::load(path, &Device::Cpu).unwrap();
    let (a, b) = (frame(&t["a"]), frame(&t["b"]));
    let scalar = |k: &str| t[k].to_vec1::<f64>().unwrap()[0];
    let (ssim, psnr) = (frame_ssim(&a, &b).unwrap(), frame_psnr(&a, &b));
    eprintln!(
        "ssim {ssim} (scikit-image {}), psnr {psnr} ({})",
        scalar("ssim"),
        scalar("psnr")
    );
    assert!(
        (ssim - scalar("ssim")).abs() < 1e-9,
        "ssim {ssim} vs {}",
        scalar("ssim")
    );
    assert!(
        (psnr - scalar("psnr")).abs() < 1e-9,
        "psnr {psnr} vs {}",
        scalar("psnr")
    );
    assert!(ssim < 0.9, "the pair is too alike to test anything: {ssim}");
}
