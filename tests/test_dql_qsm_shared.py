"""Tests of what dql.py and qsm.py share (each script carries its own copy of the same code): the schedule, Bellman
targets with the double-Q minimum, the critic, the replay buffer, soft updates, dppo-compatible networks, input
checks, and the CLI smoke run with resume. Every test runs once per script; the algorithm-specific parts are in
test_dql.py and test_qsm.py."""

import importlib
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import dppo
from conftest import (
    TINY_FLAGS,
    cli_fails,
    cli_smoke_run,
    main_fails,
    read_summary,
    run_main,
    stub_checkpoint,
    tiny_args,
)

torch.set_num_threads(1)
ACTOR_TAG = {"dql": "losses/bc_loss", "qsm": "values/q_grad_norm"}  # the one logged scalar the two do not share


@pytest.fixture(params=["dql", "qsm"])
def algo(request):
    return importlib.import_module(f"cleandppo.{request.param}")


def tiny_run(algo, checkpoint, tmp_path, *flags):
    """A 64-step run of `algo` from the tiny checkpoint with the script's tiny flags (conftest), then `flags`."""
    name = algo.__name__.rsplit(".", 1)[1]
    run_main(
        algo,
        "--checkpoint",
        checkpoint,
        "--total-timesteps",
        64,
        "--run-dir",
        tmp_path / "r",
        *TINY_FLAGS[name],
        *flags,
    )


def test_schedule_matches_reference_values(algo):
    # cosine schedule (official cosine_beta_schedule, model/diffusion/sampling.py), K = 20, last beta capped at 0.999
    betas = algo.cosine_beta_schedule(20)
    assert betas[:4].tolist() == pytest.approx([0.008, 0.0201, 0.0323, 0.0447], abs=2e-4)
    assert betas[-1].item() == pytest.approx(0.999)
    # K = 1: f(1) = cos^2(pi/2) = 0 -> beta 1 clipped to 0.999, alpha_bar_0 = 0.001
    s1 = algo.make_schedule(1)
    assert s1["alpha_bar"].item() == pytest.approx(0.001, rel=1e-4)
    assert s1["coef_x0"].item() == pytest.approx(1.0) and s1["coef_xt"].item() == pytest.approx(0.0)


def test_bellman_target_with_done_masks(algo):
    r = torch.tensor([1.0, 2.0, 3.0, -1.0])
    term = torch.tensor([0.0, 1.0, 0.0, 1.0])
    q1 = torch.tensor([10.0, 5.0, 4.0, 100.0])
    q2 = torch.tensor([8.0, 6.0, 7.0, -100.0])
    # y = r + 0.9 (1 - term) min(q1, q2): [1 + 7.2, 2 (terminal), 3 + 3.6, -1 (terminal)]
    y = algo.bellman_target(r, term, q1, q2, 0.9)
    assert y.tolist() == pytest.approx([8.2, 2.0, 6.6, -1.0])


def test_critic_loss_sums_the_squared_errors_of_both_heads(algo):
    class Fixed(nn.Module):
        def forward(self, obs, a):
            return torch.tensor([2.0, 1.0]), torch.tensor([3.0, 0.0])

    loss, q1, q2 = algo.critic_loss(Fixed(), torch.zeros(2, 1, 3), torch.zeros(2, 4, 3), torch.tensor([2.0, -0.5]))
    # MSE(q1, y) + MSE(q2, y) = (0 + 2.25)/2 + (1 + 0.25)/2
    assert loss.item() == pytest.approx(1.125 + 0.625)
    assert q1.tolist() == [2.0, 1.0] and q2.tolist() == [3.0, 0.0]


