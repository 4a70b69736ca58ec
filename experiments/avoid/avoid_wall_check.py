"""What-if for the M1 collapse (README.md here): DPPO fine-tuning with the arm's desired x kept in the rewarded band.

    python experiments/avoid/avoid_wall_check.py --env-id avoid-m1 --seed 0 --total-timesteps 100000 \
        --run-dir runs/avoid/wall/...

Our Avoid model, like D3IL's code, lets the desired position go anywhere in the plane. Here every action is cut so
that the desired x stays within the rewarded band avoid.BAND_X = [0.2, 0.8] (a wall at the band's edges; the table
itself reaches from x = -0.09 to 0.89); the reward, the data, the policy and every dppo.py flag are unchanged. A
diagnostic, not a task variant: it patches avoid.step_batch. (Its run dirs and figure keep the older name
"on-table".)
"""

import numpy as np

from cleandppo import arguments, avoid, dppo, runs

free_step = avoid.step_batch


def step_in_band(state: dict, actions: np.ndarray):
    """avoid.step_batch with the x displacement cut so that the new desired x lies in avoid.BAND_X."""
    actions = np.array(actions, dtype=np.float64)
    target_x = np.clip(state["desired"][:, 0] + actions[:, 0], *avoid.BAND_X)
    actions[:, 0] = target_x - state["desired"][:, 0]
    return free_step(state, actions)


if __name__ == "__main__":
    avoid.step_batch = step_in_band  # AvoidVectorEnv.step looks the function up in the module at every call
    runs.run_cli(dppo.main, arguments.parse_args(dppo.Args, dppo.task_defaults))
