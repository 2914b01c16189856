#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (see ../shared/tools/README.md): unpacks the
# binaries carried in .gpu/, runs the CUDA tests, then the attention and DiT benchmarks against
# PyTorch SDPA/FlexAttention and diffusers on the same GPU, and prints the tables last.
#   bash pipelines/bench/gpu_run.sh [tests|attention|dit]...   (default: all three)
set -u
OUT="${OUT:-/tmp/vdit-bench}"
mkdir -p "$OUT" /work
[ -e /work/main ] || ln -s "$(pwd)" /work/main   # the test binaries were built in /work/main
for f in .gpu/*.xz; do [ -e "${f%.xz}" ] || xz -d -k "$f"; done
chmod +x .gpu/* 2>/dev/null
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
steps="${*:-tests attention dit}"
for step in $steps; do
  case "$step" in
    tests)
      for t in .gpu/test-*; do
        case "$t" in *.xz) continue ;; esac
        echo "== $t"
        VAE_TEST_DEVICE=cuda "$t" --test-threads=1 --nocapture 2>&1 | tee "$OUT/$(basename "$t").log" | grep -E "relative L2|^test |test result|panicked|Error|== forward|gradient"
      done ;;
    attention)
      .gpu/vdit bench attention --out "$OUT" 2>&1 | tee "$OUT/attention.log"
      python3 pipelines/bench/attention_peers.py "$OUT" 2>&1 | tail -8 | tee "$OUT/peers.log" ;;
    sass)
      # The Hopper kernel must use warpgroup MMAs (HGMMA), not the warp-level HMMA path.
      for c in .gpu/*.cubin; do
        echo "$c: $(cuobjdump --dump-sass "$c" | grep -c HGMMA) HGMMA, $(cuobjdump --dump-sass "$c" | grep -c 'HMMA') HMMA"
      done ;;
    dit)
      .gpu/vdit bench dit --out "$OUT" 2>&1 | tee "$OUT/dit.log"
      python3 pipelines/bench/dit_diffusers.py "$OUT" 2>&1 | tail -3 | tee "$OUT/diffusers.log" ;;
  esac
done
echo "========== summary"
python3 pipelines/bench/report.py "$OUT"
