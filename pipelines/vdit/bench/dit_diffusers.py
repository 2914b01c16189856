"""Times diffusers' WanTransformer3DModel forward (Wan 2.1 1.3B config, random weights, bf16)
at the size `vdit bench dit` uses, on the same GPU; reports median ms and peak memory.

    python3 dit_diffusers.py BENCH_OUT_DIR [--frames 81 --height 480 --width 832 --runs 3]
"""
import argparse
import json
import os
import time

import torch
from diffusers import WanTransformer3DModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    config = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                  out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
    with torch.device("cuda"):
        model = WanTransformer3DModel(**config).to(torch.bfloat16).eval()
    latents = torch.randn(1, 16, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([500.0], device="cuda")
    with torch.no_grad():
        # Warm-up as in `vdit bench dit`: at least one forward and one second of them.
        start = time.perf_counter()
        torch.cuda.reset_peak_memory_stats()
        while True:
            model(latents, t, text, return_dict=False)
            torch.cuda.synchronize()
            if time.perf_counter() - start >= 1.0:
                break
        times = []
        for _ in range(a.runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(latents, t, text, return_dict=False)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
    times.sort()
    row = {"impl": "diffusers WanTransformer3DModel", "ms": times[len(times) // 2],
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "frames": a.frames, "height": a.height,
           "width": a.width, "torch": torch.__version__}
    json.dump(row, open(os.path.join(a.out_dir, "diffusers.json"), "w"), indent=2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