def test_the_loop_fits_the_critic_to_the_bellman_target_of_the_target_critic_at_the_next_state(
    algo, tiny_diffusion_checkpoint, tmp_path, monkeypatch
):
    """Per gradient step: y = bellman_target(r, terminated, Q1', Q2') with (Q1', Q2') the TARGET critic's values at the
    sampled s' (and the actor's a'), then critic_loss of the ONLINE critic at the same minibatch's (s, a) against y."""
    batches, forwards, targets, losses = [], [], [], []
    real_get, real_forward = algo.ReplayBuffer.get, algo.DoubleQCritic.forward
    real_bellman, real_loss = algo.bellman_target, algo.critic_loss

    def get(self, idx, device):
        batches.append(real_get(self, idx, device))
        return batches[-1]

    def forward(self, obs, actions):
        forwards.append((self, obs, real_forward(self, obs, actions)))
        return forwards[-1][2]

    def bellman(rewards, terminated, next_q1, next_q2, gamma):
        targets.append(
            (rewards, terminated, next_q1, next_q2, real_bellman(rewards, terminated, next_q1, next_q2, gamma))
        )
        return targets[-1][-1]

    def loss(critic, obs, actions, target):
        losses.append((critic, obs, actions, target))
        return real_loss(critic, obs, actions, target)

    monkeypatch.setattr(algo.ReplayBuffer, "get", get)
    monkeypatch.setattr(algo.DoubleQCritic, "forward", forward)
    monkeypatch.setattr(algo, "bellman_target", bellman)
    monkeypatch.setattr(algo, "critic_loss", loss)
    tiny_run(algo, tiny_diffusion_checkpoint, tmp_path)
    assert len(batches) == len(targets) == len(losses) == 4  # 8 steps x 2 envs / batch 8 x replay ratio 2
    for batch, (rewards, terminated, next_q1, next_q2, y), (critic, obs, actions, target) in zip(
        batches, targets, losses, strict=True
    ):
        ((target_critic, next_obs, _),) = [f for f in forwards if f[2][0] is next_q1 and f[2][1] is next_q2]
        assert target_critic is not critic  # the target network, not the online one
        assert next_obs is batch["next_obs"] and rewards is batch["rewards"] and terminated is batch["terminated"]
        assert obs is batch["obs"] and actions is batch["chunks"] and target is y


def test_double_q_critic_is_residual_on_obs_and_executed_chunk(algo):
    critic = algo.DoubleQCritic(obs_dim=11, cond_steps=2, action_dim=3, act_steps=4, dims=(256, 256, 256))
    assert critic.q1.inp.in_features == 11 * 2 + 3 * 4
    assert len(critic.q1.blocks) == 1 and isinstance(critic.q1.blocks[0][0], nn.Mish)  # residual, Mish
    q1, q2 = critic(torch.randn(5, 2, 11), torch.randn(5, 4, 3))
    assert q1.shape == q2.shape == (5,) and not torch.allclose(q1, q2)  # two independent nets


def test_replay_buffer_is_fifo_in_transitions(algo):
    buf = algo.ReplayBuffer(5, (1, 2), (4, 3))
    for k in range(3):  # 3 vector steps of 2 envs = 6 transitions into 5 slots
        obs = np.array([[[2 * k] * 2], [[2 * k + 1] * 2]], np.float32)  # (2 envs, To = 1, Do = 2)
        buf.add(obs, np.zeros((2, 4, 3)), np.array([2 * k, 2 * k + 1]), obs + 100, np.array([0, 1]))
    assert buf.size == 5 and buf.pos == 1
    assert sorted(buf.rewards.tolist()) == [1, 2, 3, 4, 5]  # transition 0 was overwritten
    assert buf.obs[0, 0, 0] == 5 and buf.next_obs[0, 0, 0] == 105 and buf.terminated[0] == 1
    batch = buf.sample(16, "cpu")  # with replacement: more samples than stored transitions is fine
    assert batch["chunks"].shape == (16, 4, 3) and batch["obs"].shape == (16, 1, 2)
    torch.testing.assert_close(batch["next_obs"], batch["obs"] + 100)


