"""Tests for cleandppo/dql.py: the DQL actor loss and chain gradient (what it shares with qsm.py, Bellman targets,
the double-Q critic, buffer, CLI smoke run and resume, is tested in test_dql_qsm_shared.py)."""

import math

import pytest
import torch
import torch.nn as nn

from cleandppo import dql
from conftest import ConstEps, QuadraticQ, assert_actor_update_climbs_quadratic_q

torch.set_num_threads(1)


def test_normalized_q_loss_closed_form_and_detached_denominator():
    w = torch.tensor(1.0, requires_grad=True)
    q_a, q_b = w * torch.tensor([1.0, 3.0]), w * torch.tensor([-2.0, 2.0])
    loss = dql.normalized_q_loss(q_a, q_b)
    assert loss.item() == pytest.approx(-2.0 / 2.0)
    loss.backward()
    assert w.grad.item() == pytest.approx(-2.0 / 2.0)  # d/dw of -2w / |2|: the denominator is a constant


def test_chain_gradient_single_step_closed_form():
    # K = 1: x_out = clamp((x - sqrt(1 - ab) c) / sqrt(ab)) with ab = 0.001; no noise at t = 0 in eval
    sched = dql.make_schedule(1)
    net = ConstEps(c0=0.2)
    out = dql.sample(net, sched, torch.zeros(7, 1, 2), 1, 4, 3, "eval", clip=1e6, grad=True)
    out.sum().backward()
    assert net.c0.grad.item() == pytest.approx(-math.sqrt(0.999 / 0.001) * 7 * 4 * 3, rel=1e-4)
    # without grad=True the sampler keeps no graph (rollouts, Bellman-target actions)
    assert not dql.sample(net, sched, torch.zeros(2, 1, 2), 1, 4, 3, "eval").requires_grad


def test_chain_gradient_reaches_the_first_denoising_step():
    sched = dql.make_schedule(2)
    net = ConstEps(c0=0.0, c1=0.1)  # c1 is only used at t = 1, the first executed step
    out = dql.sample(net, sched, torch.zeros(4, 1, 2), 2, 4, 3, "train", 0.1, 3.0, clip=1e6, grad=True)
    out.sum().backward()
    # d out / d c1 = coef_x0(0) / sqrt(ab_0) * d x_1 / d c1, with x_1 = coef_x0(1) x0_hat(1) + coef_xt(1) x_2
    # and d x0_hat(1) / d c1 = -sqrt(1/ab_1 - 1)
    d_x1 = sched["coef_x0"][1] * -(1 / sched["alpha_bar"][1] - 1).sqrt()
    expected = sched["coef_x0"][0] / sched["alpha_bar"][0].sqrt() * d_x1 * 4 * 4 * 3
    assert net.c1.grad.item() == pytest.approx(expected.item(), rel=1e-4)


def test_bc_term_is_computed_on_buffer_actions():
    torch.manual_seed(0)
    sched = dql.make_schedule(6)

    class EchoEps(nn.Module):  # eps_theta(x_t) = x_t: the loss grows with |a_0|
        def forward(self, x, t, obs):
            return x

    obs, critic = torch.zeros(64, 1, 2), QuadraticQ(torch.zeros(2))
    far = torch.full((64, 1, 2), 50.0)  # generated actions stay within ~[-1.3, 1.3], buffer ones do not
    _, bc_far, _ = dql.dql_actor_loss(EchoEps(), critic, sched, obs, far, 6, 1, 1.0, True)
    _, bc_near, _ = dql.dql_actor_loss(EchoEps(), critic, sched, obs, torch.zeros(64, 1, 2), 6, 1, 1.0, True)
    assert bc_far.item() > 100 and bc_near.item() < 2


def test_actor_update_moves_samples_up_a_quadratic_q():
    def loss(actor, critic, sched, obs, data, K, i):
        return dql.dql_actor_loss(actor, critic, sched, obs, data(), K, 1, 1.0, i % 2 == 0)[0]

    assert_actor_update_climbs_quadratic_q(dql, loss, iters=25)


@pytest.mark.parametrize("use_q1", [True, False])
def test_actor_loss_is_bc_plus_eta_times_the_normalised_q_of_the_sampled_executed_actions(use_q1, monkeypatch):
    """L = L_bc(buffer chunks) + eta * (-mean Q_a(s, a_new[:Ta]) / mean |Q_b|), (a, b) = (1, 2) or (2, 1) by the coin.
    The sampler is a stand-in whose chunk depends on the actor's constant c (so the chain's gradient is known)."""
    calls = []

    def fake_sample(actor, sched, obs, K, horizon_steps, action_dim, mode, *rest, grad=False, **kw):
        calls.append((mode, grad))
        base = torch.linspace(-0.5, 0.5, horizon_steps * action_dim).view(1, horizon_steps, action_dim)
        return actor.c1 * 2.0 + base.expand(obs.shape[0], -1, -1)

    monkeypatch.setattr(dql, "sample", fake_sample)

    class TwoHeads(nn.Module):  # Q1 = -|a - 0.3|^2 - 1, Q2 = -2 |a + 0.1|^2 - 3 (both negative, different)
        def forward(self, obs, a):
            return -((a - 0.3) ** 2).flatten(1).sum(-1) - 1, -2 * ((a + 0.1) ** 2).flatten(1).sum(-1) - 3

    sched, eta, Ta = dql.make_schedule(4), 2.5, 2
    actor, obs, chunks = ConstEps(0.1, 0.2), torch.zeros(5, 1, 2), torch.rand(5, 3, 2) - 0.5
    loss, bc, q_term = dql.dql_actor_loss(actor, TwoHeads(), sched, obs, chunks, 4, Ta, eta, use_q1)
    assert calls == [("train", True)]  # bc: test_bc_term_is_computed_on_buffer_actions
    c1 = torch.tensor(0.2, requires_grad=True)
    a_new = (c1 * 2.0 + torch.linspace(-0.5, 0.5, 6).view(1, 3, 2).expand(5, -1, -1))[:, :Ta]
    q1, q2 = TwoHeads()(obs, a_new)
    qa, qb = (q1, q2) if use_q1 else (q2, q1)
    expected_q = -qa.mean() / qb.abs().mean().detach()
    assert q_term.item() == pytest.approx(expected_q.item(), rel=1e-6)
    assert loss.item() == pytest.approx(bc.item() + eta * expected_q.item(), rel=1e-6)
    actor.c0.grad = actor.c1.grad = None
    (loss - bc).backward()  # the Q term's gradient alone reaches c1 through the sampled chunk
    assert actor.c1.grad.item() == pytest.approx(eta * torch.autograd.grad(expected_q, c1)[0].item(), rel=1e-5)
