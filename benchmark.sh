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
# Every variable is checked before the first run (one line for each bad one, exit 2). The table and the figures are
# drawn from the runs that finished; the unfinished ones are listed after them and the exit status is 1.
#
# Slurm (scripts/slurm_grid.py, submitit): SLURM=1 submits the unfinished runs as one job array, one run per task,
# with PARTITION, GPUS (per task, default 0), CPUS (per task, default 1), TIME (minutes, default 1440),
# MEM_GB (default: the partition's), PARALLEL (array tasks at once, default all), ACCOUNT, QOS, CONSTRAINT,
# EXCLUDE, RESERVATION, SBATCH_ARGS (more sbatch options, e.g. "--mail-type=END --nice=10") and SETUP (shell lines
# each task runs first, one a line, e.g. "module load cuda/12.1" and "source $PWD/.venv/bin/activate"); logs and run
# dirs as locally (submitit's own logs in $OUT/slurm). The nodes must see this repository, OUT and the Python
# environment at the same paths as this machine (a shared file system). At its time limit a task gets USR2
# SIGNAL_DELAY_S seconds early (default 90), stops, and is requeued to resume from checkpoint_last.pt, at most
# MAX_TIMEOUTS times (default 3). WAIT=1 waits for the array, then prints the table and draws the figures; without
# it, the command submits, draws what has finished so far and returns: rerun it once the array is done (finished
# runs are skipped, queued ones are not submitted twice) for the whole table.
set -uo pipefail
ALGOS=${ALGOS:-"dppo gaussian_ppo gmm_ppo drwr dawr dipo idql dql qsm exact_likelihood_pg"}
TASKS=${TASKS:-"Hopper-v2 Walker2D-v2 HalfCheetah-v2"}
SEEDS=${SEEDS:-"0"}
BUDGET=${BUDGET:-1000000}
OUT=${OUT:-runs/benchmark}
PYTHON=${PYTHON:-python}
WORKERS=${WORKERS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ALL_ALGOS="dppo gaussian_ppo gmm_ppo drwr dawr dipo idql dql qsm exact_likelihood_pg"

# ---- the variables, checked before anything runs: one line for each bad one ----
bad=()
whole() { [[ $1 =~ ^[0-9]+$ ]]; }  # a whole number >= 0
at_least() { whole "${!1}" && [ "$((10#${!1}))" -ge "$2" ] || bad+=("$1=${!1} is not a whole number >= $2; e.g. $1=$3"); }
[ -n "${ALGOS// /}" ] || bad+=("ALGOS is empty; e.g. ALGOS=\"dppo gaussian_ppo\" (any of: $ALL_ALGOS)")
for algo in $ALGOS; do
  [[ " $ALL_ALGOS " == *" $algo "* ]] || bad+=("ALGOS: unknown algorithm '$algo'; choose from: $ALL_ALGOS")
done
[ -n "${TASKS// /}" ] || bad+=("TASKS is empty; e.g. TASKS=Hopper-v2")
[ -n "${SEEDS// /}" ] || bad+=("SEEDS is empty; e.g. SEEDS=\"0 1 2\"")
for seed in $SEEDS; do whole "$seed" || bad+=("SEEDS: '$seed' is not a whole number >= 0; e.g. SEEDS=\"0 1 2\""); done
at_least BUDGET 1 1000000
at_least WORKERS 1 2
for flag in SLURM WAIT DRY_RUN PAPER_SIZES; do
  [[ ${!flag:-0} =~ ^[01]$ ]] || bad+=("$flag=${!flag} must be 0 or 1; e.g. $flag=1")
done
if [ "${SLURM:-0}" = 1 ]; then
  GPUS=${GPUS:-0} CPUS=${CPUS:-1} TIME=${TIME:-1440} SIGNAL_DELAY_S=${SIGNAL_DELAY_S:-90} MAX_TIMEOUTS=${MAX_TIMEOUTS:-3}
  at_least GPUS 0 1; at_least CPUS 1 4; at_least TIME 1 1440; at_least SIGNAL_DELAY_S 0 90; at_least MAX_TIMEOUTS 0 3
  [ -z "${MEM_GB:-}" ] || at_least MEM_GB 1 32
  [ -z "${PARALLEL:-}" ] || at_least PARALLEL 1 8
fi
if [ -n "${TASKS// /}" ]; then  # the task ids, and that PYTHON has what the scripts import (scripts/check_tasks.py)
  out=$(GRID_PYTHON="$PYTHON" $PYTHON scripts/check_tasks.py "$TASKS" 2>&1)
  case $? in
    0) ;;
    3) while IFS= read -r line; do bad+=("$line"); done <<< "$out" ;;
    *) bad+=("PYTHON=$PYTHON cannot run scripts/check_tasks.py ($(tail -n 1 <<< "$out")); set PYTHON to the Python"\
" of this project's environment") ;;
  esac
