#!/usr/bin/env bash
# A GPU that fails in the middle of a 2-GPU run (on the GPU machine, after gpu_build.sh): GPU 1
# is filled by another process until a little more than the weights fit, so its rank loads and
# then runs out of memory in its first forward pass, while rank 0 waits in an exchange with it.
# The run must end soon with rank 1's error, not hang. FREE_GIB (default 5) is what GPU 1 keeps free.
#   bash pipelines/vdit/bench/multigpu_failure.sh MODEL_DIR
set -u
dir=$1
out=$(mktemp -d "${OUT:-/tmp}/failure.XXXX")
python3 -c "
import time, torch
free, _ = torch.cuda.mem_get_info(1)
held = torch.empty(free - int(float(\"${FREE_GIB:-5}\") * 2**30), dtype=torch.uint8, device='cuda:1')
print(f'holding {held.numel() / 2**30:.1f} GiB of GPU 1', flush=True)
time.sleep(180)" &
holder=$!
sleep 10
start=$(date +%s)
NCCL_DEBUG=WARN timeout -s KILL 60 .gpu/vdit generate --model "$dir" --prompt-embeds "$dir/inputs.safetensors" \
  --negative-prompt-embeds "$dir/inputs.safetensors" --seed 1 --steps 3 --gpus 2 --sp 2 \
  --overwrite --quiet --output "$out/failure.y4m" >"$out/failure.log" 2>&1
code=$?
echo "exit $code after $(( $(date +%s) - start )) s (137: killed after 60 s, a hang)"
tail -4 "$out/failure.log"
ls "$out"/failure.y4m* 2>/dev/null && echo "an output was left behind" || echo "no output left behind"
kill $holder 2>/dev/null
wait 2>/dev/null
