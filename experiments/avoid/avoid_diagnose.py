"""Where the episodes of Avoid checkpoints go (README.md here, M1 at 51 iterations): per checkpoint, from the
arm's paths of `avoid_study.rollout` (training noise, as every Avoid evaluation), the share of episodes that hit a
pillar and that leave the rewarded x band 0.2-0.8 (with the median step it first happens), the median x where the
arm first reaches row 3 (y = 0.26; mode 5 = left of 0.35, the rewarded gap), and the share that ends beyond the
goal line.

    python experiments/avoid/avoid_diagnose.py \
        runs/avoid/a7/m1__{dppo-k10,dppo-k1,gaussian,gmm}__s{0,1,2}/checkpoint_last.pt
"""

import argparse
import os
import sys

import numpy as np
import torch

from cleandppo import avoid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import avoid_study  # noqa: E402


def first(flags: np.ndarray) -> tuple[float, float]:
    """(share of episodes where `flags` (episodes, steps) is ever set, median first step over those)."""
    hit = flags.any(1)
    return hit.mean(), float(np.median(flags.argmax(1)[hit])) if hit.any() else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for path in args.checkpoints:
        out = avoid_study.rollout(path, args.episodes, args.seed, "train")
        paths = out["paths"]  # (episodes, steps + 1, 2): the arm
        n, t, _ = paths.shape
        hit, hit_step = first(avoid.collides(paths.reshape(-1, 2)).reshape(n, t))
        off, off_step = first((paths[..., 0] < avoid.BAND_X[0]) | (paths[..., 0] > avoid.BAND_X[1]))
        row3 = paths[..., 1] >= 0.26
        x3 = np.where(row3.any(1), paths[np.arange(n), row3.argmax(1), 0], np.nan)
        name = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
        x3_median = np.nanmedian(x3) if np.isfinite(x3).any() else np.nan
        goal = np.mean(paths[:, -1, 1] > avoid.GOAL_Y)
        print(
            f"{name}: return {out['returns'].mean():.1f}, success {out['success'].mean():.2f}; "
            f"hit a pillar {hit:.2f} (step {hit_step:.0f}), left the band {off:.2f} (step {off_step:.0f}); "
            f"reach row 3 {np.isfinite(x3).mean():.2f}, at x {x3_median:.3f} "
            f"(left of 0.35: {np.mean(x3 < 0.35):.2f}); end beyond the goal line {goal:.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
