#!/usr/bin/env bash
# Peak memory and time per iteration of dppo.py for several --ft-denoising-steps (README.md here).
# One fine-tuning iteration each at the benchmark's per-iteration size (40 envs x 125 queries x 4
# actions = 20k env steps, 12.5k pairs per minibatch), from the bundled Hopper checkpoint.
# Usage: bash experiments/dppo_ft_steps_sweep/dppo_ft_steps_sweep.sh [K' values...]   (default: 5 10 20)
set -euo pipefail
cd "$(dirname "$0")/../.."
for k in "${@:-5 10 20}"; do
  for kk in $k; do
    run=runs/ft-steps-sweep/k$kk
    mkdir -p "$(dirname "$run")"
    python cleandppo/dppo.py --env-id Hopper-v2 --ft-denoising-steps "$kk" --total-timesteps 20000 --num-envs 40 \
      --n-steps 125 --batch-size 12500 --eval-episodes 1 --eval-freq 100 --run-dir "$run" --overwrite > "$run.log" 2>&1 || { cat "$run.log"; exit 1; }
    python - "$run" "$kk" <<'PY'
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
run, k = sys.argv[1], sys.argv[2]
acc = EventAccumulator(run); acc.Reload()
get = lambda tag: acc.Scalars(tag)[-1].value
peak = json.load(open(f"{run}/summary.json"))["peak_memory_mb"]
print(f"K'={k}: rollout {get('time/rollout_s'):.1f} s, update {get('time/update_s'):.1f} s, peak memory {peak:.0f} MB")
PY
  done
done
