"""Memory of the image tasks' envs: this process's resident memory after building and resetting 1, 2, 4 and 8 envs
of an image task (each renders in its own OpenGL context) and then 4 of its state task, for comparison.

    OMP_NUM_THREADS=1 python experiments/robomimic_pixels/env_memory.py --env-id lift-img

The numbers are cumulative (every vector env is kept alive), so the increments are each group's cost.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from cleandppo import envs, robomimic_tasks  # noqa: E402


def resident_mb() -> int:
    """VmRSS of this process (Linux /proc/self/status), in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-id", default="lift-img")
    args = parser.parse_args()
    task = robomimic_tasks.robomimic_task(args.env_id)
    kept, before = [], resident_mb()
    print(f"process before any env: {before} MiB")
    for env_id, n in [(args.env_id, 1), (args.env_id, 1), (args.env_id, 2), (args.env_id, 4), (task, 4)]:
        vec = envs.make_vec_env(env_id, n, 0, 4, 1, None)
        vec.reset(seed=0)
        kept.append(vec)
        now = resident_mb()
        print(f"+{n} {env_id} env(s): {now} MiB in all, {(now - before) / n:.0f} MiB per env")
        before = now


if __name__ == "__main__":
    main()
