"""Policy gradient through the exact likelihood of a diffusion policy (DPPO paper, Appendix B.5).

The diffusion policy is read as a continuous-time variance-preserving SDE; the log-likelihood of an
action chunk comes from the probability-flow ODE (Song et al. 2021, Appendix D): integrate the
chunk from the first noise level to t = 1 and add the integrated divergence of the ODE drift to the
Gaussian prior log-density. PPO (single-level MDP: one sample per env step, one ratio per action
chunk) backpropagates through the ODE solve. The rollout sampler is DPPO's (DDPM, exploration floor).

    # fine-tune the bundled pre-trained diffusion policy on Hopper (exact divergence, RK4 step 0.05)
    python cleandppo/exact_likelihood_pg.py --env-id Hopper-v2
    # the official solver settings: Hutchinson's estimator with 2 Rademacher probes, Euler step 0.05
    python cleandppo/exact_likelihood_pg.py --env-id Hopper-v2 --hutchinson-probes 2 --sde-method euler

See docs/exact_likelihood_pg.md for the derivation of the SDE and every deviation from the official code.
"""

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn

from cleandppo import arguments, console, envs, runs

ALGO = "exact_likelihood_pg"


@dataclass
class Args(arguments.RunArgs):
    # the flags every script shares come first: arguments.RunArgs (--env-id, --seed, --num-envs, --total-timesteps,
    # --checkpoint, --eval-*, --run-dir, ...; docs/contract.md)
    # --- diffusion policy (must match the checkpoint) ---
    backbone: Literal["mlp", "unet"] = "mlp"
    """backbone of the default bundled checkpoint (the network itself is rebuilt from the checkpoint)"""
    denoising_steps: int = 20
    """K: DDPM denoising steps (must equal the pre-trained model's)"""
    horizon_steps: int = 4
    """Tp: predicted action-chunk length"""
    act_steps: int = 4
    """Ta: executed actions per policy query"""
    cond_steps: int = 1
    """To: observation history length"""
    ft_denoising_steps: int = 10
    """K': the last K' denoising steps (lowest noise levels) use the fine-tuned copy, the rest the frozen network"""
    min_sampling_denoising_std: float = 0.1
    """floor of the sampling std at every denoising step during training rollouts (exploration)"""
    randn_clip_value: float = 3.0
    """clamp of the per-step Gaussian noise of the sampler (in std units)"""
    denoised_clip_value: float = 1.0
    """clamp of the predicted clean chunk x0 at every sampler step and in the likelihood ODE's eps"""

    # --- exact likelihood (probability-flow ODE of the VP SDE; Song et al. 2021, App. D) ---
    hutchinson_probes: int = 0
    """0: exact divergence (autograd over all Tp*Da coordinates); N > 0: Hutchinson estimate with N Rademacher probes"""
    sde_step_size: float = 0.05
    """ODE step in continuous time t in [sde_eps, 1] (official Euler step 0.05 = one DDPM step for K = 20)"""
    sde_method: Literal["euler", "rk4"] = "rk4"
    """fixed-step ODE solver; rk4 (6 network calls per step) is accurate at step 0.05, euler (official) is not"""
    sde_eps: Optional[float] = None
    """lower end of the ODE time interval; None: 1/K, the noise level of the first DDPM step (official: 1e-4)"""
    logprob_min: float = -5.0
    """clamp of the per-dimension log-likelihood (nats) before the ratio (official: -5)"""
    logprob_max: float = 2.0
    """upper clamp of the per-dimension log-likelihood (official: 2)"""

    # --- PPO (official Gym exact-likelihood config) ---
    n_steps: int = 500
    """policy queries per env per iteration (N)"""
    gamma: float = 0.99
    """environment discount per policy query"""
    gae_lambda: float = 0.95
    """GAE lambda over environment steps"""
    clip_ploss_coef: float = 0.01
    """PPO clip ratio (constant)"""
    actor_lr: float = 1e-5
    """actor learning rate (constant)"""
    critic_lr: float = 1e-3
    """critic learning rate (constant)"""
    update_epochs: int = 5
    """passes over each iteration's env-step samples"""
    batch_size: int = 5000
    """env-step samples (action chunks) per minibatch"""
    vf_coef: float = 0.5
    """value-loss weight"""
    target_kl: Optional[float] = 1.0
    """stop the iteration's epochs when the approximate KL exceeds this"""
    max_grad_norm: Optional[float] = None
    """gradient-norm clip (None: off, as the official config)"""
    reward_scale_running: bool = True
    """divide rewards by the std of a running discounted return (gamma 0.99)"""
    n_critic_warmup_itr: int = 0
    """first iterations update only the critic"""
    critic_dims: tuple[int, ...] = (256, 256, 256)
    """critic hidden widths (residual, Mish)"""
    grad_chunk_size: int = 250
    """samples per backward pass inside a minibatch (gradient accumulation: same gradient, less memory)"""
    logprob_batch_size: int = 10_000
    """samples per chunk when computing the old log-likelihoods after the rollout (memory only)"""


# robomimic ids. The one official robomimic config of this method is Can's (cfg/robomimic/finetune/can/
# ft_ppo_exact_diffusion_mlp.yaml): DPPO's Can settings (ft_ppo_diffusion_mlp.yaml) with actor LR 1e-5. Lift, square
# and transport take DPPO's per-task values the same way: our choice, not an official config
# (docs/exact_likelihood_pg.md).
ROBOMIMIC = dict(num_envs=50, gamma=0.999, actor_lr=1e-5, critic_lr=1e-3, n_critic_warmup_itr=2, eval_episodes=50)
ROBOMIMIC_TASK = dict(
    lift=dict(n_steps=300, batch_size=7500, update_epochs=10),
    can=dict(n_steps=300, batch_size=7500, update_epochs=10),
    square=dict(n_steps=400, batch_size=10_000, update_epochs=10),
    transport=dict(n_steps=400, batch_size=10_000, update_epochs=5),
)


