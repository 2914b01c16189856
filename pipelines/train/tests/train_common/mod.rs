//! Shared by the training tests: tiny runs on the CPU.

#![allow(dead_code)]

use candle_core::Device;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use train::optim::LossRow;
use train::recipe::Preset;
use train::run::{Common, TrainProgress, VaeStage};

/// A base seed that changes every run, printed so that a failure can be replayed.
pub fn fresh_seed() -> u64 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    println!("base seed {seed}");
    seed
}

/// Progress that stops after `stop_after` steps (never when `None`).
pub struct StopAfter(pub Option<u64>, pub u64);

impl TrainProgress for StopAfter {
    fn begin(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, row: Option<&LossRow>) {
        if row.is_some() {
            self.1 += 1;
        }
    }
    fn end(&mut self) {}
    fn stop_requested(&self) -> bool {
        self.0.is_some_and(|n| self.1 >= n)
    }
}

/// Settings of a tiny CPU run in `dir`.
pub fn tiny(dir: &Path, steps: u64, batch: usize, lr: f64) -> Common {
    Common {
        preset: Preset::Tiny,
        run_dir: dir.to_path_buf(),
        steps,
        batch,
        lr,
        warmup: 2.min(steps),
        clip: 1.0,
        ema_decay: 0.99,
        seed: 5,
        checkpoint_every: 1000,
        resume: false,
        device: Device::Cpu,
    }
}

/// A tiny base model folder (one VAE step) under `root`; checks that the stage measured its
/// reconstruction frame by frame.
pub fn tiny_base(root: &Path) -> anyhow::Result<PathBuf> {
    let stage = VaeStage {
        common: tiny(&root.join("vae"), 1, 1, 1e-3),
        crop: 32,
        crop_frames: 5,
        kl_weight: 1e-4,
        from: None,
    };
    let outcome = train::run::train_vae(&stage, &mut StopAfter(None, 0))?;
    // its reconstruction is measured on every frame of the 5-frame clips, in dB
    let psnr = &outcome.reconstruction_psnr;
    anyhow::ensure!(
        psnr.len() == 5
            && psnr
                .iter()
                .all(|db| db.is_finite() && *db < vdit_core::metrics::PSNR_CAP),
        "reconstruction PSNR by frame: {psnr:?}"
    );
    Ok(outcome.model_dir)
}
