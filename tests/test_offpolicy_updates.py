"""The update steps of idql, dipo, dawr and drwr against a computation written here, on small fixed batches.

Minibatch sampling is pinned (the buffer's `sample` returns fixed rows), the networks are small stand-ins
whose outputs have a closed form, and optimisers are plain SGD (zero learning rate where the test reads `.grad`),
so every loss value, gradient and parameter change of one update is known. The diffusion actor is replaced by a
constant-noise predictor that records its inputs: its denoising loss can then be recomputed from the recorded noisy
chunks whatever noise the script drew. The sampler, where an update samples, is a stand-in that returns a marker
value of the network it was given, so the test sees which network produced the next actions.
"""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import dawr, dipo, drwr, idql

torch.set_num_threads(1)


class LinearV(nn.Module):
    def __init__(self, obs_dim, scale=0.3, bias=0.1):
        super().__init__()
        self.lin = nn.Linear(obs_dim, 1)
        with torch.no_grad():
            self.lin.weight.copy_(scale * torch.linspace(-1, 1, obs_dim))
            self.lin.bias.fill_(bias)

    def forward(self, obs):
        return self.lin(obs.flatten(1)).squeeze(-1)


class TwoQuadraticQ(nn.Module):
    """Q_k(s, a) = w . s - c_k |a - m_k|^2 (k = 1, 2; c_k, w learnable): two different heads with known maxima."""

    def __init__(self, obs_dim, m1, m2, c=(1.0, 1.5), w_scale=0.2):
        super().__init__()
        self.m1, self.m2 = m1, m2
        self.c = nn.Parameter(torch.tensor(c))
        self.w = nn.Parameter(w_scale * torch.linspace(-1, 1, obs_dim))

    def forward(self, obs, a):
        base = obs.flatten(1) @ self.w
        q1 = base - self.c[0] * ((a - self.m1) ** 2).flatten(1).sum(-1)
        q2 = base - self.c[1] * ((a - self.m2) ** 2).flatten(1).sum(-1)
        return q1, q2


class ConstantNoise(nn.Module):
    """Diffusion-actor stand-in: predicts the learnable constant c everywhere; records (x_t, t) of each call."""

    def __init__(self, c=0.2, marker=0.0):
        super().__init__()
        self.c, self.marker, self.seen = nn.Parameter(torch.tensor(c)), marker, []

    def forward(self, x, t, obs):
        self.seen.append((x.detach().clone(), t.clone()))
        return self.c.expand_as(x)


def recorded_noise(net, sched, x0, call=-1):
    """The noise eps of the denoising loss's x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, from the recorded call."""
    x_t, t = net.seen[call]
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


def zero_lr(module):
    return torch.optim.SGD(module.parameters(), lr=0.0)


