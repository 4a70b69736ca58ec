"""Building blocks that several scripts each carry a copy of, tested once against a computation written here and
parametrised over every module that has a copy: GAE and the running reward scaler (the four PPO scripts), the
cosine schedule and the DDPM step (the eight diffusion scripts), the denoising loss (the six that fit to it), the
soft/EMA target update and the Bellman targets (the off-policy scripts). A copy that drifts from the others fails
here under its own name; test_copy_text.py keeps the copies' source one text."""

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import envs

torch.set_num_threads(1)
PPO = ["dppo", "gaussian_ppo", "gmm_ppo", "exact_likelihood_pg"]
DIFFUSION = ["dppo", "dawr", "drwr", "dipo", "idql", "dql", "qsm", "exact_likelihood_pg"]
TARGET_UPDATE = ("dipo", "idql", "dql", "qsm")  # soft_update(target, source, tau) in each


def load(name):
    return importlib.import_module(f"cleandppo.{name}")


def episodes_and_values(seed=0, N=9, E=3):
    rng = np.random.default_rng(seed)
    rewards, values, next_values = rng.normal(size=(N, E)), rng.normal(size=(N, E)), rng.normal(size=(N, E))
    dones = np.zeros((N, E))
    dones[2, 0] = dones[6, 0] = dones[4, 1] = dones[N - 1, 2] = 1
    return rewards, values, next_values, dones


# ---- GAE ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PPO)
def test_gae_is_the_discounted_sum_of_td_errors_inside_each_episode(name):
    gamma, lam = 0.9, 0.8
    rewards, values, next_values, dones = episodes_and_values()
    advantages, returns = load(name).compute_gae(rewards, values, next_values, dones, gamma, lam)
    N, E = rewards.shape
    for e in range(E):
        for n in range(N):
            # A_n = sum_{k >= n} (gamma lam)^(k - n) delta_k, up to and including the step that ends the episode
            total, k = 0.0, n
            while k < N:
                delta = rewards[k, e] + gamma * next_values[k, e] * (1 - dones[k, e]) - values[k, e]
                total += (gamma * lam) ** (k - n) * delta
                if dones[k, e]:
                    break
                k += 1
            assert advantages[n, e] == pytest.approx(total, rel=1e-10, abs=1e-12), (n, e)
    np.testing.assert_allclose(returns, advantages + values)


# ---- running reward scaler ----------------------------------------------------------------------------
def test_reward_scaler_divides_by_the_running_std_of_discounted_returns():
    gamma = 0.9
    rng = np.random.default_rng(1)
    scaler = envs.RunningRewardScaler(2, gamma)
    running, mean, var, count = np.zeros(2), 0.0, 1.0, 1e-4  # prior of weight 1e-4 at mean 0, variance 1
    spike = np.zeros((200, 2))
    spike[-1, 0] = 30.0  # one large reward after a long quiet stretch: scaled far beyond 10, so clipped
    for rewards in (*rng.normal(2.0, 1.5, size=(3, 5, 2)), spike):  # a non-zero mean: subtracting it would show
        firsts = (rng.uniform(size=rewards.shape) < 0.3).astype(float)  # episodes restarting now and then
        scaled = scaler(rewards, firsts)
        batch = []
        for n in range(len(rewards)):
            running = rewards[n] + gamma * (1 - firsts[n]) * running
            batch.append(running.copy())
        # the official RunningMeanStd (util/reward_scaling.py): this iteration's returns merged into the running
        # moments, the pooled sum of squared deviations divided by (count - 1)
        batch = np.concatenate(batch)
        total = count + batch.size
        new_mean = (count * mean + batch.sum()) / total
        sq_dev = count * (var + (mean - new_mean) ** 2) + ((batch - new_mean) ** 2).sum()
        mean, var, count = new_mean, sq_dev / (total - 1), total
        np.testing.assert_allclose(scaled, np.clip(rewards / np.sqrt(var + 1e-8), -10, 10), rtol=1e-9)
    assert scaled[-1, 0] == 10.0


