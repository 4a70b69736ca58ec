"""Wall time per fine-tuning iteration of pixel_comparison.sh's runs (this folder), next to the paper's Table A4.

    python experiments/robomimic_pixels/iteration_times.py --runs runs/robomimic_lift_pixels --out times.csv

An iteration's time is what the loop logs for it (TensorBoard time/rollout_s + time/update_s; the update's includes
the values, advantages and old log-probs; evaluations are not counted). The CSV holds every iteration of every run
(algo, seed, iteration, rollout_s, update_s, iteration_s, and the update's approx_kl: its last minibatch's, above
the target KL of 1 where the update stopped early); the printed table gives each algorithm's median over
them and the ratio DPPO / Gaussian beside Table A4's (the paper's GPU runs with 50 envs: there rendering takes much
of the time, so the ratio is smaller than on a CPU, where the ViT passes of DPPO's K' denoising steps dominate).
"""

import argparse
import csv
import glob
import os

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ALGOS = ("dppo", "gaussian", "gaussian-lr1e-5")  # the variant's updates are rarely stopped early by the target KL
# paper Table A4: wall-clock time of fine-tuning from pixels, Gaussian-ViT-MLP and DPPO-ViT-MLP
TABLE_A4 = {"lift": (153.6, 194.9), "can": (173.1, 202.5), "square": (277.0, 328.5), "transport": (770.0, 871.3)}


def iteration_times(run_dir):
    """[(iteration, rollout_s, update_s, approx_kl)] of one run, from its TensorBoard scalars."""
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0}).Reload()
    rollout, update = acc.Scalars("time/rollout_s"), acc.Scalars("time/update_s")
    kl = {e.step: e.value for e in acc.Scalars("losses/approx_kl")}  # none in a critic warm-up iteration
    return [
        (i + 1, r.value, u.value, kl.get(r.step, np.nan)) for i, (r, u) in enumerate(zip(rollout, update, strict=True))
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="pixel_comparison.sh's RUNS")
    parser.add_argument("--out", required=True, help="the CSV to write")
    parser.add_argument("--task", default="lift", choices=sorted(TABLE_A4), help="the Table A4 column to compare with")
    args = parser.parse_args()
    rows = []
    for algo in ALGOS:
        for run in sorted(glob.glob(os.path.join(args.runs, f"{algo}__s*"))):
            if run.endswith("_final50") or not os.path.isfile(os.path.join(run, "summary.json")):
                continue
            seed = int(run.rsplit("__s", 1)[1])
            rows += [(algo, seed, i, r, u, r + u, kl) for i, r, u, kl in iteration_times(run)]
    if not rows:
        raise SystemExit(f"error: no finished run (<algo>__s<seed>/summary.json) in {args.runs}; run the compare stage")
    with open(args.out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["algo", "seed", "iteration", "rollout_s", "update_s", "iteration_s", "approx_kl"])
        writer.writerows(rows)
    median = {}
    print("| algorithm | iterations | rollout s | update s | iteration s |\n| --- | --- | --- | --- | --- |")
    for algo in ALGOS:
        mine = np.array([row[3:6] for row in rows if row[0] == algo])
        if len(mine):
            median[algo] = np.median(mine, axis=0)
            cells = " | ".join(f"{v:.1f}" for v in median[algo])
            print(f"| {algo} | {len(mine)} | {cells} |")
    gaussian, dppo = TABLE_A4[args.task]
    for base in ALGOS[1:]:
        if "dppo" in median and base in median:
            ours = median["dppo"][2] / median[base][2]
            print(f"DPPO / {base} per iteration: {ours:.2f} here; Table A4 ({args.task}): {dppo / gaussian:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