def task_defaults(args) -> dict:
    """Defaults that differ from the Gym values above: the robomimic table; {} for the Gym tasks."""
    if not envs.is_robomimic(args.env_id):
        return {}
    task = envs.env_slug(args.env_id)
    ta = envs.ROBOMIMIC_TASKS[task]["act_steps"]
    return dict(ROBOMIMIC, **ROBOMIMIC_TASK[task], act_steps=ta, horizon_steps=ta)


# ------------------------------------------------------------------------------------------------
# Noise schedule and one denoising step (paper 3, eq. 3.3), copied from dppo.py (DDPM only)
# ------------------------------------------------------------------------------------------------
def cosine_beta_schedule(K: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule: alpha_bar(i) = f(i)/f(0), f(i) = cos^2(((i/K)+s)/(1+s) pi/2)."""
    i = np.arange(K + 1, dtype=np.float64)
    f = np.cos(((i / K) + s) / (1 + s) * np.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = np.clip(1 - alpha_bar[1:] / alpha_bar[:-1], 0, 0.999)
    return torch.tensor(betas, dtype=torch.float32)


def make_schedule(K: int) -> dict:
    """All per-step constants of the DDPM with K steps (t = 0 cleanest, K-1 noisiest)."""
    betas = cosine_beta_schedule(K)
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    alpha_bar_prev = torch.cat([torch.ones(1), alpha_bar[:-1]])
    sched = dict(betas=betas, alphas=alphas, alpha_bar=alpha_bar, alpha_bar_prev=alpha_bar_prev)
    sched["posterior_var"] = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)  # q(x_{t-1} | x_t, x_0), Ho et al. eq. 7
    sched["coef_x0"] = betas * alpha_bar_prev.sqrt() / (1 - alpha_bar)
    sched["coef_xt"] = (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar)
    return sched


def denoising_plan(K: int) -> list:
    """Timesteps in execution order with their predecessors: [(t, t_prev), ...], t_prev = -1 at the end.
    DDPM runs t = K-1, ..., 0."""
    return [(t, t - 1) for t in reversed(range(K))]


def step_mean_var(net, sched, x, obs, t, clip: float = 1.0):
    """Mean and variance of x_{t-1} given x_t for one reverse step (official `p_mean_var` in
    model/diffusion/diffusion_vpg.py); t: (B,) long tensor.
    DDPM (paper eq. 3.3): x0 = sqrt(1/ab) x - sqrt(1/ab - 1) eps, clamped to [-clip, clip];
    mean = coef_x0 x0 + coef_xt x; variance = the posterior variance beta_t (1 - ab_prev)/(1 - ab).
    """
    eps = net(x, t, obs)
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    x0 = ((1 / ab).sqrt() * x - (1 / ab - 1).sqrt() * eps).clamp(-clip, clip)
    mean = sched["coef_x0"][t].view(-1, 1, 1) * x0 + sched["coef_xt"][t].view(-1, 1, 1) * x
    return mean, sched["posterior_var"][t].clamp(min=1e-20).view(-1, 1, 1).expand_as(mean)


# ------------------------------------------------------------------------------------------------
# Noise-prediction networks (paper D.1)
# ------------------------------------------------------------------------------------------------
class SinusoidalPosEmb(nn.Module):
    """Transformer-style embedding of the integer denoising step: [sin(t f_k), cos(t f_k)]."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / (half - 1))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ResidualMLP(nn.Module):
    """Linear -> one pre-activation residual block per extra pair of equal widths -> Linear."""

    def __init__(self, dims, activation=nn.ReLU):
        super().__init__()
        hidden = dims[1:-1]
        if len(hidden) % 2 != 1 or len(set(hidden)) != 1:
            raise ValueError(f"residual MLP needs an odd number of equal hidden widths, got {hidden}")
        self.inp = nn.Linear(dims[0], hidden[0])
        self.blocks = nn.ModuleList(
            nn.Sequential(activation(), nn.Linear(hidden[0], hidden[0]), activation(), nn.Linear(hidden[0], hidden[0]))
            for _ in range((len(hidden) - 1) // 2)
        )
        self.out = nn.Linear(hidden[0], dims[-1])

    def forward(self, x):
        x = self.inp(x)
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


class DiffusionMLP(nn.Module):
    """eps_theta(x_t, t, s): residual MLP on [flattened noisy chunk, time embedding, observation]."""

    def __init__(
        self, obs_dim, action_dim, horizon_steps, cond_steps, time_dim, mlp_dims, activation, cond_mlp_dims=()
    ):
        super().__init__()
        act = {"relu": nn.ReLU, "mish": nn.Mish}[activation]
        self.horizon_steps, self.action_dim = horizon_steps, action_dim
        self.time_embedding = nn.Sequential(
            SinusoidalPosEmb(time_dim), nn.Linear(time_dim, 2 * time_dim), nn.Mish(), nn.Linear(2 * time_dim, time_dim)
        )
        self.cond_mlp = None  # optional observation encoder, activation between layers (official Square: 512, 64)
        if cond_mlp_dims:
            dims = [obs_dim * cond_steps, *cond_mlp_dims]
            layers = [m for i, o in zip(dims[:-1], dims[1:]) for m in (nn.Linear(i, o), act())][:-1]
            self.cond_mlp = nn.Sequential(*layers)
        obs_features = cond_mlp_dims[-1] if cond_mlp_dims else obs_dim * cond_steps
        in_dim = horizon_steps * action_dim + time_dim + obs_features
        self.mlp = ResidualMLP([in_dim, *mlp_dims, horizon_steps * action_dim], act)

    def forward(self, x, t, obs):
        obs = obs.flatten(1) if self.cond_mlp is None else self.cond_mlp(obs.flatten(1))
        h = torch.cat([x.flatten(1), self.time_embedding(t), obs], dim=-1)
        return self.mlp(h).view(-1, self.horizon_steps, self.action_dim)


class Conv1dBlock(nn.Module):
    """Conv1d ('same' padding) -> GroupNorm -> Mish."""

    def __init__(self, c_in, c_out, kernel, n_groups):
        super().__init__()
        conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
        self.block = nn.Sequential(conv, nn.GroupNorm(n_groups, c_out), nn.Mish())

    def forward(self, x):
        return self.block(x)


class FiLMResidualBlock(nn.Module):
    """Two conv blocks with FiLM (per-channel scale and bias from the condition) between them."""

    def __init__(self, c_in, c_out, cond_dim, kernel, n_groups):
        super().__init__()
        self.conv1, self.conv2 = Conv1dBlock(c_in, c_out, kernel, n_groups), Conv1dBlock(c_out, c_out, kernel, n_groups)
        h = 2 * c_out  # a scale and a bias per output channel
        self.cond = nn.Sequential(nn.Linear(cond_dim, h), nn.Mish(), nn.Linear(h, h), nn.Mish(), nn.Linear(h, h))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, cond):
        scale, bias = self.cond(cond)[:, :, None].chunk(2, dim=1)
        return self.conv2(scale * self.conv1(x) + bias) + self.skip(x)


class DiffusionUNet(nn.Module):
    """Chi et al.'s 1-D conditional UNet: channels = action dims, length = chunk, FiLM conditioning."""

    def __init__(self, obs_dim, action_dim, horizon_steps, cond_steps, dim, dim_mults, kernel, n_groups, embed_dim):
        super().__init__()
        if horizon_steps % (2 ** (len(dim_mults) - 1)):
            raise ValueError(f"UNet needs horizon_steps divisible by {2 ** (len(dim_mults) - 1)}, got {horizon_steps}")
        self.horizon_steps, self.action_dim = horizon_steps, action_dim
        e = embed_dim
        self.time_embedding = nn.Sequential(SinusoidalPosEmb(e), nn.Linear(e, 4 * e), nn.Mish(), nn.Linear(4 * e, e))
        cond_dim = embed_dim + obs_dim * cond_steps

        def film(c_in, c_out):
            return FiLMResidualBlock(c_in, c_out, cond_dim, kernel, n_groups)

        widths = [action_dim] + [dim * m for m in dim_mults]
        levels = list(zip(widths[:-1], widths[1:]))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):  # (the modules are made in the order of their parameters)
            blocks = [film(c_in, c_out), film(c_out, c_out)]
            blocks.append(nn.Identity() if i == len(levels) - 1 else nn.Conv1d(c_out, c_out, 3, 2, 1))  # downsample
            self.down.append(nn.ModuleList(blocks))
        self.mid = nn.ModuleList([film(widths[-1], widths[-1]) for _ in range(2)])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(levels[1:]):
            blocks = [film(2 * c_out, c_in), film(c_in, c_in)]
            self.up.append(nn.ModuleList([*blocks, nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)]))  # then upsample
        self.final = nn.Sequential(Conv1dBlock(dim, dim, kernel, n_groups), nn.Conv1d(dim, action_dim, 1))

    def forward(self, x, t, obs):
        cond = torch.cat([self.time_embedding(t), obs.flatten(1)], dim=-1)
        h, skips = x.transpose(1, 2), []  # (B, Da, Tp)
        for block1, block2, downsample in self.down:
            h = block2(block1(h, cond), cond)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, cond)
        for block1, block2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(block2(block1(h, cond), cond))
        return self.final(h).transpose(1, 2)


