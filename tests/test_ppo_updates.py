"""The PPO update step of dppo, gaussian_ppo, gmm_ppo and exact_likelihood_pg against a computation written here.

Each test runs `ppo_update` once on a small fixed batch (one epoch, one minibatch, no gradient clipping, no KL stop)
with a zero-learning-rate SGD optimiser, so the parameters stay where they are and their `.grad` after the call is
the gradient of the script's loss. The expected loss is built from plain formulas and `torch.distributions`, and
the test compares the logged loss values and the gradient of every parameter. The old log-probs are offset from the
current ones so that the ratios spread over [0.6, 1.4]: some are clipped above, some below, some not at all, with
advantages of both signs. Where the log-probability itself is a long computation (the denoising step, the ODE
likelihood), a stand-in with a simple closed form is patched in: those functions have their own closed-form tests.
"""

import math

import pytest
import torch
import torch.nn as nn

from cleandppo import dppo, exact_likelihood_pg, gaussian_ppo, gmm_ppo

torch.set_num_threads(1)


def zero_lr_sgd(module):
    return torch.optim.SGD(module.parameters(), lr=0.0)


def spread_ratios(n):
    """log of n target ratios spread evenly over [0.6, 1.4]."""
    return torch.log(torch.linspace(0.6, 1.4, n))


def alternating_advantages(n, offset=0.3):
    """Advantages of alternating sign and varied size, so each ratio region holds both signs."""
    k = torch.arange(n, dtype=torch.float32)
    return (-1) ** k * (1 + k % 3) + offset


def surrogate(adv, ratio, eps):
    """PPO's clipped objective as a loss, per sample: -min(A r, A clip(r, 1 - eps, 1 + eps))."""
    return -torch.minimum(adv * ratio, adv * torch.clamp(ratio, 1 - eps, 1 + eps))


def normalized(adv):
    return (adv - adv.mean()) / (adv.std(unbiased=True) + 1e-8)


def grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def expected_grads(loss, module):
    return [
        g if g is not None else torch.zeros_like(p)
        for g, p in zip(
            torch.autograd.grad(loss, list(module.parameters()), allow_unused=True), module.parameters(), strict=True
        )
    ]


def assert_grads_close(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-6)


class LinearCritic(nn.Module):
    def __init__(self, obs_dim):
        super().__init__()
        self.lin = nn.Linear(obs_dim, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.linspace(-0.5, 0.5, obs_dim))
            self.lin.bias.fill_(0.2)

    def forward(self, obs):
        return self.lin(obs.flatten(1)).squeeze(-1)


# ---- Gaussian PPO ---------------------------------------------------------------------------------
class LinearGaussian(nn.Module):
    """mean = tanh(W obs), std = exp(logvar / 2) per action dim (log variance, clamped like GaussianPolicy)."""

    def __init__(self, obs_dim, Tp, Da):
        super().__init__()
        self.horizon_steps, self.action_dim, self.std_min, self.std_max = Tp, Da, 0.01, 1.0
        self.lin = nn.Linear(obs_dim, Tp * Da)
        self.logvar = nn.Parameter(2 * torch.log(torch.linspace(0.2, 0.4, Da)))

    def forward(self, obs):
        mean = torch.tanh(self.lin(obs.flatten(1))).view(-1, self.horizon_steps, self.action_dim)
        return mean, (0.5 * self.logvar).exp().clamp(self.std_min, self.std_max)


def gaussian_logp(policy, obs, actions):
    mean, std = policy(obs)
    return torch.distributions.Normal(mean, std).log_prob(actions).mean(dim=(1, 2)).clamp(-5, 2)


def _gaussian_batch(n=16, Tp=2, Da=2, obs_dim=3):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    policy, critic = LinearGaussian(obs_dim, Tp, Da), LinearCritic(obs_dim)
    obs = torch.randn(n, 1, obs_dim, generator=g)
    actions = torch.randn(n, Tp, Da, generator=g) * 0.3
    with torch.no_grad():
        old = gaussian_logp(policy, obs, actions) - spread_ratios(n)
    batch = dict(
        obs=obs,
        actions=actions,
        logprobs=old,
        advantages=alternating_advantages(n),
        returns=torch.randn(n, generator=g),
    )
    return policy, critic, batch


