#!/usr/bin/env bash
# Seconds per training step of the transformer on the GPU machine, by batch and attention, from
# the repository root with what scripts/gpu_build.sh put in .gpu/ and a model folder carried in
# runs/dit/model (any `vdit train` output; its VAE and text encoder encode the clips). Each line:
# the whole process's milliseconds and `vdit train`'s own s/step. With Nsight Systems present it
# also profiles 8 steps (kernel and API summaries).
#   bash pipelines/train/gpu_diag.sh
set -u
for f in .gpu/*.xz; do [ -e "${f%.xz}" ] || xz -d -k "$f"; done
chmod +x .gpu/*
vdit=.gpu/vdit
base=runs/dit/model
timed() {
  local name=$1; shift
  local start; start=$(date +%s%N)
  $vdit train dit --base "$base" --out "/tmp/diag-$name" --clips 64 --quiet "$@" >"/tmp/diag-$name.log" 2>&1
  echo "$name $(( ($(date +%s%N) - start) / 1000000 )) ms: $(tail -1 "/tmp/diag-$name.log")"
}
timed b32-dense --steps 12 --batch 32
timed b8-dense --steps 12 --batch 8
timed b32-vsa --steps 12 --batch 32 --attention vsa:sparsity=0.875
if command -v nsys >/dev/null; then
  nsys profile -o /tmp/diag --force-overwrite true $vdit train dit --base "$base" --out /tmp/diag-prof \
    --clips 64 --steps 8 --batch 32 --quiet >/dev/null 2>&1
  nsys stats --report cuda_gpu_kern_sum --format csv /tmp/diag.nsys-rep 2>/dev/null | head -25
  nsys stats --report cuda_api_sum --format csv /tmp/diag.nsys-rep 2>/dev/null | head -12
else
  echo "no Nsight Systems here: no profile"
fi