def build_network(kw: dict) -> nn.Module:
    """Rebuild a noise-prediction network from a checkpoint's `model_kwargs`."""
    shape = (kw["obs_dim"], kw["action_dim"], kw["horizon_steps"], kw["cond_steps"])
    if kw["backbone"] == "mlp":
        cond_mlp_dims = tuple(kw.get("cond_mlp_dims") or ())
        return DiffusionMLP(*shape, kw["time_dim"], tuple(kw["mlp_dims"]), kw["activation"], cond_mlp_dims)
    unet = (kw["unet_dim"], tuple(kw["unet_dim_mults"]), kw["unet_kernel_size"], kw["unet_n_groups"])
    return DiffusionUNet(*shape, *unet, kw["unet_step_embed_dim"])


# ------------------------------------------------------------------------------------------------
# DPPO's sampler, used for the rollouts (paper 4.1-4.3)
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample(actor, actor_ft, sched, obs, plan, ft_steps, mode, args, generator=None):
    """Run the reverse chain; return (action chunk, chain (B, ft_steps + 1, Tp, Da) of the fine-tuned steps; chain[:, 0]
    is the input of the first). The last `ft_steps` executed steps use `actor_ft`, the earlier ones the frozen `actor`.
    `mode`: "train" -> std floored at args.min_sampling_denoising_std at every step (exploration, paper 4.3);
            "eval"  -> natural std floored at 1e-3, none at the final step.
    Every step clamps x0 to args.denoised_clip_value and the noise to args.randn_clip_value std."""
    B = obs.shape[0]
    shape = (B, actor.horizon_steps, actor.action_dim)
    x = torch.randn(shape, device=obs.device, generator=generator)
    chain = []
    n = len(plan)
    for i, (t, _) in enumerate(plan):
        if i == n - ft_steps:
            chain.append(x)
        net = actor_ft if i >= n - ft_steps else actor
        t_b = torch.full((B,), t, dtype=torch.long, device=x.device)
        mean, var = step_mean_var(net, sched, x, obs, t_b, args.denoised_clip_value)
        std = var.sqrt()
        if mode == "train":
            std = std.clamp(min=args.min_sampling_denoising_std)
        else:
            std = std.clamp(min=1e-3) if t > 0 else torch.zeros_like(std)
        noise = torch.randn(shape, device=x.device, generator=generator)
        x = mean + std * noise.clamp(-args.randn_clip_value, args.randn_clip_value)
        if i >= n - ft_steps:
            chain.append(x)
    chain = torch.stack(chain, dim=1) if chain else x.new_zeros(B, 0, *shape[1:])
    return x, chain


