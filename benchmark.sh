#!/usr/bin/env bash
# The paper's comparison grid (algorithms x tasks x seeds): runs, a table of results, figures.
#
#   bash benchmark.sh                       # every algorithm, the three Gym tasks, seed 0, 1M env steps
#   ALGOS="dppo gaussian_ppo" TASKS=Hopper-v2 SEEDS="0 1 2" BUDGET=200000 bash benchmark.sh
#   WORKERS=2 bash benchmark.sh             # two runs at a time on this machine (one torch thread each)
#   SLURM=1 PARTITION=gpu GPUS=1 CPUS=4 TIME=1440 bash benchmark.sh   # one Slurm array task per run
#   DRY_RUN=1 bash benchmark.sh             # print the commands only
#
# Every algorithm fine-tunes its bundled pre-trained checkpoint for BUDGET environment steps.
# The per-iteration sizes below are the reduced ones our CPU measurements use (docs/benchmarks.md):
# 20k env steps per iteration for the PPO methods (paper: 80k), 4k for the off-policy ones (4 actions per query;
# transport: 8). SIZES_<algo>="--num-envs 4 --n-steps 25" replaces one algorithm's sizes. For paper-scale runs on
# a GPU, set BUDGET (paper Gym DPPO: 72M) and PAPER_SIZES=1 to use each script's own defaults (the paper's values).
# A BUDGET below one iteration of an algorithm stops here, in one line naming the minimum.
# Rerunning skips finished runs and resumes interrupted ones (from <run>/checkpoint_last.pt; one stopped before
# its first iteration ended starts again with --overwrite).
# Results: $OUT/<env>__<algo>__<seed>/ (summary.json, TensorBoard events, stdout.log); a table is printed at the end
# and the figures go to $OUT/figures (scripts/plot_results.py; PLOT_ARGS adds its options, e.g. --reference).
#
# Local: WORKERS=N runs N at a time, each with OMP_NUM_THREADS=1 (unless set); Ctrl-C stops them all, each leaving
# its last finished iteration to resume from.
# Slurm (scripts/slurm_grid.py, submitit): SLURM=1 submits the unfinished runs as one job array, one run per task,
# with PARTITION, GPUS (per task, default 0), CPUS (per task, default 1), TIME (minutes, default 1440),
# MEM_GB (default: the partition's), PARALLEL (array tasks at once, default all); logs and run dirs as locally
# (submitit's own logs in $OUT/slurm). WAIT=1 waits for the array, then prints the table and draws the figures;
# without it, rerun the same command once the array is done (finished runs are skipped, queued ones are not
# submitted twice).
set -uo pipefail
ALGOS=${ALGOS:-"dppo gaussian_ppo gmm_ppo drwr dawr dipo idql dql qsm exact_likelihood_pg"}
TASKS=${TASKS:-"Hopper-v2 Walker2D-v2 HalfCheetah-v2"}
SEEDS=${SEEDS:-"0"}
BUDGET=${BUDGET:-1000000}
OUT=${OUT:-runs/benchmark}
PYTHON=${PYTHON:-python}
WORKERS=${WORKERS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

sizes() {  # reduced per-iteration sizes for one algorithm
  [ "${PAPER_SIZES:-0}" = 1 ] && return
  local override="SIZES_$1"
  [ -n "${!override:-}" ] && { echo "${!override}"; return; }
  case "$1" in
    dppo) echo "--num-envs 40 --n-steps 125 --batch-size 12500 --eval-freq 5" ;;
    gaussian_ppo|gmm_ppo) echo "--num-envs 40 --n-steps 125 --batch-size 1250 --eval-freq 5" ;;
    exact_likelihood_pg)
      echo "--num-envs 10 --n-steps 100 --batch-size 250 --hutchinson-probes 2 --sde-method euler --eval-freq 5" ;;
    drwr) echo "--num-envs 10 --n-steps 500 --eval-freq 5" ;;
    *) echo "--num-envs 10 --n-steps 100 --eval-freq 25" ;;
  esac
}

