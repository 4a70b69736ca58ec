#!/usr/bin/env bash
# The Avoid study of the paper (section 6; Fig. 9, 10, A7, 12) on 2 CPU cores: data, pre-training, the
# fine-tuning experiments and every figure of docs/avoid.md, in one script.
#
#   bash experiments/avoid/avoid_study.sh                 # all stages below, in order
#   bash experiments/avoid/avoid_study.sh a7 figures      # only some stages
#   METHODS=dppo bash experiments/avoid/avoid_study.sh a7 noise &   # two processes side by side: DPPO runs in one,
#   METHODS="gaussian gmm gmm-ours" bash experiments/avoid/avoid_study.sh pretrain a7 noise   # the rest in the other
#
# Stages: data, pretrain (Gaussian and GMM on M1-M3 with the official recipe, into $RUNS/pretrain; the bundled
# diffusion policies are kept unless PRETRAIN_DIFFUSION=1), a7 (Fig. A7: M1-M3, DPPO with K' = 10, 4, 1, Gaussian,
# GMM as the official code scores it, our per-dimension GMM beside it), noise (Fig. 10 left: M2 with the paper's
# action noise U[0.1, 0.2] from iteration 5), chunk (Fig. 10 right: M2 with Ta = 8 and 16, own pre-trained
# policies; Ta = 4 is a7's M2), noisesym (ablation: the noise of `noise` read as symmetric, U[-0.2, 0.2]),
# d3il (only when named; M1 DPPO K' = 10 pre-trained on D3IL's own human demonstrations: D3IL_DIR=<allenzren/d3il's
# data/avoiding/data> holds them; not in this repository), wall (what-if: M1 DPPO with the desired x kept in the rewarded band 0.2-0.8), figures (Fig. 9, A7, 10, 12 and a
# table of every run's summary). bundle copies the pre-trained Gaussian and GMM policies to cleandppo/pretrained.
# Knobs (environment variables):
#   ITERS=51        fine-tuning iterations (the official configs run 51; README.md here says what ran)
#   SEEDS="0 1 2 3 4"   seeds of every curve
#   WORKERS=2       runs at a time (one torch thread each)
#   RUNS=runs/avoid where the run directories go (<subset>__<method>__s<seed>; finished runs are skipped,
#                   interrupted ones resume from their checkpoint_last.pt)
#   METHODS="dppo gaussian gmm gmm-ours"  methods to run (gmm-ours: gmm_ppo.py --no-official-summed-logprob)
#   KPRIMES="10 4 1" fine-tuned denoising steps K' of the DPPO curves (largest first: the longest runs start first)
#   SUBSETS="m2 m1 m3" data subsets of Fig. A7
#   TAS="8 16"      action chunk sizes Ta = Tp of the chunk stage (DPPO with K' = 10, the official Avoid value)
#   D3IL_DIR=       D3IL's per-episode pickles, for the d3il stage
#   PRETRAIN_DIFFUSION=0  1: the pretrain stage also remakes the diffusion policies (300 epochs each)
set -euo pipefail
cd "$(dirname "$0")/../.."
ITERS=${ITERS:-51}
SEEDS=${SEEDS:-"0 1 2 3 4"}
WORKERS=${WORKERS:-2}
RUNS=${RUNS:-runs/avoid}
KPRIMES=${KPRIMES:-"10 4 1"}
SUBSETS=${SUBSETS:-"m2 m1 m3"}
METHODS=${METHODS:-"dppo gaussian gmm gmm-ours"}
TAS=${TAS:-"8 16"}
PRETRAIN_DIFFUSION=${PRETRAIN_DIFFUSION:-0}
D3IL_DIR=${D3IL_DIR:-}
CKPT=cleandppo/pretrained
STUDY=experiments/avoid # this folder, from the repository root
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 ITERS STUDY
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(data pretrain a7 noise chunk noisesym wall figures)
for s in "${stages[@]}"; do
  case "$s" in data | pretrain | bundle | a7 | noise | chunk | noisesym | d3il | wall | figures) ;; *)
    echo "error: unknown stage '$s'; use data, pretrain, bundle, a7, noise, chunk, noisesym, d3il, wall, figures" >&2
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

