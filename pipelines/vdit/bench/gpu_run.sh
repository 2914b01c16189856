#!/usr/bin/env bash
# Runs on the GPU machine from the repository root (see ../shared/tools/README.md): unpacks what
# scripts/gpu_build.sh put in .gpu/ (and peer wheels in .whl/), then runs the steps asked for and
# prints the tables last. Every result lands in $OUT/results.tgz (and the tables in
# $OUT/summary.md), so that a few files carry everything back.
#   bash pipelines/vdit/bench/gpu_run.sh STEP...
# Steps: sass, setup, tests, generate, attention, dit, vae, text, write, firstrun, e2e (E2E_STEPS, default 50, and
# E2E_SIZES, default 832x480, set the whole generations; TESTS picks test binaries by glob, such as
# vae*), fixtures (the LoRA and few-step fixture scripts, which need diffusers: their outputs come
# back in $OUT/fixtures.tgz), fewstep (whole runs of `vdit generate`: 3-step dmd with VSA against
# 50 steps, on the random Wan 1.3B at 832x480x81), compare (`vdit compare` of attention methods
# on the random Wan 1.3B at 832x480x81: COMPARE_STEPS, COMPARE_METHODS, COMPARE_PARO), multigpu
# (2 GPUs against 1: multigpu.sh), profile (kernel times under Nsight Compute: PROFILE_CASES), ab
# (.gpu/vdit-base against .gpu/vdit, side by side: AB_CASES, AB_ROUNDS).
set -u
OUT="${OUT:-/tmp/vdit-bench}"
WORK="$OUT/work"
mkdir -p "$WORK" /work
[ -e /work/main ] || ln -s "$(pwd)" /work/main   # the test binaries were built in /work/main
for f in .gpu/*.xz; do [ -e "${f%.xz}" ] || xz -d -k "$f"; done
chmod +x .gpu/* 2>/dev/null
# Peers fetched by scripts/fetch_peers.sh: wheels, and Python packages kept from source
# distributions (*-python.tar.gz).
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
for f in .whl/*-python.tar.gz; do [ -e "$f" ] && mkdir -p /tmp/site && tar -xzf "$f" -C /tmp/site && export PYTHONPATH=/tmp/site; done
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$WORK/gpu.txt"
bench=pipelines/vdit/bench
# Milliseconds since the epoch, for wall times of whole processes.
ms() { echo $(( $(date +%s%N) / 1000000 )); }
# A random full-size Wan 1.3B pipeline folder at SIZE (WIDTHxHEIGHT), made once.
pipeline() {
  local dir="/tmp/random-wan-$1"
  [ -d "$dir" ] || python3 "$bench/make_random_wan.py" "$dir" --width "${1%x*}" --height "${1#*x}" >&2
  echo "$dir"
}
for step in "$@"; do
  echo "========== $step"
  case "$step" in
    tests)
      for t in .gpu/test-${TESTS:-*}; do
        case "$t" in *.xz) continue ;; esac
        echo "== $t"
        VAE_TEST_DEVICE=cuda "$t" --test-threads=1 --nocapture >"$WORK/$(basename "$t").log" 2>&1
        grep -E "relative L2|^test .*FAILED|test result|panicked" "$WORK/$(basename "$t").log" | grep -v " ok$" | tail -15
      done ;;
    sass)
      # The Hopper kernels (forward and backward) must use warpgroup MMAs (HGMMA), not the
      # warp-level HMMA path.
      for c in .gpu/*.fatbin; do
        echo "$c: $(cuobjdump --dump-sass "$c" | grep -c HGMMA) HGMMA, $(cuobjdump --dump-sass "$c" | grep -c 'HMMA') HMMA"
      done ;;
    generate)
      # The product path on the GPU: the embedded tiny model, dense, VSA and VMoBA, written as .y4m
      # (this build has no FFmpeg).
      for attention in "dense" "vsa --sparsity 0.5" "vmoba --dense-steps 2"; do
        name="kite-${attention%% *}"
        # shellcheck disable=SC2086
        .gpu/vdit generate --prompt "a red kite over a windy beach" --device cuda --seed 7 --attention $attention \
          --output "$WORK/$name.y4m" --quiet | tail -1
      done ;;
    attention)
      .gpu/vdit bench attention --out "$WORK" >"$WORK/attention.log" 2>&1
      python3 $bench/attention_peers.py "$WORK" >"$WORK/peers.log" 2>&1 ;;
    profile)
      # Kernel times by name (Nsight Compute, one metric, boost clocks) over the first
      # PROFILE_LAUNCHES launches (default 600) of `vdit bench attention --case C` for each C in
      # PROFILE_CASES (default vsa vmoba), counting only kernels whose names match the regular
      # expression PROFILE_KERNELS where it is set.
      rm -f "$WORK/profile.md"
      for c in ${PROFILE_CASES:-vsa vmoba}; do
        /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum --csv --clock-control none \
          ${PROFILE_KERNELS:+--kernel-name "regex:$PROFILE_KERNELS"} \
          --launch-count "${PROFILE_LAUNCHES:-600}" .gpu/vdit bench attention --case "$c" --runs 1 \
          --out "$WORK/profile-$c" >"$WORK/profile-$c.csv" 2>"$WORK/profile-$c.log"
        python3 $bench/ncu_summary.py "$WORK/profile-$c.csv" | tee -a "$WORK/profile.md"
      done ;;
    dit)
      .gpu/vdit bench dit --out "$WORK" >"$WORK/dit.log" 2>&1
      python3 $bench/dit_diffusers.py "$WORK" 2>&1 | tail -1 ;;
    vae)
      .gpu/vdit bench vae --parts --out "$WORK" 2>&1 | tail -45
      python3 $bench/vae_diffusers.py "$WORK" 2>&1 | tail -1 ;;
    setup)
      .gpu/vdit setup 2>&1 | tail -1 ;;
    text)
      # UMT5-XXL in bf16 on the GPU (random weights written once; the embedded model's tokenizer).
      .gpu/vdit bench text --weights /tmp/umt5-xxl-random --tokenizer assets/tiny-wan/tokenizer \
        --out "$WORK" 2>&1 | tail -1
      rm -rf /tmp/umt5-xxl-random ;;
    write)
      # Writing 81 frames of 832x480 to every format this build has (no FFmpeg here: no MP4).
      .gpu/vdit bench write --out "$WORK" 2>&1 | tail -6 ;;
    firstrun)
      # First generations with an empty driver kernel cache (a fresh machine), without and after
      # `vdit setup`, against a warm one; each scenario gets its own cache folder.
      dir=$(pipeline 832x480)
      start=$(ms); CUDA_CACHE_PATH=/tmp/cache-setup .gpu/vdit setup
      echo "setup process: $(( $(ms) - start )) ms"
      for run in cold:/tmp/cache-cold after-setup:/tmp/cache-setup warm:/tmp/cache-setup; do
        start=$(ms)
        CUDA_CACHE_PATH=${run#*:} .gpu/vdit bench e2e --model "$dir" --steps 10 --out "$WORK/firstrun-${run%%:*}" 2>&1 | tail -1
        echo "${run%%:*} process: $(( $(ms) - start )) ms"
      done ;;
    compare)
      # `vdit compare` at 832x480x81 on the random Wan 1.3B with random UMT5-XXL weights (written
      # once), COMPARE_STEPS steps (default 5), one prompt and seed: dense and COMPARE_METHODS
      # (default VSA 0.875 and VMoBA with no dense steps, so that it is sparse from the first
      # step); COMPARE_PARO=1 also times PARO's calibration (each command bounded by a timeout,
      # its log kept).
      dir=$(pipeline 832x480)
      [ -d /tmp/umt5-xxl-random ] || .gpu/vdit bench text --weights /tmp/umt5-xxl-random \
        --tokenizer assets/tiny-wan/tokenizer --out "$WORK" >/dev/null 2>&1
      printf "a red kite over a windy beach\n" >"$WORK/prompts.txt"
      timeout 300 .gpu/vdit compare --model "$dir" --text-encoder /tmp/umt5-xxl-random \
        --tokenizer assets/tiny-wan/tokenizer --steps "${COMPARE_STEPS:-5}" --prompts "$WORK/prompts.txt" \
        --seeds 0 --out-dir /tmp/compare \
        $(printf -- "--method %s " ${COMPARE_METHODS:-vsa:sparsity=0.875 vmoba:threshold=0.25,dense_steps=0}) \
        >"$WORK/compare.log" 2>&1
      echo "compare exit $?"; tail -3 "$WORK/compare.log"
      if [ "${COMPARE_PARO:-0}" = 1 ]; then
        start=$(date +%s%N)
        timeout 200 .gpu/vdit calibrate paro --model "$dir" --text-encoder /tmp/umt5-xxl-random \
          --tokenizer assets/tiny-wan/tokenizer --steps "${COMPARE_STEPS:-5}" --prompts "$WORK/prompts.txt" \
          --output /tmp/paro-480p.safetensors --overwrite --quiet >"$WORK/calibrate.log" 2>&1
        echo "calibrate paro exit $? in $(( ($(date +%s%N) - start) / 1000000 )) ms"
      fi
      cp /tmp/compare/report.md "$WORK/compare-report.md" 2>/dev/null
      cp /tmp/compare/results.jsonl "$WORK/compare-results.jsonl" 2>/dev/null
      head -12 "$WORK/compare-report.md" 2>/dev/null ;;
    fixtures)
      python3 dit/tests/fixtures/make_lora_fixtures.py 2>&1 | tail -6
      python3 pipelines/vdit/tests/fixtures/t2v/make_dmd_fixtures.py 2>&1 | tail -4
      tar czf "$OUT/fixtures.tgz" dit/tests/fixtures/lora pipelines/vdit/tests/fixtures/t2v/dmd_io.safetensors ;;
    fewstep)
      # Whole `vdit generate` runs as a user makes them (process wall time, the record's stages).
      dir=$(pipeline 832x480)
      inputs="$dir/inputs.safetensors"
      run() {
        local name=$1; shift
        local start; start=$(ms)
        .gpu/vdit generate --model "$dir" --prompt-embeds "$inputs" --seed 1 --overwrite --quiet \
          --output "$WORK/fewstep-$name.y4m" "$@" >/dev/null
        echo "$name wall_ms $(( $(ms) - start ))" | tee -a "$WORK/fewstep.txt"
      }
      run warmup --timesteps 1000,757,522 --shift 8 --guidance 1 --attention vsa --sparsity 0.8
      run dmd3-vsa --timesteps 1000,757,522 --shift 8 --guidance 1 --attention vsa --sparsity 0.8
      run dmd3-dense --timesteps 1000,757,522 --shift 8 --guidance 1 --attention dense
      run unipc50-vsa --steps 50 --guidance 5 --negative-prompt-embeds "$inputs" --attention vsa --sparsity 0.875
      run unipc50-dense --steps 50 --guidance 5 --negative-prompt-embeds "$inputs" --attention dense
      # A rank-32 LoRA in kohya names on every attention and FFN layer, merged as the model loads.
      python3 -c "
import torch; from safetensors.torch import save_file
g = torch.Generator().manual_seed(0); sd = {}
for i in range(30):
    for m, (o, n) in {'self_attn_q': (1536, 1536), 'self_attn_k': (1536, 1536), 'self_attn_v': (1536, 1536),
                      'self_attn_o': (1536, 1536), 'cross_attn_q': (1536, 1536), 'ffn_0': (8960, 1536),
                      'ffn_2': (1536, 8960)}.items():
        k = f'lora_unet_blocks_{i}_{m}'
        sd[k + '.lora_down.weight'] = (torch.randn(32, n, generator=g) / n ** 0.5).bfloat16()
        sd[k + '.lora_up.weight'] = (torch.randn(o, 32, generator=g) * 1e-3).bfloat16()
        sd[k + '.alpha'] = torch.tensor(16.0)
save_file(sd, '/tmp/lora-1.3b.safetensors')"
      run dmd3-vsa-lora --timesteps 1000,757,522 --shift 8 --guidance 1 --attention vsa --sparsity 0.8 \
        --lora /tmp/lora-1.3b.safetensors:0.8 ;;
    multigpu)
      # 2+ GPUs (the nvidia-h200-x2 kind): see multigpu.sh.
      source $bench/multigpu.sh "$WORK" ;;
    ab)
      # Two builds side by side: .gpu/vdit-base (the build before a change) and .gpu/vdit take
      # turns AB_ROUNDS times (default 2) at `vdit bench attention` with the cases AB_CASES
      # (default vsa vmoba dense); ab.py prints each row's medians and their ratio.
      for round in $(seq "${AB_ROUNDS:-2}"); do
        for build in vdit-base vdit; do
          # shellcheck disable=SC2046
          .gpu/$build bench attention $(printf -- "--case %s " ${AB_CASES:-vsa vmoba dense}) \
            --out "$WORK/ab-$build-$round" >"$WORK/ab-$build-$round.log" 2>&1 || tail -3 "$WORK/ab-$build-$round.log"
        done
      done
      python3 $bench/ab.py "$WORK" | tee "$WORK/ab.md" ;;
    e2e)
      for size in ${E2E_SIZES:-832x480}; do
        dir=$(pipeline "$size")
        python3 $bench/e2e_diffusers.py "$dir" "$WORK/e2e-$size" --steps "${E2E_STEPS:-50}" 2>&1 | tail -1
        .gpu/vdit bench e2e --model "$dir" --steps "${E2E_STEPS:-50}" --attention dense \
          --attention vsa:sparsity=0.875 --out "$WORK/e2e-$size" 2>&1 | tail -2
      done ;;
  esac
done
echo "========== summary"
{
  python3 $bench/report.py "$WORK"
  for d in "$WORK"/e2e-*; do [ -d "$d" ] && python3 -c "import sys; sys.path.insert(0, '$bench'); import report; report.e2e('$d')"; done
} 2>&1 | tee "$OUT/summary.md"
find "$WORK" \( -name '*.y4m' -o -name '*.safetensors' \) -delete
tar czf "$OUT/results.tgz" -C "$WORK" .