flag_value() {  # flag_value FLAG DEFAULT ARGS...: the value after FLAG in ARGS, else DEFAULT
  local flag=$1 value=$2; shift 2
  while [ $# -gt 1 ]; do [ "$1" = "$flag" ] && value=$2; shift; done
  echo "$value"
}

# One iteration = --num-envs x --n-steps x --act-steps env steps (act steps: 4, transport 8; envs.ROBOMIMIC_TASKS).
# With PAPER_SIZES=1 the sizes are the scripts' own: each script checks its budget when it starts.
if [ "${PAPER_SIZES:-0}" != 1 ]; then
  need=0
  for task in $TASKS; do
    for algo in $ALGOS; do
      act=4; [ "$(echo "$task" | tr 'A-Z' 'a-z')" = transport ] && act=8
      set -- $(sizes "$algo")
      iteration=$(( $(flag_value --num-envs 0 "$@") * $(flag_value --n-steps 0 "$@") \
        * $(flag_value --act-steps $act "$@") ))
      [ "$iteration" -gt "$need" ] && { need=$iteration; largest="$algo on $task"; }
    done
  done
  if [ "$BUDGET" -lt "$need" ]; then
    echo "BUDGET=$BUDGET is below one iteration of $largest ($need env steps = --num-envs x --n-steps x act steps);" \
      "set BUDGET=$need or more" >&2
    exit 2
  fi
fi

run_one() {  # run_one RUN_DIR COMMAND: skip a finished run, resume an interrupted one, append to RUN_DIR/stdout.log
  local run=$1 cmd=$2
  if [ -f "$run/summary.json" ]; then echo "  (done already: $run/summary.json)"; return; fi
  if [ -f "$run/checkpoint_last.pt" ]; then  # an interrupted run: resume it in place
    cmd="$cmd --checkpoint $run/checkpoint_last.pt"
    echo "  (resuming $run/checkpoint_last.pt)"
  elif compgen -G "$run/events.out.tfevents.*" > /dev/null; then  # stopped before its first iteration ended
    cmd="$cmd --overwrite"
    echo "  (restarting $run: no iteration had finished)"
  fi
  mkdir -p "$run"
  $cmd >> "$run/stdout.log" 2>&1 || { echo "  FAILED (exit $?): $run: $(tail -n 1 "$run/stdout.log")"; return; }
  [ "$WORKERS" -gt 1 ] && echo "  (finished $run)"
}

set -m  # each run in its own process group: Ctrl-C reaches the script, which passes it on to every run
trap 'trap - INT TERM; for pid in $(jobs -p); do kill -INT -- "-$pid" 2>/dev/null; done; wait; exit 130' INT TERM
[ "${SLURM:-0}" = 1 ] && [ "${DRY_RUN:-0}" != 1 ] && { mkdir -p "$OUT/slurm"; : > "$OUT/slurm/grid.tsv"; }
for seed in $SEEDS; do
  for task in $TASKS; do
    for algo in $ALGOS; do
      run="$OUT/$(echo "$task" | tr 'A-Z' 'a-z')__${algo}__${seed}"
      cmd="$PYTHON cleandppo/$algo.py --env-id $task --seed $seed --total-timesteps $BUDGET --eval-episodes 10"
      cmd="$cmd $(sizes "$algo") --run-dir $run"
      while [ "$(jobs -rp | wc -l)" -ge "$WORKERS" ]; do wait -n; done  # a free worker
      echo "+ $cmd"
      [ "${DRY_RUN:-0}" = 1 ] && continue
      if [ "${SLURM:-0}" = 1 ]; then printf '%s\t%s\n' "$run" "$cmd" >> "$OUT/slurm/grid.tsv"; continue; fi
      run_one "$run" "$cmd" &
    done
  done
done
wait
[ "${DRY_RUN:-0}" = 1 ] && exit 0
if [ "${SLURM:-0}" = 1 ]; then
  $PYTHON scripts/slurm_grid.py "$OUT/slurm/grid.tsv" --partition "${PARTITION:-}" --gpus "${GPUS:-0}" \
    --cpus "${CPUS:-1}" --time "${TIME:-1440}" ${MEM_GB:+--mem-gb "$MEM_GB"} ${PARALLEL:+--parallel "$PARALLEL"} \
    $([ "${WAIT:-0}" = 1 ] && echo --wait) || exit $?
  [ "${WAIT:-0}" = 1 ] || exit 0
fi
$PYTHON scripts/summarize.py "$OUT"
$PYTHON scripts/plot_results.py "$OUT" --out "$OUT/figures" ${PLOT_ARGS:-} > "$OUT/figures.log" 2>&1 \
  && echo "figures: $OUT/figures (log: $OUT/figures.log)" || echo "figures FAILED: $(tail -n 1 "$OUT/figures.log")"