def test_gaussian_ppo_update_matches_the_clipped_surrogate_value_loss_and_entropy():
    policy, critic, batch = _gaussian_batch()
    n = len(batch["obs"])
    args = gaussian_ppo.Args(
        batch_size=n, update_epochs=1, clip_coef=0.2, vf_coef=0.7, ent_coef=0.05, target_kl=None, max_grad_norm=None
    )
    stats = gaussian_ppo.ppo_update(policy, critic, zero_lr_sgd(policy), zero_lr_sgd(critic), batch, args)
    got_actor, got_critic = grads(policy), grads(critic)

    ratio = (gaussian_logp(policy, batch["obs"], batch["actions"]) - batch["logprobs"]).exp()
    assert ((ratio > 1.2) & (batch["advantages"] > batch["advantages"].mean())).any()  # clipping matters here
    assert ((ratio < 0.8) & (batch["advantages"] < batch["advantages"].mean())).any()
    pg = surrogate(normalized(batch["advantages"]), ratio, 0.2).mean()
    _, std = policy(batch["obs"])
    ent = torch.distributions.Normal(torch.zeros_like(std), std).entropy().mean()
    v = 0.5 * ((critic(batch["obs"]) - batch["returns"]) ** 2).mean()
    assert stats["policy_loss"] == pytest.approx(pg.item(), rel=1e-5)
    assert stats["value_loss"] == pytest.approx(v.item(), rel=1e-5)
    assert stats["entropy"] == pytest.approx(ent.item(), rel=1e-5)
    assert stats["clipfrac"] == pytest.approx(((ratio - 1).abs() > 0.2).float().mean().item())
    assert stats["approx_kl"] == pytest.approx(((ratio - 1) - ratio.log()).mean().item(), rel=1e-4)  # k3
    assert stats["ratio"] == pytest.approx(ratio.mean().item(), rel=1e-6)
    assert stats["std"] == pytest.approx(std.mean().item(), rel=1e-6)
    assert_grads_close(got_actor, expected_grads(pg - 0.05 * ent, policy))
    assert_grads_close(got_critic, expected_grads(0.7 * v, critic))


# ---- GMM PPO --------------------------------------------------------------------------------------
class LinearGMM(nn.Module):
    """M modes: means = tanh(W_m obs), std per (mode, dim), logits = U obs."""

    def __init__(self, obs_dim, Tp, Da, M=3):
        super().__init__()
        self.horizon_steps, self.action_dim, self.num_modes = Tp, Da, M
        self.means = nn.Linear(obs_dim, M * Tp * Da)
        self.logits = nn.Linear(obs_dim, M)
        self.log_std = nn.Parameter(torch.log(torch.linspace(0.2, 0.5, M * Da)).view(M, Da))

    def forward(self, obs):
        x = obs.flatten(1)
        means = torch.tanh(self.means(x)).view(-1, self.num_modes, self.horizon_steps, self.action_dim)
        return means, self.log_std.exp(), self.logits(x)


def gmm_logp(policy, obs, actions):
    """Mixture log-density per action element (torch.distributions), clamped to [-5, 2]."""
    means, std, logits = policy(obs)
    comp = torch.distributions.Independent(torch.distributions.Normal(means, std[None, :, None, :]), 2)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=logits), comp)
    return (mix.log_prob(actions) / actions[0].numel()).clamp(-5, 2)


