#!/usr/bin/env bash
# Two training runs side by side on a two-GPU machine (nvidia-h200-x2), one per GPU, each
# `gpu_train.sh` with its own settings: a call costs the same device time with one GPU or two,
# so the second GPU tries a second setting for free. Run from the repository root.
#   bash pipelines/train/gpu_lanes.sh 'SETTINGS0' 'SETTINGS1' STEP...
# SETTINGSn is a list of NAME=VALUE words (gpu_train.sh's variables, e.g. 'VAE_LR=1e-3
# VAE_FROM=../../runs/vae-f17-300/model'). Lane n works in runs/lane-n (its runs/ below that,
# kept between calls on a warm machine; paths in settings are relative to that folder) and
# returns to $OUT laneN-RUN-transformer.safetensors for each transformer it trained and
# laneN.tgz (models without that file, logs, evals).
set -u
OUT="${OUT:-/tmp/vdit-train}"
[ "$#" -ge 3 ] || { echo "usage: gpu_lanes.sh 'SETTINGS0' 'SETTINGS1' STEP..." >&2; exit 2; }
settings=("$1" "$2")
shift 2
# decompressed once here, not by both lanes at the same time
for f in .gpu/*.xz; do [ -e "${f%.xz}" ] || xz -d -k "$f"; done
chmod +x .gpu/*
root=$(pwd)
[ -e /work/main ] || { mkdir -p /work; ln -s "$root" /work/main; }
for lane in 0 1; do
  dir="runs/lane-$lane"
  mkdir -p "$dir/runs" "$OUT/lane-$lane"
  ln -sfn "$root/.gpu" "$dir/.gpu"
  (
    cd "$dir" || exit 1
    # shellcheck disable=SC2086 # the settings are words by design
    env ${settings[$lane]} CUDA_VISIBLE_DEVICES="$lane" OUT="$OUT/lane-$lane" \
      bash "$root/pipelines/train/gpu_train.sh" "$@" >"$OUT/lane-$lane/console.log" 2>&1
  ) &
done
wait
for lane in 0 1; do
  dir="$OUT/lane-$lane"
  echo "---------- lane $lane (${settings[$lane]})"
  grep -E "^(vae|dit):|reconstruction|trained|seconds per step|accuracy|error|failed|panicked" \
    "$dir/train.log" 2>/dev/null | tail -12
  for w in "$dir"/*-transformer.safetensors; do
    [ -e "$w" ] && mv "$w" "$OUT/lane$lane-$(basename "$w")"
  done
  tar czf "$OUT/lane$lane.tgz" -C "$dir" .
  rm -rf "$dir"
done
ls -la "$OUT"
