"""Tables of multigpu.sh's runs: latents agreement of 2-GPU runs with 1-GPU runs, and the
stages of whole generations on 1 and 2 GPUs.

    python3 multigpu_report.py WORK_DIR
"""
import json
import os
import sys

from safetensors.numpy import load_file


def rel_l2(a, b):
    a, b = a.astype("float64"), b.astype("float64")
    return float(((a - b) ** 2).sum() ** 0.5 / max((b ** 2).sum() ** 0.5, 1e-30))


def record(work, name):
    path = os.path.join(work, f"mg-{name}.y4m.json")
    return json.load(open(path)) if os.path.exists(path) else None


def main(work):
    print("| method | 2 GPUs, split | rel. L2 of final latents vs 1 GPU | density 1 GPU | density 2 GPUs | pairs per rank (max/mean) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method in ["dense", "vsa", "vmoba", "paro", "sparsed"]:
        one = os.path.join(work, f"mg-{method}-1.safetensors")
        for split in ["sp2", "cfg2"]:
            two = os.path.join(work, f"mg-{method}-{split}.safetensors")
            if not (os.path.exists(one) and os.path.exists(two)):
                print(f"| {method} | {split} | missing | | | |")
                continue
            err = rel_l2(load_file(two)["latents"], load_file(one)["latents"])
            r1, r2 = record(work, f"{method}-1"), record(work, f"{method}-{split}")
            d1 = r1["attention"]["density"]["overall"] if r1 else float("nan")
            d2 = r2["attention"]["density"]["overall"] if r2 else float("nan")
            pairs = (r2 or {}).get("attention", {}).get("pairs_per_rank") or []
            imb = f"{max(pairs) / (sum(pairs) / len(pairs)):.3f}" if pairs and sum(pairs) > 0 else "-"
            print(f"| {method} | {split} | {err:.2e} | {d1:.4f} | {d2:.4f} | {imb} |")
    print()
    print("| 832x480x81, whole generation | GPUs | load s | denoise s | median step s | decode s | write s | total s | wall s | denoise speedup | total speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = {}
    for name in ["1gpu", "2gpu-cfg", "2gpu-sp", "1gpu-vsa", "2gpu-cfg-vsa"]:
        r = record(work, f"e2e-{name}")
        wall_path = os.path.join(work, f"mg-e2e-{name}.wall.json")
        wall = json.load(open(wall_path))["wall_s"] if os.path.exists(wall_path) else float("nan")
        if not r:
            print(f"| {name} | missing |")
            continue
        t = r["timings"]
        steps = sorted(t["denoising_steps_s"])
        median = steps[len(steps) // 2]
        key = "vsa" if "vsa" in name else "dense"
        if name.startswith("1gpu"):
            base[key] = (t["denoising_s"], wall)
        b = base.get(key)
        sp = f"{b[0] / t['denoising_s']:.2f}x" if b else "-"
        sw = f"{b[1] / wall:.2f}x" if b else "-"
        gpus = 2 if name.startswith("2gpu") else 1
        print(f"| {name} | {gpus} | {t['loading_s']:.1f} | {t['denoising_s']:.1f} | {median:.3f} | {t['decoding_s']:.2f} | "
              f"{t['writing_s']:.2f} | {t['total_s']:.1f} | {wall:.1f} | {sp} | {sw} |")


if __name__ == "__main__":
    main(sys.argv[1])