# ---- diffusion schedule, DDPM step, denoising loss ----------------------------------------------------
@pytest.mark.parametrize("name", DIFFUSION)
def test_cosine_schedule_and_posterior_constants(name):
    K, s = 12, 0.008
    f = [math.cos(((i / K) + s) / (1 + s) * math.pi / 2) ** 2 for i in range(K + 1)]
    betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(K)])
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    module = load(name)
    np.testing.assert_allclose(module.cosine_beta_schedule(K).numpy(), betas, rtol=1e-5)
    sched = {k: v.double().numpy() for k, v in module.make_schedule(K).items()}
    np.testing.assert_allclose(sched["alpha_bar"], alpha_bar, rtol=1e-4)
    for key, value in dict(
        posterior_var=betas * (1 - alpha_bar_prev) / (1 - alpha_bar),
        coef_x0=betas * np.sqrt(alpha_bar_prev) / (1 - alpha_bar),
        coef_xt=(1 - alpha_bar_prev) * np.sqrt(1 - betas) / (1 - alpha_bar),
    ).items():
        np.testing.assert_allclose(sched[key], value, rtol=1e-4, atol=1e-7, err_msg=key)


class AffineEps(nn.Module):
    """eps = a x + b t (differentiable, differs across steps)."""

    def forward(self, x, t, obs):
        return 0.4 * x + 0.05 * t.float().view(-1, 1, 1)


@pytest.mark.parametrize("name", DIFFUSION)
def test_ddpm_step_mean_and_variance(name):
    module = load(name)
    K = 8
    sched = module.make_schedule(K)
    x, obs = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(0)) * 1.5, torch.zeros(4, 1, 3)
    t = torch.tensor([0, 3, 5, 7])
    if name == "dppo":
        mean, var = module.step_mean_var(AffineEps(), sched, x, obs, t, t - 1, False)
    else:
        mean, var = module.step_mean_var(AffineEps(), sched, x, obs, t)
    betas = module.cosine_beta_schedule(K).double()
    ab = torch.cumprod(1 - betas, 0)
    for b in range(4):
        k = t[b].item()
        ab_t, ab_prev, beta = ab[k], (ab[k - 1] if k > 0 else torch.tensor(1.0, dtype=torch.float64)), betas[k]
        xb = x[b].double()
        x0 = ((xb - (1 - ab_t).sqrt() * (0.4 * xb + 0.05 * k)) / ab_t.sqrt()).clamp(-1, 1)
        mu = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * xb
        torch.testing.assert_close(mean[b].double(), mu, rtol=1e-4, atol=1e-5)
        post_var = float(beta * (1 - ab_prev) / (1 - ab_t))
        assert var[b].flatten()[0].item() == pytest.approx(max(post_var, 1e-20), rel=1e-4, abs=1e-12)


class RecordingEps(nn.Module):
    """Predicts a constant c and records (x_t, t) so the test can recover the noise the loss drew."""

    def __init__(self, c):
        super().__init__()
        self.c, self.seen = c, []

    def forward(self, x, t, obs):
        self.seen.append((x.detach().clone(), t.clone()))
        return torch.full_like(x, self.c)


