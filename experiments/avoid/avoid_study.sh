#!/usr/bin/env bash
# The Avoid study of the paper (section 6; Fig. 9, 10, A7, 12) on 2 CPU cores: data, pre-training, the
# fine-tuning experiments and every figure of docs/avoid.md, in one script.
#
#   bash experiments/avoid/avoid_study.sh                 # all stages below, in order
#   bash experiments/avoid/avoid_study.sh a7 figures      # only some stages
#
# Stages: data, pretrain (remakes the bundled cleandppo/pretrained/avoid-m*-*.pt), a7 (Fig. A7: M1-M3,
# DPPO with K' = 1, 4, 10, Gaussian, GMM), gmmclamp (M2 GMM with our per-dimension log-prob; the
# Avoid default, in a7, is the official saturating one),
# wall (M1 DPPO with the desired x kept in the rewarded band 0.2-0.8), noise (Fig. 10 left: M2 with action noise from
# iteration 5), chunk (Fig. 10 right: M2 with Ta = 16),
# figures (Fig. 9, A7, 10, 12, the pre-training figure and a table of every run's summary).
# Knobs (environment variables):
#   ITERS=51        fine-tuning iterations (the official configs run 51; README.md here says what ran)
#   SEEDS="0 1 2"   seeds of every curve
#   WORKERS=2       runs at a time (one torch thread each)
#   RUNS=runs/avoid where the run directories go (<subset>__<method>__s<seed>; finished runs are skipped,
#                   interrupted ones resume from their checkpoint_last.pt)
#   KPRIMES="10 4 1" fine-tuned denoising steps K' of the DPPO curves (largest first: the longest runs start first)
#   SUBSETS="m2 m1 m3" data subsets of Fig. A7
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERS=${ITERS:-51}
SEEDS=${SEEDS:-"0 1 2"}
WORKERS=${WORKERS:-2}
RUNS=${RUNS:-runs/avoid}
KPRIMES=${KPRIMES:-"10 4 1"}
SUBSETS=${SUBSETS:-"m2 m1 m3"}
CKPT=cleandppo/pretrained
STUDY=experiments/avoid # this folder, from the repository root
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ITERS STUDY
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(data pretrain a7 gmmclamp wall noise chunk figures)
for s in "${stages[@]}"; do
  case "$s" in data | pretrain | a7 | gmmclamp | wall | noise | chunk | figures) ;; *)
    echo "error: unknown stage '$s'; use data, pretrain, a7, gmmclamp, wall, noise, chunk, figures" >&2
    exit 2
    ;;
  esac
done

# One fine-tuning run: run <dir> <script> <args...>. Skips a finished run, resumes an interrupted one.
run() {
  local dir=$1 script=$2
  shift 2
  if [ -f "$dir/summary.json" ]; then
    echo "[skip] $dir (finished)"
    return 0
  fi
  local resume=()
  if [ -f "$dir/checkpoint_last.pt" ]; then
    resume=(--checkpoint "$dir/checkpoint_last.pt")
  else
    rm -rf "$dir" # died before its first checkpoint: nothing to keep
  fi
  mkdir -p "$(dirname "$dir")"
  echo "[run] $dir"
  python "cleandppo/$script.py" "$@" "${resume[@]}" --run-dir "$dir" --save-freq 1000 >"$dir.log" 2>&1 ||
    { echo "[failed] $dir: see $dir.log" >&2; return 1; }
}
export -f run

# Jobs are lines "dir script args..."; run WORKERS at a time.
jobs_run() { xargs -P "$WORKERS" -L 1 bash -c 'run "$@"' _; }

# The methods of one curve set: method name, script, flags. Ta = 4 unless given.
methods() {
  local sub=$1 extra=$2
  for k in $KPRIMES; do
    echo "dppo-k$k dppo --env-id avoid-$sub --ft-denoising-steps $k $extra"
  done
  echo "gaussian gaussian_ppo --env-id avoid-$sub $extra"
  echo "gmm gmm_ppo --env-id avoid-$sub $extra"
}