# ------------------------------------------------------------------------------------------------
# Exact likelihood: probability-flow ODE of the VP SDE behind the DDPM (Song et al. 2021, App. D)
# ------------------------------------------------------------------------------------------------
class VPSDE:
    """dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW on t in [0, 1], built from the discrete DDPM betas.

    The forward marginal is x_t = sqrt(ab(t)) x_0 + sqrt(1 - ab(t)) eps with ab(t) = exp(-int_0^t beta).
    We let log ab(t) be linear between the grid points t = i/K and pass through the DDPM's own
    alpha_bar: ab(0) = 1 and ab((k+1)/K) = prod_{j<=k} (1 - beta_j), the noise level on which the
    network was trained at step index k. Then beta(t) = -d log ab/dt = -K log(1 - beta_i) on
    [i/K, (i+1)/K): the discrete beta rescaled by K (-K log(1 - b) = K b + O(b^2)), exactly consistent
    with the discrete alpha_bar. (The official code uses the unscaled beta_i, see the docs page.)
    """

    def __init__(self, betas: torch.Tensor):
        b = betas.double().clamp(max=1 - 1e-12)
        self.K = len(b)
        self.rates = (-self.K * torch.log1p(-b)).tolist()  # beta(t) on [i/K, (i+1)/K)
        self.log_ab = [0.0] + torch.cumsum(torch.log1p(-b), 0).tolist()  # log ab(i/K), i = 0..K

    def interval(self, t: float) -> int:
        return min(max(int(math.floor(t * self.K + 1e-9)), 0), self.K - 1)

    def alpha_bar(self, t: float) -> float:
        i = self.interval(t)
        return math.exp(self.log_ab[i] - self.rates[i] * (t - i / self.K))

    def step_interp(self, t: float) -> tuple[int, float]:
        """(k, w) with t*K - 1 = k + w: t lies between the training noise levels of steps k and k + 1."""
        u = t * self.K - 1
        k = min(max(int(math.floor(u + 1e-9)), 0), self.K - 1)
        w = 0.0 if k == self.K - 1 else min(max(u - k, 0.0), 1.0)
        return k, w


def rademacher(shape, device=None, generator=None) -> torch.Tensor:
    """Independent +-1 entries (Hutchinson probes)."""
    return torch.randint(0, 2, shape, device=device, generator=generator).float() * 2 - 1


def drift_and_divergence(eps_fn, sde, x, t, beta, probes=None, create_graph=False):
    """PF-ODE drift f(x, t) = -1/2 beta (x - eps(x, t) / sqrt(1 - ab(t))) and its divergence tr(df/dx).

    The score is -eps / sqrt(1 - ab(t)); the drift is the SDE drift minus 1/2 g^2 times the score.
    x: (B, D). probes None: the exact trace, sum_i e_i^T (df/dx) e_i over all D basis vectors (one
    vector-Jacobian product, D replicas of the batch); probes (B, P, D): Hutchinson's unbiased
    estimate, the mean over probes v of v^T (df/dx) v. create_graph keeps the divergence
    differentiable (the policy gradient goes through it). Returns (drift (B, D), divergence (B,)).
    """
    B, D = x.shape
    if probes is None:
        v, weight = torch.eye(D, device=x.device, dtype=x.dtype)[:, None, :].expand(D, B, D), 1.0
    else:
        v, weight = probes.transpose(0, 1).to(x.dtype), 1.0 / probes.shape[1]
    P = v.shape[0]
    sigma = math.sqrt(1.0 - sde.alpha_bar(t))
    with torch.enable_grad():
        x_rep = x.unsqueeze(0).expand(P, B, D).reshape(P * B, D)
        if not x_rep.requires_grad:
            x_rep.requires_grad_(True)
        f = -0.5 * beta * (x_rep - eps_fn(x_rep, t) / sigma)
        v_flat = v.reshape(P * B, D)
        vjp = torch.autograd.grad((f * v_flat).sum(), x_rep, create_graph=create_graph)[0]
    div = (vjp * v_flat).sum(-1).view(P, B).sum(0) * weight
    drift = f.view(P, B, D)[0]
    if not create_graph:
        drift, div = drift.detach(), div.detach()
    return drift, div