def test_gmm_ppo_update_matches_the_clipped_surrogate_value_loss_and_entropy():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    n, Tp, Da, obs_dim = 16, 2, 2, 3
    policy, critic = LinearGMM(obs_dim, Tp, Da), LinearCritic(obs_dim)
    obs, actions = torch.randn(n, 1, obs_dim, generator=g), torch.randn(n, Tp, Da, generator=g) * 0.3
    with torch.no_grad():
        old = gmm_logp(policy, obs, actions) - spread_ratios(n)
    batch = dict(
        obs=obs,
        actions=actions,
        logprobs=old,
        advantages=alternating_advantages(n, -0.4),
        returns=torch.randn(n, generator=g),
    )
    args = gmm_ppo.Args(
        batch_size=n, update_epochs=1, clip_coef=0.2, vf_coef=0.7, ent_coef=0.05, target_kl=None, max_grad_norm=None
    )
    stats = gmm_ppo.ppo_update(policy, critic, zero_lr_sgd(policy), zero_lr_sgd(critic), batch, args)
    got_actor, got_critic = grads(policy), grads(critic)

    ratio = (gmm_logp(policy, obs, actions) - old).exp()
    pg = surrogate(normalized(batch["advantages"]), ratio, 0.2).mean()
    _, std, logits = policy(obs)
    # official entropy approximation: sum_m pi_m H(N(0, diag std_m^2) over the Tp*Da chunk), batch mean
    comp_entropy = torch.distributions.Normal(torch.zeros_like(std), std).entropy().sum(-1) * Tp
    ent = (torch.softmax(logits, -1) * comp_entropy).sum(-1).mean()
    v = 0.5 * ((critic(obs) - batch["returns"]) ** 2).mean()
    assert stats["policy_loss"] == pytest.approx(pg.item(), rel=1e-5)
    assert stats["value_loss"] == pytest.approx(v.item(), rel=1e-5)
    assert stats["entropy"] == pytest.approx(ent.item(), rel=1e-5)
    assert stats["clipfrac"] == pytest.approx(((ratio - 1).abs() > 0.2).float().mean().item())
    assert stats["approx_kl"] == pytest.approx(((ratio - 1) - ratio.log()).mean().item(), rel=1e-4)  # k3
    assert stats["ratio"] == pytest.approx(ratio.mean().item(), rel=1e-6)
    mixture_std = (torch.softmax(logits, -1) * std.mean(-1)).sum(-1).mean()  # mode-weighted mean sigma (official)
    assert stats["std"] == pytest.approx(mixture_std.item(), rel=1e-6)
    assert_grads_close(got_actor, expected_grads(pg - 0.05 * ent, policy))
    assert_grads_close(got_critic, expected_grads(0.7 * v, critic))


# ---- DPPO: pairs of (env step, denoising step) ------------------------------------------------------
class StepScale(nn.Module):
    """Stand-in fine-tuned network: one learnable scale theta_t per denoising step t."""

    def __init__(self, K):
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(0.5, 1.0, K))


def stand_in_step_log_prob(net, x_in, x_out, t, act_steps):
    """log pi(x_out | x_in) stand-in: -|x_out - theta_t x_in|^2 over the first act_steps rows, averaged."""
    return -((x_out - net.theta[t].view(-1, 1, 1) * x_in)[:, :act_steps] ** 2).mean(dim=(1, 2))


def _dppo_batch(n=8, K=6, K_ft=3, Tp=3, Da=2, obs_dim=3, act_steps=2):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    net, critic = StepScale(K), LinearCritic(obs_dim)
    ft_t, ft_t_prev = dppo.fine_tuned_timesteps(dppo.denoising_plan(K, None), K_ft)
    obs = torch.randn(n, 1, obs_dim, generator=g)
    chains = torch.randn(n, K_ft + 1, Tp, Da, generator=g) * 0.5
    with torch.no_grad():
        current = torch.stack(
            [
                stand_in_step_log_prob(net, chains[:, j], chains[:, j + 1], ft_t[j].expand(n), act_steps)
                for j in range(K_ft)
            ],
            1,
        )
    old = current - spread_ratios(n * K_ft).view(n, K_ft)
    batch = dict(
        obs=obs,
        chains=chains,
        logprobs=old,
        advantages=alternating_advantages(n, 0.5),
        returns=torch.randn(n, generator=g),
    )
    return net, critic, batch, ft_t, ft_t_prev


@pytest.fixture
def stand_in_denoising_log_prob(monkeypatch):
    calls = []

    def fake(actor_ft, sched, obs, x_in, x_out, t, t_prev, args, rows=None):
        calls.append((t.clone(), t_prev.clone()))
        return stand_in_step_log_prob(actor_ft, x_in, x_out, t, args.act_steps)

    monkeypatch.setattr(dppo, "denoising_log_prob", fake)
    return calls