def clone_params(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_grads(module, loss, rtol=1e-4):
    expected = torch.autograd.grad(loss, list(module.parameters()))
    for p, e in zip(module.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=rtol, atol=1e-6)


def filled_buffer(module, n, obs_dim=3, Tp=2, Da=2, seed=0):
    rng = np.random.default_rng(seed)
    buf = module.ReplayBuffer(n, (1, obs_dim), (Tp, Da))
    term = np.zeros(n)
    term[[2, 5]] = 1
    buf.add(
        rng.normal(size=(n, 1, obs_dim)),
        rng.uniform(-0.8, 0.8, (n, Tp, Da)),
        rng.normal(size=n),
        rng.normal(size=(n, 1, obs_dim)),
        term,
    )
    buf.sample = lambda batch_size, device: buf.get(np.arange(batch_size), device)
    return buf


# ---- IDQL --------------------------------------------------------------------------------------------
def test_idql_update_fits_v_by_expectile_then_q_on_the_updated_v_then_moves_the_target_and_fits_the_actor():
    n, gamma, expectile, tau, lr_v = 8, 0.9, 0.8, 0.2, 0.5
    buf = filled_buffer(idql, n)
    b = {k: torch.as_tensor(getattr(buf, k)) for k in ("obs", "chunks", "rewards", "next_obs", "terminated")}
    v_critic = LinearV(3)
    q_critic = TwoQuadraticQ(3, 0.1, -0.2)
    q_target = TwoQuadraticQ(3, 0.3, 0.0, c=(0.5, 0.8), w_scale=1.0)
    v0, q0, qt0 = clone_params(v_critic), clone_params(q_critic), clone_params(q_target)
    start = dict(v=copy.deepcopy(v_critic), q_target=copy.deepcopy(q_target))
    actor = ConstantNoise()
    args = SimpleNamespace(batch_size=n, gamma=gamma, expectile=expectile, target_ema_rate=tau, denoising_steps=4)
    v_opt = torch.optim.SGD(v_critic.parameters(), lr=lr_v)
    sched = idql.make_schedule(4)
    stats = idql.idql_update(
        actor, q_critic, q_target, v_critic, zero_lr(actor), zero_lr(q_critic), v_opt, sched, buf, args, 1, True, "cpu"
    )

    # V: expectile regression of min(Q1', Q2')(s, a) with weight tau above V(s), 1 - tau below
    v_start, q_target_start = start["v"], start["q_target"]
    with torch.no_grad():
        target_q = torch.minimum(*q_target_start(b["obs"], b["chunks"]))
    diff = target_q - v_start(b["obs"])
    assert (diff > 0).any() and (diff < 0).any()
    v_loss = (torch.where(diff > 0, expectile, 1 - expectile) * diff**2).mean()
    assert stats["v_loss"] == pytest.approx(v_loss.item(), rel=1e-5)
    v_grads = torch.autograd.grad(v_loss, list(v_start.parameters()))
    for p, p0, g in zip(v_critic.parameters(), v0, v_grads, strict=True):
        torch.testing.assert_close(p, p0 - lr_v * g)
    # Q: r + gamma (1 - terminated) V_new(s'), with the V just updated; both heads regressed on it
    with torch.no_grad():
        y = b["rewards"] + gamma * (1 - b["terminated"]) * v_critic(b["next_obs"])
    q1, q2 = q_critic(b["obs"], b["chunks"])
    q_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    assert stats["q_loss"] == pytest.approx(q_loss.item(), rel=1e-5)
    assert_grads(q_critic, q_loss)
    # actor: the plain (unweighted) denoising loss on the buffer chunks
    per_sample = ((actor.c - recorded_noise(actor, sched, b["chunks"])) ** 2).mean(dim=(1, 2))
    assert stats["actor_loss"] == pytest.approx(per_sample.mean().item(), rel=1e-4)
    assert_grads(actor, per_sample.mean())
    # target Q: (1 - tau) target + tau Q (Q did not move: zero learning rate)
    for p_t, p_t0, p0 in zip(q_target.parameters(), qt0, q0, strict=True):
        torch.testing.assert_close(p_t, (1 - tau) * p_t0 + tau * p0)


def test_idql_value_fit_lands_on_the_upper_expectile():
    """Repeated updates on one state whose buffer actions have target-Q values q_i: V converges to the tau-expectile
    of the q_i (sum_i |tau - 1(q_i < v)| (q_i - v) = 0), above their mean for tau = 0.8."""
    q_values = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    n, tau = len(q_values), 0.8

    class TableQ(nn.Module):  # Q(s, a) = a[0, 0] (the buffer stores q_i as the action), same for both heads
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(()))

        def forward(self, obs, a):
            q = a[:, 0, 0] + 0 * self.unused
            return q, q

    class ConstV(nn.Module):
        def __init__(self):
            super().__init__()
            self.v = nn.Parameter(torch.zeros(()))

        def forward(self, obs):
            return self.v.expand(obs.shape[0])

    buf = idql.ReplayBuffer(n, (1, 1), (1, 1))
    buf.add(np.zeros((n, 1, 1)), q_values.numpy().reshape(n, 1, 1), np.zeros(n), np.zeros((n, 1, 1)), np.ones(n))
    buf.sample = lambda batch_size, device: buf.get(np.arange(n), device)
    v_critic, q = ConstV(), TableQ()
    v_opt = torch.optim.Adam(v_critic.parameters(), lr=0.1)
    args = SimpleNamespace(batch_size=n, gamma=0.9, expectile=tau, target_ema_rate=0.0, denoising_steps=2)
    actor = ConstantNoise()
    for _ in range(400):
        idql.idql_update(
            actor, q, q, v_critic, zero_lr(actor), zero_lr(q), v_opt, idql.make_schedule(2), buf, args, 1, False, "cpu"
        )
    lo, hi = q_values.min().item(), q_values.max().item()  # the expectile by bisection on its first-order condition
    for _ in range(60):
        mid = (lo + hi) / 2
        w = torch.where(q_values > mid, tau, 1 - tau)
        lo, hi = (mid, hi) if (w * (q_values - mid)).sum() > 0 else (lo, mid)
    assert v_critic.v.item() == pytest.approx(lo, abs=0.02)
    assert lo > q_values.mean().item() + 1.0