def ode_time_grid(sde, t_min, step_size):
    """Fixed steps [(t, h, beta), ...] from t_min to 1 that never straddle a DDPM grid point i/K.

    Each interval [i/K, (i+1)/K] (cut at t_min) gets ceil(length / step_size) equal steps, so beta is
    constant on every step. With t_min = 1/K and step 1/K this is one step per DDPM step.
    """
    steps = []
    for i in range(sde.K):
        a, b = max(t_min, i / sde.K), (i + 1) / sde.K
        if b - a <= 1e-12:
            continue
        m = max(1, math.ceil((b - a) / step_size - 1e-6))
        steps += [(a + j * (b - a) / m, (b - a) / m, sde.rates[i]) for j in range(m)]
    return steps


def pf_ode_log_likelihood(eps_fn, sde, x0, t_min, step_size, method="euler", probes=None, create_graph=False):
    """log p_{t_min}(x0) in nats (summed over the D coordinates), shape (B,).

    Instantaneous change of variables along the probability-flow ODE dx/dt = f(x, t):
    log p_{t_min}(x(t_min)) = log N(x(1); 0, I) + int_{t_min}^1 div f(x(t), t) dt.
    The pair [x, delta] is integrated from t_min to 1 with fixed-step Euler or classic RK4 on the
    grid of ode_time_grid. Without create_graph nothing keeps a graph.
    """
    x = x0.flatten(1)
    B, D = x.shape
    delta = x.new_zeros(B)
    for t, h, beta in ode_time_grid(sde, t_min, step_size):
        f = lambda y, s, beta=beta: drift_and_divergence(eps_fn, sde, y, s, beta, probes, create_graph)  # noqa: E731
        if method == "euler":
            dx, dd = f(x, t)
        else:  # classic 4th-order Runge-Kutta on the augmented state [x, delta]
            k1, d1 = f(x, t)
            k2, d2 = f(x + h / 2 * k1, t + h / 2)
            k3, d3 = f(x + h / 2 * k2, t + h / 2)
            k4, d4 = f(x + h * k3, t + h)
            dx, dd = (k1 + 2 * k2 + 2 * k3 + k4) / 6, (d1 + 2 * d2 + 2 * d3 + d4) / 6
        x, delta = x + h * dx, delta + h * dd
    prior = -0.5 * (x**2).sum(-1) - 0.5 * D * math.log(2 * math.pi)
    return prior + delta


