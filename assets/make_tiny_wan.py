"""Builds assets/tiny-wan/: vdit's embedded default model, a tiny RANDOM Wan 2.1 pipeline.

Run from anywhere: python3 assets/make_tiny_wan.py
Needs torch, diffusers, transformers, tokenizers and safetensors (CPU only).

The pipeline has the structure of Wan 2.1 text-to-video in diffusers' layout (model_index.json,
transformer/, vae/, text_encoder/, tokenizer/, scheduler/), every part shrunk to a few thousand
parameters and filled with random weights: it runs in seconds on a CPU and its videos are noise.
It exists so that `vdit generate` works out of the box and so the pipeline can be compared with
diffusers end to end (pipelines/vdit/tests/fixtures/t2v/make_t2v_fixtures.py).

- transformer: WanTransformer3DModel, 2 heads of 16 channels, 2 layers, text width 32.
- vae: AutoencoderKLWan (Wan 2.1 structure, z_dim 16) with base width 4.
- text_encoder: UMT5EncoderModel, width 32, 2 layers.
- tokenizer: the small T5 SentencePiece tokenizer of dit/umt5/tests/fixtures/tokenizer.
- scheduler: UniPCMultistepScheduler with flow sigmas and flow shift 3.0 (Wan 2.1's at 480p).
- generation_config.json: vdit's default settings for this model (small, fast).

Every weight is drawn from a seeded generator, rounded to bf16-representable values (so bf16
runs load exactly the same model) and stored as f32.
"""

import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "assets" / "tiny-wan"
TOKENIZER = ROOT / "pipelines" / "tests" / "fixtures" / "text" / "tokenizer"

# vdit's defaults for this model: small enough that the README's first command finishes in
# seconds on a CPU (the Wan defaults, 832x480, 81 frames, 50 steps, apply to other models).
GENERATION_CONFIG = {"size": "256x256", "frames": 17, "steps": 20, "guidance": 5.0, "fps": 16}


def randomise(model, generator):
    """Every parameter random, norms near 1, so no path is trivially zero or identity."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (p.ndim == 1 and "norm" in name) or name.endswith("gamma"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=generator)
            elif p.ndim == 1:
                v = 0.1 * torch.randn(p.shape, generator=generator)
            elif "scale_shift_table" in name:
                v = 0.5 * torch.randn(p.shape, generator=generator)
            elif "relative_attention_bias" in name or "embed_tokens" in name or name == "shared.weight":
                v = torch.randn(p.shape, generator=generator)
            else:
                v = torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5
            p.copy_(v.bfloat16().float())


def build() -> WanPipeline:
    generator = torch.Generator().manual_seed(20251123)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=32,
            d_kv=8,
            num_heads=4,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=0,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
    ).eval()
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        rope_max_seq_len=1024,
    ).eval()
    vae = AutoencoderKLWan(
        base_dim=4,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    ).eval()
    for model in (text_encoder, transformer, vae):
        randomise(model, generator)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=3.0,
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )


def main() -> None:
    pipe = build()
    shutil.rmtree(OUT, ignore_errors=True)
    pipe.save_pretrained(OUT, safe_serialization=True)
    (OUT / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    # the tokenizer's SentencePiece model is not needed: tokenizer.json holds everything
    for extra in ("spiece.model",):
        (OUT / "tokenizer" / extra).unlink(missing_ok=True)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT}: {total / 1e6:.2f} MB")
    for name in ("transformer", "vae", "text_encoder"):
        params = sum(p.numel() for p in getattr(pipe, name).parameters())
        print(f"  {name}: {params} parameters")


if __name__ == "__main__":
    main()
