"""Tests for cleandppo/dipo.py: Bellman targets, double-Q minimum, action gradient on a quadratic critic,
buffer write-back, CLI smoke run with resume, one-line errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import dipo
from conftest import (
    cli_fails,
    cli_smoke_run,
    main_fails,
    read_summary,
    stub_checkpoint,
    tiny_args,
)

torch.set_num_threads(1)


class QuadraticCritic(nn.Module):
    """Q1(s, a) = -sum_i (a_i - c)^2 over the executed part, Q2 = Q1 + 1 (so min(Q1, Q2) = Q1)."""

    def __init__(self, c, act_steps):
        super().__init__()
        self.c, self.act_steps = c, act_steps
        self.dummy = nn.Parameter(torch.zeros(1))  # a weight that must receive no gradient

    def forward(self, obs, actions):
        q1 = -((actions[:, : self.act_steps] - self.c) ** 2).flatten(1).sum(-1) + 0 * self.dummy
        return q1, q1 + 1


def test_bellman_target_double_q_min_and_done_mask():
    rewards = torch.tensor([1.0, 0.5, -1.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    q1 = torch.tensor([2.0, 3.0, -1.0])
    q2 = torch.tensor([1.5, 4.0, 0.5])
    y = dipo.bellman_target(rewards, terminated, q1, q2, 0.9)
    # min(Q1', Q2') = [1.5, 3.0, -1.0]; the terminated row keeps only its reward
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 1.5, 0.5, -1.0 - 0.9 * 1.0]))


def test_critic_loss_sums_both_heads():
    class Fixed(nn.Module):
        def forward(self, obs, actions):
            return torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])

    loss, q1, q2 = dipo.critic_loss(Fixed(), None, None, torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((0 + 1) / 2 + (1 + 1) / 2)  # MSE(Q1, y) + MSE(Q2, y)


def test_q_critic_is_residual_two_headed_and_sees_only_executed_actions():
    torch.manual_seed(0)
    critic = dipo.DoubleQCritic(obs_dim=5, cond_steps=2, action_dim=3, act_steps=2, dims=(8, 8, 8))
    for head in (critic.q1, critic.q2):
        assert isinstance(head, dipo.ResidualMLP) and len(head.blocks) == 1
        assert head.inp.in_features == 5 * 2 + 3 * 2 and head.out.out_features == 1
        assert isinstance(head.blocks[0][0], nn.Mish)
    obs, chunk = torch.randn(4, 2, 5), torch.randn(4, 3, 3)  # Tp = 3 > Ta = 2
    changed = chunk.clone()
    changed[:, 2] += 5.0  # the unexecuted action does not change Q
    q1, q2 = critic(obs, chunk)
    torch.testing.assert_close(critic(obs, changed)[0], q1)
    assert q1.shape == (4,) and not torch.allclose(q1, q2)  # independent heads


def test_action_gradient_first_adam_step_and_ascent_on_quadratic_critic():
    torch.manual_seed(0)
    critic = QuadraticCritic(c=0.3, act_steps=2)
    obs = torch.zeros(6, 1, 2)
    actions = torch.rand(6, 3, 2) - 0.5  # Tp = 3, Ta = 2
    # Adam's first step is lr * g / (|g| + eps) = lr * sign(g) for |g| >> eps: each executed action moves by lr toward c
    one = dipo.action_gradient(critic, obs, actions, lr=0.05, steps=1, max_norm=100.0)
    expected = actions.clone()
    expected[:, :2] += 0.05 * torch.sign(0.3 - actions[:, :2])
    torch.testing.assert_close(one, expected, atol=1e-5, rtol=0)
    assert critic.dummy.grad is None  # the critic's weights are untouched
    # more steps keep increasing Q and approach the maximiser
    qs = [critic(obs, dipo.action_gradient(critic, obs, actions, 0.05, k, 100.0))[0] for k in range(0, 8)]
    for before, after in zip(qs, qs[1:], strict=False):  # consecutive pairs
        assert (after >= before - 1e-6).all()
    assert (qs[-1] > qs[0]).all()
    # the maximiser outside [-1, 1]: actions stop at the bound
    far = dipo.action_gradient(QuadraticCritic(c=3.0, act_steps=2), obs, actions, lr=0.5, steps=10, max_norm=100.0)
    torch.testing.assert_close(far[:, :2], torch.ones(6, 2, 2))


def test_soft_update_and_replay_buffer_fifo():
    target, source = nn.Linear(1, 1), nn.Linear(1, 1)
    for p_t, p in zip(target.parameters(), source.parameters(), strict=True):
        p_t.data.fill_(0.0)
        p.data.fill_(1.0)
    dipo.soft_update(target, source, 0.005)
    dipo.soft_update(target, source, 0.005)
    assert target.weight.item() == pytest.approx(1 - 0.995**2)

    buf = dipo.ReplayBuffer(5, (1, 1), (1, 1))
    for values in (np.arange(3), np.arange(3, 7)):  # 7 transitions into 5 slots
        v = values.astype(np.float32)
        buf.add(v[:, None, None], v[:, None, None], v, v[:, None, None] + 100, np.zeros_like(v))
    assert buf.size == 5 and buf.pos == 2
    assert sorted(buf.rewards.tolist()) == [2, 3, 4, 5, 6]  # the two oldest were overwritten
    b = buf.get(np.array([0, 1]), "cpu")
    assert b["rewards"].tolist() == [5, 6] and b["next_obs"][:, 0, 0].tolist() == [105, 106]


def test_dipo_update_writes_moved_actions_back():
    torch.manual_seed(0)
    np.random.seed(0)
    args = SimpleNamespace(
        denoising_steps=4,
        act_steps=2,
        batch_size=8,
        gamma=0.99,
        min_sampling_denoising_std=0.1,
        randn_clip_value=3.0,
        denoised_clip_value=1.0,
        action_lr=0.05,
        action_gradient_steps=3,
        target_ema_rate=0.5,
    )
    actor = dipo.DiffusionMLP(3, 2, 2, 1, time_dim=4, mlp_dims=(8, 8, 8), activation="relu")
    target_actor = dipo.DiffusionMLP(3, 2, 2, 1, time_dim=4, mlp_dims=(8, 8, 8), activation="relu")
    target_actor.load_state_dict(actor.state_dict())
    critic = dipo.DoubleQCritic(3, 1, 2, 2, (8, 8, 8))
    target_critic = dipo.DoubleQCritic(3, 1, 2, 2, (8, 8, 8))
    target_critic.load_state_dict(critic.state_dict())
    sched = dipo.make_schedule(4)
    buf = dipo.ReplayBuffer(16, (1, 3), (2, 2))
    buf.add(
        np.random.randn(16, 1, 3),
        np.random.uniform(-1.2, 1.2, (16, 2, 2)),
        np.random.randn(16),
        np.random.randn(16, 1, 3),
        np.zeros(16),
    )
    actor_opt = torch.optim.AdamW(actor.parameters(), lr=1e-3)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=1e-3)

    before, actor_before = buf.chunks.copy(), [p.clone() for p in actor.parameters()]
    stats = dipo.dipo_update(
        actor, target_actor, critic, target_critic, actor_opt, critic_opt, sched, buf, args, 1, False, "cpu"
    )
    assert "actor_loss" not in stats and np.array_equal(buf.chunks, before)  # critic warm-up: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(actor_before, actor.parameters(), strict=True))

    stats = dipo.dipo_update(
        actor, target_actor, critic, target_critic, actor_opt, critic_opt, sched, buf, args, 1, True, "cpu"
    )
    rows = np.nonzero(np.any(buf.chunks != before, axis=(1, 2)))[0]
    assert len(rows) > 0 and np.abs(buf.chunks[rows]).max() <= 1.0  # moved chunks written back, clamped
    assert stats["action_q_gain"] > 0 and stats["action_shift"] > 0
    assert {"q_loss", "actor_loss", "q1_mean", "q2_mean", "target_q_mean"} <= set(stats)
    # target actor = EMA(0.5) of the actor after its step
    for p_t, p, p0 in zip(target_actor.parameters(), actor.parameters(), actor_before, strict=True):
        torch.testing.assert_close(p_t, 0.5 * p0 + 0.5 * p)


def test_cli_smoke_run_and_resume(tiny_diffusion_checkpoint, tmp_path):
    run = tmp_path / "run"
    out, summary = cli_smoke_run(
        "dipo",
        tiny_diffusion_checkpoint,
        run,
        64,
        "--n-critic-warmup-itr",
        "1",
        keys="target_actor critic target_critic actor_optimizer critic_optimizer replay_buffer",
        tags="losses/q_loss losses/actor_loss values/q1_mean values/target_q_mean charts/action_q_gain",
    )
    assert "critic warm-up" in out

    # resume in-process from the run's checkpoint: one more iteration, the pre-trained eval carried over
    args = tiny_args(
        dipo, checkpoint=str(run / "checkpoint_last.pt"), total_timesteps=96, run_dir=str(tmp_path / "resumed")
    )
    dipo.main(args)
    read_summary(tmp_path / "resumed", env_steps=96, pretrained_eval_return=summary["pretrained_eval_return"])


def test_bad_inputs_fail_in_one_line(tiny_diffusion_checkpoint, tmp_path):
    gaussian = stub_checkpoint(tmp_path / "gaussian.pt", "gaussian")
    cli_fails(
        "dipo.py", "--checkpoint", gaussian, "--run-dir", tmp_path / "g", needles=["diffusion"], run_dir=tmp_path / "g"
    )  # nothing written
    cases = [
        (dict(buffer_size=100, batch_size=1000), "--buffer-size 100 is smaller than --batch-size 1000"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
        (dict(replay_ratio=0), "--replay-ratio must be >= 1"),
        (dict(act_steps=5), "--act-steps 5 > --horizon-steps 4"),
        (dict(denoising_steps=20), "pass --denoising-steps 6"),
    ]
    for i, (kw, text) in enumerate(cases):
        main_fails(dipo, dipo.Args(checkpoint=tiny_diffusion_checkpoint, run_dir=str(tmp_path / f"r{i}"), **kw), text)


def test_a_checkpoint_from_before_the_chunks_name_refills_the_buffer():
    """dipo/idql checkpoints once stored the buffer's chunks under `actions`; a resume still refills them."""
    from cleandppo import runs

    buf = dipo.ReplayBuffer(4, (1, 1), (2, 1))
    old = {k: v for k, v in runs.buffer_state(buf).items() if k != "chunks"}
    old |= dict(actions=np.arange(6, dtype=np.float32).reshape(3, 2, 1), size=3, pos=3)
    fresh = dipo.ReplayBuffer(4, (1, 1), (2, 1))
    runs.restore_buffer(fresh, dict(replay_buffer=old))
    assert fresh.size == 3 and not hasattr(fresh, "actions")
    np.testing.assert_array_equal(fresh.chunks[:3, :, 0], [[0, 1], [2, 3], [4, 5]])