has() { [[ " $METHODS " == *" $1 "* ]]; }

# The methods of one curve set: method name, script, flags. Ta = 4; the Gaussian and GMM policies are the
# pretrain stage's (official recipe), the diffusion policies the bundled ones.
methods() {
  local sub=$1 extra=$2
  if has dppo; then
    for k in $KPRIMES; do
      echo "dppo-k$k dppo --env-id avoid-$sub --ft-denoising-steps $k $extra"
    done
  fi
  has gaussian && echo "gaussian gaussian_ppo --env-id avoid-$sub --checkpoint $RUNS/pretrain/$sub-gaussian/pretrained.pt $extra"
  has gmm && echo "gmm gmm_ppo --env-id avoid-$sub --checkpoint $RUNS/pretrain/$sub-gmm/pretrained.pt $extra"
  has gmm-ours && echo "gmm-ours gmm_ppo --env-id avoid-$sub --checkpoint $RUNS/pretrain/$sub-gmm/pretrained.pt" \
    "--no-official-summed-logprob $extra"
  return 0
}

# One pre-training run: pretrain_run <dir> <script> <args...> (skipped when its pretrained.pt exists).
pretrain_run() {
  local dir=$1 script=$2
  shift 2
  [ -f "$dir/pretrained.pt" ] && return 0
  rm -rf "$dir" && mkdir -p "$(dirname "$dir")"
  echo "[pretrain] $dir"
  python "cleandppo/$script.py" "$@" --pretrain-only --run-dir "$dir" >"$dir.log" 2>&1 ||
    { echo "[failed] $dir: see $dir.log" >&2; return 1; }
}
export -f pretrain_run

