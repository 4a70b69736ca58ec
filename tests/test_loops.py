"""What the training loops do around the update rules, checked in short in-process runs (tiny settings, one or two
iterations): a time-out is bootstrapped, not treated as a failure, in every script. The vector env is wrapped so
that env 0 reports a time-out (truncated, not terminated) at a chosen vector step, with a marker as its pre-reset
observation; a spy on the script's own GAE / replay buffer then reads what the loop made of it."""

import sys

import numpy as np
import pytest
import torch

from cleandppo import dawr, dipo, dppo, dql, envs, exact_likelihood_pg, gaussian_ppo, gmm_ppo, idql, qsm
from conftest import TINY_DIFFUSION, run_main

torch.set_num_threads(1)
AT = 1  # the vector step at which env 0 times out


class ForcedTimeout:
    """Wraps envs.make_vec_env: at vector step AT env 0 is truncated (not terminated) with `marker` as its final
    observation; the raw rewards of every step are recorded. Evaluation envs are not wrapped."""

    def __init__(self, monkeypatch):
        self.real, self.rewards, self.marker = envs.make_vec_env, [], None
        monkeypatch.setattr(envs, "make_vec_env", self.make)

    def make(self, *args, **kwargs):
        vec = self.real(*args, **kwargs)
        if sys._getframe(1).f_code.co_name == "run_episodes":  # evaluation: left alone
            return vec
        real_step = vec.step

        def step(actions):
            obs, reward, term, trunc, infos = real_step(actions)
            if len(self.rewards) == AT:
                term, trunc, infos = np.array(term), np.array(trunc), dict(infos)
                term[0], trunc[0] = False, True
                self.marker = np.linspace(-0.5, 0.5, obs[0].size, dtype=np.float32).reshape(obs[0].shape)
                final = list(infos.get("final_obs", [None] * len(obs)))
                final[0] = self.marker
                infos["final_obs"] = np.array(final + [None], dtype=object)[:-1]  # an object array, as gymnasium's
                infos["_final_obs"] = np.array(infos.get("_final_obs", np.zeros(len(obs), bool))) | (
                    np.arange(len(obs)) == 0
                )
            self.rewards.append(np.array(reward, dtype=np.float64))
            return obs, reward, term, trunc, infos

        vec.step = step
        return vec


def capture_critic(monkeypatch, module):
    """Replace module.Critic by a subclass that remembers its instances."""
    made = []

    class Recorded(module.Critic):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(module, "Critic", Recorded)
    return made


PPO_SIZE = "--num-envs 2 --n-steps 4 --batch-size 8 --update-epochs 1 --total-timesteps 32".split()
EXACT_LIKELIHOOD = (
    "--grad-chunk-size 8 --denoising-steps 6 --ft-denoising-steps 3 --sde-step-size 0.17 --sde-method euler"
)
PPO_RUNS = {
    dppo: [*PPO_SIZE, *TINY_DIFFUSION],
    exact_likelihood_pg: [*PPO_SIZE, *f"{EXACT_LIKELIHOOD} --hutchinson-probes 1 --critic-dims 8 8 8".split()],
    gaussian_ppo: PPO_SIZE,  # the bundled Hopper checkpoint
    gmm_ppo: PPO_SIZE,
}


@pytest.mark.parametrize("module", list(PPO_RUNS), ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_ppo_loop_bootstraps_a_time_out_with_the_value_of_its_final_observation(
    module, monkeypatch, tmp_path, tiny_diffusion_checkpoint
):
    timeout = ForcedTimeout(monkeypatch)
    critics, seen = capture_critic(monkeypatch, module), []
    real_gae = module.compute_gae

    def spy(rewards, values, next_values, dones, gamma, gae_lambda):
        with torch.no_grad():  # V(final observation) with the critic the loop used, at this moment
            v_final = critics[-1](torch.as_tensor(timeout.marker[None])).item()
        seen.append((np.array(rewards), np.array(dones), gamma, v_final))
        return real_gae(rewards, values, next_values, dones, gamma, gae_lambda)

    monkeypatch.setattr(module, "compute_gae", spy)
    ckpt = [] if module in (gaussian_ppo, gmm_ppo) else ["--checkpoint", tiny_diffusion_checkpoint]
    run_main(
        module,
        *ckpt,
        "--run-dir",
        tmp_path / "r",
        "--eval-episodes",
        "1",
        "--no-reward-scale-running",
        *PPO_RUNS[module],
    )
    ((rewards, dones, gamma, v_final),) = seen
    raw = np.stack(timeout.rewards[: len(rewards)])
    assert dones[AT, 0] == 1  # the recursion stops at the time-out ...
    assert rewards[AT, 0] == pytest.approx(raw[AT, 0] + gamma * v_final, rel=1e-5)  # ... which is bootstrapped
    others = np.ones_like(rewards, bool)
    others[AT, 0] = False
    np.testing.assert_allclose(rewards[others], raw[others], rtol=1e-6)  # no other reward changed


OFF_POLICY_CRITIC = "--denoising-steps 6 --buffer-size 64 --replay-ratio 1 --critic-dims 8 8 8"
OFF_POLICY_RUNS = {
    dql: OFF_POLICY_CRITIC.split(),
    qsm: OFF_POLICY_CRITIC.split(),
    idql: f"{OFF_POLICY_CRITIC} --num-candidates 2".split(),
    dipo: OFF_POLICY_CRITIC.split(),
    dawr: f"{OFF_POLICY_CRITIC} --critic-replay-ratio 1".split(),
}


@pytest.mark.parametrize("module", list(OFF_POLICY_RUNS), ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_off_policy_loop_stores_a_time_out_as_not_terminal_with_its_final_observation(
    module, monkeypatch, tmp_path, tiny_diffusion_checkpoint
):
    timeout, added = ForcedTimeout(monkeypatch), []
    real_add = module.ReplayBuffer.add

    def spy(self, *args):
        added.append(args)
        return real_add(self, *args)

    monkeypatch.setattr(module.ReplayBuffer, "add", spy)
    run_main(
        module,
        "--checkpoint",
        tiny_diffusion_checkpoint,
        "--run-dir",
        tmp_path / "r",
        "--eval-episodes",
        "1",
        *"--num-envs 2 --n-steps 4 --batch-size 8 --total-timesteps 32".split(),
        *OFF_POLICY_RUNS[module],
    )
    if module is dawr:  # add(obs, chunk, reward, terminated, truncated, next_obs)
        _, _, _, terminated, truncated, next_obs = added[AT]
        assert truncated[0] == 1
    else:  # add(obs, chunks, rewards, next_obs, terminated)
        _, _, _, next_obs, terminated = added[AT]
    assert terminated[0] == 0  # bootstrapped: y = r + gamma V(s') ...
    np.testing.assert_allclose(np.asarray(next_obs)[0], timeout.marker)  # ... at the pre-reset observation