def test_dppo_update_uses_per_step_clip_denoising_discount_and_pair_normalized_advantages(stand_in_denoising_log_prob):
    n, K_ft, act_steps = 8, 3, 2
    net, critic, batch, ft_t, ft_t_prev = _dppo_batch(n=n, K_ft=K_ft, act_steps=act_steps)
    clip, clip_base, rate, gamma_d = 0.3, 0.05, 3.0, 0.7
    args = dppo.Args(
        batch_size=n * K_ft,
        update_epochs=1,
        act_steps=act_steps,
        clip_ploss_coef=clip,
        clip_ploss_coef_base=clip_base,
        clip_ploss_coef_rate=rate,
        gamma_denoising=gamma_d,
        vf_coef=0.7,
        target_kl=None,
        max_grad_norm=None,
    )
    sched = dppo.make_schedule(6)
    stats = dppo.ppo_update(net, net, critic, zero_lr_sgd(net), zero_lr_sgd(critic), sched, batch, args)
    got_actor, got_critic = grads(net), grads(critic)
    for t, t_prev in stand_in_denoising_log_prob:  # each pair's log-prob asked at its own (t, t_prev)
        assert ((t - t_prev) == 1).all() and set(t.tolist()) <= set(ft_t.tolist())

    # independent: all n * K' pairs in one minibatch
    pg_terms, v_terms = [], []
    adv_pairs = normalized(batch["advantages"].repeat_interleave(K_ft))  # normalised over the pairs
    for i in range(n):
        for j in range(K_ft):
            new = -((batch["chains"][i, j + 1] - net.theta[ft_t[j]] * batch["chains"][i, j])[:act_steps] ** 2).mean()
            ratio = (new - batch["logprobs"][i, j]).exp()
            u = j / (K_ft - 1)  # clip ratio of step j: exponential from clip_base (noisiest) to clip (last)
            eps = clip_base + (clip - clip_base) * (math.exp(rate * u) - 1) / (math.exp(rate) - 1)
            adv = adv_pairs[i * K_ft + j] * gamma_d ** (K_ft - 1 - j)  # denoising discount after normalisation
            pg_terms.append(surrogate(adv, ratio, eps))
            v_terms.append(0.5 * (critic(batch["obs"][i : i + 1])[0] - batch["returns"][i]) ** 2)
    pg, v = torch.stack(pg_terms).mean(), torch.stack(v_terms).mean()
    assert stats["policy_loss"] == pytest.approx(pg.item(), rel=1e-5)
    assert stats["value_loss"] == pytest.approx(v.item(), rel=1e-5)
    assert_grads_close(got_actor, expected_grads(pg, net))
    assert_grads_close(got_critic, expected_grads(0.7 * v, critic))


def test_dppo_warmup_moves_the_critic_only(stand_in_denoising_log_prob):
    net, critic, batch, ft_t, ft_t_prev = _dppo_batch()
    args = dppo.Args(batch_size=24, update_epochs=1, act_steps=2, target_kl=None)
    theta0, w0 = net.theta.detach().clone(), critic.lin.weight.detach().clone()
    aopt, copt = torch.optim.SGD(net.parameters(), lr=0.1), torch.optim.SGD(critic.parameters(), lr=0.1)
    dppo.ppo_update(net, net, critic, aopt, copt, dppo.make_schedule(6), batch, args, update_actor=False)
    assert torch.equal(net.theta, theta0)
    torch.testing.assert_close(critic.lin.weight, w0 - 0.1 * critic.lin.weight.grad)


# ---- exact-likelihood PG: one ratio per chunk, gradients accumulated in pieces ------------------------
class ChunkShift(nn.Module):
    """Stand-in fine-tuned actor: log-likelihood -|chunk - m - W obs|^2 / dims (m, W learnable)."""

    def __init__(self, obs_dim, Da):
        super().__init__()
        self.m = nn.Parameter(torch.linspace(-0.2, 0.2, Da))
        self.w = nn.Parameter(torch.linspace(0.1, 0.3, obs_dim))


def stand_in_chunk_log_likelihood(actor_ft, obs, chunks):
    shift = actor_ft.m[None, None, :] + (obs.flatten(1) @ actor_ft.w)[:, None, None]
    return -((chunks - shift) ** 2).mean(dim=(1, 2))


