#!/usr/bin/env bash
# Make a D4RL-format "medium" dataset for one Gym task, here, without D4RL's files:
#   1. train a Gaussian behaviour policy from scratch with PPO until the stochastic policy's mean
#      return over its last 50 training episodes reaches about one third of D4RL's expert return;
#   2. roll out that stochastic policy and record at least 200k transitions (whole episodes).
# Usage: bash scripts/make_dataset.sh Hopper-v2|Walker2D-v2|HalfCheetah-v2 [seed]
# Output: $CLEANDPPO_DATA (default ~/.cache/cleandppo/datasets)/<task>-medium-v2.hdf5, which
# `--dataset <task>-medium-v2` then finds. Budget: at most 2-3M env steps of PPO (CPU: 0.5-2 h).
set -euo pipefail
env_id=${1:?usage: make_dataset.sh ENV_ID [SEED]}
seed=${2:-0}
case "$env_id" in
  Hopper-v2) target=1100; budget=2000000; name=hopper ;;          # D4RL expert 3234
  Walker2D-v2) target=1550; budget=2000000; name=walker2d ;;      # D4RL expert 4592
  HalfCheetah-v2) target=4050; budget=3000000; name=halfcheetah ;; # D4RL expert 12135
  *) echo "error: unknown env id $env_id; use Hopper-v2, Walker2D-v2 or HalfCheetah-v2" >&2; exit 2 ;;
esac
data_dir=${CLEANDPPO_DATA:-$HOME/.cache/cleandppo/datasets}
run=runs/behaviour-$name-$seed
if [ ! -f "$run/summary.json" ]; then  # a finished behaviour run is reused
  python cleandppo/gaussian_ppo.py --env-id "$env_id" --seed "$seed" --from-scratch --total-timesteps "$budget" \
    --target-return "$target" --eval-freq 10 --eval-episodes 10 --run-dir "$run"
fi
python cleandppo/gaussian_ppo.py --env-id "$env_id" --seed "$seed" --checkpoint "$run/checkpoint_last.pt" \
  --record-dataset "$data_dir/$name-medium-v2.hdf5" --record-transitions 200000 --num-envs 10 \
  --horizon-steps 1 --act-steps 1 --run-dir "$run/record" --overwrite
