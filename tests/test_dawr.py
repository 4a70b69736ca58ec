"""Tests for cleandppo/dawr.py: weights and TD(lambda) against hand-worked numbers, buffer, CLI smoke + resume."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import dawr
from conftest import (
    cli_fails,
    cli_smoke_run,
    main_fails,
    read_checkpoint,
    read_summary,
    stub_checkpoint,
    tiny_args,
)

torch.set_num_threads(1)


def test_awr_weights_hand_computed_with_clip():
    adv = torch.tensor([0.0, 1.0, 2.0])  # mean 1, unbiased std 1 -> standardised (-1, 0, 1)
    w = dawr.awr_weights(adv, beta=1.0, max_weight=100.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(-1), 1.0, math.e]), rtol=1e-5, atol=0)
    w = dawr.awr_weights(adv, beta=1.0, max_weight=2.0)  # e = 2.718 is clipped at 2
    torch.testing.assert_close(w, torch.tensor([math.exp(-1), 1.0, 2.0]), rtol=1e-5, atol=0)
    w = dawr.awr_weights(adv, beta=10.0, max_weight=100.0)  # paper values: exp(10) = 22026 -> 100
    torch.testing.assert_close(w, torch.tensor([math.exp(-10), 1.0, 100.0]), rtol=1e-4, atol=0)
    # scaling the advantages (e.g. the official alpha = 0.95) leaves the standardised weights unchanged
    torch.testing.assert_close(
        dawr.awr_weights(0.95 * adv, 1.0, 100.0), dawr.awr_weights(adv, 1.0, 100.0), rtol=1e-5, atol=0
    )
    assert not dawr.awr_weights(adv.requires_grad_(), 1.0, 100.0).requires_grad


def td(rewards, values, next_values, term=(0, 0, 0), trunc=(0, 0, 0), alpha=1.0):
    col = lambda x: np.asarray(x, np.float64)[:, None]  # noqa: E731  one env
    return dawr.td_lambda_targets(
        col(rewards), col(values), col(next_values), col(term), col(trunc), gamma=0.9, lam=0.5, alpha=alpha
    )[:, 0]


def test_td_lambda_hand_worked_trajectory():
    # r = (1, 0, 2), V = (0.5, 1, 2), V(s') = (1, 2, 3) (s'_n = s_{n+1}; 3 is the value after the newest row)
    # delta = (1 + .9 - .5, 0 + 1.8 - 1, 2 + 2.7 - 2) = (1.4, 0.8, 2.7); G_n = delta_n + 0.45 G_{n+1}
    # G = (1.4 + .45 * 2.015, 0.8 + .45 * 2.7, 2.7) = (2.30675, 2.015, 2.7); target = V + G
    r, v, v_next = (1, 0, 2), (0.5, 1, 2), (1, 2, 3)
    np.testing.assert_allclose(td(r, v, v_next), [2.80675, 3.015, 4.7], rtol=1e-12)
    # the same number as the (truncated) lambda-return of n-step returns G1 = 1.9, G2 = 2.62, G3 = 4.807
    assert 0.5 * (1.9 + 0.5 * 2.62) + 0.25 * 4.807 == pytest.approx(2.80675)
    # termination after row 1: its target is just r = 0, and row 0 mixes G1 = 1.9 with G(n>=2) = 1
    np.testing.assert_allclose(td(r, v, v_next, term=(0, 1, 0)), [0.5 * 1.9 + 0.5 * 1.0, 0.0, 4.7], rtol=1e-12)
    # time-out after row 1 with V(pre-reset obs) = 5: bootstrapped (0 + .9 * 5), the next episode not mixed in
    np.testing.assert_allclose(td(r, v, (1, 5, 3), trunc=(0, 1, 0)), [0.5 + 1.4 + 0.45 * 3.5, 4.5, 4.7], rtol=1e-12)
    # the official alpha = 0.95 shrinks every TD(lambda) correction by 5 %
    np.testing.assert_allclose(
        td(r, v, v_next, alpha=0.95), [0.5 + 0.95 * 2.30675, 1 + 0.95 * 2.015, 2 + 0.95 * 2.7], rtol=1e-12
    )
    # lambda = 1, no bootstrap at the end (V' = 0 at a terminal): Monte-Carlo discounted return
    col = lambda x: np.asarray(x, np.float64)[:, None]  # noqa: E731
    mc = dawr.td_lambda_targets(col(r), col(v), col(v_next), col((0, 0, 1)), col((0, 0, 0)), 0.9, 1.0)[:, 0]
    np.testing.assert_allclose(mc, [1 + 0 + 0.81 * 2, 0 + 0.9 * 2, 2], rtol=1e-12)


def test_value_loss_is_elementwise_mse_not_broadcast():
    class Fixed(nn.Module):
        def forward(self, obs):
            return torch.tensor([1.0, 2.0])

    loss = dawr.value_loss(Fixed(), torch.zeros(2, 1, 3), torch.tensor([0.0, 4.0]))
    assert loss.item() == pytest.approx((1 + 4) / 2)  # the official (B,1)-(B,) broadcast gives (1+9+4+4)/4 = 4.5
    assert dawr.Critic(3, 1, (8, 8, 8))(torch.zeros(5, 1, 3)).shape == (5,)


def test_buffer_fifo_order_and_uniform_sampling_over_all_transitions():
    buf = dawr.ReplayBuffer(rows=3, num_envs=2, obs_shape=(1, 1), chunk_shape=(1, 1))
    for step in range(5):
        buf.add(
            np.full((2, 1, 1), step),
            np.zeros((2, 1, 1)),
            np.array([step, step]),
            np.zeros(2),
            np.zeros(2),
            np.full((2, 1, 1), step + 1),
        )
    rows = buf.order()
    assert buf.rewards[rows, 0].tolist() == [2, 3, 4]  # oldest two steps dropped, oldest first
    pos, env = buf.sample(6000, torch.Generator().manual_seed(0))
    counts = np.zeros((3, 2))
    np.add.at(counts, (pos, env), 1)
    # every stored transition, the newest included, drawn about 1/6 of the time (the official indexing drew
    # only from the first `rows` of the flattened buffer, i.e. the oldest 1/E of it)
    np.testing.assert_allclose(counts / 6000, np.full((3, 2), 1 / 6), atol=0.02)


def test_buffer_values_match_direct_evaluation():
    torch.manual_seed(0)
    critic = dawr.Critic(3, 1, (8, 8, 8))
    buf = dawr.ReplayBuffer(rows=4, num_envs=2, obs_shape=(1, 3), chunk_shape=(1, 1))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 1, 3)).astype(np.float32)
    for step in range(6):  # wraps around the ring; env 1 times out at step 3, env 0 terminates at step 4
        term, trunc = np.array([step == 4, False], float), np.array([False, step == 3], float)
        final = rng.normal(size=(2, 1, 3)).astype(np.float32)  # observation reached by the step
        nxt = final.copy()
        nxt[(term + trunc) > 0] = rng.normal(size=(int((term + trunc).sum()), 1, 3))  # auto-reset observation
        buf.add(obs, np.zeros((2, 1, 1)), np.zeros(2), term, trunc, final)
        obs = nxt
    rows = buf.order()
    values, next_values = dawr.buffer_values(critic, buf, rows, batch=3, device=torch.device("cpu"))
    with torch.no_grad():
        direct_v = critic(torch.as_tensor(buf.obs[rows].reshape(-1, 1, 3))).numpy().reshape(4, 2)
        direct_next = critic(torch.as_tensor(buf.next_obs[rows].reshape(-1, 1, 3))).numpy().reshape(4, 2)
    np.testing.assert_allclose(values, direct_v, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(next_values, direct_next, rtol=1e-6, atol=1e-6)


def test_weighted_denoising_loss_closed_form():
    class Zero(nn.Module):  # predicts eps = 0, so the per-sample loss is mean(eps^2)
        def forward(self, x, t, obs):
            return torch.zeros_like(x)

    sched = dawr.make_schedule(6)
    x0, obs, w = torch.zeros(3, 4, 2), torch.zeros(3, 1, 5), torch.tensor([0.0, 1.0, 100.0])
    loss = dawr.denoising_loss(Zero(), sched, x0, obs, 6, w, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.randint(0, 6, (3,), generator=g)  # same draws: t, then eps
    eps = torch.randn(3, 4, 2, generator=g)
    expected = (w * (eps**2).mean(dim=(1, 2))).sum() / 3
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bad_inputs_fail_in_one_line(tmp_path, tiny_diffusion_checkpoint):
    cli_fails(
        "dawr.py",
        "--checkpoint",
        tiny_diffusion_checkpoint,
        "--beta",
        "0",
        "--run-dir",
        tmp_path / "b",
        prefix="error: --beta must be > 0",
        run_dir=tmp_path / "b",
    )  # nothing written
    gauss = stub_checkpoint(tmp_path / "gauss.pt", "gaussian")
    cases = [
        (dict(checkpoint=gauss), "holds a gaussian policy"),
        (dict(buffer_size=100, batch_size=1000), "--buffer-size 100 is smaller than --batch-size"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
        (dict(act_steps=8), "--act-steps 8 > --horizon-steps 4"),
        (dict(max_adv_weight=-1.0), "--max-adv-weight must be > 0"),
        (dict(checkpoint=tiny_diffusion_checkpoint), "pass --denoising-steps 6"),
    ]
    for kwargs, text in cases:
        main_fails(dawr, dawr.Args(run_dir=str(tmp_path / "r"), **kwargs), text)


def test_cli_smoke_checkpoint_and_resume(tiny_diffusion_checkpoint, tmp_path):
    run = tmp_path / "run"
    _, summary = cli_smoke_run(
        "dawr",
        tiny_diffusion_checkpoint,
        run,
        256,
        keys="critic actor_optimizer critic_optimizer replay_buffer",
        tags="losses/value_loss losses/actor_loss values/v_mean charts/buffer_size",
    )
    assert summary["args"]["td_alpha"] == 1.0

    # resume in-process: the iteration count and env steps continue, the critic comes back
    args = tiny_args(
        dawr, checkpoint=str(run / "checkpoint_last.pt"), total_timesteps=384, run_dir=str(tmp_path / "resumed")
    )
    dawr.main(args)
    read_summary(tmp_path / "resumed", env_steps=384, pretrained_eval_return=summary["pretrained_eval_return"])
    read_checkpoint(tmp_path / "resumed", iteration=3)
