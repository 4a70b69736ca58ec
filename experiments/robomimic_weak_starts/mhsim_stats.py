"""The table row of docs/robomimic.md for an MH-like file (scripts/make_robomimic_demos.py --operators mh).

    python experiments/robomimic_weak_starts/mhsim_stats.py can-mhsim      # a dataset name (data dir) or a path

Prints demos, attempts (controller success rate), and per proficiency: demos (of attempts when some failed), mean
length (min-max) and demos with a regrasp; the total number of samples; the demos longer than an evaluation
episode and the worse operators' share of the samples. The generator's wall time is only in its
own output (its last line).
"""

import json
import sys

import h5py
import numpy as np

from cleandppo import envs

path = envs.resolve_dataset(sys.argv[1] if len(sys.argv) > 1 else "lift-mhsim")
with h5py.File(path, "r") as f:
    info = json.loads(f["data"].attrs["cleandppo_generator"])
    demos = [dict(f["data"][name].attrs) for name in f["data"]]
cells = []
for level in ("better", "okay", "worse"):
    mine = [d for d in demos if d["proficiency"] == level]
    lengths = np.array([d["num_samples"] for d in mine])
    tried = sum(op["attempts"] for name, op in info["operators"].items() if name.startswith(level))
    count = f"{len(mine)}" if tried == len(mine) else f"{len(mine)} (of {tried} attempts)"
    regrasps = sum(d["regrasps"] > 0 for d in mine)
    cells.append(f"{level} {count}, {lengths.mean():.0f} ({lengths.min()}-{lengths.max()}), {regrasps}")
print(f"command: {info['command']}")
print("| demos | attempts | per proficiency: demos, length mean (min-max), demos with a regrasp | steps |")
print(
    f"| {info['successes']} | {info['attempts']} ({info['success_rate']:.0%}) | {'; '.join(cells)} "
    f"| {sum(d['num_samples'] for d in demos):,} |"
)
limit = envs.ROBOMIMIC_TASKS[info["task"]]["max_episode_steps"]
worse = sum(d["num_samples"] for d in demos if d["proficiency"] == "worse") / sum(d["num_samples"] for d in demos)
print(f"demos longer than an evaluation episode ({limit} steps): {sum(d['num_samples'] > limit for d in demos)}")
print(f"the worse operators' share of the samples: {worse:.0%}")
