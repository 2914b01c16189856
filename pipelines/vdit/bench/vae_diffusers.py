"""Times diffusers' AutoencoderKLWan decode and encode (Wan 2.1 VAE, default config, random weights) on the
same GPU as `vdit bench vae`, and optionally PyTorch's conv3d (cuDNN) on the decoder's shapes in
both memory layouts, to place the VAE's convolutions against what cuDNN reaches.

    python3 vae_diffusers.py OUT_DIR [--frames 81 --height 480 --width 832 --dtype bf16 --convs]
"""
import argparse
import json
import os
import time

import torch
from diffusers import AutoencoderKLWan


def timed(fn, runs=3):
    fn()  # warm-up (cuDNN picks its algorithms)
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def conv_rows(dtype):
    """conv3d 3x3x3 (padding 1 in space, none in time) at the decoder's stage shapes."""
    rows = []
    # (channels in, channels out, frames in, height, width): stage 0..3 at 480x832, 4 frames out
    for cin, cout, t, h, w in [(384, 384, 3, 60, 104), (384, 384, 4, 120, 208),
                               (192, 192, 6, 240, 416), (96, 96, 6, 480, 832)]:
        conv = torch.nn.Conv3d(cin, cout, 3, padding=(0, 1, 1)).cuda().to(dtype)
        x = torch.randn(1, cin, t, h, w, device="cuda", dtype=dtype)
        flops = 2 * cin * cout * 27 * (t - 2) * h * w
        for layout in ["ncdhw", "channels_last_3d"]:
            if layout == "channels_last_3d":
                conv = conv.to(memory_format=torch.channels_last_3d)
                x = x.contiguous(memory_format=torch.channels_last_3d)
            with torch.no_grad():
                s = timed(lambda: conv(x), runs=10)
            rows.append({"op": f"conv3d {cin}->{cout} {t}x{h}x{w}", "layout": layout, "ms": s * 1e3,
                         "tflops": flops / s / 1e12})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--convs", action="store_true")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    vae = AutoencoderKLWan().to("cuda", dtype).eval()
    z = torch.randn(1, 16, (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8, device="cuda", dtype=dtype)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        seconds = timed(lambda: vae.decode(z, return_dict=False), runs=2)
    row = {"impl": f"diffusers AutoencoderKLWan decode ({a.dtype})", "s": seconds,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "frames": a.frames,
           "height": a.height, "width": a.width, "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version()}
    video = torch.rand(1, 3, a.frames, a.height, a.width, device="cuda", dtype=dtype) * 2 - 1
    del z
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        row["encode_s"] = timed(lambda: vae.encode(video).latent_dist.mode(), runs=2)
    row["encode_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(row), flush=True)
    if a.convs:
        row["convs"] = conv_rows(dtype)
    json.dump(row, open(os.path.join(a.out_dir, f"vae_diffusers_{a.dtype}.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