def policy_eps_fn(actor, actor_ft, ft_steps, sde, obs, clip=None):
    """eps(x, t) of the diffusion policy in continuous time, for the ODE.

    The network was trained only at the DDPM noise levels t = (k+1)/K (step index k). Between two
    of them eps is the linear interpolation of the two networks' outputs, so the field is continuous
    in t and equals the network at every trained level (one evaluation there, two in between; below
    t = 1/K it is step 0's output). Steps k < ft_steps (the last ft_steps of the reverse chain, the
    ones DPPO's sampler runs with the fine-tuned copy) use actor_ft, the others the frozen actor, for
    drift and divergence alike. With clip, the implied clean chunk is clamped to [-clip, clip] and eps
    recomputed from it, as the sampler does (this keeps the ODE from blowing up where the network
    extrapolates). x may hold several replicas of the batch; obs is tiled to match. The chunk shape is the
    networks' (actor.horizon_steps, actor.action_dim).
    """
    B, Tp, Da = obs.shape[0], actor.horizon_steps, actor.action_dim

    def net_out(k, x):
        net = actor_ft if k < ft_steps else actor
        reps = x.shape[0] // B
        o = obs if reps == 1 else obs.repeat(reps, *([1] * (obs.dim() - 1)))
        k_b = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        return net(x.view(-1, Tp, Da), k_b, o).flatten(1)

    def eps_fn(x, t):
        k, w = sde.step_interp(t)
        out = net_out(k, x) if w < 1 - 1e-6 else 0.0
        if w > 1e-6:
            out = (1 - w) * out + w * net_out(k + 1, x)
        if clip is None:
            return out
        ab = sde.alpha_bar(t)  # as the sampler: clamp the implied clean chunk, recompute eps from it
        x0 = ((x - math.sqrt(1 - ab) * out) / math.sqrt(ab)).clamp(-clip, clip)
        return (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    return eps_fn


def action_log_likelihood(actor, actor_ft, sde, obs, chunks, args, probes=None, create_graph=False):
    """Per-dimension log-likelihood (nats, log p / (Tp*Da)) of action chunks (B, Tp, Da) given obs, (B,); the last
    args.ft_denoising_steps denoising steps run actor_ft."""
    Tp, Da = chunks.shape[1], chunks.shape[2]
    eps_fn = policy_eps_fn(actor, actor_ft, args.ft_denoising_steps, sde, obs, args.denoised_clip_value)
    t_min = args.sde_eps if args.sde_eps is not None else 1.0 / sde.K
    logp = pf_ode_log_likelihood(eps_fn, sde, chunks, t_min, args.sde_step_size, args.sde_method, probes, create_graph)
    return logp / (Tp * Da)


# ------------------------------------------------------------------------------------------------
# PPO over env steps with the exact likelihood (official PPOExactDiffusion, single-level MDP)
# ------------------------------------------------------------------------------------------------
class Critic(nn.Module):
    """V(s) of the environment observation only (paper 4.2; D.4): residual Mish MLP."""

    def __init__(self, obs_dim, cond_steps, dims=(256, 256, 256)):
        super().__init__()
        self.net = ResidualMLP([obs_dim * cond_steps, *dims, 1], nn.Mish)

    def forward(self, obs):
        return self.net(obs.flatten(1)).squeeze(-1)


def compute_gae(rewards, values, next_values, dones, gamma, gae_lambda):
    """GAE over environment (policy-query) steps (Schulman et al. 2016); arrays (N, E). next_values[n] is V of the state
    reached after step n (already the bootstrap at time-outs); dones[n] = 1 cuts the recursion (the episode ended).
    Returns (advantages, returns = advantages + values)."""
    advantages = np.zeros_like(rewards)
    last = np.zeros(rewards.shape[1])
    for n in reversed(range(len(rewards))):
        delta = rewards[n] + gamma * next_values[n] * (1 - dones[n]) - values[n]
        last = delta + gamma * gae_lambda * (1 - dones[n]) * last
        advantages[n] = last
    return advantages, advantages + values


def ppo_update(actor, actor_ft, critic, actor_opt, critic_opt, sde, batch, args, update_actor=True):
    """PPO epochs over the N*E env-step samples, one ratio per action chunk (official PPOExactDiffusion.loss).

    new/old log-likelihoods are clamped to [logprob_min, logprob_max]; advantages normalized per
    minibatch; constant clip; value loss 0.5 MSE. Each minibatch is processed in grad_chunk_size
    pieces whose losses are scaled by piece/minibatch size, so the accumulated gradient equals the
    whole-minibatch gradient. The same Hutchinson probes as the old log-likelihood are reused.
    """
    device = batch["obs"].device
    num, mb, gcs = batch["obs"].shape[0], args.batch_size, args.grad_chunk_size
    lo, hi, clip_ratio = args.logprob_min, args.logprob_max, args.clip_ploss_coef
    old_all = batch["logprobs"].clamp(lo, hi)
    stats, clipfracs = {}, []
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(num).to(device)
        for start in range(0, num - mb + 1, mb):
            idx = perm[start : start + mb]
            adv_mb = batch["advantages"][idx]
            adv_mb = (adv_mb - adv_mb.mean()) / (adv_mb.std() + 1e-8)
            actor_opt.zero_grad()
            critic_opt.zero_grad()
            sums = dict(policy_loss=0.0, value_loss=0.0, approx_kl=0.0, ratio=0.0, clipfrac=0.0)
            for c0 in range(0, mb, gcs):
                c, adv = idx[c0 : c0 + gcs], adv_mb[c0 : c0 + gcs]
                probes = batch["probes"][c] if batch["probes"] is not None else None
                new_logp = action_log_likelihood(
                    actor, actor_ft, sde, batch["obs"][c], batch["chunks"][c], args, probes, create_graph=update_actor
                ).clamp(lo, hi)
                logratio = new_logp - old_all[c]
                ratio = logratio.exp()
                pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)).sum() / mb
                v_loss = 0.5 * ((critic(batch["obs"][c]) - batch["returns"][c]) ** 2).sum() / mb
                (pg_loss + args.vf_coef * v_loss).backward()
                with torch.no_grad():
                    sums["policy_loss"] += pg_loss.item()
                    sums["value_loss"] += v_loss.item()
                    sums["approx_kl"] += ((ratio - 1) - logratio).sum().item() / mb  # k3 estimator
                    sums["ratio"] += ratio.sum().item() / mb
                    sums["clipfrac"] += ((ratio - 1).abs() > clip_ratio).float().sum().item() / mb
            if args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(actor_ft.parameters(), args.max_grad_norm)
                nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
            if update_actor:
                actor_opt.step()
            critic_opt.step()
            clipfracs.append(sums.pop("clipfrac"))
            stats = sums
            if args.target_kl is not None and sums["approx_kl"] > args.target_kl:
                stats["clipfrac"] = float(np.mean(clipfracs))
                return stats
    stats["clipfrac"] = float(np.mean(clipfracs)) if clipfracs else 0.0
    return stats


# ------------------------------------------------------------------------------------------------
# Evaluation, checks, main
# ------------------------------------------------------------------------------------------------
def eval_act(actor, actor_ft, sched, plan, ft_steps, args, device):
    """The evaluation action function obs -> chunk (envs.run_episodes, envs.capture_video): no exploration floor (DDPM
    noise kept except at the last step); the last `ft_steps` denoising steps run the fine-tuned network."""

    def act(obs):
        chunk, _ = sample(actor, actor_ft, sched, torch.as_tensor(obs, device=device), plan, ft_steps, "eval", args)
        return chunk.cpu().numpy()

    return act


def check_args(args):
    arguments.check_ranges(args, None if args.eval_only else args.num_envs * args.n_steps * args.act_steps)
    if args.act_steps > args.horizon_steps:
        envs.fail(
            f"--act-steps {args.act_steps} > --horizon-steps {args.horizon_steps}; use act_steps <= horizon_steps"
        )
    if args.ft_denoising_steps > args.denoising_steps:
        envs.fail(
            f"--ft-denoising-steps {args.ft_denoising_steps} > --denoising-steps {args.denoising_steps}; "
            f"use at most {args.denoising_steps}"
        )
    if not args.eval_only and args.batch_size > args.num_envs * args.n_steps:
        envs.fail(
            f"--batch-size {args.batch_size} > the {args.num_envs * args.n_steps} samples of an iteration "
            f"(--num-envs x --n-steps); pass --batch-size <= {args.num_envs * args.n_steps} or more envs/steps"
        )
    if args.logprob_min >= args.logprob_max:
        envs.fail(f"--logprob-min {args.logprob_min} must be below --logprob-max {args.logprob_max}")


