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
        for r in [r for r in rows if "error" in r]:
            print(f"{r['impl']}: failed: {r['error']}")
        rows = [r for r in rows if "error" not in r]
        # forward rows against the forward references, forward+backward rows against theirs
        def references(backward):
            same = [r for r in rows if (r.get("pass") == "forward+backward") == backward]
            cudnn = next((r["ms"] for r in same if r["impl"].startswith("SDPA cuDNN")), None)
            dense = min((r["ms"] for r in same if r["impl"].startswith("vdit dense")), default=None)
            return cudnn, dense
        print(f"attention, {ours['shape']}, {ours['dtype']}, {peers['device'] if peers else ours['device']}")
        print("| implementation | density | ms | effective TFLOP/s | vs SDPA cuDNN time | vs vdit dense time |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in rows:
            cudnn, dense = references(r.get("pass") == "forward+backward")
            c = f"{r['ms'] / cudnn:.2f}x" if cudnn else "-"
            o = f"{r['ms'] / dense:.3f}" if dense else "-"
            print(f"| {r['impl']} | {r['density']:.3f} | {r['ms']:.2f} | {r['tflops_effective']:.0f} | {c} | {o} |")
        for r in rows:
            if "rel_l2_vs_plan_path" in r:
                print(f"{r['impl']}: relative L2 {r['rel_l2_vs_plan_path']:.2e} against the plan path (one query per block,"
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


def vae(out_dir):
    ours, theirs = load(out_dir, "vae.json"), load(out_dir, "vae_diffusers_bf16.json")
    if not ours:
        return
    print()
    print(f"| VAE ({ours['width']}x{ours['height']}x{ours['frames']}) | decode s | vs diffusers bf16 | peak GiB |"
          " encode s | vs diffusers bf16 | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in [ours] + ([theirs] if theirs else []):
        ratio = f"{r['s'] / theirs['s']:.2f}x" if theirs else "-"
        enc = r.get("encode_s")
        enc_ratio = f"{enc / theirs['encode_s']:.2f}x" if enc and theirs and theirs.get("encode_s") else "-"
        enc_peak = f"{r['encode_peak_gib']:.2f}" if r.get("encode_peak_gib") is not None else "-"
        encode = f" {enc:.3f} | {enc_ratio} | {enc_peak} |" if enc else " - | - | - |"
        print(f"| {r['impl'].replace(' decode', '')} | {r['s']:.3f} | {ratio} | {r['peak_gib']:.2f} |" + encode)
    print("target: vdit decode and encode <= 1.0x diffusers' bf16 times, peak memory no higher")


def e2e(out_dir, steps=50):
    ours, theirs = load(out_dir, "e2e.json"), load(out_dir, "e2e_diffusers.json")
    if not ours:
        return
    print()
    print(f"| whole generation ({ours[0]['size']}x{ours[0]['frames']}, guidance {ours[0]['guidance']}) | steps run |"
          " load s | step s | denoise s | decode s | write s | peak GiB | rel. L2 vs diffusers |"
          f" {steps}-step total s | vs diffusers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")

    def total(r):
        return r["loading_s"] + steps * r["step_s_median"] + r["decoding_s"] + r.get("writing_s", r.get("postprocess_s", 0.0))

    base = total(theirs) if theirs else None
    for r in ours + ([theirs] if theirs else []):
        name = r.get("impl") or f"vdit {r['attention']}"
        write = r.get("writing_s", r.get("postprocess_s"))
        l2, peak = r.get("rel_l2_vs_diffusers"), r.get("peak_gib")
        print(f"| {name} | {r['steps']} | {r['loading_s']:.1f} | {r['step_s_median']:.3f} | {r['denoising_s']:.1f} |"
              f" {r['decoding_s']:.2f} | {write:.2f} | {f'{peak:.2f}' if peak is not None else '-'} |"
              f" {f'{l2:.1e}' if l2 is not None else '-'} |"
              f" {total(r):.1f} | {f'{total(r) / base:.2f}x' if base else '-'} |")
    print(f"{steps}-step total = loading + {steps} x the median step + decode + writing (diffusers: post-processing to"
          " frames); targets: dense <= 0.85x diffusers, VSA 0.875 <= 0.45x, peak memory <= diffusers'")


def fewstep(out_dir):
    path = os.path.join(out_dir, "fewstep.txt")
    if not os.path.exists(path):
        return
    print()
    print("| `vdit generate` 832x480x81, random Wan 1.3B | sampler | steps | guidance | attention |"
          " whole run s (process) | load s | denoise s | decode s | write s | density | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for line in open(path):
        name, _, wall_ms = line.split()
        if name == "warmup":
            continue
        record = load(out_dir, f"fewstep-{name}.y4m.json")
        s, t = record["settings"], record["timings"]
        print(f"| {name} | {s['scheduler']} | {s['steps']} | {s['guidance']} | {record['attention']['method']} |"
              f" {int(wall_ms) / 1000:.2f} | {t['loading_s']:.2f} | {t['denoising_s']:.2f} |"
              f" {t['decoding_s']:.2f} | {t['writing_s']:.2f} | {record['attention']['density']['overall']:.3f} |"
              f" {record['peak_gpu_gib']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
    vae(sys.argv[1])
    e2e(sys.argv[1])
    fewstep(sys.argv[1])


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
