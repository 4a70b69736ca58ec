"""What-if for Fig. 10 left (README.md here): the action noise of --train-action-noise also enters the PPO
likelihood (the noisy action is stored as the action taken), instead of acting as environment noise only.

    python experiments/avoid/avoid_noise_logprob_check.py gaussian_ppo --env-id avoid-m2 --train-action-noise 0.1 0.2 \
        --seed 0 --total-timesteps 255000 --run-dir runs/avoid/noisex/m2__gaussian-noisy-logprob__s0

The scripts add the noise to a copy of the policy's chunk and store the chunk they sampled, so PPO sees the
noise only through the rewards. The paper does not say which; if its implementation stored the executed
(noisy) actions, a Gaussian or GMM policy with std 0.1 would see actions 1-2 std away from what it sampled in
its log-prob ratio. This adds the noise in place, to the sampled chunk itself (gaussian_ppo.py and gmm_ppo.py
execute a view of it), so the stored action is the noisy one; everything else is unchanged. A diagnostic, not
a task variant: it patches avoid.add_action_noise. (Not for dppo.py, whose likelihood is that of the denoising
chain it records.)
"""

import sys

import numpy as np

from cleandppo import arguments, avoid, gaussian_ppo, gmm_ppo, runs

SCRIPTS = {"gaussian_ppo": gaussian_ppo, "gmm_ppo": gmm_ppo}
add_noise = avoid.add_action_noise


def add_noise_in_place(actions: np.ndarray, *args, **kw) -> np.ndarray:
    """avoid.add_action_noise, written into `actions` (a view of the sampled chunk) and returned."""
    actions[...] = add_noise(actions, *args, **kw)
    return actions


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in SCRIPTS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(SCRIPTS)}}} <that script's flags>")
    script = SCRIPTS[sys.argv.pop(1)]
    avoid.add_action_noise = add_noise_in_place  # the scripts look it up in the module at every call
    runs.run_cli(script.main, arguments.parse_args(script.Args, script.task_defaults))
