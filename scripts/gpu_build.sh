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
# The CUDA build links cuDNN 9 (the VAE's convolutions) and NCCL 2 (multi-GPU runs). Where a
# library is missing, as on machines with only the toolkit from cuda-env.sh, a stub of its entry
# points (listed in cudarc's bindings) stands in at link time; the GPU machine's real library is
# loaded at run time.
#   stub LIB SONAME BINDINGS: a stub of libLIB.so named SONAME for the functions in BINDINGS
stub() {
  local lib=$1 soname=$2 bindings=$3
  if ldconfig -p | grep -q "lib$lib\.so" || ls "${CUDA_PATH}/lib/lib$lib.so" >/dev/null 2>&1; then
    return
  fi
  local dir="$CARGO_TARGET_DIR/$lib-stub"
  if [ ! -f "$dir/lib$lib.so" ]; then
    mkdir -p "$dir"
    local cudarc
    cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-* | sort -V | tail -1)
    grep -rhoE "\\b$lib[A-Z][A-Za-z0-9_]+\\(" "$cudarc/src/$bindings/sys" | tr -d '(' | sort -u \
      | awk '{print "void "$1"(void){}"}' >"$dir/stub.c"
    gcc -shared -fPIC -o "$dir/lib$lib.so" -Wl,-soname,"$soname" "$dir/stub.c"
  fi
  export LIBRARY_PATH="$dir:$LIBRARY_PATH"
}
stub cudnn libcudnn.so.9 cudnn
stub nccl libnccl.so.2 nccl
# One workspace-wide build, so that every crate sees the same features (a per-crate build would
# rebuild candle's kernels).
cuda=(--release --workspace --no-default-features --features cuda,vdit/nccl)
cargo build "${cuda[@]}"
mkdir -p .gpu
rm -f .gpu/*
cp "$CARGO_TARGET_DIR/release/vdit" .gpu/vdit
# The CUDA test binaries, named test-CRATE-TEST on the GPU machine.
cargo test "${cuda[@]}" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
wanted = {("sparse", "cuda"), ("dit", "cuda"), ("dit", "sequence_parallel"), ("vae", "parity"), ("vae", "columns"),
          ("train", "sparse_gradients"), ("train", "train_loop")}
for line in sys.stdin:
    m = json.loads(line)
    target = m.get("target", {})
    crate = m.get("manifest_path", "").split("/")[-2:-1]
    crate = crate[0] if crate else ""
    if m.get("executable") and target.get("kind") == ["test"] and (crate, target.get("name")) in wanted:
        shutil.copy(m["executable"], ".gpu/test-" + crate + "-" + target.get("name"))
'
ls .gpu/test-sparse-cuda .gpu/test-dit-cuda .gpu/test-dit-sequence_parallel .gpu/test-vae-parity .gpu/test-train-sparse_gradients >/dev/null
for f in .gpu/*; do
  strip "$f"
done
# The Hopper attention kernels, for gpu_run.sh's check of their machine code (sass step).
for kernels in attention_fwd_sm90 attention_bwd_sm90; do
  sm90=$(ls -t "$CARGO_TARGET_DIR"/release/build/sparse-*/out/$kernels.fatbin | head -1)
  cp "$sm90" .gpu/
done
xz -9 -T0 .gpu/*
ls -la .gpu
