#!/usr/bin/env bash
# Multi-GPU checks and timings on the GPU machine (2+ GPUs), called by gpu_run.sh's `multigpu`
# step with the working folder and a function `pipeline SIZE` that makes a random Wan 1.3B
# folder. Writes multigpu-*.json records into $WORK and prints a table (multigpu_report.py).
#   1. Agreement: `vdit generate` at 432x240x17 (5x15x27 = 2025 tokens, which do not divide
#      by 2), 4 steps, every method, on 1 GPU and on 2 (--sp 2; --cfg-parallel); the saved
#      latents are compared (relative L2).
#   2. Speed: one whole generation at 832x480x81 (MULTIGPU_STEPS steps, default 50) on 1 GPU,
#      on 2 with guidance split (the default) and on 2 with the sequence split.
set -u
WORK=$1
bench=pipelines/vdit/bench
small=$(pipeline 432x240)
inputs="$small/inputs.safetensors"
[ -d /tmp/umt5-xxl-random ] || .gpu/vdit bench text --weights /tmp/umt5-xxl-random \
  --tokenizer assets/tiny-wan/tokenizer --out "$WORK" >/dev/null 2>&1
printf "a red kite over a windy beach\n" >"$WORK/mg-prompts.txt"
timeout 120 .gpu/vdit calibrate paro --model "$small" --text-encoder /tmp/umt5-xxl-random \
  --tokenizer assets/tiny-wan/tokenizer --size 432x240 --frames 17 --steps 4 \
  --prompts "$WORK/mg-prompts.txt" --output /tmp/paro-432.safetensors --overwrite --quiet \
  >"$WORK/mg-calibrate.log" 2>&1 || { echo "calibrate failed:"; tail -3 "$WORK/mg-calibrate.log"; }
gen() {
  local name=$1; shift
  timeout 120 .gpu/vdit generate --model "$small" --prompt-embeds "$inputs" \
    --negative-prompt-embeds "$inputs" --seed 3 --size 432x240 --frames 17 --steps 4 \
    --overwrite --quiet --output "$WORK/mg-$name.y4m" --save-latents "$WORK/mg-$name.safetensors" \
    "$@" >"$WORK/mg-$name.log" 2>&1 || { echo "$name failed:"; tail -3 "$WORK/mg-$name.log"; }
}
for method in dense vsa vmoba paro sparsed; do
  case $method in
    vsa) flags=(--attention vsa --sparsity 0.875) ;;
    paro) flags=(--attention paro --paro-calibration /tmp/paro-432.safetensors) ;;
    *) flags=(--attention "$method") ;;
  esac
  gen "$method-1" --device cuda "${flags[@]}"
  gen "$method-sp2" --gpus 2 --sp 2 "${flags[@]}"
  gen "$method-cfg2" --gpus 2 --cfg-parallel "${flags[@]}"
done
big=$(pipeline 832x480)
steps=${MULTIGPU_STEPS:-50}
whole() {
  local name=$1; shift
  local start; start=$(date +%s%N)
  timeout 300 .gpu/vdit generate --model "$big" --prompt-embeds "$big/inputs.safetensors" \
    --negative-prompt-embeds "$big/inputs.safetensors" --latents "$big/inputs.safetensors" \
    --steps "$steps" --overwrite --quiet --output "$WORK/mg-e2e-$name.y4m" "$@" \
    >"$WORK/mg-e2e-$name.log" 2>&1 || { echo "$name failed:"; tail -3 "$WORK/mg-e2e-$name.log"; }
  echo "{\"wall_s\": $(( ($(date +%s%N) - start) / 1000000 ))e-3}" >"$WORK/mg-e2e-$name.wall.json"
}
whole 1gpu --device cuda
whole 2gpu-cfg --gpus 2
whole 2gpu-sp --gpus 2 --sp 2
whole 1gpu-vsa --device cuda --attention vsa --sparsity 0.875
whole 2gpu-cfg-vsa --gpus 2 --attention vsa --sparsity 0.875
python3 "$bench/multigpu_report.py" "$WORK"
