"""Times PyTorch SDPA (cuDNN, flash backends) and FlexAttention at the shape and on the exact
block masks that `vdit bench attention` used, on the same GPU: forward alone, and forward with
backward (SDPA cuDNN, FlexAttention) as `vdit bench attention` times its trainable paths; and,
where `fastvideo_kernel` imports (scripts/fetch_peers.sh), FastVideo's VSA on the same video grid
padded to whole 4x4x4 cubes, at the same sparsity and with a gate, forward and forward+backward
(its Triton backend: the ThunderKittens one fails on this machine's PyTorch).

    python3 attention_peers.py BENCH_OUT_DIR      # reads masks.safetensors + attention.json, writes peers.json
"""
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention


# As in `vdit bench`: every case runs for at least WARM_UP_SECONDS before it is timed, so that all
# are timed at the clocks the GPU keeps under its power cap, and is timed over at least `runs`
# calls and TIMED_SECONDS.
WARM_UP_SECONDS = 1.0
TIMED_SECONDS = 1.0


def median_ms(fn, warmup=3, runs=20):
    start = time.perf_counter()
    calls = 0
    while calls < warmup or time.perf_counter() - start < WARM_UP_SECONDS:
        fn()
        torch.cuda.synchronize()
        calls += 1
    times = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < TIMED_SECONDS:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def fastvideo_vsa_rows(ours, runs):
    """FastVideo's `video_sparse_attn` at the bench's grid and VSA sparsity (0.875), or nothing
    when its package is missing (the reason is printed)."""
    os.environ["FASTVIDEO_VSA_TRITON"] = "1"
    try:
        from fastvideo_kernel import construct_variable_block_sizes, video_sparse_attn
    except ImportError as e:
        print(f"FastVideo VSA skipped: {e}")
        return []
    shape = ours["shape"]
    b, h, d = shape["batch"], shape["heads"], shape["head_dim"]
    grid = shape["grid"]
    cubes = [-(-n // 4) for n in grid]
    blocks = cubes[0] * cubes[1] * cubes[2]
    s = blocks * 64
    sizes = construct_variable_block_sizes(tuple(grid), tuple(cubes), torch.device("cuda"))
    topk = round(blocks * (1 - 0.875))
    q, k, v, gate = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    attend = lambda q, k, v, gate: video_sparse_attn(q, k, v, sizes, sizes, topk, (4, 4, 4), gate)
    density = topk / blocks
    # the real tokens' dense FLOPs, as `vdit bench attention` counts them
    flops = 4.0 * b * h * shape["tokens"] ** 2 * d
    ms = median_ms(lambda: attend(q, k, v, gate), runs=runs)
    rows = [{"impl": f"FastVideo VSA (Triton; {s} padded tokens, top-{topk} of {blocks} cubes, gate)",
             "density": density, "ms": ms, "tflops_effective": flops / ms * 1e-9}]
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, gate)]
    dout = torch.randn_like(q)

    def step():
        for t in leaves:
            t.grad = None
        attend(*leaves).backward(dout)
    ms = median_ms(step, runs=runs)
    rows.append({"impl": "FastVideo VSA fwd+bwd (Triton, gate)", "pass": "forward+backward", "density": density,
                 "ms": ms, "tflops_effective": 3.5 * flops / ms * 1e-9})
    return rows


def main(out_dir):
    ours = json.load(open(os.path.join(out_dir, "attention.json")))
    shape = ours["shape"]
    b, h, s, d, block = shape["batch"], shape["heads"], shape["tokens"], shape["head_dim"], shape["block"]
    runs = ours["runs"]
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = 4.0 * b * h * s * s * d
    rows = []
    # forward and backward: gradients of leaf copies for a fixed output gradient
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    dout = torch.randn_like(q)

    def forward_backward(attend):
        def step():
            for t in leaves:
                t.grad = None
            attend(*leaves).backward(dout)
        return step

    def fb_row(name, density, ms):
        return {"impl": name, "pass": "forward+backward", "density": density, "ms": ms,
                "tflops_effective": 3.5 * flops / ms * 1e-9}

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ms = median_ms(forward_backward(torch.nn.functional.scaled_dot_product_attention), runs=runs)
    rows.append(fb_row("SDPA cuDNN fwd+bwd", 1.0, ms))
    for name, backend in [("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION), ("SDPA flash", SDPBackend.FLASH_ATTENTION)]:
        with sdpa_kernel([backend]):
            ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), runs=runs)
        rows.append({"impl": name, "density": 1.0, "ms": ms, "tflops_effective": flops / ms * 1e-9})
    masks = load_file(os.path.join(out_dir, "masks.safetensors"))
    flex = torch.compile(flex_attention)
    for key in sorted(masks, key=lambda k: -float(k.split("_")[1])):
        density = float(key.split("_")[1])
        bits = masks[key].to("cuda").bool()  # [H, nqb, nkb]
        counts = bits.sum(-1).to(torch.int32)
        order = torch.argsort((~bits).to(torch.int8), dim=-1, stable=True).to(torch.int32)  # kept blocks first
        block_mask = BlockMask.from_kv_blocks(
            counts[None].expand(b, -1, -1).contiguous(), order[None].expand(b, -1, -1, -1).contiguous(),
            BLOCK_SIZE=block, seq_lengths=(s, s))
        ms = median_ms(lambda: flex(q, k, v, block_mask=block_mask), runs=runs)
        actual = bits.float().mean().item()
        rows.append({"impl": "FlexAttention", "density": actual, "target_density": density, "ms": ms,
                     "tflops_effective": flops / ms * 1e-9, "tflops_actual": flops * actual / ms * 1e-9})
        ms = median_ms(forward_backward(lambda q, k, v: flex(q, k, v, block_mask=block_mask)), runs=runs)
        rows.append(fb_row("FlexAttention fwd+bwd", actual, ms))
    rows.extend(fastvideo_vsa_rows(ours, runs))
    json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": rows},
              open(os.path.join(out_dir, "peers.json"), "w"), indent=2)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1])
