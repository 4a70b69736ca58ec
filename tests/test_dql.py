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
