#!/usr/bin/env bash
# The two checks that need a GPU machine, as one short script (a few minutes on a 16-core H200 machine):
#   1. a paper-size DPPO Hopper iteration (40 envs x 500 queries x Ta 4 = 80k env steps, K' = 10, the official
#      minibatch 50,000 and 10 update epochs) on the CPU only, in one process, then with CUDA and env worker processes;
#      the speed-up of the whole iteration (wall time of the run minus its two evaluations) is the number to record;
#   2. DPPO-ViT-MLP from pixels on CUDA: pre-training on a few recorded Lift image demos, then a few fine-tuning
#      iterations; the iteration time and the peak GPU memory (summary.json's peak_memory_mb).
#
#   bash experiments/gpu_check/run.sh [out dir]     # prints one line per number; everything lands in the out dir
# Knobs: UPDATE_EPOCHS=10 (fewer to fit a tight budget: the line says how many ran), SKIP_CPU=1 (the CUDA runs only),
# DRY_RUN=1 (tiny sizes on the CPU: checks the script itself on a machine without a GPU, in about two minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-${OUT:-runs/gpu_check}}
UPDATE_EPOCHS=${UPDATE_EPOCHS:-10}
N_STEPS=500 BATCH=50000 DEMOS=5 GPU=--cuda IMG_ENVS=16 IMG_STEPS=20
if [ "${DRY_RUN:-0}" = 1 ]; then
  N_STEPS=5 BATCH=500 DEMOS=1 GPU=--no-cuda UPDATE_EPOCHS=1 IMG_ENVS=2 IMG_STEPS=2
else
  python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: this check needs a GPU machine'"
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt" || true
echo "cores: $(nproc); commit $(git rev-parse --short HEAD)" | tee -a "$OUT/gpu.txt"

# one DPPO iteration at paper size; prints the run's time/rollout_s and time/update_s
iteration() {
  local dir=$1
  shift
  rm -rf "$dir"
  python cleandppo/dppo.py --env-id Hopper-v2 --ft-denoising-steps 10 --num-envs 40 --n-steps "$N_STEPS" \
    --total-timesteps $((40 * N_STEPS * 4)) --batch-size "$BATCH" --update-epochs "$UPDATE_EPOCHS" --eval-episodes 1 \
    --run-dir "$dir" "$@" >"$dir.log" 2>&1
  python - "$dir" <<'PY'
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
run = sys.argv[1]
acc = EventAccumulator(run, size_guidance={"scalars": 0})
acc.Reload()
get = lambda tag: acc.Scalars(tag)[-1].value if tag in acc.Tags()["scalars"] else float("nan")
rollout, update = get("time/rollout_s"), get("time/update_s")
summary = json.load(open(f"{run}/summary.json"))
print(f"{run}: rollout {rollout:.1f} s + update {update:.1f} s = {rollout + update:.1f} s "
      f"(peak memory {summary.get('peak_memory_mb')} MB, {summary.get('parallel')})")
json.dump(dict(rollout_s=rollout, update_s=update), open(f"{run}/iteration.json", "w"))
PY
}
if [ "${SKIP_CPU:-0}" != 1 ]; then
  iteration "$OUT/hopper-cpu" --no-cuda --env-workers 1
fi
iteration "$OUT/hopper-cuda" "$GPU" --env-workers 0
python - "$OUT" "$UPDATE_EPOCHS" "$GPU" <<'PY'
import json, os, sys
out, epochs = sys.argv[1], sys.argv[2]
gpu = "CUDA" if sys.argv[3] == "--cuda" else "the dry run's CPU"
t = {
    k: json.load(open(f"{out}/hopper-{k}/iteration.json"))
    for k in ("cpu", "cuda")
    if os.path.exists(f"{out}/hopper-{k}/iteration.json")
}
if len(t) == 2:
    cpu, t_gpu = (sum(t[k].values()) for k in ("cpu", "cuda"))
    print(f"paper-size Hopper iteration ({epochs} update epochs): CPU one process {cpu:.1f} s, {gpu} {t_gpu:.1f} s: "
          f"{cpu / t_gpu:.2f}x (rollout {t['cpu']['rollout_s'] / t['cuda']['rollout_s']:.2f}x, "
          f"update {t['cpu']['update_s'] / t['cuda']['update_s']:.2f}x)")
PY

# pixels: 5 recorded Lift demos with images, 2 pre-training epochs, 3 fine-tuning iterations of 16 envs x 20 queries
python scripts/make_robomimic_demos.py --task lift --images --num-demos "$DEMOS" --out "$OUT/lift-img.hdf5" >"$OUT/demos.log" 2>&1
rm -rf "$OUT/lift-img-pre" "$OUT/lift-img-ft"
python cleandppo/dppo.py --env-id lift-img --dataset "$OUT/lift-img.hdf5" --pretrain-only --pretrain-epochs 2 \
  --eval-episodes 1 "$GPU" --run-dir "$OUT/lift-img-pre" >"$OUT/lift-img-pre.log" 2>&1
python cleandppo/dppo.py --env-id lift-img --checkpoint "$OUT/lift-img-pre/pretrained.pt" --num-envs "$IMG_ENVS" \
  --n-steps "$IMG_STEPS" --total-timesteps $((3 * IMG_ENVS * IMG_STEPS * 4)) --eval-episodes 1 "$GPU" \
  --env-workers 0 --run-dir "$OUT/lift-img-ft" >"$OUT/lift-img-ft.log" 2>&1
python - "$OUT/lift-img-ft" "$GPU" <<'PY'
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
run = sys.argv[1]
acc = EventAccumulator(run, size_guidance={"scalars": 0})
acc.Reload()
r = [e.value for e in acc.Scalars("time/rollout_s")]
u = [e.value for e in acc.Scalars("time/update_s")]
s = json.load(open(f"{run}/summary.json"))
where = "CUDA" if sys.argv[2] == "--cuda" else "the dry run's CPU"
print(f"lift-img on {where}: iterations rollout {', '.join(f'{x:.1f}' for x in r)} s, update "
      f"{', '.join(f'{x:.2f}' for x in u)} s; peak memory {s.get('peak_memory_mb')} MB; {s.get('parallel')}")
PY