def test_exact_likelihood_update_clamps_log_likelihoods_and_accumulates_pieces(monkeypatch):
    n, Tp, Da, obs_dim = 12, 2, 2, 3
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    actor_ft, critic = ChunkShift(obs_dim, Da), LinearCritic(obs_dim)
    obs, chunks = torch.randn(n, 1, obs_dim, generator=g), torch.randn(n, Tp, Da, generator=g)
    chunks[:3] *= 4.0  # far chunks: log-likelihood below logprob_min, clamped (no gradient)
    monkeypatch.setattr(
        exact_likelihood_pg,
        "action_log_likelihood",
        lambda actor, a_ft, sde, o, c, args, probes=None, create_graph=False: stand_in_chunk_log_likelihood(a_ft, o, c),
    )
    lo, hi = -3.0, 2.0
    with torch.no_grad():
        old = stand_in_chunk_log_likelihood(actor_ft, obs, chunks) - spread_ratios(n)
    old[3] = -10.0  # an old log-likelihood below the range is clamped too
    batch = dict(
        obs=obs,
        chunks=chunks,
        logprobs=old,
        advantages=alternating_advantages(n, -0.2),
        returns=torch.randn(n, generator=g),
        probes=None,
    )
    args = exact_likelihood_pg.Args(
        batch_size=n,
        grad_chunk_size=5,
        update_epochs=1,
        clip_ploss_coef=0.2,
        vf_coef=0.7,
        logprob_min=lo,
        logprob_max=hi,
        target_kl=None,
        max_grad_norm=None,
    )
    stats = exact_likelihood_pg.ppo_update(
        None, actor_ft, critic, zero_lr_sgd(actor_ft), zero_lr_sgd(critic), None, batch, args
    )
    got_actor, got_critic = grads(actor_ft), grads(critic)

    new = stand_in_chunk_log_likelihood(actor_ft, obs, chunks)
    assert (new[:3] < lo).all()
    ratio = (new.clamp(lo, hi) - old.clamp(lo, hi)).exp()
    pg = surrogate(normalized(batch["advantages"]), ratio, 0.2).mean()
    v = 0.5 * ((critic(obs) - batch["returns"]) ** 2).mean()
    assert stats["policy_loss"] == pytest.approx(pg.item(), rel=1e-5)
    assert stats["value_loss"] == pytest.approx(v.item(), rel=1e-5)
    assert_grads_close(got_actor, expected_grads(pg, actor_ft))
    assert_grads_close(got_critic, expected_grads(0.7 * v, critic))


# ---- direction: a positive advantage raises the log-prob of its action ------------------------------
def test_gaussian_update_raises_the_log_prob_of_the_positive_advantage_action():
    torch.manual_seed(0)
    policy = gaussian_ppo.GaussianPolicy(3, 2, 2, 1, mlp_dims=(16, 16, 16), init_std=0.1, std_min=0.01, std_max=0.2)
    critic = gaussian_ppo.Critic(3, 1, (8, 8, 8))
    obs = torch.zeros(2, 1, 3)
    with torch.no_grad():
        mean, _ = policy(obs)
    actions = mean + torch.tensor([0.05, -0.05]).view(2, 1, 1)  # two different actions at the same state
    with torch.no_grad():
        old = gaussian_ppo.log_prob(*policy(obs), actions)
    batch = dict(obs=obs, actions=actions, logprobs=old, advantages=torch.tensor([1.0, -1.0]), returns=torch.zeros(2))
    args = gaussian_ppo.Args(batch_size=2, update_epochs=1, clip_coef=0.2, target_kl=None)
    gaussian_ppo.ppo_update(
        policy, critic, torch.optim.SGD(policy.parameters(), lr=1e-2), zero_lr_sgd(critic), batch, args
    )
    with torch.no_grad():
        new = gaussian_ppo.log_prob(*policy(obs), actions)
    assert new[0] > old[0] and new[1] < old[1], (old, new)


def test_gmm_update_raises_the_log_prob_of_the_positive_advantage_action():
    torch.manual_seed(0)
    policy = gmm_ppo.GMMPolicy(3, 2, 2, 1, num_modes=3, mlp_dims=(16, 16, 16))
    critic = gmm_ppo.Critic(3, 1, (8, 8, 8))
    obs = torch.zeros(2, 1, 3)
    with torch.no_grad():
        means, _, logits = policy(obs)
    actions = gmm_ppo.mode_action(means, logits) + torch.tensor([0.05, -0.05]).view(2, 1, 1)
    with torch.no_grad():
        old = gmm_ppo.log_prob(*policy(obs), actions)
    batch = dict(obs=obs, actions=actions, logprobs=old, advantages=torch.tensor([1.0, -1.0]), returns=torch.zeros(2))
    args = gmm_ppo.Args(batch_size=2, update_epochs=1, clip_coef=0.2, target_kl=None)
    gmm_ppo.ppo_update(policy, critic, torch.optim.SGD(policy.parameters(), lr=1e-2), zero_lr_sgd(critic), batch, args)
    with torch.no_grad():
        new = gmm_ppo.log_prob(*policy(obs), actions)
    assert new[0] > old[0] and new[1] < old[1], (old, new)


