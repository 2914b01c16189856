//! Shared helpers of the video tests: a synthetic video and directory listings.

#![allow(dead_code)] // each test file uses its own subset

use candle_core::{Device, Tensor};
use std::path::Path;
use vdit::video::{frames_from_tensor, Frame, FrameRate};

/// A smoothly moving colour gradient as frames, made the way the VAE hands video out: by
/// `frames_from_tensor` from [`gradient_tensor`].
pub fn gradient_video(frames: usize, width: usize, height: usize) -> Vec<Frame> {
    frames_from_tensor(&gradient_tensor(frames, width, height)).unwrap()
}

/// A smoothly moving colour gradient as a `[1, 3, T, H, W]` tensor in [-1, 1].
pub fn gradient_tensor(frames: usize, width: usize, height: usize) -> Tensor {
    let tau = std::f32::consts::TAU;
    let mut data = Vec::with_capacity(3 * frames * height * width);
    for channel in 0..3 {
        for t in 0..frames {
            let phase = t as f32 / frames as f32;
            for y in 0..height {
                for x in 0..width {
                    let (u, v) = (x as f32 / width as f32, y as f32 / height as f32);
                    let value = match channel {
                        0 => 0.9 * (tau * (u - phase)).cos(),
                        1 => 0.9 * (tau * (v + 0.5 * phase)).sin(),
                        _ => 0.8 * (tau * (0.5 * u + v + 0.3 * phase)).sin(),
                    };
                    data.push(value);
                }
            }
        }
    }
    Tensor::from_vec(data, (1, 3, frames, height, width), &Device::Cpu).unwrap()
}

/// 16 frames per second, Wan 2.1's rate.
pub fn fps16() -> FrameRate {
    FrameRate::new(16, 1).unwrap()
}

/// Sorted names of the entries of `dir`, hidden ones included.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Largest per-channel difference between two videos.
pub fn max_difference(a: &[Frame], b: &[Frame]) -> u8 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.rgb().iter().zip(y.rgb()))
        .map(|(p, q)| p.abs_diff(*q))
        .max()
        .unwrap()
}
