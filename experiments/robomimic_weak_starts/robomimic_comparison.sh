#!/usr/bin/env bash
# Lift and Can: the paper's robomimic comparison (Fig. 5 bottom, 6, A8) from weak policies
# pre-trained on MH-like demonstrations: DPPO, Gaussian-PPO, GMM-PPO and DRWR at the same env-step budget.
#
#   bash experiments/robomimic_weak_starts/robomimic_comparison.sh                 # all stages below, in order, on Lift
#   bash experiments/robomimic_weak_starts/robomimic_comparison.sh compare figure  # only some stages
#   TASK=can bash experiments/robomimic_weak_starts/robomimic_comparison.sh        # the same on Can
#
# Stages:
#   data      scripts/make_robomimic_demos.py --task $TASK --operators mh  -> <data dir>/$TASK-mhsim.hdf5
#             (Can: --max-steps 600, the worse operators need longer demos; evaluation keeps 300 steps)
#   pretrain  the weak bundled checkpoints cleandppo/pretrained/$TASK-mhsim-{diffusion,gaussian,gmm}-mlp.pt; each
#             pre-training command ends with the checkpoint's 50-episode evaluation ($RUNS/pretrain_<policy>.log)
#   compare   4 algorithms x $SEEDS fine-tuning runs, each followed by a 50-episode evaluation of its
#             checkpoint_last.pt ($RUNS/<algo>__s<seed>/ and $RUNS/<algo>__s<seed>_final50/)
#   figure    docs/figures/robomimic_${TASK}_comparison.{png,csv} (robomimic_comparison_figure.py, this folder)
#   lane      (not in "all") one lane of compare in this process, for a caller that already holds a slot
#   one       (not in "all") ALGO=<algo> SEED=<seed>: one run of compare in this process
# Knobs (environment variables):
#   TASK=lift       lift or can
#   SEEDS="0 1 2"   seeds of every algorithm
#   BUDGET=3000     fine-tuning env steps per run
#   NUM_ENVS=5      training envs; one iteration = NUM_ENVS x 75 chunks x 4 = one 300-step episode per env
#   EVAL_FREQ=2     in-run evaluation every N iterations (and after the last), EVAL_EPISODES episodes each
#   EVAL_EPISODES=5
#   WORKERS=2       runs at a time (one torch thread each)
#   LAUNCH=""       prefix of every heavy command (e.g. a wrapper that waits for a free CPU slot)
#   RUNS=runs/robomimic_${TASK}_comparison (finished runs, those with a final50 summary.json, are skipped)
# Everything not given below is each script's per-task table (docs/robomimic.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
TASK=${TASK:-lift}
SEEDS=${SEEDS:-"0 1 2"}
BUDGET=${BUDGET:-3000}
NUM_ENVS=${NUM_ENVS:-5}
EVAL_FREQ=${EVAL_FREQ:-2}
EVAL_EPISODES=${EVAL_EPISODES:-5}
WORKERS=${WORKERS:-2}
LAUNCH=${LAUNCH:-}
RUNS=${RUNS:-runs/robomimic_${TASK}_comparison}
CKPT=cleandppo/pretrained
STUDY=experiments/robomimic_weak_starts # this folder, from the repository root
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TASK BUDGET NUM_ENVS EVAL_FREQ EVAL_EPISODES LAUNCH RUNS CKPT
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(data pretrain compare figure)

# the weak pre-training: short budgets on the MH-like data (docs/checkpoints.md: the budgets tried and their success)
case $TASK in
lift)
  DATA="python scripts/make_robomimic_demos.py --task lift --operators mh"
  PRETRAIN_DIFFUSION="python cleandppo/dppo.py --env-id lift --dataset lift-mhsim --pretrain-only --pretrain-epochs 4 --ema-start-epoch 4 --eval-episodes 50 --no-cuda"
  PRETRAIN_GAUSSIAN="python cleandppo/gaussian_ppo.py --env-id lift --dataset lift-mhsim --pretrain-only --pretrain-epochs 20 --pretrain-lr 1e-3 --eval-episodes 50 --no-cuda"
  PRETRAIN_GMM="python cleandppo/gmm_ppo.py --env-id lift --dataset lift-mhsim --pretrain-only --pretrain-epochs 12 --pretrain-lr 1e-3 --eval-episodes 50 --no-cuda"
  ;;
can)
  DATA="python scripts/make_robomimic_demos.py --task can --operators mh --max-steps 600"
  # diffusion: the better and okay operators' 80 demos only (filter keys; from all 120 it stayed at 0.00-0.18)
  PRETRAIN_DIFFUSION="python cleandppo/dppo.py --env-id can --dataset can-mhsim:better,okay --pretrain-only --pretrain-epochs 30 --ema-start-epoch 30 --eval-episodes 50 --no-cuda"
  PRETRAIN_GAUSSIAN="python cleandppo/gaussian_ppo.py --env-id can --dataset can-mhsim --pretrain-only --pretrain-epochs 40 --pretrain-lr 1e-3 --eval-episodes 50 --no-cuda"
  PRETRAIN_GMM="python cleandppo/gmm_ppo.py --env-id can --dataset can-mhsim --pretrain-only --pretrain-epochs 50 --pretrain-lr 1e-3 --eval-episodes 50 --no-cuda"
  ;;
