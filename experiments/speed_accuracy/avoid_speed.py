"""Simulator speed of the Avoid task: env steps per second on one core, random actions.

    OMP_NUM_THREADS=1 python experiments/speed_accuracy/avoid_speed.py --num-envs 50 --seconds 5

Two paths: the batched numpy core (avoid.step_batch over all envs at once) and the path the training scripts
use (envs.make_vec_env, which returns avoid.AvoidVectorEnv; chunks of Ta = 4).
"""

import argparse
import time

import numpy as np

from cleandppo import avoid, envs


def timed(step, seconds: float) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += step()
    return n, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    E = args.num_envs

    state = avoid.new_state(E, avoid.START_XY)

    def core_step():
        avoid.step_batch(state, rng.uniform(-0.01, 0.01, (E, 2)))
        if state["t"][0] >= avoid.MAX_EPISODE_STEPS:
            state.update(avoid.new_state(E, avoid.START_XY))
        return E

    n, dt = timed(core_step, args.seconds)
    print(f"batched core, {E} envs: {n / dt:,.0f} env steps/s")

    vec = envs.make_vec_env("avoid-m2", E, 0, act_steps=4)
    vec.reset(seed=0)

    def vec_step():
        vec.step(rng.uniform(-1, 1, (E, 4, 2)))
        return 4 * E

    n, dt = timed(vec_step, args.seconds)
    print(f"envs.make_vec_env (AvoidVectorEnv, Ta = 4), {E} envs: {n / dt:,.0f} env steps/s")


if __name__ == "__main__":
    main()
