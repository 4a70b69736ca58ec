"""Print a markdown table of every summary.json under a folder: python scripts/summarize.py runs/benchmark"""

import glob
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "runs/benchmark"
rows = []
for path in sorted(glob.glob(os.path.join(root, "**", "summary.json"), recursive=True)):
    with open(path) as f:
        s = json.load(f)
    rows.append((s["env_id"], s["algo"], s["seed"], s["env_steps"], s.get("pretrained_eval_return"),
                 s.get("final_eval_return"), s.get("best_eval_return"), s.get("wall_time_s")))
print("| env | algo | seed | env steps | pre-trained eval | final eval | best eval | wall time (min) |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
for env, algo, seed, steps, pre, final, best, wall in rows:
    print(f"| {env} | {algo} | {seed} | {steps} | {fmt(pre)} | {fmt(final)} | {fmt(best)} | {fmt(wall and wall / 60)} |")
