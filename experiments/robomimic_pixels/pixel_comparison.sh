#!/usr/bin/env bash
# Robomimic from pixels on a CPU: DPPO-ViT-MLP against Gaussian-ViT-MLP (paper 5.2, Fig. 6, Table A4), from weak
# policies pre-trained here on MH-like demonstrations with camera images, at the same env-step budget.
#
#   bash experiments/robomimic_pixels/pixel_comparison.sh                   # all stages below, in order, on Lift
#   bash experiments/robomimic_pixels/pixel_comparison.sh pretrain          # only some stages
#   TASK=can bash experiments/robomimic_pixels/pixel_comparison.sh          # the same on Can
#
# Stages:
#   data      scripts/make_robomimic_demos.py --task $TASK --operators mh --images (Can: --max-steps 600, as its state
#             demos) -> <data dir>/$TASK-mhsim-img.hdf5
#   pretrain  dppo.py and gaussian_ppo.py pre-trained on it ($EPOCHS_DIFFUSION, $EPOCHS_GAUSSIAN epochs; the
#             recipe of the bundled $TASK-img checkpoints by default), each ending with a $PRE_EPISODES-episode
#             evaluation; every budget tried is appended to $RUNS/budgets.csv (epochs, LR, success, the commit), the
#             checkpoints to $RUNS/pretrain_{diffusion,gaussian}/pretrained.pt, with a snapshot every
#             $SAVE_FREQ epochs (pretrained_<epoch>.pt; evaluate one with --eval-only --checkpoint)
#   bundle    (not in "all") copies them to cleandppo/pretrained/$TASK-img-{diffusion,gaussian}-mlp.pt, the default
#             checkpoints of --env-id $TASK-img
#   compare   $ALGOS x $SEEDS fine-tuning runs from them (without a pretrain stage in $RUNS: from the bundled
#             cleandppo/pretrained/$TASK-img-*-mlp.pt), each followed by a $FINAL_EPISODES-episode evaluation of its
#             checkpoint_last.pt ($RUNS/<algo>__s<seed>/, $RUNS/<algo>__s<seed>_final50/)
#   figure    $RUNS/figure.{png,csv} (experiments/robomimic_weak_starts/robomimic_comparison_figure.py; a variant is
#             drawn dashed beside its algorithm) and the wall time per iteration of each algorithm
#             ($RUNS/iteration_times.csv)
# Knobs (environment variables):
#   TASK=lift        lift or can
#   DEMOS=100        demonstrations (the official image datasets hold 100)
#   EPOCHS_DIFFUSION=40, EPOCHS_GAUSSIAN=10 (Can: 30)   pre-training epochs (official: 2000 on a GPU)
#   LR_DIFFUSION=1e-3  the diffusion policy's pre-training LR, cosine-decayed to a tenth; "official" for the
#                    official 1e-4 -> 1e-5, too slow for a CPU budget (README.md here: 0.02 after 40 epochs)
#   SAVE_FREQ=10     a pre-training snapshot every SAVE_FREQ epochs
#   PRE_EPISODES=50  evaluation episodes of each pre-trained policy
#   SEEDS="0 1 2"    seeds of each algorithm
#   ALGOS="dppo gaussian gaussian-lr1e-5"   gaussian-lr1e-5: the Gaussian at actor LR 1e-5 instead of the official
#                    1e-4, a variant reported beside it (one AdamW step at 1e-4 moves this pixel policy's mean action
#                    by 0.4; first_step_kl.py)
#   NUM_ENVS=5       training envs; N_STEPS=75 queries per env and iteration (Ta = 4: one 300-step episode)
#   BUDGET=4500      fine-tuning env steps per run (3 iterations at the sizes above)
#   EVAL_FREQ=1, EVAL_EPISODES=5, FINAL_EPISODES=50
#   WORKERS=2        runs at a time (one torch thread each)
#   ENV_WORKERS=1    env worker processes per run (--env-workers; 1: its envs step in the run's own process). Each
#                    image env in a worker process holds 0.9 GiB instead of 0.36: two runs choosing 5 each on
#                    their own (0, auto, on the 2-core machine) overran its 24 GiB once both evaluated.
#   RUNS=runs/robomimic_${TASK}_pixels
# Everything else is each script's -img task table (docs/robomimic_images.md): K = 100, 5 fine-tuned DDIM steps,
# the official learning rates, clips, minibatches and gradient accumulation.
set -euo pipefail
cd "$(dirname "$0")/../.."
TASK=${TASK:-lift}
DEMOS=${DEMOS:-100}
EPOCHS_DIFFUSION=${EPOCHS_DIFFUSION:-40}
EPOCHS_GAUSSIAN=${EPOCHS_GAUSSIAN:-$([ "$TASK" = can ] && echo 30 || echo 10)}
LR_DIFFUSION=${LR_DIFFUSION:-1e-3}
SAVE_FREQ=${SAVE_FREQ:-10}
PRE_EPISODES=${PRE_EPISODES:-50}
SEEDS=${SEEDS:-"0 1 2"}
ALGOS=${ALGOS:-"dppo gaussian gaussian-lr1e-5"}
NUM_ENVS=${NUM_ENVS:-5}
N_STEPS=${N_STEPS:-75}
BUDGET=${BUDGET:-4500}
EVAL_FREQ=${EVAL_FREQ:-1}
EVAL_EPISODES=${EVAL_EPISODES:-5}
FINAL_EPISODES=${FINAL_EPISODES:-50}
WORKERS=${WORKERS:-2}
ENV_WORKERS=${ENV_WORKERS:-1}
RUNS=${RUNS:-runs/robomimic_${TASK}_pixels}
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TASK PRE_EPISODES ENV_WORKERS SAVE_FREQ LR_DIFFUSION NUM_ENVS N_STEPS BUDGET EVAL_FREQ EVAL_EPISODES \
  FINAL_EPISODES RUNS