for stage in "${stages[@]}"; do
  echo "=== stage $stage ($(date +%H:%M:%S))"
  case "$stage" in
  data)
    python scripts/make_avoid_data.py
    ;;
  pretrain)
    # paper D.8 recipe (batch 16, LR 1e-4 cosine-decayed to 1e-5, wd 1e-6, EMA 0.995; the scripts' Avoid tables)
    for sub in m1 m2 m3; do
      has gaussian && echo "$RUNS/pretrain/$sub-gaussian gaussian_ppo --env-id avoid-$sub --dataset avoid-$sub"
      { has gmm || has gmm-ours; } && echo "$RUNS/pretrain/$sub-gmm gmm_ppo --env-id avoid-$sub --dataset avoid-$sub"
      [ "$PRETRAIN_DIFFUSION" = 1 ] && echo "$RUNS/pretrain/$sub-diffusion dppo --env-id avoid-$sub --dataset avoid-$sub"
      :
    done | xargs -P "$WORKERS" -L 1 bash -c 'pretrain_run "$@"' _
    ;;
  bundle)
    for sub in m1 m2 m3; do
      for p in diffusion gaussian gmm; do
        [ -f "$RUNS/pretrain/$sub-$p/pretrained.pt" ] && cp "$RUNS/pretrain/$sub-$p/pretrained.pt" "$CKPT/avoid-$sub-$p-mlp.pt"
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
  d3il)
    # Is M1's collapse our scripted demonstrations' doing? The same fine-tuning from a diffusion policy pre-trained
    # (300 epochs, the Avoid recipe) on D3IL's 8 human M1 demonstrations.
    [ -n "$D3IL_DIR" ] || { echo "error: set D3IL_DIR to D3IL's data/avoiding/data directory (*.pkl)" >&2; exit 2; }
    python scripts/make_avoid_data.py --d3il-dir "$D3IL_DIR"
    pretrain_run "$RUNS/pretrain/m1-d3il-diffusion" dppo --env-id avoid-m1 --dataset avoid-d3il-m1
    for seed in $SEEDS; do
      echo "$RUNS/d3il/m1__dppo-k10-d3il__s$seed dppo --env-id avoid-m1 --ft-denoising-steps 10" \
        "--checkpoint $RUNS/pretrain/m1-d3il-diffusion/pretrained.pt --seed $seed --total-timesteps $((ITERS * 5000))"
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
  noisesym)
    for seed in $SEEDS; do
      methods m2 "--train-action-noise 0.1 0.2 --train-action-noise-mode symmetric" | while read -r name script args; do
        echo "$RUNS/noisesym/m2__${name}__s$seed $script $args --seed $seed --total-timesteps $((ITERS * 5000))"
      done
    done | jobs_run
    ;;
  chunk)
    # Ta = Tp in TAS: own pre-trained policies (M2); ceil(100 / Ta) chunks = one 100-step episode per env and iteration
    for ta in $TAS; do
      n=$(((100 + ta - 1) / ta))
      has dppo && echo "$RUNS/pretrain/m2-ta$ta-diffusion dppo --env-id avoid-m2 --dataset avoid-m2 --horizon-steps $ta --act-steps $ta"
      has gaussian && echo "$RUNS/pretrain/m2-ta$ta-gaussian gaussian_ppo --env-id avoid-m2 --dataset avoid-m2" \
        "--horizon-steps $ta --act-steps $ta"
      { has gmm || has gmm-ours; } && echo "$RUNS/pretrain/m2-ta$ta-gmm gmm_ppo --env-id avoid-m2 --dataset avoid-m2" \
        "--horizon-steps $ta --act-steps $ta"
      :
    done | xargs -P "$WORKERS" -L 1 bash -c 'pretrain_run "$@"' _
    for seed in $SEEDS; do
      for ta in $TAS; do
        n=$(((100 + ta - 1) / ta))
        common="--env-id avoid-m2 --horizon-steps $ta --act-steps $ta --n-steps $n --seed $seed"
        common="$common --total-timesteps $((ITERS * n * ta * 50))"
        has dppo && echo "$RUNS/chunk/m2-ta${ta}__dppo-k10__s$seed dppo $common --ft-denoising-steps 10" \
          "--checkpoint $RUNS/pretrain/m2-ta$ta-diffusion/pretrained.pt --batch-size $((n * 50 * 10 / 2))"
        has gaussian && echo "$RUNS/chunk/m2-ta${ta}__gaussian__s$seed gaussian_ppo $common" \
          "--checkpoint $RUNS/pretrain/m2-ta$ta-gaussian/pretrained.pt --batch-size $((n * 50 / 2))"
        has gmm && echo "$RUNS/chunk/m2-ta${ta}__gmm__s$seed gmm_ppo $common" \
          "--checkpoint $RUNS/pretrain/m2-ta$ta-gmm/pretrained.pt --batch-size $((n * 50 / 2))"
        has gmm-ours && echo "$RUNS/chunk/m2-ta${ta}__gmm-ours__s$seed gmm_ppo $common --no-official-summed-logprob" \
          "--checkpoint $RUNS/pretrain/m2-ta$ta-gmm/pretrained.pt --batch-size $((n * 50 / 2))"
        :
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
    [ -d "$RUNS/a7" ] && python "$STUDY"/avoid_study.py curves --runs "$RUNS/a7" \
      --only m2__gmm m2__gmm-ours m2__dppo-k10 --out docs/figures/avoid_gmm_official_clamp.png
    [ -d "$RUNS/a7" ] && python "$STUDY"/avoid_study.py robustness --runs "$RUNS/a7" --subset m2 \
      --out docs/figures/avoid_fig12.png
    [ -d "$RUNS/a7" ] && python "$STUDY"/avoid_study.py trajectories --columns 3 --episodes 30 \
      --out docs/figures/avoid_m1_collapse.png --checkpoints "$RUNS"/a7/m1__{dppo-k10,gmm}__s{0,1,2}/checkpoint_last.pt
    [ -d "$RUNS/wall" ] && python "$STUDY"/avoid_study.py curves --runs "$RUNS/wall" "$RUNS/a7" --only m1__dppo-k10 \
      --out docs/figures/avoid_m1_on_table.png
    python "$STUDY"/avoid_study.py summaries --out docs/figures/avoid_runs.csv \
      --runs "$RUNS"/a7 "$RUNS"/noise "$RUNS"/chunk "$RUNS"/noisesym "$RUNS"/wall
    ;;
  esac
done
echo "=== done ($(date +%H:%M:%S))"
