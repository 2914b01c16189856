#!/usr/bin/env bash
# Where a training step's time goes on the GPU machine, from the repository root with what
# scripts/gpu_build.sh put in .gpu/ and a model folder carried in runs/dit/model (any `vdit
# train` output, or DIAG_BASE; its VAE and text encoder encode the clips). Each run: the whole
# process's milliseconds, then `vdit train`'s split of a step into phases and its s/step
# (VAE runs: 64x64 crops of whole 17-frame clips, the default). Then, where Nsight Systems is
# present, a kernel-time summary of a few transformer steps (the GPU machine has only Nsight
# Compute, whose per-kernel replay of three steps did not finish in five minutes).
#   bash pipelines/train/gpu_diag.sh
set -u
for f in .gpu/*.xz; do [ -e "${f%.xz}" ] || xz -d -k "$f"; done
chmod +x .gpu/*
vdit=.gpu/vdit
base=${DIAG_BASE:-runs/dit/model}
timed() {
  local name=$1; shift
  local start; start=$(date +%s%N)
  $vdit train "$@" --out "/tmp/diag-$name" --quiet >"/tmp/diag-$name.log" 2>&1
  echo "$name $(( ($(date +%s%N) - start) / 1000000 )) ms:"; tail -2 "/tmp/diag-$name.log"
}
timed dit-b32 dit --base "$base" --clips 64 --steps 12 --batch 32
timed dit-b8 dit --base "$base" --clips 64 --steps 12 --batch 8
timed dit-b64 dit --base "$base" --clips 128 --steps 8 --batch 64
timed vae-b8-f17 vae --steps 10 --batch 8
timed vae-b16-f17 vae --steps 10 --batch 16
if command -v nsys >/dev/null; then
  nsys profile -o /tmp/diag --force-overwrite true $vdit train dit --base "$base" --out /tmp/diag-prof \
    --clips 16 --steps 3 --batch 32 --quiet >/dev/null 2>&1
  nsys stats --report cuda_gpu_kern_sum --format csv /tmp/diag.nsys-rep 2>/dev/null | head -25
else
  echo "no Nsight Systems here: no kernel profile"
fi
