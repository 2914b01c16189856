"""Joins vdit's and the peers' benchmark results into the tables BENCHMARKS.md keeps.

    python3 report.py BENCH_OUT_DIR
"""
import json
import os
import sys


def load(out_dir, name):
    path = os.path.join(out_dir, name)
    return json.load(open(path)) if os.path.exists(path) else None


def main(out_dir):
    ours, peers = load(out_dir, "attention.json"), load(out_dir, "peers.json")
    if ours:
        rows = ours["results"] + (peers["results"] if peers else [])
        cudnn = next((r["ms"] for r in rows if r["impl"] == "SDPA cuDNN"), None)
        dense = min((r["ms"] for r in rows if r["impl"].startswith("vdit dense")), default=None)
        print(f"attention, {ours['shape']}, {ours['dtype']}, {peers['device'] if peers else ours['device']}")
        print("| implementation | density | ms | effective TFLOP/s | vs SDPA cuDNN time | vs vdit dense time |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            c = f"{r['ms'] / cudnn:.2f}x" if cudnn else "-"
            o = f"{r['ms'] / dense:.3f}" if dense else "-"
            print(f"| {r['impl']} | {r['density']:.3f} | {r['ms']:.2f} | {r['tflops_effective']:.0f} | {c} | {o} |")
        for r in rows:
            if "rel_l2_vs_plan_path" in r:
                print(f"{r['impl']}: relative L2 {r['rel_l2_vs_plan_path']:.2e} against the plan path (host selection,"
                      f" density {r['plan_path_density']:.4f}; its kernel alone {r['plan_path_kernel_ms']:.1f} ms)")
        print("targets: dense >= 0.8x cuDNN throughput (time <= 1.25x); at density d, time <= 1.15*d*dense + 0.3 ms;"
              " effective TFLOP/s >= FlexAttention's at every density")
    dit, diffusers = load(out_dir, "dit.json"), load(out_dir, "diffusers.json")
    if dit:
        print()
        print("| DiT forward (Wan 1.3B config, bf16) | ms | vs diffusers | peak GiB |")
        print("| --- | --- | --- | --- |")
        rows = dit + ([{"attention": "diffusers (SDPA default)", "ms": diffusers["ms"], "peak_gib": diffusers["peak_gib"]}] if diffusers else [])
        for r in rows:
            ratio = f"{r['ms'] / diffusers['ms']:.2f}x" if diffusers else "-"
            peak = f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "-"
            print(f"| vdit {r['attention']} | {r['ms']:.1f} | {ratio} | {peak} |" if "diffusers" not in r["attention"]
                  else f"| {r['attention']} | {r['ms']:.1f} | 1.00x | {peak} |")
        print("targets: dense <= 0.9x diffusers; VSA 0.875 <= 0.45x; peak memory <= diffusers'")


if __name__ == "__main__":
    main(sys.argv[1])


def breakdown(out_dir):
    rows = load(out_dir, "dit_breakdown.json")
    if not rows:
        return
    print()
    print("| block operation (480p, 1.3B) | ms per call | calls per forward | ms per forward |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['op']} | {r['ms']:.3f} | {r['per_forward']} | {r['ms_per_forward']:.1f} |")


if __name__ == "__main__" and len(sys.argv) > 1:
    breakdown(sys.argv[1])
