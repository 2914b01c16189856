#!/usr/bin/env bash
# Builds what the GPU machine runs, here (it has no Rust toolchain): the CUDA build of `vdit`
# and the CUDA test binaries, stripped and xz-compressed into .gpu/ (git-ignored), for
# `bash pipelines/vdit/bench/gpu_run.sh` there. Needs ../shared/tools/cuda-env.sh (nvcc 13.0;
# see ../shared/tools/README.md). The test binaries find their fixtures through the path of this
# checkout, which gpu_run.sh links on the GPU machine.
#   bash scripts/gpu_build.sh        (CARGO_TARGET_DIR defaults to target/cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source ../shared/tools/cuda-env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cuda}"
cuda=(--release --no-default-features --features cuda)
cargo build "${cuda[@]}" -p vdit
mkdir -p .gpu
rm -f .gpu/*
cp "$CARGO_TARGET_DIR/release/vdit" .gpu/vdit
# crate, test file, name on the GPU machine
for spec in "sparse cuda test-sparse-cuda" "dit cuda test-dit-cuda" "vae parity test-vae-parity"; do
  read -r crate test name <<<"$spec"
  exe=$(cargo test "${cuda[@]}" -p "$crate" --test "$test" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("kind") == ["test"]:
        print(m["executable"])')
  cp "$exe" ".gpu/$name"
done
for f in .gpu/*; do
  strip "$f"
done
# The Hopper attention kernels, for gpu_run.sh's check of their machine code (sass step).
sm90=$(ls -t "$CARGO_TARGET_DIR"/release/build/sparse-*/out/attention_fwd_sm90.fatbin | head -1)
cp "$sm90" .gpu/
xz -9 -T0 .gpu/*
ls -la .gpu
