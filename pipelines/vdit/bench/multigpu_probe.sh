#!/usr/bin/env bash
# Multi-GPU probes on the GPU machine (2 GPUs), from the repository root after gpu_build.sh:
# the GPUs' link and NCCL's all-to-all bandwidth (what bounds sequence parallelism), and VMoBA
# with no dense steps (its cost differs by head) on 1 GPU and on 2: agreement of the latents and
# the attention pairs each rank computed (how evenly the heads split its work).
#   OUT=/tmp/probe bash pipelines/vdit/bench/multigpu_probe.sh
set -u
OUT="${OUT:-/tmp/vdit-probe}"
mkdir -p "$OUT"
nvidia-smi topo -m 2>&1 | head -8
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
NCCL_DEBUG=INFO timeout 90 python3 pipelines/vdit/bench/nccl_bandwidth.py 2 >"$OUT/nccl.log" 2>&1
grep -m2 "via" "$OUT/nccl.log"; grep "all-to-all" "$OUT/nccl.log"
for f in .gpu/*.xz; do [ -e "${f%.xz}" ] || xz -d -k "$f"; done; chmod +x .gpu/*
mkdir -p /work; ln -sfn "$(pwd)" /work/main
bench=pipelines/vdit/bench
python3 $bench/make_random_wan.py /tmp/rw432 --width 432 --height 240 >/dev/null 2>&1
python3 $bench/make_random_wan.py /tmp/rw832 --width 832 --height 480 >/dev/null 2>&1
W=$OUT/work; mkdir -p "$W"; export OUT
gen() { local name=$1 dir=$2; shift 2
  timeout 150 .gpu/vdit generate --model $dir --prompt-embeds $dir/inputs.safetensors --negative-prompt-embeds $dir/inputs.safetensors \
   --seed 3 --overwrite --quiet --output $W/$name.y4m --save-latents $W/$name.safetensors --attention vmoba --dense-steps 0 "$@" >$W/$name.log 2>&1 || tail -3 $W/$name.log; }
gen v-1 /tmp/rw432 --size 432x240 --frames 17 --steps 4 --device cuda
gen v-sp2 /tmp/rw432 --size 432x240 --frames 17 --steps 4 --gpus 2 --sp 2
gen v-cfg2 /tmp/rw432 --size 432x240 --frames 17 --steps 4 --gpus 2 --cfg-parallel
gen big-sp2 /tmp/rw832 --steps 2 --gpus 2 --sp 2
gen big-1 /tmp/rw832 --steps 2 --device cuda
python3 - <<'PY'
import json, os
from safetensors.numpy import load_file
W=os.environ["OUT"]+"/work"
def rel(a,b):
    a=a.astype("float64"); b=b.astype("float64"); return float(((a-b)**2).sum()**.5/((b**2).sum()**.5))
one=load_file(W+"/v-1.safetensors")["latents"]
for n in ["v-sp2","v-cfg2","big-sp2"]:
    r=json.load(open(f"{W}/{n}.y4m.json")); p=r["attention"].get("pairs_per_rank")
    err = rel(load_file(f"{W}/{n}.safetensors")["latents"], one) if n.startswith("v-") else rel(load_file(f"{W}/{n}.safetensors")["latents"], load_file(W+"/big-1.safetensors")["latents"])
    print(n, "rel_l2", f"{err:.2e}", "density", round(r["attention"]["density"]["overall"],4), "pairs per rank", p, "max/mean", round(max(p)/(sum(p)/len(p)),4), "steps s", [round(x,3) for x in r["timings"]["denoising_steps_s"]])
r=json.load(open(f"{W}/big-1.y4m.json")); print("big-1 density", round(r["attention"]["density"]["overall"],4), "steps s", [round(x,3) for x in r["timings"]["denoising_steps_s"]])
PY
