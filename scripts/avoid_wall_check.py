"""What-if for the M1 collapse of docs/avoid.md: DPPO fine-tuning with the arm's desired position kept on the table.

    python scripts/avoid_wall_check.py --env-id avoid-m1 --seed 0 --total-timesteps 100000 --run-dir runs/avoid/wall/...

Our Avoid model lets the desired position go anywhere in the plane. Here every action is cut so that the desired x
stays within the table, [0.2, 0.8] (an arm that cannot be commanded off the table); the reward, the data, the
policy and every dppo.py flag are unchanged. A diagnostic, not a task variant: it patches avoid.step_batch.
"""

import sys

import numpy as np
import tyro

from cleandppo import avoid, dppo

free_step = avoid.step_batch


def step_on_table(state: dict, actions: np.ndarray):
    """avoid.step_batch with the x displacement cut so that the new desired x lies in avoid.TABLE_X."""
    actions = np.array(actions, dtype=np.float64)
    target_x = np.clip(state["desired"][:, 0] + actions[:, 0], *avoid.TABLE_X)
    actions[:, 0] = target_x - state["desired"][:, 0]
    return free_step(state, actions)


if __name__ == "__main__":
    avoid.step_batch = step_on_table  # AvoidVectorEnv.step looks the function up in the module at every call
    argv = sys.argv[1:]
    dppo.main(tyro.cli(dppo.Args, args=argv), argv)
