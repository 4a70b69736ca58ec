"""Print a markdown table of every run (a folder with summary.json) under a folder.

    python scripts/summarize.py runs/benchmark                # final numbers of each run
    python scripts/summarize.py runs/benchmark --at 200000    # the in-run evaluation at <= 200k env steps instead

Columns: the in-run evaluations (TensorBoard `eval/episodic_return`: the first point is the pre-trained policy),
wall time per 100k env steps (the run's wall time, evaluations included, over its env steps), and peak memory
(`charts/peak_memory_mb`, where the script logs it).
"""

import argparse
import glob
import json
import logging
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# A resumed run's event files hold the steps its killed segment logged after its last checkpoint; reading them,
# TensorBoard drops those (as it should) with an "out of order event" warning per run: not part of the table.
logging.getLogger("tensorboard").setLevel(logging.ERROR)

parser = argparse.ArgumentParser()
parser.add_argument("root", nargs="?", default="runs/benchmark")
parser.add_argument("--at", type=int, default=None, help="report the last evaluation at or before this env step")
cli = parser.parse_args()


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


fmt = lambda x, f=".1f": "-" if x is None else format(x, f)  # noqa: E731
at = f"eval at {cli.at // 1000}k" if cli.at else "final eval"
print(
    f"| env | algo | seed | env steps | pre-trained eval | {at} | best eval | "
    "wall per 100k steps (min) | peak memory (MB) |"
)
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for path in sorted(glob.glob(os.path.join(cli.root, "**", "summary.json"), recursive=True)):
    with open(path) as f:
        s = json.load(f)
    acc = EventAccumulator(os.path.dirname(path)).Reload()
    evals = [(step, v) for step, v in scalars(acc, "eval/episodic_return") if cli.at is None or step <= cli.at]
    pre, last = (evals[0][1], evals[-1][1]) if evals else (s.get("pretrained_eval_return"), s.get("final_eval_return"))
    best = max(v for _, v in evals) if evals else s.get("best_eval_return")
    mem = max((v for _, v in scalars(acc, "charts/peak_memory_mb")), default=None)
    wall = s["wall_time_s"] / 60 * 100_000 / s["env_steps"] if s.get("env_steps") else None
    steps = min(s["env_steps"], cli.at) if cli.at else s["env_steps"]
    print(
        f"| {s['env_id']} | {s['algo']} | {s['seed']} | {steps} | {fmt(pre)} | {fmt(last)} | {fmt(best)} | "
        f"{fmt(wall, '.2f')} | {fmt(mem, '.0f')} |"
    )