if [ "$LR_DIFFUSION" != official ] && ! python -c "assert float('$LR_DIFFUSION') > 0" 2>/dev/null; then
  echo "error: LR_DIFFUSION '$LR_DIFFUSION' is not a positive number; use e.g. 1e-3, or official (1e-4 -> 1e-5)" >&2
  exit 2
fi
case $TASK in lift | can) ;; *)
  echo "error: unknown TASK '$TASK'; use lift or can" >&2
  exit 2
  ;;
esac
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(data pretrain compare figure)
for s in "${stages[@]}"; do
  case "$s" in data | pretrain | bundle | compare | figure) ;; *)
    echo "error: unknown stage '$s'; use data, pretrain, bundle, compare, figure" >&2
    exit 2
    ;;
  esac
done
mkdir -p "$RUNS"
script_of() { case $1 in dppo | diffusion) echo dppo ;; gaussian*) echo gaussian_ppo ;; esac; }
variant_of() { case $1 in gaussian-lr1e-5) echo "--actor-lr 1e-5" ;; esac; } # the flags a variant adds
# the 50-episode success of the bundled checkpoints (README.md here; results_53c1f22/ and results_65f69c4/budgets.csv)
bundled_success() {
  case $TASK-$1 in
  lift-diffusion) echo 0.28 ;;
  lift-gaussian) echo 0.48 ;;
  can-diffusion) echo 0.20 ;;
  can-gaussian) echo 0.34 ;;
  *) echo nan ;; # not bundled
  esac
}
export -f script_of variant_of

# One pre-training: pretrain_one <policy> <epochs>; its evaluation's success goes to budgets.csv. A finished one is
# kept; an interrupted one continues from its pretrained_last.pt, or only evaluates its pretrained.pt when it was
# killed in that evaluation (the same command run again), else starts over.
pretrain_one() {
  local policy=$1 epochs=$2 dir=$RUNS/pretrain_$1 lr=()
  if [ -f "$dir/summary.json" ]; then
    echo "[skip] $dir (finished)"
    return 0
  fi
  [ "$policy" = diffusion ] && [ "$LR_DIFFUSION" != official ] &&
    lr=(--pretrain-lr "$LR_DIFFUSION" --pretrain-min-lr "$(python -c "print($LR_DIFFUSION / 10)")")
  [ -f "$dir/pretrained_last.pt" ] || [ -f "$dir/pretrained.pt" ] || rm -rf "$dir"
  python "cleandppo/$(script_of "$policy").py" --env-id "$TASK-img" --dataset "$TASK-mhsim-img" --pretrain-only \
    --pretrain-epochs "$epochs" "${lr[@]}" --pretrain-save-freq "$SAVE_FREQ" --eval-episodes "$PRE_EPISODES" \
    --env-workers "$ENV_WORKERS" --no-cuda --run-dir "$dir" >>"$dir.log" 2>&1 ||
    { echo "[failed] $dir: see $dir.log" >&2; return 1; }
  python - "$dir/summary.json" "$policy" "$epochs" "$RUNS/budgets.csv" <<'EOF'
import csv, json, os, sys
summary, policy, epochs, out = sys.argv[1:]
s = json.load(open(summary))
new = not os.path.exists(out)
with open(out, "a", newline="") as f:
    w = csv.writer(f)
    if new:
        w.writerow(["policy", "pretrain_epochs", "pretrain_lr", "episodes", "success_rate", "wall_time_s",
                    "git_commit"])
    lr, min_lr = s["args"]["pretrain_lr"], s["args"]["pretrain_min_lr"]
    w.writerow([policy, epochs, f"{lr:g}" if min_lr is None else f"{lr:g} -> {min_lr:g}",
                s["args"]["eval_episodes"], s["final_eval_success_rate"], round(s["wall_time_s"]), s["git_commit"]])
EOF
  echo "[pretrain] $policy, $epochs epochs: $(grep '\[eval\]' "$dir.log" | tail -1)"
}
export -f pretrain_one