*)
  echo "error: unknown TASK '$TASK'; use lift or can" >&2
  exit 2
  ;;
esac
mkdir -p "$RUNS"

# algorithm -> (script, policy); the PPO variants get no critic warm-up iteration instead of the table's 2
# (a run has only BUDGET / (NUM_ENVS x 300) = 2 iterations); DRWR's minibatch is an iteration's 375 chunks
# (its table's 1000 is more than an iteration collects, which drwr.py refuses; the PPO scripts cap it themselves)
script_of() { case $1 in dppo) echo dppo ;; gaussian) echo gaussian_ppo ;; gmm) echo gmm_ppo ;; drwr) echo drwr ;; esac; }
policy_of() { case $1 in dppo | drwr) echo diffusion ;; gaussian) echo gaussian ;; gmm) echo gmm ;; esac; }
extra_of() { case $1 in dppo | gaussian | gmm) echo "--n-critic-warmup-itr 0" ;; drwr) echo "--batch-size 375" ;; esac; }
export -f script_of policy_of extra_of

# One run: fine-tune, then evaluate checkpoint_last.pt over 50 episodes.
run_one() {
  local algo=$1 seed=$2
  local dir=$RUNS/${algo}__s$seed script policy
  script=$(script_of "$algo")
  policy=$(policy_of "$algo")
  if [ -f "${dir}_final50/summary.json" ]; then
    echo "[skip] $dir (finished)"
    return 0
  fi
  rm -rf "$dir" "${dir}_final50"
  local ft="python cleandppo/$script.py --env-id $TASK --checkpoint $CKPT/$TASK-mhsim-$policy-mlp.pt --seed $seed
    --num-envs $NUM_ENVS --n-steps 75 --total-timesteps $BUDGET $(extra_of "$algo") --eval-freq $EVAL_FREQ
    --eval-episodes $EVAL_EPISODES --save-freq 1000 --no-cuda --run-dir $dir"
  local final="python cleandppo/$script.py --env-id $TASK --eval-only --eval-episodes 50 --seed $seed --no-cuda
    --checkpoint $dir/checkpoint_last.pt --run-dir ${dir}_final50"
  echo "[run] $(date +%H:%M:%S) $algo seed $seed"
  { echo "$ft" | tr -s ' \n' ' '; echo; echo "$final" | tr -s ' \n' ' '; echo; } >"$dir.cmd"
  { $ft >"$dir.log" 2>&1 && $final >"${dir}_final50.log" 2>&1; } ||
    { echo "[failed] $dir: see $dir.log / ${dir}_final50.log" >&2; return 1; }
  echo "[done] $(date +%H:%M:%S) $algo seed $seed: $(grep '\[eval\]' "${dir}_final50.log" | tail -1)"
}
export -f run_one

# A lane holds one heavy-job slot ($LAUNCH) for all its runs and takes the next unclaimed run of the
# seed-major order (seed 0 of every algorithm first) until none is left, so the lanes stay balanced.
lane() {
  local algo seed
  for seed in $SEEDS; do
    for algo in dppo gaussian gmm drwr; do
      mkdir "$RUNS/claims/${algo}__s$seed" 2>/dev/null || continue
      run_one "$algo" "$seed" || true
    done
  done
}
export -f lane
export SEEDS

for s in "${stages[@]}"; do
  case "$s" in
  data)
    $LAUNCH $DATA
    ;;
  pretrain)
    pre() { rm -rf "$RUNS/pretrain_$1" && $2 --run-dir "$RUNS/pretrain_$1" >"$RUNS/pretrain_$1.log" 2>&1; }
    export -f pre
    export PRETRAIN_DIFFUSION PRETRAIN_GAUSSIAN PRETRAIN_GMM
    $LAUNCH bash -c 'pre diffusion "$PRETRAIN_DIFFUSION"' &
    $LAUNCH bash -c 'pre gaussian "$PRETRAIN_GAUSSIAN" && pre gmm "$PRETRAIN_GMM"' &
    wait
    for p in diffusion gaussian gmm; do cp "$RUNS/pretrain_$p/pretrained.pt" "$CKPT/$TASK-mhsim-$p-mlp.pt"; done
    grep -H "\[eval\]" "$RUNS"/pretrain_*.log
    ;;
  one)  # ALGO=<dppo|gaussian|gmm|drwr> SEED=<n>: that run alone, in this process (claimed, so lanes skip it)
    mkdir -p "$RUNS/claims/${ALGO}__s$SEED"
    run_one "$ALGO" "$SEED"
    ;;
  lane)  # one lane in the current process (for a slot already held); claims persist: rm -r $RUNS/claims to redo
    mkdir -p "$RUNS/claims"
    lane
    ;;
  compare)
    rm -rf "$RUNS/claims" && mkdir -p "$RUNS/claims"
    for i in $(seq "$WORKERS"); do
      $LAUNCH bash -c lane >"$RUNS/lane$i.log" 2>&1 &
      sleep 1
    done
    wait
    cat "$RUNS"/lane*.log
    ;;
  figure)
    python "$STUDY"/robomimic_comparison_figure.py --task "$TASK" --runs "$RUNS" --out "docs/figures/robomimic_${TASK}_comparison"
    ;;
  *)
    echo "error: unknown stage '$s'; use data, pretrain, eval, compare, figure" >&2
    exit 2
    ;;
  esac
done
