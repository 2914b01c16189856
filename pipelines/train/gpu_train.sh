#!/usr/bin/env bash
# Trains the shipped model on the GPU machine, from the repository root, with what
# scripts/gpu_build.sh put in .gpu/ (see ../shared/tools/README.md). Runs live in runs/ (carried
# back and forth between calls: a call may continue the previous one's runs); the shippable
# results land in $OUT as few files.
#   bash pipelines/train/gpu_train.sh STEP...
# Steps:
#   probe     the CUDA gradient test, then a few steps of each stage and method (timings)
#   vae       the VAE, VAE_STEPS steps (default: what fits in VAE_SECONDS, 150), batch VAE_BATCH
#             (16), VAE_FRAMES frames per crop (17), VAE_LR (2e-3); a failed process (e.g. out
#             of memory) is resumed from its last checkpoint; VAE_FROM: continue a carried
#             model folder's VAE (fresh optimiser); falls back to a carried runs/vae-cpu
#                                                                              -> runs/vae
#   steptime  seconds per transformer step (batch DIT_BATCH, GPUs DIT_GPUS) of .gpu/vdit and,
#             when present, .gpu/vdit-old (an earlier build, side by side), for each attention
#             of STEPTIME_ATTENTION (default "dense"; e.g. "dense vsa:sparsity=0.875 vmoba"); the first goes to
#             runs/dit-rate. DIT_BATCHES="64 128 ...": each of those batches with .gpu/vdit;
#             the one with the most clips per second goes to runs/dit-batch (the `dit` step's
#             batch when DIT_BATCH is not given) and its rate to runs/dit-rate
#   dit       the transformer over DIT_BASE (runs/vae/model: from scratch; a carried model
#             folder: continued with a fresh optimiser), DIT_STEPS steps (default: as many as
#             fit before DEADLINE, epoch seconds, at DIT_RATE s/step, default runs/dit-rate),
#             batch DIT_BATCH (runs/dit-batch, else 32; split over the GPUs DIT_GPUS when given, e.g. 2: data
#             parallelism), DIT_CLIPS (8192) clips of seed DIT_SEED (0), DIT_LR (6e-4);
#             DIT_FROM: continue a model folder's transformer (fresh optimiser; a previous
#             runs/dit moves aside and lends its encoded clips); or DIT_TOTAL steps over
#             several calls, each stopping at DEADLINE and resuming the last (DIT_TOTAL=auto:
#             what DIT_SECONDS of stepping take at the rate in runs/dit-rate, fixed in
#             runs/dit-total by the first call)                                -> runs/dit
#   finetune  runs/dit/model (or FT_BASE) fine-tuned through each method of FT_METHODS (default
#             "vsa vmoba": VSA at sparsity 0.875 reached over FT_RAMP (50) steps; VMoBA),
#             FT_STEPS (150) steps each at batch FT_BATCH (DIT_BATCH, else 32) on DIT_GPUS
#                                                              -> runs/ft-vsa, runs/ft-vmoba
#   evaldense `vdit eval` of runs/dit/model, dense: EVAL_COUNT (16) held-out and training captions
#   evalsparse  training-free VSA 0.75/0.875, VMoBA, PARO on runs/dit/model, and each
#             fine-tune with its method, against its dense
#   pack      model folders and logs into $OUT
set -u
OUT="${OUT:-/tmp/vdit-train}"
mkdir -p "$OUT" runs
# this call's scratch runs (a folder of its own: two calls may run side by side, gpu_lanes.sh)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for f in .gpu/*.xz; do [ -e "${f%.xz}" ] || xz -d -k "$f"; done
chmod +x .gpu/* 2>/dev/null
[ -e /work/main ] || { mkdir -p /work; ln -s "$(pwd)" /work/main; }
vdit=.gpu/vdit
log() { tee -a "$OUT/train.log"; }
# the GPU's memory in use every 10 s, for the whole call
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -l 10 >>"$OUT/gpu-memory.csv" 2>/dev/null &
  memory_log=$!
  trap 'kill $memory_log 2>/dev/null; rm -rf "$scratch"' EXIT
fi
# `vdit train ARGS`, stopped with a checkpoint (SIGINT) at DEADLINE; a process that fails
# otherwise is resumed from its last checkpoint, twice at most. RESUME=1: resume from the start.
train() {
  local resume=() tries=0 rc left
  [ "${RESUME:-0}" = 1 ] && resume=(--resume)
  while :; do
    left=$(( ${DEADLINE:-$(( $(date +%s) + 100000 ))} - $(date +%s) ))
    [ "$left" -gt 30 ] || { echo "no time left before DEADLINE" | log; return 124; }
    timeout -s INT -k 60 "$left" $vdit train "$@" "${resume[@]}" 2>&1 | log
    rc=${PIPESTATUS[0]}
    case "$rc" in 0|124) return "$rc" ;; esac
    tries=$((tries + 1))
    [ "$tries" -le 2 ] || return "$rc"
    echo "vdit train failed (exit $rc): resuming from the last checkpoint" | log
    resume=(--resume)
  done
}
# The s/step in `vdit train`'s final line $1.
rate_of() { sed -n 's/.* \([0-9.]*\) s\/step.*/\1/p' <<<"$1"; }
# 16 timed transformer steps of build $1 (.gpu/$1) at batch $2 over DIT_GPUS, through attention
# $3 (default dense): its last two lines on one line.
time_steps() {
  ".gpu/$1" train dit --base "${DIT_BASE:-runs/vae/model}" --out "$scratch/steptime-$1-b$2-${3:-dense}" \
    --clips 64 --steps 16 --batch "$2" ${DIT_GPUS:+--gpus "$DIT_GPUS"} --attention "${3:-dense}" --quiet 2>&1 \
    | tail -2 | tr '\n' ' '
}
for step in "$@"; do
  echo "========== $step $(date +%T)" | log
  case "$step" in
    probe)
      .gpu/test-train-sparse_gradients --nocapture 2>&1 | grep -E "^test |seed|panicked|off by" | log
      $vdit train vae --out $scratch/probe/vae --steps 30 --batch "${VAE_BATCH:-8}" --log-every 10 2>&1 | log
      $vdit train dit --base $scratch/probe/vae/model --out $scratch/probe/dit --steps 30 --clips 256 \
        --batch "${DIT_BATCH:-32}" --log-every 10 2>&1 | log
      for method in "vsa:sparsity=0.875" "vmoba"; do
        $vdit train dit --base $scratch/probe/dit/model --out "$scratch/probe/ft-${method%%:*}" --steps 20 --clips 256 \
          --batch "${DIT_BATCH:-32}" --attention "$method" --log-every 10 2>&1 | log
      done ;;
    vae)
      # 30 timed steps, then as many as fit in VAE_SECONDS (default 150) at their rate (the
      # run's own s/step: the process's start-up and final measurements took 3/4 of the wall
      # time of such a probe, which cut a run to a quarter of its steps)
      steps="${VAE_STEPS:-}"
      if [ -z "$steps" ]; then
        line=$($vdit train vae --out "$scratch/vae-rate" --steps 30 --batch "${VAE_BATCH:-16}" \
          --crop-frames "${VAE_FRAMES:-17}" --quiet 2>&1 | tail -1)
        rate=$(rate_of "$line")
        steps=$(python3 -c "print(max(20, int(${VAE_SECONDS:-150} / (${rate:-1.0} * 1.05))))")
        echo "vae: ${rate:-1.0 (assumed)} s/step, $steps steps" | log
      fi
      # continuing: the previous run moves aside (its model/ is what VAE_FROM usually names)
      from="${VAE_FROM:-}"
      if [ -n "$from" ] && [ -d runs/vae ]; then
        aside="runs/vae-$(date +%s)"
        mv runs/vae "$aside"
        from="${from/#runs\/vae\//$aside/}"
      fi
      train vae --out runs/vae --steps "$steps" --batch "${VAE_BATCH:-16}" --crop-frames "${VAE_FRAMES:-17}" --lr "${VAE_LR:-2e-3}" \
        --warmup 20 --log-every 50 --checkpoint-every 25 ${from:+--from "$from"}
      if [ ! -d runs/vae/model ] && [ -d runs/vae-cpu/model ]; then
        echo "vae: using the CPU-trained runs/vae-cpu" | log
        rm -rf runs/vae; cp -r runs/vae-cpu runs/vae
      fi ;;
    dit)
      # DIT_TOTAL set: one run of that many steps over several calls on a machine kept warm
      # between them (runs/ stays there when it is not carried): each call stops at DEADLINE
      # with a checkpoint (SIGINT) and the next resumes it; the last one writes runs/dit/model.
      # Otherwise: DIT_STEPS, or as many as fit before DEADLINE at DIT_RATE s/step.
      steps="${DIT_TOTAL:-${DIT_STEPS:-}}"
      if [ "$steps" = auto ]; then
        [ -f runs/dit-total ] || python3 -c "print(int(${DIT_SECONDS:-600} / $(cat runs/dit-rate 2>/dev/null || echo 0.8)))" >runs/dit-total
        steps=$(cat runs/dit-total)
      fi
      # continuing: the previous run moves aside and lends the new one its encoded clips
      # (same VAE and text encoder, so the cache's label matches)
      from="${DIT_FROM:-}"
      if [ -n "$from" ] && [ -d runs/dit ]; then
        aside="runs/dit-$(date +%s)"
        mv runs/dit "$aside"
        from="${from/#runs\/dit\//$aside/}"
        mkdir -p runs/dit
        [ -f "$aside/latents.safetensors" ] && cp "$aside/latents.safetensors" runs/dit/
      fi
      if [ -n "$from" ] && [ ! -d "$from" ]; then
        echo "dit: no $from (the previous call stopped before its model): starting from DIT_BASE" | log
        from=""
      fi
      if [ -z "$steps" ]; then
        # what fits before the deadline at the measured rate (5% spare for checkpoints), less
        # time for rendering and encoding the clips when they are not cached
        rate="${DIT_RATE:-$(cat runs/dit-rate 2>/dev/null || echo 0.82)}"
        setup=40
        [ -f runs/dit/latents.safetensors ] || setup="${DIT_ENCODE_SECONDS:-120}"
        steps=$(python3 -c "import time; print(max(50, int(($DEADLINE - time.time() - $setup) / ($rate * 1.05))))")
      fi
      resume=0
      if [ -n "${DIT_TOTAL:-}" ] && [ -d runs/dit/checkpoints ]; then resume=1; fi
      echo "dit: $steps steps (resume: $resume), stopping at DEADLINE at the latest" | log
      RESUME=$resume train dit --base "${from:-${DIT_BASE:-runs/vae/model}}" --out runs/dit \
        --steps "$steps" --lr "${DIT_LR:-6e-4}" --warmup "${DIT_WARMUP:-50}" \
        --batch "${DIT_BATCH:-$(cat runs/dit-batch 2>/dev/null || echo 32)}" --clips "${DIT_CLIPS:-8192}" --seed "${DIT_SEED:-0}" --checkpoint-every 100 \
        --log-every 50 ${DIT_GPUS:+--gpus "$DIT_GPUS"} ;;
    steptime)
      if [ -n "${DIT_BATCHES:-}" ]; then
        best=0
        for batch in $DIT_BATCHES; do
          line=$(time_steps vdit "$batch")
          echo "batch $batch: $line" | log
          rate=$(rate_of "$line")
          [ -n "$rate" ] || continue
          speed=$(python3 -c "print(int($batch / $rate))")
          if [ "$speed" -gt "$best" ]; then
            best=$speed; echo "$batch" >runs/dit-batch; echo "$rate" >runs/dit-rate
          fi
        done
        echo "steptime: batch $(cat runs/dit-batch 2>/dev/null), $best clips/s" | log
        continue
      fi
      for attention in ${STEPTIME_ATTENTION:-dense}; do
        for build in vdit vdit-old; do
          [ -x ".gpu/$build" ] || continue
          line=$(time_steps "$build" "${DIT_BATCH:-32}" "$attention")
          echo "$build $attention: $line" | log
          rate=$(rate_of "$line")
          [ "$build" = vdit ] && [ "$attention" = dense ] && [ -n "$rate" ] && echo "$rate" >runs/dit-rate
        done
      done ;;
    finetune)
      for method in ${FT_METHODS:-vsa vmoba}; do
        case "$method" in
          vsa) attention=(--attention vsa:sparsity=0.875 --sparsity-ramp "${FT_RAMP:-50}") ;;
          vmoba) attention=(--attention vmoba) ;;
          *) echo "finetune: unknown method $method (vsa or vmoba)" | log; continue ;;
        esac
        train dit --base "${FT_BASE:-runs/dit/model}" --out "runs/ft-$method" --steps "${FT_STEPS:-150}" \
          --batch "${FT_BATCH:-${DIT_BATCH:-32}}" --clips "${FT_CLIPS:-2048}" "${attention[@]}" --lr 2e-4 \
          --warmup 10 --seed 1 --log-every 25 ${DIT_GPUS:+--gpus "$DIT_GPUS"}
      done ;;
    evaldense)
      n="${EVAL_COUNT:-16}"
      $vdit eval --model runs/dit/model --count "$n" --out-dir runs/eval-dense --quiet 2>&1 | tail -4 | log
      $vdit eval --model runs/dit/model --count "$n" --split train --out-dir runs/eval-train --quiet 2>&1 | tail -4 | log ;;
    evalsparse)
      n="${EVAL_COUNT:-16}"
      printf "a red circle moves to the right\na blue square moves up on a yellow background\n" >$scratch/paro-prompts.txt
      $vdit calibrate paro --model runs/dit/model --prompts $scratch/paro-prompts.txt \
        --output runs/paro.safetensors --overwrite --quiet 2>&1 | tail -1 | log
      $vdit eval --model runs/dit/model --count "$n" --out-dir runs/eval-sparse --quiet \
        --method vsa:sparsity=0.75 --method vsa:sparsity=0.875 --method vmoba:dense_steps=0 \
        --method paro:paro_calibration=runs/paro.safetensors 2>&1 | tail -8 | log
      # each fine-tune with the method it trained through, against its own dense
      for ft in "vsa vsa:sparsity=0.875,dense_steps=0" "vmoba vmoba:dense_steps=0"; do
        read -r name spec <<<"$ft"
        [ -d "runs/ft-$name/model" ] || continue
        $vdit eval --model "runs/ft-$name/model" --count "$n" --out-dir "runs/eval-ft-$name" --quiet \
          --method "$spec" 2>&1 | tail -5 | log
      done ;;
    pack)
      for run in vae dit ft-vsa ft-vmoba; do
        [ -d "runs/$run/model" ] || continue
        # the transformer's weights alone (a file may be at most 16 MiB), the rest in a tar
        w="runs/$run/model/transformer/diffusion_pytorch_model.safetensors"
        [ -f "$w" ] && cp "$w" "$OUT/$run-transformer.safetensors"
        tar cf "$OUT/$run-model.tar" --exclude=diffusion_pytorch_model.safetensors -C "runs/$run" model loss.csv loss.png
        tar rf "$OUT/$run-model.tar" -C "runs/$run" model/vae/diffusion_pytorch_model.safetensors
      done
      tar czf "$OUT/evals.tgz" runs/eval-*/eval.json runs/eval-*/report.md runs/eval-*/results.jsonl runs/*/loss.csv 2>/dev/null
      ls -la "$OUT" ;;
  esac
done
echo "========== done $(date +%T)" | log