for stage in "${stages[@]}"; do
  echo "=== stage $stage ($(date +%H:%M:%S))"
  case "$stage" in
  data)
    python scripts/make_avoid_data.py
    ;;
  pretrain)
    # paper D.8 recipe (batch 16, LR 1e-4, wd 1e-6) with the epochs of the scripts' Avoid tables
    for sub in m1 m2 m3; do
      for pair in "dppo diffusion" "gaussian_ppo gaussian" "gmm_ppo gmm"; do
        set -- $pair
        echo "$RUNS/pretrain/$sub-$2 $1 --env-id avoid-$sub --dataset avoid-$sub --pretrain-only"
      done
    done | xargs -P "$WORKERS" -L 1 bash -c 'd=$1; s=$2; shift 2; [ -f "$d/pretrained.pt" ] && exit 0;
      mkdir -p "$(dirname "$d")"; python "cleandppo/$s.py" "$@" --run-dir "$d" > "$d.log" 2>&1 || { echo "[failed] $d" >&2; exit 1; }' _
    for sub in m1 m2 m3; do
      for p in diffusion gaussian gmm; do
        cp "$RUNS/pretrain/$sub-$p/pretrained.pt" "$CKPT/avoid-$sub-$p-mlp.pt"
      done
    done
    ;;
  a7)
    for sub in $SUBSETS; do
      for seed in $SEEDS; do
        methods "$sub" "" | while read -r name script args; do
          echo "$RUNS/a7/${sub}__${name}__s$seed $script $args --seed $seed --total-timesteps $((ITERS * 5000))"
        done
      done
    done | jobs_run
    ;;
  gmmclamp)
    for seed in $SEEDS; do
      echo "$RUNS/a7x/m2__gmm-per-dim__s$seed gmm_ppo --env-id avoid-m2 --no-official-summed-logprob --seed $seed" \
        "--total-timesteps $((ITERS * 5000))"
    done | jobs_run
    ;;
  wall)
    for seed in $SEEDS; do
      d=$RUNS/wall/m1__dppo-k10-on-table__s$seed
      [ -f "$d/summary.json" ] && continue
      rm -rf "$d" && mkdir -p "$RUNS/wall"
      echo "$d $seed"
    done | xargs -P "$WORKERS" -L 1 bash -c 'python "$STUDY"/avoid_wall_check.py --env-id avoid-m1 --ft-denoising-steps 10 \
      --seed $1 --total-timesteps $((ITERS * 5000)) --save-freq 1000 --run-dir $0 > $0.log 2>&1 || echo "[failed] $0"'
    ;;
  noise)
    for seed in $SEEDS; do
      methods m2 "--train-action-noise 0.1 0.2" | while read -r name script args; do
        echo "$RUNS/noise/m2__${name}__s$seed $script $args --seed $seed --total-timesteps $((ITERS * 5000))"
      done
    done | jobs_run
    ;;
  chunk)
    # Ta = Tp = 16: own pre-trained policies (M2), 7 chunks = one 100-step episode per env and iteration
    for pair in "dppo diffusion" "gaussian_ppo gaussian" "gmm_ppo gmm"; do
      set -- $pair
      d=$RUNS/pretrain/m2-ta16-$2
      [ -f "$d/pretrained.pt" ] || python "cleandppo/$1.py" --env-id avoid-m2 --dataset avoid-m2 --pretrain-only \
        --horizon-steps 16 --act-steps 16 --run-dir "$d" >"$d.log" 2>&1 &
    done
    wait
    for seed in $SEEDS; do
      for k in $KPRIMES; do
        echo "$RUNS/chunk/m2-ta16__dppo-k${k}__s$seed dppo --env-id avoid-m2 --ft-denoising-steps $k" \
          "--checkpoint $RUNS/pretrain/m2-ta16-diffusion/pretrained.pt --horizon-steps 16 --act-steps 16 --n-steps 7" \
          "--batch-size $((7 * 50 * k / 2)) --seed $seed --total-timesteps $((ITERS * 7 * 16 * 50))"
      done
      for pair in "gaussian gaussian_ppo" "gmm gmm_ppo"; do
        set -- $pair
        echo "$RUNS/chunk/m2-ta16__${1}__s$seed $2 --env-id avoid-m2 --checkpoint $RUNS/pretrain/m2-ta16-$1/pretrained.pt" \
          "--horizon-steps 16 --act-steps 16 --n-steps 7 --batch-size 175 --seed $seed --total-timesteps $((ITERS * 7 * 16 * 50))"
      done
    done | jobs_run
    ;;
  figures)
    python "$STUDY"/avoid_study.py trajectories --out docs/figures/avoid_fig9.png --columns 3 \
      --checkpoints $CKPT/avoid-m{1,2,3}-{diffusion,gaussian,gmm}-mlp.pt \
      --titles {M1,M2,M3}\ {DPPO,Gaussian,GMM} | tee "$RUNS/fig9.txt"
    python "$STUDY"/avoid_study.py trajectories --out docs/figures/avoid_pretrained_eval.png --columns 3 --mode eval \
      --checkpoints $CKPT/avoid-m{1,2,3}-{diffusion,gaussian,gmm}-mlp.pt \
      --titles {M1,M2,M3}\ {diffusion,Gaussian,GMM}\ \(no\ noise\) | tee "$RUNS/pretrained_eval.txt"
    for exp in a7 noise chunk; do
      [ -d "$RUNS/$exp" ] || continue
      python "$STUDY"/avoid_study.py curves --runs "$RUNS/$exp" --out "docs/figures/avoid_$exp.png"
      python "$STUDY"/avoid_study.py curves --runs "$RUNS/$exp" --tag charts/success_rate \
        --out "docs/figures/avoid_${exp}_success.png"
    done
    [ -d "$RUNS/a7x" ] && python "$STUDY"/avoid_study.py curves --runs "$RUNS/a7x" "$RUNS/a7" \
      --only m2__gmm m2__dppo-k10 --out docs/figures/avoid_gmm_official_clamp.png
    [ -d "$RUNS/a7" ] && python "$STUDY"/avoid_study.py robustness --runs "$RUNS/a7" --subset m2 \
      --out docs/figures/avoid_fig12.png
    [ -d "$RUNS/a7" ] && python "$STUDY"/avoid_study.py trajectories --columns 3 --episodes 30 \
      --out docs/figures/avoid_m1_collapse.png --checkpoints "$RUNS"/a7/m1__{dppo-k10,gmm}__s{0,1,2}/checkpoint_last.pt
    [ -d "$RUNS/wall" ] && python "$STUDY"/avoid_study.py curves --runs "$RUNS/wall" "$RUNS/a7" --only m1__dppo-k10 \
      --out docs/figures/avoid_m1_on_table.png
    python "$STUDY"/avoid_study.py summaries --out docs/figures/avoid_runs.csv \
      --runs "$RUNS"/a7 "$RUNS"/a7x "$RUNS"/wall "$RUNS"/noise "$RUNS"/chunk
    ;;
  esac
done
echo "=== done ($(date +%H:%M:%S))"
