//! The encoder: video chunks to the parameters of the latent Gaussian (mean and log-variance).

use crate::blocks::{MidBlock, ResidualBlock};
use crate::config::VaeConfig;
use crate::conv::{CausalConv3d, TimeCache};
use crate::norm::ChannelNorm;
use crate::resample::Downsample;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// One entry of the encoder's flat `down_blocks` list.
#[derive(Clone, Debug)]
enum DownLayer {
    Residual(ResidualBlock),
    Downsample(Downsample),
}

/// conv_in, per stage `num_res_blocks` residual blocks then a downsampling (all stages but the
/// last), the middle block, then norm, SiLU and conv_out to `2 * z_dim` channels.
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: CausalConv3d,
    down_blocks: Vec<DownLayer>,
    mid_block: MidBlock,
    norm_out: ChannelNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    /// Reads the encoder's weights (diffusers names under `encoder.`).
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| m * cfg.base_dim)
            .collect();
        let stages = cfg.dim_mult.len();
        let mut down_blocks = vec![];
        let vb_down = vb.pp("down_blocks");
        for stage in 0..stages {
            let mut c_in = dims[stage];
            let c_out = dims[stage + 1];
            for _ in 0..cfg.num_res_blocks {
                let block = ResidualBlock::new(c_in, c_out, vb_down.pp(down_blocks.len()))?;
                down_blocks.push(DownLayer::Residual(block));
                c_in = c_out;
            }
            if stage + 1 < stages {
                let temporal = cfg.temperal_downsample[stage];
                let down = Downsample::new(c_out, temporal, vb_down.pp(down_blocks.len()))?;
                down_blocks.push(DownLayer::Downsample(down));
            }
        }
        let top = dims[stages];
        Ok(Self {
            conv_in: CausalConv3d::new(cfg.in_channels, dims[0], (3, 3), 1, vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock::new(top, vb.pp("mid_block"))?,
            norm_out: ChannelNorm::video(top, vb.pp("norm_out"))?,
            conv_out: CausalConv3d::new(top, 2 * cfg.z_dim, (3, 3), 1, vb.pp("conv_out"))?,
        })
    }

    /// Encodes one chunk `[b, t, c, h, w]` of a stream (the first frame alone, then 4 frames at
    /// a time, or the whole stream at once) into `[b, t', 2 z_dim, h / 8, w / 8]`: one latent
    /// frame for the stream's first frame and one for each 4 after.
    pub fn forward(&self, x: &Tensor, cache: &mut TimeCache) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x, cache.slot())?;
        for layer in &self.down_blocks {
            x = match layer {
                DownLayer::Residual(block) => block.forward(&x, cache)?,
                DownLayer::Downsample(down) => down.forward(&x, cache)?,
            };
        }
        let x = self.mid_block.forward(&x, cache)?;
        let x = self.norm_out.forward_silu(&x)?;
        self.conv_out.forward(&x, cache.slot())
    }
}