# ---- DIPO --------------------------------------------------------------------------------------------
def test_dipo_update_targets_from_the_target_networks_moves_actions_uphill_and_averages_targets(monkeypatch):
    n, Tp, Da, act_steps, gamma, tau = 6, 2, 2, 2, 0.9, 0.3
    buf = filled_buffer(dipo, n, Tp=Tp, Da=Da, seed=1)
    b = {k: torch.as_tensor(getattr(buf, k)).clone() for k in ("obs", "chunks", "rewards", "next_obs", "terminated")}
    sampled = []

    def fake_sample(net, sched, obs, K, horizon_steps, action_dim, mode, *rest, **kw):
        sampled.append(mode)
        return torch.full((obs.shape[0], horizon_steps, action_dim), net.marker)

    monkeypatch.setattr(dipo, "sample", fake_sample)
    actor, target_actor = ConstantNoise(0.2, marker=0.7), ConstantNoise(-0.1, marker=-0.3)
    critic = TwoQuadraticQ(3, torch.tensor([0.6, -0.2]), torch.tensor([0.4, 0.1]))
    target_critic = TwoQuadraticQ(3, 0.2, -0.5, c=(0.7, 0.4), w_scale=0.5)
    c0, tc0, ta0 = clone_params(critic), clone_params(target_critic), clone_params(target_actor)
    target_critic_start = copy.deepcopy(target_critic)
    args = SimpleNamespace(
        denoising_steps=4,
        act_steps=act_steps,
        batch_size=n,
        gamma=gamma,
        min_sampling_denoising_std=0.1,
        randn_clip_value=3.0,
        denoised_clip_value=1.0,
        action_lr=0.05,
        action_gradient_steps=4,
        target_ema_rate=tau,
    )
    sched = dipo.make_schedule(4)
    stats = dipo.dipo_update(
        actor, target_actor, critic, target_critic, zero_lr(actor), zero_lr(critic), sched, buf, args, 1, True, "cpu"
    )
    assert sampled == ["train"]

    # critic: y = r + gamma (1 - term) min(Q1', Q2')(s', a'), a' from the TARGET actor (marker -0.3)
    with torch.no_grad():
        tq1, tq2 = target_critic_start(b["next_obs"], torch.full((n, Tp, Da), -0.3))
    y = b["rewards"] + gamma * (1 - b["terminated"]) * torch.minimum(tq1, tq2)
    q1, q2 = critic(b["obs"], b["chunks"])
    q_loss = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    assert stats["q_loss"] == pytest.approx(q_loss.item(), rel=1e-5)
    assert stats["target_q_mean"] == pytest.approx(y.mean().item(), rel=1e-5)

    # action gradient: Adam (eps 1e-5) ascent on min(Q1, Q2), batch gradient norm clipped, actions clamped to [-1, 1]
    a = b["chunks"].clone().flatten(1)
    m, v = torch.zeros_like(a), torch.zeros_like(a)
    max_norm, beta1, beta2 = 0.1 * Da * act_steps, 0.9, 0.999
    for k in range(1, args.action_gradient_steps + 1):
        a_var = a.clone().requires_grad_(True)
        g = torch.autograd.grad(-torch.minimum(*critic(b["obs"], a_var.view(n, Tp, Da))).sum(), a_var)[0]
        g = g * min(1.0, max_norm / (g.norm() + 1e-6))
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g**2
        a = (a - args.action_lr * (m / (1 - beta1**k)) / ((v / (1 - beta2**k)).sqrt() + 1e-5)).clamp(-1, 1)
    moved = a.view(n, Tp, Da)
    np.testing.assert_allclose(buf.chunks, moved.numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        gain = torch.minimum(*critic(b["obs"], moved)) - torch.minimum(*critic(b["obs"], b["chunks"]))
    assert gain.min() > 0 and stats["action_q_gain"] == pytest.approx(gain.mean().item(), rel=1e-4)

    # actor: the denoising loss on the MOVED chunks
    eps = recorded_noise(actor, sched, moved)
    assert stats["actor_loss"] == pytest.approx(((0.2 - eps) ** 2).mean().item(), rel=1e-4)
    # targets: (1 - tau) target + tau online, for the critic and the actor
    for p_t, p_t0, p0 in zip(
        list(target_critic.parameters()) + list(target_actor.parameters()),
        tc0 + ta0,
        c0 + clone_params(actor),
        strict=True,
    ):
        torch.testing.assert_close(p_t, (1 - tau) * p_t0 + tau * p0)


# ---- DAWR --------------------------------------------------------------------------------------------
def _dawr_buffer(rows=5, E=2, obs_dim=3, Tp=2, Da=1, seed=0):
    """A consistent trajectory buffer: s' of row n is s of row n + 1 unless the episode ended there."""
    rng = np.random.default_rng(seed)
    buf = dawr.ReplayBuffer(rows, E, (1, obs_dim), (Tp, Da))
    obs = rng.normal(size=(E, 1, obs_dim))
    for n in range(rows):
        next_obs = rng.normal(size=(E, 1, obs_dim))
        term, trunc = np.array([n == 1, False], float), np.array([False, n == 2], float)
        buf.add(obs, rng.uniform(-1, 1, (E, Tp, Da)), rng.normal(size=E), term, trunc, next_obs)
        obs = np.where((term + trunc)[:, None, None] > 0, rng.normal(size=(E, 1, obs_dim)), next_obs)
    return buf


def td_lambda_by_sums(rewards, values, next_values, term, trunc, gamma, lam, alpha):
    """target_n = V_n + sum_{k >= n} (gamma lam)^(k - n) alpha delta_k up to the end of n's episode."""
    T, E = rewards.shape
    out = np.zeros((T, E))
    for e in range(E):
        for n in range(T):
            total = 0.0
            for k in range(n, T):
                delta = rewards[k, e] + gamma * (1 - term[k, e]) * next_values[k, e] - values[k, e]
                total += (gamma * lam) ** (k - n) * alpha * delta
                if term[k, e] or trunc[k, e]:
                    break
            out[n, e] = values[n, e] + total
    return out


def test_dawr_update_critic_on_td_lambda_then_actor_weighted_by_the_updated_advantages():
    rows, E, lr_c = 5, 2, 0.2
    buf = _dawr_buffer(rows, E)
    pos, env = np.repeat(np.arange(rows), E), np.tile(np.arange(E), rows)  # every transition once, fixed order
    buf.sample = lambda batch_size, generator=None: (pos, env)
    critic, actor = LinearV(3, scale=0.5), ConstantNoise(0.1)
    v0 = clone_params(critic)
    args = SimpleNamespace(
        n_steps=rows,
        num_envs=E,
        batch_size=rows * E,
        replay_ratio=1,
        critic_replay_ratio=1,
        gamma=0.9,
        td_lambda=0.7,
        td_alpha=0.95,
        beta=2.0,
        max_adv_weight=3.0,
        value_batch_size=4,
        max_grad_norm=None,
    )
    sched = dawr.make_schedule(4)
    stats = dawr.dawr_update(
        actor, critic, zero_lr(actor), torch.optim.SGD(critic.parameters(), lr=lr_c), sched, buf, args, "cpu"
    )

    obs, next_obs = torch.as_tensor(buf.obs), torch.as_tensor(buf.next_obs)

    def targets_with(params):
        v = LinearV(3)
        v.load_state_dict(dict(zip(["lin.weight", "lin.bias"], params, strict=True)))
        with torch.no_grad():
            values = v(obs.flatten(0, 1)).view(rows, E).double().numpy()
            next_values = v(next_obs.flatten(0, 1)).view(rows, E).double().numpy()
        return (
            v,
            values,
            td_lambda_by_sums(buf.rewards, values, next_values, buf.terminated, buf.truncated, 0.9, 0.7, 0.95),
        )

    v_start, _, targets = targets_with(v0)
    v_loss = (
        (v_start(torch.as_tensor(buf.obs[pos, env])) - torch.as_tensor(targets[pos, env], dtype=torch.float32)) ** 2
    ).mean()
    assert stats["value_loss"] == pytest.approx(v_loss.item(), rel=1e-5)
    for p, p0, g in zip(critic.parameters(), v0, torch.autograd.grad(v_loss, list(v_start.parameters())), strict=True):
        torch.testing.assert_close(p, p0 - lr_c * g)
    # advantages from the UPDATED critic, standardised over the minibatch, w = min(exp(beta A), w_max)
    _, values, targets = targets_with(clone_params(critic))
    adv = torch.as_tensor((targets - values)[pos, env])
    w = torch.exp(args.beta * (adv - adv.mean()) / (adv.std() + 1e-6)).clamp(max=args.max_adv_weight).float()
    assert (w == args.max_adv_weight).any() and (w < 1).any()
    assert stats["weight_mean"] == pytest.approx(w.mean().item(), rel=1e-4)
    # actor: weighted denoising loss on the buffer chunks
    x0 = torch.as_tensor(buf.chunks[pos, env])
    per_sample = ((actor.c - recorded_noise(actor, sched, x0)) ** 2).mean(dim=(1, 2))
    actor_loss = (w * per_sample).mean()
    assert stats["actor_loss"] == pytest.approx(actor_loss.item(), rel=1e-4)
    assert_grads(actor, actor_loss)


def test_dawr_updates_move_the_policy_toward_the_higher_advantage_chunk():
    """One state, two chunks (+0.5 with reward 1, -0.5 with reward 0), a critic that does not learn: the advantage
    weights favour +0.5, so the actor, behaviour-cloned on both equally often, ends up sampling +0.5."""
    torch.manual_seed(0)
    rows, E = 4, 16
    buf = dawr.ReplayBuffer(rows, E, (1, 2), (1, 1))
    good = np.arange(E) % 2 == 0
    for _ in range(rows):
        chunk = np.where(good, 0.5, -0.5).reshape(E, 1, 1)
        buf.add(np.zeros((E, 1, 2)), chunk, good.astype(float), np.ones(E), np.zeros(E), np.zeros((E, 1, 2)))

    class Zero(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(()))

        def forward(self, obs):
            return torch.zeros(obs.shape[0]) + 0 * self.unused

    actor = dawr.DiffusionMLP(2, 1, 1, 1, time_dim=8, mlp_dims=(32, 32, 32), activation="relu")
    sched = dawr.make_schedule(6)
    args = SimpleNamespace(
        n_steps=rows,
        num_envs=E,
        batch_size=16,
        replay_ratio=40,
        critic_replay_ratio=1,
        gamma=0.9,
        td_lambda=0.9,
        td_alpha=1.0,
        beta=10.0,
        max_adv_weight=100.0,
        value_batch_size=64,
        max_grad_norm=None,
    )
    critic = Zero()
    stats = dawr.dawr_update(
        actor,
        critic,
        torch.optim.Adam(actor.parameters(), lr=3e-3),
        zero_lr(critic),
        sched,
        buf,
        args,
        "cpu",
        generator=torch.Generator().manual_seed(0),
    )
    assert stats["actor_steps"] == 160
    actions = dawr.sample(actor, sched, torch.zeros(200, 1, 2), 6, 1, 1, "eval")
    assert (actions > 0).float().mean().item() > 0.9  # unweighted behaviour cloning would give about half


# ---- DRWR --------------------------------------------------------------------------------------------
def test_drwr_update_weights_each_sample_of_each_minibatch():
    n, batch_size = 6, 3
    g = torch.Generator().manual_seed(0)
    obs, chunks = torch.zeros(n, 1, 2), torch.rand(n, 2, 1, generator=g) * 2 - 1
    weights = torch.tensor([0.1, 3.0, 1.0, 0.5, 2.0, 0.0])
    actor, sched = ConstantNoise(0.3), drwr.make_schedule(4)
    opt = torch.optim.SGD(actor.parameters(), lr=0.1)
    args = SimpleNamespace(batch_size=batch_size, update_epochs=1, max_grad_norm=None)
    c = actor.c.item()
    loss, steps = drwr.drwr_update(
        actor, opt, sched, obs, chunks, weights, args, generator=torch.Generator().manual_seed(5)
    )
    assert steps == 2
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))  # the minibatches the update drew
    losses = []
    for k, (x_t, t) in enumerate(actor.seen):
        idx = perm[k * batch_size : (k + 1) * batch_size]
        ab = sched["alpha_bar"][t].view(-1, 1, 1)
        eps = (x_t - ab.sqrt() * chunks[idx]) / (1 - ab).sqrt()
        per_sample = ((c - eps) ** 2).mean(dim=(1, 2))
        losses.append((weights[idx] * per_sample).mean().item())
        grad = (weights[idx] * (2 * (c - eps)).mean(dim=(1, 2))).mean().item()
        c -= 0.1 * grad
    assert loss == pytest.approx(np.mean(losses), rel=1e-5)
    assert actor.c.item() == pytest.approx(c, rel=1e-5)
