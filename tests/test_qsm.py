"""Tests for cleandppo/qsm.py: the Q-score-matching loss (what it shares with dql.py, Bellman targets, the double-Q
critic, buffer, CLI smoke run and resume, is tested in test_dql_qsm_shared.py)."""

import math

import pytest
import torch
import torch.nn as nn

from cleandppo import qsm
from conftest import ConstEps, QuadraticQ, assert_actor_update_climbs_quadratic_q

torch.set_num_threads(1)


def test_qsm_loss_closed_form_with_linear_q():
    # eps_theta = c everywhere, Q1 = w1 . a, Q2 = w2 . a: grad_a Q = (w1 + w2)/2 at every (noisy) action,
    # loss = mean((-c - alpha (w1 + w2)/2)^2), minimised by eps_theta = -alpha * grad Q
    class LinearQ(nn.Module):
        def forward(self, obs, a):
            w1, w2 = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
            return (a * w1).flatten(1).sum(-1), (a * w2).flatten(1).sum(-1)

    sched, alpha, c = qsm.make_schedule(6), 10.0, 0.5
    loss, grad_q = qsm.qsm_actor_loss(
        ConstEps(c, c), LinearQ(), sched, torch.zeros(8, 1, 3), torch.randn(8, 4, 2), 6, 4, alpha
    )
    assert grad_q.shape == (8, 4, 2)
    torch.testing.assert_close(grad_q, torch.tensor([2.0, -1.0]).expand(8, 4, 2))
    assert loss.item() == pytest.approx(((-c - alpha * 2.0) ** 2 + (-c + alpha * 1.0) ** 2) / 2)

    # sign convention: eps_theta = -alpha grad Q is the minimiser (the DDPM mean then moves along +grad Q);
    # the opposite sign costs (2 alpha grad Q)^2
    class Eps(nn.Module):
        def __init__(self, sign):
            super().__init__()
            self.sign = sign

        def forward(self, x, t, obs):
            return (self.sign * alpha * torch.tensor([2.0, -1.0])).expand_as(x)

    args = (LinearQ(), sched, torch.zeros(8, 1, 3), torch.randn(8, 4, 2), 6, 4, alpha)
    assert qsm.qsm_actor_loss(Eps(-1.0), *args)[0].item() == 0.0
    assert qsm.qsm_actor_loss(Eps(1.0), *args)[0].item() == pytest.approx(((2 * alpha * 2) ** 2 + (2 * alpha) ** 2) / 2)


def test_qsm_gradient_is_taken_at_the_noisy_action():
    # hand-worked: K = 2, t = 1, a_0 = 0.2, eps = 1, a* = 0.5 (Q1 = Q2 + 1 = -(a - a*)^2), eps_theta = 0
    K, s = 2, 0.008
    f = [math.cos(((i / K) + s) / (1 + s) * math.pi / 2) ** 2 for i in range(K + 1)]
    beta = [min(1 - f[i + 1] / f[i], 0.999) for i in range(K)]
    ab1 = (1 - beta[0]) * (1 - beta[1])
    a_t = math.sqrt(ab1) * 0.2 + math.sqrt(1 - ab1) * 1.0
    g = -2 * (a_t - 0.5)  # both Qs have the same action gradient
    loss, grad_q = qsm.qsm_actor_loss(
        ConstEps(),
        QuadraticQ(torch.tensor(0.5)),
        qsm.make_schedule(K),
        torch.zeros(1, 1, 1),
        torch.full((1, 1, 1), 0.2),
        K,
        1,
        3.0,
        t=torch.tensor([1]),
        eps=torch.ones(1, 1, 1),
    )
    assert grad_q.item() == pytest.approx(g, rel=1e-5)
    assert loss.item() == pytest.approx((3.0 * g) ** 2, rel=1e-5)
    # the gradient at the clean buffer action a_0 would differ: -2 (0.2 - 0.5) = 0.6
    assert abs(g - 0.6) > 0.5


def test_qsm_loss_gradient_reaches_the_actor_only():
    torch.manual_seed(0)
    critic = qsm.DoubleQCritic(3, 1, 2, 2, dims=(8, 8, 8))
    actor, sched, alpha = ConstEps(0.1, -0.2), qsm.make_schedule(6), 10.0
    obs, chunks, eps = torch.randn(5, 1, 3), torch.randn(5, 4, 2), torch.randn(5, 4, 2)
    t = torch.tensor([0, 3, 0, 5, 1])
    loss, _ = qsm.qsm_actor_loss(actor, critic, sched, obs, chunks, 6, 2, alpha, t=t, eps=eps)
    loss.backward()
    assert all(p.grad is None for p in critic.parameters())
    # independent: grad of mean((-c_t - alpha (dQ1/da + dQ2/da)/2)^2) over the executed rows at the noisy action
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    a = (ab.sqrt() * chunks + (1 - ab).sqrt() * eps)[:, :2].detach().requires_grad_(True)
    g = torch.autograd.grad(sum(q.sum() for q in critic(obs, a)) / 2, a)[0]
    c0, c1 = torch.tensor(0.1, requires_grad=True), torch.tensor(-0.2, requires_grad=True)
    c = torch.where(t == 0, c0, c1).view(-1, 1, 1)
    expected = torch.autograd.grad(((-c - alpha * g) ** 2).mean(), (c0, c1))
    assert actor.c0.grad.item() == pytest.approx(expected[0].item(), rel=1e-5)
    assert actor.c1.grad.item() == pytest.approx(expected[1].item(), rel=1e-5)


def test_qsm_update_moves_samples_toward_the_maximum_of_a_quadratic_q():
    def loss(actor, critic, sched, obs, data, K, i):
        # on-policy "buffer": chunks sampled from the current actor, as in fine-tuning
        chunks = qsm.sample(actor, sched, obs, K, 1, 2, "train")
        return qsm.qsm_actor_loss(actor, critic, sched, obs, chunks, K, 1, 1.0)[0]

    assert_actor_update_climbs_quadratic_q(qsm, loss, iters=30)