# One run: fine-tune from the pre-trained policy, then evaluate checkpoint_last.pt. A finished run is kept, an
# interrupted one resumes from its checkpoint_last.pt (one that died before its first checkpoint starts over).
run_one() {
  local algo=$1 seed=$2 dir=$RUNS/$1__s$2 policy start
  policy=$([ "$algo" = dppo ] && echo diffusion || echo gaussian)
  if [ -f "${dir}_final50/summary.json" ]; then
    echo "[skip] $dir (finished)"
    return 0
  fi
  rm -rf "${dir}_final50"
  start=$RUNS/pretrain_$policy/pretrained.pt
  [ -f "$start" ] || start=cleandppo/pretrained/$TASK-img-$policy-mlp.pt # no pretrain stage run: the bundled one
  if [ -f "$dir/summary.json" ]; then
    start= # fine-tuned already: only its evaluation is left
  elif [ -f "$dir/checkpoint_last.pt" ]; then
    start=$dir/checkpoint_last.pt
  else
    rm -rf "$dir"
  fi
  # shellcheck disable=SC2046 # a variant's flags are words
  [ -z "$start" ] || python "cleandppo/$(script_of "$algo").py" --env-id "$TASK-img" --checkpoint "$start" \
    $(variant_of "$algo") --seed "$seed" --num-envs "$NUM_ENVS" --n-steps "$N_STEPS" --total-timesteps "$BUDGET" \
    --n-critic-warmup-itr 0 \
    --eval-freq "$EVAL_FREQ" --eval-episodes "$EVAL_EPISODES" --save-freq 1000 --no-cuda --run-dir "$dir" \
    --env-workers "$ENV_WORKERS" >>"$dir.log" 2>&1 &&
    python "cleandppo/$(script_of "$algo").py" --env-id "$TASK-img" --eval-only --eval-episodes "$FINAL_EPISODES" \
      --seed "$seed" --env-workers "$ENV_WORKERS" --no-cuda --checkpoint "$dir/checkpoint_last.pt" \
      --run-dir "${dir}_final50" \
      >"${dir}_final50.log" 2>&1 ||
    { echo "[failed] $dir: see $dir.log / ${dir}_final50.log" >&2; return 1; }
  echo "[done] $algo seed $seed: $(grep '\[eval\]' "${dir}_final50.log" | tail -1)"
}
export -f run_one

for stage in "${stages[@]}"; do
  echo "=== stage $stage ($(date +%H:%M:%S))"
  case "$stage" in
  data)
    steps=()
    [ "$TASK" = can ] && steps=(--max-steps 600) # slow MH operators on Can (docs/robomimic.md)
    python scripts/make_robomimic_demos.py --task "$TASK" --operators mh --images --num-demos "$DEMOS" "${steps[@]}"
    ;;
  pretrain)
    printf '%s\n' "diffusion $EPOCHS_DIFFUSION" "gaussian $EPOCHS_GAUSSIAN" |
      xargs -P "$WORKERS" -L 1 bash -c 'pretrain_one "$@"' _
    ;;
  bundle)
    for p in diffusion gaussian; do
      cp "$RUNS/pretrain_$p/pretrained.pt" "cleandppo/pretrained/$TASK-img-$p-mlp.pt"
    done
    ;;
  compare)
    for seed in $SEEDS; do for algo in $ALGOS; do echo "$algo $seed"; done; done |
      xargs -P "$WORKERS" -L 1 bash -c 'run_one "$@"' _
    ;;
  figure)
    start=()
    for p in diffusion gaussian; do
      algo=$([ $p = diffusion ] && echo dppo || echo gaussian)
      if [ -f "$RUNS/pretrain_$p/summary.json" ]; then
        start+=("$algo=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['final_eval_success_rate'])" \
          "$RUNS/pretrain_$p/summary.json")")
      else # the runs started from the bundled checkpoint: its 50-episode success (README, budgets tried)
        start+=("$algo=$(bundled_success "$p")")
      fi
    done
    python experiments/robomimic_weak_starts/robomimic_comparison_figure.py --task "$TASK" --runs "$RUNS" \
      --out "$RUNS/figure" --title "$TASK from pixels, pre-trained on $TASK-mhsim-img" --pretrained "${start[@]}"
    python experiments/robomimic_pixels/iteration_times.py --runs "$RUNS" --task "$TASK" \
      --out "$RUNS/iteration_times.csv"
    ;;
  esac
done
echo "=== done ($(date +%H:%M:%S))"
