"""Makes a full-size random Wan 2.1 text-to-video pipeline folder for timing whole generations
(`vdit bench e2e` and e2e_diffusers.py): the 1.3B transformer and the VAE with random weights in
bf16, the UniPC scheduler Wan uses (flow shift 3.0), no text encoder, and `inputs.safetensors`
with seeded initial latents and prompt embeddings (`latents`, `prompt_embeds`,
`negative_prompt_embeds`, zero rows after the prompt's tokens as WanPipeline leaves them).

    python3 make_random_wan.py OUT_DIR [--width 832 --height 480 --frames 81 --steps 50]
"""
import argparse
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from safetensors.torch import save_file

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    torch.manual_seed(a.seed)
    with torch.device("cuda"):
        transformer = WanTransformer3DModel(**WAN_1_3B).to(torch.bfloat16)
        vae = AutoencoderKLWan().to(torch.bfloat16)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae, scheduler=scheduler)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps({
        "size": f"{a.width}x{a.height}", "frames": a.frames, "steps": a.steps, "guidance": 5.0, "fps": 16,
    }, indent=2) + "\n")
    g = torch.Generator().manual_seed(a.seed)
    latents = torch.randn(1, 16, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8, generator=g)

    def embeddings(tokens):
        e = torch.zeros(1, 512, 4096)
        e[:, :tokens] = torch.randn(1, tokens, 4096, generator=g) * 0.2
        return e

    save_file({"latents": latents, "prompt_embeds": embeddings(24), "negative_prompt_embeds": embeddings(1)},
              str(out / "inputs.safetensors"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
