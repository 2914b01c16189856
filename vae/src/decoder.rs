//! The decoder: latent frames to video frames.

use crate::blocks::{MidBlock, ResidualBlock};
use crate::config::VaeConfig;
use crate::conv::{CausalConv3d, TimeCache};
use crate::norm::ChannelNorm;
use crate::resample::Upsample;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `num_res_blocks + 1` residual blocks, then (all stages but the last) an upsampling that also
/// halves the channels.
#[derive(Clone, Debug)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Upsample>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.resnets {
            x = block.forward(&x, cache)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, cache),
            None => Ok(x),
        }
    }
}

/// conv_in, the middle block, the up blocks (widest first), then norm, SiLU and conv_out to
/// video channels.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: ChannelNorm,
    conv_out: CausalConv3d,
}

impl Decoder {
    /// Reads the decoder's weights (diffusers names under `decoder.`).
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let base = cfg.decoder_dim();
        let mults = &cfg.dim_mult;
        let stages = mults.len();
        // stage widths, widest first: [last mult, reversed mults...] * base
        let dims: Vec<usize> = std::iter::once(mults[stages - 1])
            .chain(mults.iter().rev().copied())
            .map(|m| m * base)
            .collect();
        let mut up_blocks = vec![];
        for stage in 0..stages {
            let vb = vb.pp("up_blocks").pp(stage);
            // every upsampling before this stage halved its channels
            let mut c_in = if stage == 0 { dims[0] } else { dims[stage] / 2 };
            let c_out = dims[stage + 1];
            let mut resnets = vec![];
            for j in 0..=cfg.num_res_blocks {
                resnets.push(ResidualBlock::new(c_in, c_out, vb.pp("resnets").pp(j))?);
                c_in = c_out;
            }
            let upsampler = if stage + 1 < stages {
                // the decoder mirrors the encoder: its first upsampling undoes the last downsampling
                let temporal = cfg.temperal_downsample[stages - 2 - stage];
                Some(Upsample::new(
                    c_out,
                    c_out / 2,
                    temporal,
                    vb.pp("upsamplers.0"),
                )?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
        }
        let last = dims[stages];
        Ok(Self {
            conv_in: CausalConv3d::new(cfg.z_dim, dims[0], (3, 3), 1, vb.pp("conv_in"))?,
            mid_block: MidBlock::new(dims[0], vb.pp("mid_block"))?,
            up_blocks,
            norm_out: ChannelNorm::video(last, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new(last, cfg.out_channels, (3, 3), 1, vb.pp("conv_out"))?,
        })
    }

    /// Decodes latent frames `[b, t, z_dim, h, w]` of a stream (one at a time, or the whole
    /// stream at once) into `[b, n, c, 8h, 8w]` frames: one for the stream's first latent
    /// frame, 4 for each other.
    pub fn forward(&self, z: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let x = self.conv_in.forward(z, cache.slot())?;
        let mut x = self.mid_block.forward(&x, cache)?;
        for block in &self.up_blocks {
            x = block.forward(&x, cache)?;
        }
        let x = self.norm_out.forward_silu(&x)?;
        self.conv_out.forward(&x, cache.slot())
    }
}