@pytest.mark.parametrize("name", [n for n in DIFFUSION if n not in ("exact_likelihood_pg", "qsm")])  # neither uses it
def test_denoising_loss_is_the_noise_mse_at_the_forward_marginal(name):
    module = load(name)
    K, B = 10, 64
    sched = module.make_schedule(K)
    x0 = torch.rand(B, 3, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    net = RecordingEps(0.3)
    torch.manual_seed(1)
    loss = module.denoising_loss(net, sched, x0, torch.zeros(B, 1, 2), K)
    ((x_t, t),) = net.seen
    assert t.min() >= 0 and t.max() <= K - 1 and len(set(t.tolist())) > 3  # uniform over all K steps
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()  # x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
    assert eps.std().item() == pytest.approx(1.0, abs=0.15)  # the noise is standard normal
    assert loss.item() == pytest.approx(((0.3 - eps) ** 2).mean().item(), rel=1e-4)


# ---- target networks: soft / EMA update ---------------------------------------------------------------
@pytest.mark.parametrize("name", TARGET_UPDATE)
def test_target_update_moves_tau_of_the_way(name):
    update = load(name).soft_update
    torch.manual_seed(0)
    target, source = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    update(target, source, 0.1)
    for p_t, p0, p in zip(target.parameters(), before, source.parameters(), strict=True):
        torch.testing.assert_close(p_t, 0.9 * p0 + 0.1 * p)
    assert all(not p.requires_grad or p.grad is None for p in target.parameters())


# ---- Bellman targets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dipo", "dql", "qsm"])
def test_bellman_target_bootstraps_the_double_q_minimum_unless_terminated(name):
    r, term = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.0])
    q1, q2 = torch.tensor([3.0, 7.0, -1.0]), torch.tensor([4.0, 5.0, -3.0])
    y = load(name).bellman_target(r, term, q1, q2, 0.8)
    assert y.tolist() == pytest.approx([1.0 + 0.8 * 3.0, -2.0, 0.5 + 0.8 * -3.0])


# ---- observation encoder cond_mlp (official Square diffusion MLP) ---------------------------------------
def linear(n_in, n_out):
    return n_in * n_out + n_out  # weights + biases


@pytest.mark.parametrize("name", DIFFUSION)
def test_square_diffusion_mlp_with_cond_mlp_has_the_official_parameter_count(name):
    """Official Square config (cfg/robomimic/pretrain/square/pre_diffusion_mlp.yaml): obs 23, action 7, Tp 4,
    time_dim 32, mlp_dims [1024]*3 residual, cond_mlp_dims [512, 64], Mish; no LayerNorm. Paper Table A9: about 2.31M
    parameters."""
    obs_dim, action_dim, Tp, time_dim, width = 23, 7, 4, 32, 1024
    time_embedding = linear(time_dim, 2 * time_dim) + linear(2 * time_dim, time_dim)
    cond_mlp = linear(obs_dim, 512) + linear(512, 64)  # plain MLP, activation between, Identity output
    head_in = Tp * action_dim + time_dim + 64  # noisy chunk, time embedding, encoded observation
    head = linear(head_in, width) + 2 * linear(width, width) + linear(width, Tp * action_dim)  # one residual block
    kw = dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon_steps=Tp,
        cond_steps=1,
        denoising_steps=20,
        backbone="mlp",
        time_dim=time_dim,
        mlp_dims=(width,) * 3,
        activation="mish",
        cond_mlp_dims=(512, 64),
    )
    net = load(name).build_network(kw)  # rebuilt from a checkpoint's model_kwargs
    assert sum(p.numel() for p in net.parameters()) == time_embedding + cond_mlp + head == 2_305_212
    without = load(name).build_network(dict(kw, cond_mlp_dims=()))
    assert sum(p.numel() for p in without.parameters()) == time_embedding + head + (obs_dim - 64) * width


@pytest.mark.parametrize("name", DIFFUSION)
def test_cond_mlp_is_what_the_head_sees_of_the_observation(name):
    kw = dict(
        obs_dim=5,
        action_dim=2,
        horizon_steps=4,
        cond_steps=2,
        denoising_steps=5,
        backbone="mlp",
        time_dim=8,
        mlp_dims=(16,) * 3,
        activation="mish",
        cond_mlp_dims=(12, 3),
    )
    torch.manual_seed(0)
    net = load(name).build_network(kw)
    x, t, obs = torch.randn(6, 4, 2), torch.arange(6) % 5, torch.randn(6, 2, 5)
    h = nn.functional.mish(obs.flatten(1) @ net.cond_mlp[0].weight.T + net.cond_mlp[0].bias)
    encoded = h @ net.cond_mlp[2].weight.T + net.cond_mlp[2].bias  # Identity output
    expected = net.mlp(torch.cat([x.flatten(1), net.time_embedding(t), encoded], dim=-1)).view(6, 4, 2)
    torch.testing.assert_close(net(x, t, obs), expected)
