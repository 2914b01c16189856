"""Sums Nsight Compute's per-launch kernel durations (`ncu --csv --metrics
gpu__time_duration.sum`) by kernel name: one table per CSV file, slowest total first.

    python3 ncu_summary.py profile-vsa.csv [more.csv ...]
"""
import csv
import sys
from collections import defaultdict

UNIT_MS = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3, "ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def summarize(path):
    totals, counts, launches = defaultdict(float), defaultdict(int), 0
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].split("(")[0][:70]
        value = float(row["Metric Value"].replace(",", ""))
        totals[name] += value * UNIT_MS.get(row["Metric Unit"], float("nan"))
        counts[name] += 1
        launches += 1
    whole = sum(totals.values())
    print(f"\n### {path}: {launches} launches, {whole:.2f} ms of kernels\n")
    print("| kernel | launches | total ms | mean ms | share |")
    print("| --- | --- | --- | --- | --- |")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:20]:
        print(f"| {name} | {counts[name]} | {ms:.3f} | {ms / counts[name]:.4f} | {ms / whole:.1%} |")


for p in sys.argv[1:]:
    summarize(p)
