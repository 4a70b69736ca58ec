"""Tests for cleandppo/idql.py: expectile loss, Q targets from V, double-Q minimum in the greedy pick, Boltzmann
choice frequencies, target-Q EMA, CLI smoke run with resume, one-line errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import idql
from conftest import (
    cli_fails,
    cli_smoke_run,
    main_fails,
    read_summary,
    stub_checkpoint,
    tiny_args,
)

torch.set_num_threads(1)


def test_expectile_loss_half_mse_at_tau_half_and_asymmetric_otherwise():
    diff = torch.tensor([1.5, -0.5, 2.0, -3.0, 0.0])
    assert idql.expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (diff**2).mean().item())
    # tau 0.8: a residual above the prediction weighs 0.8, one below 0.2
    assert idql.expectile_loss(torch.tensor([2.0]), 0.8).item() == pytest.approx(0.8 * 4)
    assert idql.expectile_loss(torch.tensor([-2.0]), 0.8).item() == pytest.approx(0.2 * 4)
    assert idql.expectile_loss(torch.tensor([2.0, -2.0]), 0.8).item() == pytest.approx((3.2 + 0.8) / 2)


def test_expectile_minimiser_is_the_closed_form_expectile():
    # targets {0, 1} with equal mass: tau (1 - v) = (1 - tau) v  =>  v* = tau
    targets = torch.tensor([0.0, 1.0])
    grid = torch.linspace(0, 1, 101)
    for tau in (0.5, 0.8, 0.9):
        losses = torch.stack([idql.expectile_loss(targets - v, tau) for v in grid])
        assert grid[losses.argmin()].item() == pytest.approx(tau, abs=1e-6)


def test_q_target_from_v_with_done_mask():
    y = idql.q_target_from_v(
        torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([2.0, 9.0, -1.0]), 0.99
    )
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.99 * 2.0, 0.5, -0.99]))


def test_boltzmann_choice_follows_its_weights():
    g = torch.Generator().manual_seed(0)
    T, n = 0.5, 6000
    adv = (T * torch.log(torch.tensor([1.0, 2.0, 3.0]))).expand(n, 3)  # softmax(adv / T) = [1/6, 2/6, 3/6]
    idx, probs = idql.boltzmann_choice(adv, T, generator=g)
    torch.testing.assert_close(probs[0], torch.tensor([1 / 6, 2 / 6, 3 / 6]))
    freq = torch.bincount(idx, minlength=3).float() / n
    torch.testing.assert_close(freq, torch.tensor([1 / 6, 2 / 6, 3 / 6]), atol=0.02, rtol=0)
    # a per-state constant (V(s)) does not change the weights; a tiny temperature is greedy
    _, shifted = idql.boltzmann_choice(adv[:1] - 7.0, T)
    torch.testing.assert_close(shifted, probs[:1])
    idx, _ = idql.boltzmann_choice(torch.tensor([[0.1, 0.3, 0.2]]).expand(50, 3), 1e-6, generator=g)
    assert (idx == 1).all()


class StubQ(nn.Module):
    """x = first action * first obs entry; Q1 = x, Q2 = 1 - x: min(Q1, Q2) peaks at x = 0.5, Q1 alone at max x."""

    def forward(self, obs, actions):
        x = actions[:, 0, 0] * obs[:, 0, 0]
        return x, 1 - x


class StubV(nn.Module):
    def forward(self, obs):
        return 100.0 * obs[:, 0, 0]  # a per-state constant: must not change the Boltzmann pick


def test_select_actions_greedy_uses_min_q_and_keeps_states_apart():
    torch.manual_seed(0)
    actor = idql.DiffusionMLP(2, 1, 2, 1, time_dim=4, mlp_dims=(8, 8, 8), activation="relu")
    sched = idql.make_schedule(4)
    kw = dict(denoising_steps=4, horizon_steps=2, action_dim=1)
    args = SimpleNamespace(
        num_candidates=7,
        min_sampling_denoising_std=0.1,
        randn_clip_value=3.0,
        denoised_clip_value=1.0,
        boltzmann_temperature=1e-6,
    )
    obs = torch.tensor([[[1.0, 0.0]], [[-2.0, 0.0]]])  # two states with different Q landscapes
    for mode in ("eval", "train"):  # train with temperature 1e-6 is greedy too
        chosen, _ = idql.select_actions(
            actor, StubQ(), StubV(), sched, obs, kw, args, mode, generator=torch.Generator().manual_seed(3)
        )
        # the same candidates, regenerated from the same generator state (state-major layout)
        cands = idql.sample(
            actor, sched, obs.repeat_interleave(7, 0), 4, 2, 1, mode, 0.1, 3.0, 1.0, torch.Generator().manual_seed(3)
        ).view(2, 7, 2, 1)
        for b in range(2):
            x = cands[b, :, 0, 0] * obs[b, 0, 0]
            best = torch.minimum(x, 1 - x).argmax()
            torch.testing.assert_close(chosen[b], cands[b, best])
            if x.argmax() != best:  # Q1 alone would have picked another candidate
                assert not torch.equal(chosen[b], cands[b, x.argmax()])


def test_idql_update_soft_updates_target_q_and_respects_warmup():
    torch.manual_seed(0)
    np.random.seed(0)
    args = SimpleNamespace(denoising_steps=4, batch_size=8, gamma=0.99, expectile=0.8, target_ema_rate=0.25)
    actor = idql.DiffusionMLP(3, 2, 2, 1, time_dim=4, mlp_dims=(8, 8, 8), activation="relu")
    q_critic, v_critic = idql.DoubleQCritic(3, 1, 2, 2, (8, 8, 8)), idql.ValueCritic(3, 1, (8, 8, 8))
    q_target = idql.DoubleQCritic(3, 1, 2, 2, (8, 8, 8))
    q_target.load_state_dict(q_critic.state_dict())
    buf = idql.ReplayBuffer(16, (1, 3), (2, 2))
    buf.add(
        np.random.randn(16, 1, 3),
        np.random.uniform(-1, 1, (16, 2, 2)),
        np.random.randn(16),
        np.random.randn(16, 1, 3),
        np.zeros(16),
    )
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (actor, q_critic, v_critic)]
    q0, t0 = [p.clone() for p in q_critic.parameters()], [p.clone() for p in q_target.parameters()]
    actor0 = [p.clone() for p in actor.parameters()]
    stats = idql.idql_update(
        actor, q_critic, q_target, v_critic, *opts, idql.make_schedule(4), buf, args, 1, False, "cpu"
    )
    assert "actor_loss" not in stats and {"v_loss", "q_loss", "v_mean", "q1_mean", "target_q_mean"} <= set(stats)
    assert all(torch.equal(a, b) for a, b in zip(actor0, actor.parameters(), strict=True))  # warm-up: actor not stepped
    for p_t, p_t0, p, p0 in zip(q_target.parameters(), t0, q_critic.parameters(), q0, strict=True):
        assert not torch.equal(p, p0)  # Q moved, so the check below can tell the rate apart
        torch.testing.assert_close(p_t, 0.75 * p_t0 + 0.25 * p)  # target <- (1 - tau) target + tau Q


def test_cli_smoke_run_and_resume(tiny_diffusion_checkpoint, tmp_path):
    run = tmp_path / "run"
    out, summary = cli_smoke_run(
        "idql",
        tiny_diffusion_checkpoint,
        run,
        64,
        "--n-critic-warmup-itr",
        "1",
        keys="critic target_critic value_critic actor_optimizer critic_optimizer value_optimizer replay_buffer",
        tags="losses/q_loss losses/v_loss losses/actor_loss values/q1_mean values/v_mean charts/boltzmann_max_prob",
    )
    assert "critic warm-up" in out

    # resume in-process; then --eval-only of the idql checkpoint (greedy over candidates)
    resumed = tmp_path / "resumed"
    idql.main(tiny_args(idql, checkpoint=str(run / "checkpoint_last.pt"), total_timesteps=96, run_dir=str(resumed)))
    read_summary(resumed, env_steps=96, pretrained_eval_return=summary["pretrained_eval_return"])
    evaluation = tiny_args(
        idql, checkpoint=str(resumed / "checkpoint_last.pt"), eval_only=True, run_dir=str(tmp_path / "eval")
    )
    idql.main(evaluation)
    assert read_summary(tmp_path / "eval", keys=())["env_steps"] == 96


def test_bad_inputs_fail_in_one_line(tiny_diffusion_checkpoint, tmp_path):
    gmm = stub_checkpoint(tmp_path / "gmm.pt", "gmm")
    cli_fails(
        "idql.py", "--checkpoint", gmm, "--run-dir", tmp_path / "g", needles=["diffusion"], run_dir=tmp_path / "g"
    )
    cases = [
        (dict(buffer_size=100, batch_size=256), "--buffer-size 100 is smaller than --batch-size 256"),
        (dict(buffer_size=0), "--buffer-size must be >= 1"),
        (dict(num_candidates=0), "--num-candidates must be >= 1"),
        (dict(expectile=1.0), "--expectile must be in (0, 1)"),
        (dict(act_steps=5), "--act-steps 5 > --horizon-steps 4"),
        (dict(denoising_steps=20), "pass --denoising-steps 6"),
    ]
    for i, (kw, text) in enumerate(cases):
        main_fails(idql, idql.Args(checkpoint=tiny_diffusion_checkpoint, run_dir=str(tmp_path / f"r{i}"), **kw), text)
