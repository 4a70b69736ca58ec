#!/usr/bin/env bash
# The paper's comparison grid (algorithms x tasks x seeds), one run after another.
#
#   bash benchmark.sh                       # every algorithm, the three Gym tasks, seed 0, 1M env steps
#   ALGOS="dppo gaussian_ppo" TASKS=Hopper-v2 SEEDS="0 1 2" BUDGET=200000 bash benchmark.sh
#   DRY_RUN=1 bash benchmark.sh             # print the commands only
#
# Every algorithm fine-tunes its bundled pre-trained checkpoint for BUDGET environment steps.
# The per-iteration sizes below are the reduced ones our CPU measurements use (docs/benchmarks.md):
# 20k env steps per iteration for the PPO methods (paper: 80k), 4k for the off-policy ones.
# For paper-scale runs on a GPU, set BUDGET (paper Gym DPPO: 72M) and PAPER_SIZES=1 to use each
# script's own defaults (the paper's values) instead.
# BUDGET must cover one iteration of every algorithm (20k env steps with these sizes); a smaller
# one stops each script with one line. Rerunning skips finished runs and resumes interrupted ones.
# Results: runs/benchmark/<env>__<algo>__<seed>/summary.json; a table is printed at the end.
set -uo pipefail
ALGOS=${ALGOS:-"dppo gaussian_ppo gmm_ppo drwr dawr dipo idql dql qsm exact_likelihood_pg"}
TASKS=${TASKS:-"Hopper-v2 Walker2D-v2 HalfCheetah-v2"}
SEEDS=${SEEDS:-"0"}
BUDGET=${BUDGET:-1000000}
OUT=${OUT:-runs/benchmark}
PYTHON=${PYTHON:-python}

sizes() {  # reduced per-iteration sizes for one algorithm
  [ "${PAPER_SIZES:-0}" = 1 ] && return
  case "$1" in
    dppo) echo "--num-envs 40 --n-steps 125 --batch-size 12500 --eval-freq 5" ;;
    gaussian_ppo|gmm_ppo) echo "--num-envs 40 --n-steps 125 --batch-size 1250 --eval-freq 5" ;;
    exact_likelihood_pg) echo "--num-envs 10 --n-steps 100 --batch-size 250 --hutchinson-probes 2 --sde-method euler --eval-freq 5" ;;
    drwr) echo "--num-envs 10 --n-steps 500 --eval-freq 5" ;;
    *) echo "--num-envs 10 --n-steps 100 --eval-freq 25" ;;
  esac
}

for seed in $SEEDS; do
  for task in $TASKS; do
    for algo in $ALGOS; do
      run="$OUT/$(echo "$task" | tr 'A-Z' 'a-z')__${algo}__${seed}"
      cmd="$PYTHON cleandppo/$algo.py --env-id $task --seed $seed --total-timesteps $BUDGET --eval-episodes 10 $(sizes "$algo") --run-dir $run"
      echo "+ $cmd"
      [ "${DRY_RUN:-0}" = 1 ] && continue
      if [ -f "$run/summary.json" ]; then echo "  (done already: $run/summary.json)"; continue; fi
      if [ -f "$run/checkpoint_last.pt" ]; then  # an interrupted run: resume it in place
        cmd="$cmd --checkpoint $run/checkpoint_last.pt"
        echo "  (resuming $run/checkpoint_last.pt)"
      fi
      mkdir -p "$run"
      $cmd >> "$run/stdout.log" 2>&1 || echo "  FAILED (exit $?): $(tail -n 1 "$run/stdout.log")"
    done
  done
done
[ "${DRY_RUN:-0}" = 1 ] || $PYTHON scripts/summarize.py "$OUT"