fi
if [ ${#bad[@]} -gt 0 ]; then
  printf '%s\n' "${bad[@]}" >&2
  exit 2
fi

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
  elif compgen -G "$run/events.out.tfevents.*" > /dev/null && ! compgen -G "$run/checkpoint_*" > /dev/null; then
    cmd="$cmd --overwrite"  # stopped before its first iteration ended (numbered checkpoints only: the script names them)
    echo "  (restarting $run: no iteration had finished)"
  fi
  mkdir -p "$run"
  $cmd >> "$run/stdout.log" 2>&1 || { echo "  FAILED (exit $?): $run: $(tail -n 1 "$run/stdout.log")"; return; }
  [ "$WORKERS" -gt 1 ] && echo "  (finished $run)"
}

set -m  # each run in its own process group: Ctrl-C reaches the script, which passes it on to every run
trap 'trap - INT TERM; for pid in $(jobs -p); do kill -INT -- "-$pid" 2>/dev/null; done; wait; exit 130' INT TERM
[ "${SLURM:-0}" = 1 ] && [ "${DRY_RUN:-0}" != 1 ] && { mkdir -p "$OUT/slurm"; : > "$OUT/slurm/grid.tsv"; }
RUNS=()
for seed in $SEEDS; do
  for task in $TASKS; do
    for algo in $ALGOS; do
      run="$OUT/$(echo "$task" | tr 'A-Z' 'a-z')__${algo}__${seed}"
      cmd="$PYTHON cleandppo/$algo.py --env-id $task --seed $seed --total-timesteps $BUDGET --eval-episodes 10"
      cmd="$cmd $(sizes "$algo") --run-dir $run"
      RUNS+=("$run")
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
status=0
if [ "${SLURM:-0}" = 1 ]; then  # string options in --name=value form: a value may start with "-"
  $PYTHON scripts/slurm_grid.py "$OUT/slurm/grid.tsv" --partition="${PARTITION:-}" --gpus "$GPUS" --cpus "$CPUS" \
    --time "$TIME" ${MEM_GB:+--mem-gb "$MEM_GB"} ${PARALLEL:+--parallel "$PARALLEL"} --account="${ACCOUNT:-}" \
    --qos="${QOS:-}" --constraint="${CONSTRAINT:-}" --exclude="${EXCLUDE:-}" --reservation="${RESERVATION:-}" \
    --sbatch="${SBATCH_ARGS:-}" --setup="${SETUP:-}" --signal-delay "$SIGNAL_DELAY_S" --max-timeouts "$MAX_TIMEOUTS" \
    $([ "${WAIT:-0}" = 1 ] && echo --wait)
  status=$?
fi

# ---- the table and the figures from the runs that finished, then the unfinished ones ----
unfinished=()
for run in "${RUNS[@]}"; do [ -f "$run/summary.json" ] || unfinished+=("$run"); done
if [ ${#unfinished[@]} -lt ${#RUNS[@]} ]; then
  $PYTHON scripts/summarize.py "$OUT"
  $PYTHON scripts/plot_results.py "$OUT" --out "$OUT/figures" ${PLOT_ARGS:-} > "$OUT/figures.log" 2>&1 \
    && echo "figures: $OUT/figures (log: $OUT/figures.log)" || echo "figures FAILED: $(tail -n 1 "$OUT/figures.log")"
else
  echo "[grid] no run has finished: no table, no figures"
fi
if [ ${#unfinished[@]} -gt 0 ] && [ "${SLURM:-0}" = 1 ] && [ "${WAIT:-0}" != 1 ] && [ "$status" = 0 ]; then
  echo "[grid] ${#unfinished[@]} of ${#RUNS[@]} runs queued or running on Slurm: rerun this command once they end" \
    "(or with WAIT=1) for the whole table"
elif [ ${#unfinished[@]} -gt 0 ]; then
  echo "[grid] ${#unfinished[@]} of ${#RUNS[@]} runs unfinished (rerun the same command to resume them):"
  for run in "${unfinished[@]}"; do
    echo "  $run: $( [ -f "$run/stdout.log" ] && tail -n 1 "$run/stdout.log" || echo "no stdout.log")"
  done
  [ "$status" = 0 ] && status=1
fi
exit "$status"
