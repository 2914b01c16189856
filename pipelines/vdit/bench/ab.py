"""Side-by-side table of two builds' `vdit bench attention` runs (gpu_run.sh's `ab` step):
reads WORK/ab-<build>-<round>/attention.json and prints, per row, each build's median time
over the rounds and the new build's time as a share of the base build's.
    python3 ab.py WORK"""
import json
import statistics
import sys
from pathlib import Path


def times(work, build):
    rows = {}
    for run in sorted(Path(work).glob(f"ab-{build}-[0-9]*/attention.json")):
        for row in json.loads(run.read_text())["results"]:
            rows.setdefault(row["impl"] + f" @{row['density']:.3f}", []).append(row["ms"])
    return rows


def main(work):
    base, new = times(work, "vdit-base"), times(work, "vdit")
    print("| row | base ms | new ms | new / base |")
    print("| --- | --- | --- | --- |")
    for name, ms in new.items():
        b = base.get(name)
        n = statistics.median(ms)
        if b:
            m = statistics.median(b)
            print(f"| {name} | {m:.3f} ({', '.join(f'{x:.3f}' for x in b)}) | {n:.3f} "
                  f"({', '.join(f'{x:.3f}' for x in ms)}) | {n / m:.3f} |")
        else:
            print(f"| {name} | - | {n:.3f} | - |")


if __name__ == "__main__":
    main(sys.argv[1])