def load_diffusion_checkpoint(path, args):
    """Load a diffusion checkpoint and check it against the flags (one-line errors)."""
    ckpt = envs.load_diffusion_checkpoint(path, args)
    if ckpt["algo"] == ALGO and ckpt.get("ft_denoising_steps") != args.ft_denoising_steps:
        envs.fail(
            f"{path} fine-tuned {ckpt['ft_denoising_steps']} denoising steps; "
            f"pass --ft-denoising-steps {ckpt['ft_denoising_steps']}"
        )
    return ckpt


def make_checkpoint(actor, kw, normalization, args, iteration, env_steps, **extra):
    """What every checkpoint of a diffusion script holds: the network `actor` as 'model' (the one every diffusion
    script can start from), its description, the normalization, the run's flags and the script's `extra` entries;
    on robomimic the env meta in use, restored when loading."""
    if envs.is_robomimic(args.env_id):
        extra["robomimic_env_args"] = envs.robomimic_env_args(args.env_id)
    ckpt = dict(algo=ALGO, policy="diffusion", backbone=kw["backbone"], model=actor.state_dict(), model_kwargs=kw)
    ckpt |= dict(normalization=normalization, env_id=args.env_id, args=asdict(args))
    return ckpt | dict(iteration=iteration, env_steps=env_steps, **extra)


def load_start(args):
    """The checkpoint this run starts from, read and checked before anything is written, and the run it resumes:
    (ckpt, resume or None, path). A checkpoint of this script goes on with its fine-tuned 'model_ft' and, with a
    critic, resumes its run; any other starts from its base 'model'."""
    path = args.checkpoint or envs.bundled_checkpoint(args.env_id, "diffusion", args.backbone)
    ckpt = load_diffusion_checkpoint(path, args)
    print(f"[load] {path} ({ckpt['algo']}, iteration {ckpt['iteration']})")
    own = ckpt["algo"] == ALGO
    if ckpt.get("model_ft") is not None and not own:
        print(
            f"[note] {path} also holds a fine-tuned copy ('model_ft', {ckpt['algo']}); "
            "this run starts from the base 'model'"
        )
    return ckpt, ckpt if own and "critic" in ckpt else None, path


def load_actor(ckpt, path, device):
    """The diffusion network of checkpoint `ckpt` (its base 'model'; read from `path`) on `device`; one line when the
    weights do not fit the network its model_kwargs describe."""
    actor = build_network(ckpt["model_kwargs"]).to(device)
    try:
        actor.load_state_dict(ckpt["model"])
    except RuntimeError:
        envs.fail(
            f"{path}: weights do not fit the network its model_kwargs describe; it was written by another architecture"
        )
    return actor