def test_dppo_update_raises_the_log_prob_of_the_positive_advantage_chain():
    torch.manual_seed(0)
    K, K_ft, Tp, Da, n = 6, 2, 2, 2, 4
    net = dppo.DiffusionMLP(3, Da, Tp, 1, time_dim=8, mlp_dims=(16, 16, 16), activation="relu")
    critic = dppo.Critic(3, 1, (8, 8, 8))
    sched, plan = dppo.make_schedule(K), dppo.denoising_plan(K, None)
    ft_t, ft_t_prev = dppo.fine_tuned_timesteps(plan, K_ft)
    t, t_prev = ft_t[:, None].expand(K_ft, n), ft_t_prev[:, None].expand(K_ft, n)  # per sample
    obs = torch.zeros(n, 1, 3)
    args = dppo.Args(batch_size=n * K_ft, update_epochs=1, act_steps=Tp, target_kl=None)
    args.clip_ploss_coef = args.clip_ploss_coef_base = 0.2
    _, chains = dppo.sample(net, net, sched, obs, plan, K_ft, "train", args, torch.Generator().manual_seed(1))

    def logp():
        with torch.no_grad():
            steps = [
                dppo.denoising_log_prob(net, sched, obs, chains[:, j], chains[:, j + 1], t[j], t_prev[j], args)
                for j in range(K_ft)
            ]
            return torch.stack(steps, 1)

    old = logp()
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    batch = dict(obs=obs, chains=chains, logprobs=old, advantages=advantages, returns=torch.zeros(n))
    actor_opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    dppo.ppo_update(net, net, critic, actor_opt, zero_lr_sgd(critic), sched, batch, args)
    change = (logp() - old).sum(1)  # summed over the fine-tuned steps of each chain
    assert (change[advantages > 0] > 0).all() and (change[advantages < 0] < 0).all(), change


def test_gmm_official_summed_logprob_gives_no_gradient_to_saturated_samples():
    """--official-summed-logprob: the summed chunk density clamped at 2 (official PPO_GMM) leaves every sample above
    2 with ratio 1, so an update on such samples moves no actor weight; the per-dimension log-prob does move them."""
    torch.manual_seed(0)
    policy = gmm_ppo.GMMPolicy(3, 2, 2, 1, num_modes=3, mlp_dims=(16, 16, 16), init_std=0.1)
    critic = gmm_ppo.Critic(3, 1, (8, 8, 8))
    obs = torch.zeros(2, 1, 3)
    with torch.no_grad():
        means, std, logits = policy(obs)
        # near a mode's mean: the summed log-density is about 4 * 1.38 > 2
        actions = gmm_ppo.mode_action(means, logits) + torch.tensor([0.02, -0.03]).view(2, 1, 1)
        summed = gmm_ppo.mixture_log_prob(means, std, logits, actions)
    assert (summed > 2).all()
    for official, moves in ((True, False), (False, True)):
        copy = gmm_ppo.GMMPolicy(3, 2, 2, 1, num_modes=3, mlp_dims=(16, 16, 16), init_std=0.1)
        copy.load_state_dict(policy.state_dict())
        old = (summed if official else summed / 4).clamp(-5.0, 2.0)
        batch = dict(
            obs=obs, actions=actions, logprobs=old, advantages=torch.tensor([1.0, -1.0]), returns=torch.zeros(2)
        )
        args = gmm_ppo.Args(
            batch_size=2, update_epochs=1, clip_coef=0.2, target_kl=None, official_summed_logprob=official
        )
        before = [p.detach().clone() for p in copy.parameters()]
        gmm_ppo.ppo_update(copy, critic, torch.optim.SGD(copy.parameters(), lr=1e-2), zero_lr_sgd(critic), batch, args)
        changed = any(not torch.equal(b, p) for b, p in zip(before, copy.parameters(), strict=True))
        assert changed == moves, official