def test_the_loop_soft_updates_the_target_critic_at_its_rate_after_every_gradient_step(
    algo, tiny_diffusion_checkpoint, tmp_path, monkeypatch
):
    """The soft update itself is tested in test_shared_copies.py; here: main calls it with --target-ema-rate on
    (target critic, critic) once per gradient step."""
    calls, real = [], algo.soft_update

    def spy(target, source, tau):
        calls.append((type(target).__name__, target is not source, tau))
        real(target, source, tau)

    monkeypatch.setattr(algo, "soft_update", spy)
    tiny_run(algo, tiny_diffusion_checkpoint, tmp_path, "--target-ema-rate", "0.37")
    assert calls == [("DoubleQCritic", True, 0.37)] * 4  # 8 steps x 2 envs / batch 8 x replay ratio 2


def test_networks_keep_dppo_state_dict_keys(algo):
    for backbone in ("mlp", "unet"):
        kw = dict(
            obs_dim=11,
            action_dim=3,
            horizon_steps=4,
            cond_steps=1,
            denoising_steps=6,
            backbone=backbone,
            time_dim=8,
            mlp_dims=(16, 16, 16),
            activation="relu",
            unet_dim=8,
            unet_dim_mults=(1, 2),
            unet_kernel_size=5,
            unet_n_groups=4,
            unet_step_embed_dim=8,
        )
        ours, theirs = algo.build_network(kw).state_dict(), dppo.build_network(kw).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_bad_inputs_fail_in_one_line_and_write_nothing(algo, tmp_path, tiny_diffusion_checkpoint):
    cases = [
        (dict(buffer_size=4, batch_size=8), "--buffer-size 4 is smaller than --batch-size 8"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
        (dict(replay_ratio=0.0), "--replay-ratio must be > 0"),
        (dict(buffer_size=-1), "--buffer-size must be >= 1"),
        (dict(act_steps=5), "--act-steps 5 > --horizon-steps 4"),
        (dict(denoising_steps=20), "pass --denoising-steps 6"),
    ]
    for i, (kw, expected) in enumerate(cases):
        args = {"checkpoint": tiny_diffusion_checkpoint, "denoising_steps": 6, "run_dir": str(tmp_path / f"r{i}"), **kw}
        main_fails(algo, algo.Args(**args), expected)
    # a Gaussian checkpoint, through the CLI: non-zero exit, one "error:" line on stderr, no traceback
    gauss = stub_checkpoint(tmp_path / "gauss.pt", "gaussian")
    name = algo.__name__.rsplit(".", 1)[1]
    cli_fails(
        f"{name}.py", "--checkpoint", gauss, "--run-dir", tmp_path / "g", needles=["diffusion"], run_dir=tmp_path / "g"
    )


def test_cli_smoke_run_and_resume(algo, tiny_diffusion_checkpoint, tmp_path, capsys):
    name, run = algo.__name__.rsplit(".", 1)[1], tmp_path / "run"
    out, _ = cli_smoke_run(
        name,
        tiny_diffusion_checkpoint,
        run,
        128,
        keys="critic target_critic critic_kwargs actor_optimizer critic_optimizer replay_buffer",
        tags=f"losses/q_loss losses/actor_loss {ACTOR_TAG[name]} values/q1_mean values/target_q_mean",
    )
    assert "steps 128" in out

    # resume from the run's own checkpoint: continues at iteration 3 with its critic (critic dims from the checkpoint)
    args = tiny_args(
        algo, checkpoint=str(run / "checkpoint_last.pt"), total_timesteps=192, run_dir=str(tmp_path / "resume")
    )
    algo.main(args)
    out = capsys.readouterr().out
    assert "resuming" in out and "iter 3/3" in out and "iter 1/" not in out
    read_summary(tmp_path / "resume", env_steps=192)
    assert os.path.isfile(tmp_path / "resume" / "checkpoint_3.pt")