def main(args):
    check_args(args)
    steps_per_iter, num_iters, device = runs.start(args, ALGO)
    ckpt, resume, path = load_start(args)
    actor = load_actor(ckpt, path, device).requires_grad_(False)  # frozen network for the noisier steps (as DPPO)
    actor_ft = copy.deepcopy(actor).requires_grad_(True)
    own = ckpt["algo"] == ALGO  # this script's checkpoint: its fine-tuned network goes on
    if own:
        actor_ft.load_state_dict(ckpt["model_ft"])
    run_dir, writer, evals, _ = runs.open_run_dir(args, ALGO, resume, path)
    kw, normalization = ckpt["model_kwargs"], ckpt["normalization"]
    sched = {k: v.to(device) for k, v in make_schedule(kw["denoising_steps"]).items()}
    sde = VPSDE(make_schedule(kw["denoising_steps"])["betas"])
    plan = denoising_plan(kw["denoising_steps"])
    K_ft = args.ft_denoising_steps
    if args.eval_only:
        act = eval_act(actor, actor_ft, sched, plan, K_ft if own else 0, args, device)
        return runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals, device, act, normalization)

    # ---- set-up: a fresh value critic V(s) (paper eq. 4.8), AdamW ----
    obs_dim, action_dim, Tp = kw["obs_dim"], kw["action_dim"], kw["horizon_steps"]
    critic = Critic(obs_dim, args.cond_steps, args.critic_dims).to(device)  # fresh critic (official)
    actor_opt = torch.optim.AdamW(actor_ft.parameters(), lr=args.actor_lr, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=args.critic_lr, weight_decay=0.0)
    scaler = envs.RunningRewardScaler(args.num_envs)
    # what a checkpoint saves besides the networks and a resume restores, by checkpoint key
    trained = dict(critic=critic, actor_optimizer=actor_opt, critic_optimizer=critic_opt, reward_scaler=scaler)
    act_pretrained = eval_act(actor, actor_ft, sched, plan, 0, args, device)  # the policy fine-tuning starts from
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act_pretrained, args, normalization)
    divergence = "exact" if args.hutchinson_probes == 0 else f"Hutchinson, {args.hutchinson_probes} Rademacher probes"
    print(
        f"[likelihood] PF-ODE {args.sde_method}, step {args.sde_step_size}, t from "
        f"{args.sde_eps if args.sde_eps is not None else 1 / sde.K:.4g} to 1, divergence {divergence}"
    )
    vec, obs, firsts, recent_returns = runs.start_envs(args, normalization, start_iter, resume, np.ones(args.num_envs))
    progress, t_start = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO), time.time()
    act = eval_act(actor, actor_ft, sched, plan, K_ft, args, device)  # the fine-tuned policy, as it is when called
    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # ---- rollout with DPPO's sampler; only the executed-from chunk is kept, no chain (paper B.5) ----
        N, E = args.n_steps, args.num_envs
        buf_obs = np.zeros((N, E, args.cond_steps, obs_dim), np.float32)
        buf_final = np.zeros_like(buf_obs)  # observation reached before any auto-reset
        buf_chunk = torch.zeros((N, E, Tp, action_dim), device=device)
        buf_rew, buf_term, buf_timeout, buf_first = (np.zeros((N, E)) for _ in range(4))
        for n in range(N):
            chunk, _ = sample(actor, actor_ft, sched, torch.as_tensor(obs, device=device), plan, K_ft, "train", args)
            next_obs, reward, term, trunc, infos = vec.step(chunk[:, : args.act_steps].cpu().numpy())
            runs.check_finite(iteration, reward=reward, observation=next_obs)
            env_steps += E * args.act_steps  # episodes that end here are logged at this count
            buf_obs[n], buf_chunk[n], buf_rew[n], buf_first[n] = obs, chunk, reward, firsts
            buf_term[n], buf_timeout[n] = term, np.logical_and(trunc, np.logical_not(term))
            buf_final[n] = envs.final_observations(next_obs, infos)
            firsts = np.logical_or(term, trunc).astype(np.float64)
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- advantages over env steps: GAE on V(s) of the env state only (paper 4.2, eq. 4.8) ----
        t_update = runs.phase("update")  # torch at the update's threads
        flat = lambda x: torch.as_tensor(x.reshape(-1, *x.shape[2:]), device=device)  # noqa: E731
        flat_obs = flat(buf_obs)
        with torch.no_grad():
            values = critic(flat_obs).cpu().numpy().reshape(N, E)
            final_values = critic(flat(buf_final)).cpu().numpy().reshape(N, E)
            last_value = critic(torch.as_tensor(obs, device=device)).cpu().numpy()
        rewards = scaler(buf_rew, buf_first) if args.reward_scale_running else buf_rew
        # a time-out is not a failure: bootstrap it with V(last obs) (the official code treats it as terminal)
        rewards = rewards + args.gamma * final_values * buf_timeout
        dones = np.maximum(buf_term, buf_timeout)
        next_values = np.concatenate([values[1:], last_value[None]], 0)
        advantages, returns = compute_gae(rewards, values, next_values, dones, args.gamma, args.gae_lambda)
        # ---- old exact log-likelihoods by the probability-flow ODE (paper B.5); probes drawn once per sample ----
        chunks = buf_chunk.reshape(N * E, Tp, action_dim)
        probes = None
        if args.hutchinson_probes > 0:
            probes = rademacher((N * E, args.hutchinson_probes, Tp * action_dim), device=device)
        old_logp = torch.zeros(N * E, device=device)
        t_logp = time.time()
        with torch.no_grad():
            for s0 in range(0, N * E, args.logprob_batch_size):
                sl = slice(s0, min(N * E, s0 + args.logprob_batch_size))
                probes_sl = None if probes is None else probes[sl]
                old_logp[sl] = action_log_likelihood(actor, actor_ft, sde, flat_obs[sl], chunks[sl], args, probes_sl)
        t_logp = time.time() - t_logp
        adv_t = torch.as_tensor(advantages.reshape(-1), dtype=torch.float32, device=device)
        ret_t = torch.as_tensor(returns.reshape(-1), dtype=torch.float32, device=device)
        batch = dict(obs=flat_obs, chunks=chunks, logprobs=old_logp, probes=probes, advantages=adv_t, returns=ret_t)

        # ---- update: PPO on the exact action likelihood (paper B.5, eq. 4.5) ----
        update_actor = iteration >= args.n_critic_warmup_itr  # critic warm-up over: the actor updates too
        stats = ppo_update(actor, actor_ft, critic, actor_opt, critic_opt, sde, batch, args, update_actor=update_actor)
        t_update = time.time() - t_update
        runs.check_finite(iteration, **stats, actor_weights=actor_ft, critic_weights=critic)
        iteration += 1

        # ---- log, evaluate, save ----
        stats["explained_variance"] = 1 - np.var(returns - values) / (np.var(returns) + 1e-8)
        runs.log_stats(writer, env_steps, "losses", stats)
        logp_mean = old_logp.mean().item()
        clamped = ((old_logp < args.logprob_min) | (old_logp > args.logprob_max)).float().mean().item()
        value_stats = dict(value_mean=float(values.mean()), logprob_mean=logp_mean, logprob_clamped_frac=clamped)
        runs.log_stats(writer, env_steps, "values", value_stats)
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        runs.log_stats(writer, env_steps, "charts", dict(learning_rate=actor_opt.param_groups[0]["lr"]))
        writer.add_scalar("time/old_logprob_s", t_logp, env_steps)
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(logp=logp_mean, kl=stats["approx_kl"])
        progress.update(iteration, num_iters, env_steps, recent_returns, evals, successes, **shown)
        run = runs.checkpoint_state(trained, evals, vec, obs, firsts, recent_returns)
        tuned = dict(model_ft=actor_ft.state_dict(), ft_denoising_steps=K_ft)
        state = make_checkpoint(actor, kw, normalization, args, iteration, env_steps, **tuned, **run)
        runs.save_run(state, run_dir, iteration, num_iters, args, writer)
    progress.close()
    vec.close()
    runs.finish_run(run_dir, ALGO, args, env_steps, time.time() - t_start, evals, device, writer, act, normalization)


if __name__ == "__main__":
    # tyro parses Args from the command line, starting from the task_defaults values (arguments.parse_args)
    runs.run_cli(main, arguments.parse_args(Args, task_defaults))
