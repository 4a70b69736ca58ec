"""Simulation speed of the robomimic tasks: raw robosuite steps/s and steps/s inside the rollout loop.

raw:     one robosuite env (no wrappers), random actions in [-1, 1], `--steps` control steps (20 Hz).
rollout: cleandppo's rollout path, envs.make_vec_env (SyncVectorEnv of ChunkedEnv, same-step
         autoreset) with `--num-envs` envs and the task's act_steps, random normalized chunks;
         counts executed env steps (info["env_steps"]); env construction is timed separately.
Also: time to the first env (robosuite import, numba compilation, model build) and resident
memory per env of the vector env.

    python experiments/speed_accuracy/robosuite_speed.py --task lift --steps 600 --num-envs 4
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from cleandppo import envs, robomimic_tasks


def rss_mb() -> float:
    """Resident memory of this process now (Linux), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def raw_speed(task: str, steps: int, seed: int) -> tuple[float, float, float]:
    """(steps/s, reset/s, seconds to the first env) of the bare robosuite env."""
    start = time.perf_counter()
    env = robomimic_tasks.make_robomimic_env(task)
    env.reset(seed=seed)
    first = time.perf_counter() - start
    rs = env.rs_env
    rng = np.random.default_rng(seed)
    low, high = rs.action_spec
    rs.step(np.zeros_like(low))  # first step compiles numba kernels
    start = time.perf_counter()
    for _ in range(steps):
        rs.step(rng.uniform(low, high))
    step_rate = steps / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(20):
        rs.reset()
    reset_rate = 20 / (time.perf_counter() - start)
    env.close()
    return step_rate, reset_rate, first


def rollout_speed(task: str, steps: int, num_envs: int, seed: int) -> tuple[float, float, float]:
    """(env steps/s through make_vec_env, construction seconds per env, MB per env)."""
    act_steps = envs.ROBOMIMIC_TASKS[task]["act_steps"]
    action_dim = envs.ROBOMIMIC_TASKS[task]["action_dim"]
    memory, start = rss_mb(), time.perf_counter()
    vec = envs.make_vec_env(task, num_envs, seed, act_steps=act_steps)
    vec.reset(seed=seed)
    build = (time.perf_counter() - start) / num_envs
    rng = np.random.default_rng(seed)
    vec.step(np.zeros((num_envs, act_steps, action_dim)))
    done_steps, start = 0, time.perf_counter()
    while done_steps < steps:
        _, _, _, _, infos = vec.step(rng.uniform(-1, 1, (num_envs, act_steps, action_dim)))
        done_steps += int(np.sum(infos["env_steps"]))
    rate = done_steps / (time.perf_counter() - start)
    memory = (rss_mb() - memory) / num_envs
    vec.close()
    return rate, build, memory


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="lift", help="lift, can, square or transport")
    parser.add_argument("--steps", type=int, default=600, help="env steps timed in each measurement")
    parser.add_argument("--num-envs", type=int, default=4, help="envs in the vector env of the rollout measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not envs.is_robomimic(args.task):
        envs.fail(f"unknown --task {args.task!r}; use one of {', '.join(envs.ROBOMIMIC_TASKS)}")
    task = envs.resolve_env_id(args.task)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}")
    raw, resets, first = raw_speed(task, args.steps, args.seed)
    print(
        f"{task}: raw robosuite {raw:.0f} steps/s, {resets:.0f} resets/s (hard_reset off); "
        f"{first:.1f} s to the first env (import, numba, build)"
    )
    rate, build, memory = rollout_speed(task, args.steps, args.num_envs, args.seed)
    print(
        f"{task}: make_vec_env rollout ({args.num_envs} envs, act_steps {envs.ROBOMIMIC_TASKS[task]['act_steps']}) "
        f"{rate:.0f} env steps/s; {build:.1f} s and {memory:.0f} MB per env"
    )


if __name__ == "__main__":
    main()
