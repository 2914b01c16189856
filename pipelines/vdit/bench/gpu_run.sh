#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (see ../shared/tools/README.md): unpacks the
# binaries carried in .gpu/, runs the CUDA tests, then the attention and DiT benchmarks against
# PyTorch SDPA/FlexAttention and diffusers on the same GPU, and prints the tables last.
#   bash pipelines/vdit/bench/gpu_run.sh [tests|attention|dit]...   (default: all three)
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
      python3 pipelines/vdit/bench/attention_peers.py "$OUT" 2>&1 | tail -8 | tee "$OUT/peers.log" ;;
    sass)
      # The Hopper kernel must use warpgroup MMAs (HGMMA), not the warp-level HMMA path.
      for c in .gpu/*.fatbin; do
        echo "$c: $(cuobjdump --dump-sass "$c" | grep -c HGMMA) HGMMA, $(cuobjdump --dump-sass "$c" | grep -c 'HMMA') HMMA"
      done ;;
    generate)
      # The product path on the GPU: the embedded tiny model, dense, VSA and VMoBA, written as .y4m
      # (this build has no FFmpeg).
      .gpu/vdit generate --prompt "a red kite over a windy beach" --device cuda --seed 7 --output "$OUT/kite.y4m" --quiet \
        && head -c 80 "$OUT/kite.y4m" | head -1 && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('sidecar:', {k: r[k] for k in r if k in ('density','timings','device','dtype')})" "$OUT/kite.y4m.json"
      .gpu/vdit generate --prompt "a red kite over a windy beach" --device cuda --seed 7 --attention vsa --sparsity 0.5 --output "$OUT/kite-vsa.y4m" --quiet \
        && echo "vsa run wrote $(stat -c %s "$OUT/kite-vsa.y4m") bytes"
      .gpu/vdit generate --prompt "a red kite over a windy beach" --device cuda --seed 7 --attention vmoba --dense-steps 2 --output "$OUT/kite-vmoba.y4m" --quiet \
        && echo "vmoba run wrote $(stat -c %s "$OUT/kite-vmoba.y4m") bytes, density $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['attention']['density']['overall'])" "$OUT/kite-vmoba.y4m.json")" ;;
    dit)
      .gpu/vdit bench dit --out "$OUT" 2>&1 | tee "$OUT/dit.log"
      python3 pipelines/vdit/bench/dit_diffusers.py "$OUT" 2>&1 | tail -3 | tee "$OUT/diffusers.log" ;;
  esac
done
echo "========== summary"
python3 pipelines/vdit/bench/report.py "$OUT"
