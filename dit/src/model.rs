//! The Wan 2.1 text-to-video transformer.

use crate::block::{BlockInputs, WanBlock};
use crate::config::WanConfig;
use crate::embed::{ConditionEmbedder, PatchEmbed};
use crate::norm::Fp32LayerNorm;
use crate::rope::Rope3d;
use crate::sequence_parallel::SequenceParallel;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{linear, Linear, Module, VarBuilder};
use sparse::SelfAttention;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use vdit_core::parallel::Collective;
use vdit_core::{Step, TokenGrid};

/// Wan 2.1 DiT: predicts the flow-matching velocity for latents `[B, C, T, H, W]`.
#[derive(Clone, Debug)]
pub struct WanTransformer {
    cfg: WanConfig,
    patch_embedding: PatchEmbed,
    condition_embedder: ConditionEmbedder,
    blocks: Vec<WanBlock>,
    norm_out: Fp32LayerNorm,
    proj_out: Linear,
    scale_shift_table: Tensor,
    /// RoPE tables of the last token run seen (every step of a generation reuses them).
    rope_cache: Arc<Mutex<Option<RopeTables>>>,
}

/// RoPE tables and the run of tokens they were built for.
type RopeTables = (RopeRun, Arc<Rope3d>);

/// What RoPE tables are built for: a grid, the run of its tokens a rank holds (all of them
/// without sequence parallelism) and the padding after it.
#[derive(Clone, Debug, PartialEq)]
struct RopeRun {
    grid: TokenGrid,
    rows: Range<usize>,
    padding: usize,
}

impl WanTransformer {
    /// Builds the model from weights in diffusers names (see [`crate::load`] for renaming).
    pub fn new(cfg: &WanConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.dim();
        let [pt, ph, pw] = cfg.patch_size;
        let blocks = (0..cfg.num_layers)
            .map(|i| WanBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_embedding: PatchEmbed::new(cfg, vb.pp("patch_embedding"))?,
            condition_embedder: ConditionEmbedder::new(cfg, vb.pp("condition_embedder"))?,
            blocks,
            norm_out: Fp32LayerNorm::new(dim, cfg.eps, false, vb.pp("norm_out"))?,
            proj_out: linear(dim, cfg.out_channels * pt * ph * pw, vb.pp("proj_out"))?,
            scale_shift_table: vb
                .to_dtype(DType::F32)
                .get((1, 2, dim), "scale_shift_table")?,
            rope_cache: Arc::new(Mutex::new(None)),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &WanConfig {
        &self.cfg
    }

    /// The blocks, in order.
    pub fn blocks(&self) -> &[WanBlock] {
        &self.blocks
    }

    /// Token grid of latents of shape `[B, C, T, H, W]`, checking divisibility by the patch.
    pub fn token_grid(&self, latent_dims: &[usize]) -> Result<TokenGrid> {
        let [pt, ph, pw] = self.cfg.patch_size;
        let [_, c, t, h, w] = latent_dims else {
            candle_core::bail!(
                "latents must be [batch, channels, frames, height, width], got {latent_dims:?}"
            )
        };
        if *c != self.cfg.in_channels {
            candle_core::bail!(
                "latents have {c} channels, the model expects {}",
                self.cfg.in_channels
            )
        }
        if t % pt != 0 || h % ph != 0 || w % pw != 0 {
            candle_core::bail!(
                "latent size {t}x{h}x{w} is not divisible by the patch size {pt}x{ph}x{pw}"
            )
        }
        Ok(TokenGrid::new(t / pt, h / ph, w / pw))
    }

    /// Predicts the velocity for `latents: [B, C, T, H, W]` at `timesteps: [B]` given text
    /// embeddings `[B, L, text_dim]`. Output has the latents' shape and the model's dtype.
    pub fn forward(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        text: &Tensor,
        attention: &dyn SelfAttention,
        step: Step,
    ) -> Result<Tensor> {
        self.forward_split(latents, timesteps, text, attention, step, None)
    }

    /// [`WanTransformer::forward`] with the tokens split over the ranks of `sequence` (Ulysses
    /// sequence parallelism, [`SequenceParallel`]) when given: every rank passes the same
    /// inputs and gets the whole output.
    pub fn forward_split(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        text: &Tensor,
        attention: &dyn SelfAttention,
        step: Step,
        sequence: Option<&dyn Collective>,
    ) -> Result<Tensor> {
        let grid = self.token_grid(latents.dims())?;
        let x = self.patch_embedding.forward(latents)?;
        let cond = self.condition_embedder.forward(timesteps, text)?;
        let run = |x: &Tensor, rows, padding, attention: &dyn SelfAttention| -> Result<Tensor> {
            let run = RopeRun {
                grid,
                rows,
                padding,
            };
            let rope = self.rope(run, latents.device())?;
            let inputs = BlockInputs {
                modulation: &cond.modulation,
                context: &cond.context,
                rope: &rope,
                grid,
                step,
                attention,
            };
            let mut x = x.clone();
            for (layer, block) in self.blocks.iter().enumerate() {
                x = block.forward(&x, layer, &inputs)?;
            }
            self.head(&x, &cond.temb)
        };
        let out = match sequence {
            None => run(&x, 0..grid.len(), 0, attention)?,
            Some(comm) => {
                let sp = SequenceParallel::new(comm, grid.len(), self.cfg.num_heads)?;
                let (rows, padding) = sp.rows();
                let part = run(&sp.scatter(&x)?, rows, padding, &sp.attention(attention))?;
                sp.gather(&part)?
            }
        };
        self.unpatchify(&out, grid)
    }

    /// RoPE tables for `run` on `device`, built once and reused while the run stays the same.
    fn rope(&self, run: RopeRun, device: &Device) -> Result<Arc<Rope3d>> {
        let mut cache = self.rope_cache.lock().expect("rope cache lock");
        if let Some((cached, rope)) = cache.as_ref() {
            if *cached == run && rope.cos().device().same_device(device) {
                return Ok(Arc::clone(rope));
            }
        }
        let whole = Rope3d::new(self.cfg.head_dim, run.grid, device)?;
        let rope = match run.rows.len() == run.grid.len() && run.padding == 0 {
            true => whole,
            false => whole.rows(run.rows.clone(), run.padding)?,
        };
        let rope = Arc::new(rope);
        *cache = Some((run, Arc::clone(&rope)));
        Ok(rope)
    }

    /// Output norm modulated by the time embedding, then the projection to patch channels.
    fn head(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let table = self
            .scale_shift_table
            .broadcast_add(&temb.to_dtype(DType::F32)?.unsqueeze(1)?)?;
        let m = table.chunk(2, 1)?; // shift, scale
        let h = self.norm_out.modulated(x, &m[0], &m[1])?;
        self.proj_out.forward(&h)
    }

    /// `[B, S, C * pt * ph * pw]` (channel order pt, ph, pw, c) back to `[B, C, T, H, W]`.
    fn unpatchify(&self, x: &Tensor, grid: TokenGrid) -> Result<Tensor> {
        let b = x.dim(0)?;
        let [pt, ph, pw] = self.cfg.patch_size;
        let c = self.cfg.out_channels;
        x.reshape(vec![b, grid.t, grid.h, grid.w, pt, ph, pw, c])?
            .permute(vec![0, 7, 1, 4, 2, 5, 3, 6])?
            .reshape((b, c, grid.t * pt, grid.h * ph, grid.w * pw))
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.proj_out.weight().device()
    }

    /// The dtype of the weights (activations run in it).
    pub fn dtype(&self) -> DType {
        self.proj_out.weight().dtype()
    }
}
