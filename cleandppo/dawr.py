"""DAWR: diffusion advantage-weighted regression (DPPO paper, 5.1 and D.3), fine-tuning a diffusion policy.

Off-policy in the spirit of AWR (Peng et al. 2019): every iteration adds fresh experience to a FIFO
replay buffer, fits a state-value critic V(s) to TD(lambda) targets computed over the whole buffer,
recomputes the advantages A = target - V with the updated critic, and fits the policy with the
denoising loss weighted by w = min(exp(beta * A_norm), max_adv_weight), A standardised per minibatch.

    python cleandppo/dawr.py --env-id Hopper-v2                      # bundled pre-trained policy
    python cleandppo/dawr.py --checkpoint runs/.../checkpoint_last.pt  # resume a dawr run in place
"""

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cleandppo import arguments, console, envs, runs

ALGO = "dawr"


@dataclass
class Args(arguments.RunArgs):
    # the flags every script shares come first: arguments.RunArgs (--env-id, --seed, --num-envs, --total-timesteps,
    # --checkpoint, --eval-*, --run-dir, ...; docs/contract.md)
    # --- diffusion policy (must match the checkpoint; paper D.1) ---
    denoising_steps: int = 20
    """K: DDPM denoising steps (must equal the pre-trained model's)"""
    horizon_steps: int = 4
    """Tp: predicted action-chunk length"""
    act_steps: int = 4
    """Ta: executed actions per policy query (an MLP executes its whole chunk; the UNet may execute fewer)"""
    cond_steps: int = 1
    """To: observation history length"""
    min_sampling_denoising_std: float = 0.1
    """floor of the sampling std at every denoising step during training rollouts (exploration)"""
    randn_clip_value: float = 3.0
    """clamp of the per-step Gaussian noise (in std units)"""
    denoised_clip_value: float = 1.0
    """clamp of the predicted clean chunk x0 at every step"""

    # --- DAWR (paper D.3, Table A7 Gym column; official ft_awr_diffusion_mlp config) ---
    n_steps: int = 500
    """policy queries per env per iteration (N)"""
    gamma: float = 0.99
    """task discount per policy query (chunk step), used in TD(lambda) (the official code hard-codes 0.99)"""
    td_lambda: float = 0.95
    """lambda of the TD(lambda) value targets"""
    td_alpha: float = 1.0
    """scale of the TD errors in the TD(lambda) sum: 1 = the paper's TD(lambda); the official code uses 0.95"""
    beta: float = 10.0
    """beta: the weight is exp(beta * standardised advantage)"""
    max_adv_weight: float = 100.0
    """w_max: the exponentiated weight is clipped at this value"""
    replay_ratio: int = 64
    """actor replay ratio: actor gradient steps per iteration = N * E / batch_size * replay_ratio"""
    critic_replay_ratio: int = 16
    """critic replay ratio: critic steps = N * E / batch_size * this (official: actor steps / 4)"""
    buffer_size: int = 200_000
    """replay buffer capacity in transitions (FIFO; stored as buffer_size // num_envs vector steps)"""
    batch_size: int = 1000
    """transitions per minibatch, drawn uniformly with replacement from the whole buffer"""
    scale_reward_factor: float = 0.01
    """rewards are multiplied by this before they are stored"""
    actor_lr: float = 1e-4
    """actor learning rate (constant, as every official config)"""
    critic_lr: float = 1e-3
    """critic learning rate (constant)"""
    actor_weight_decay: float = 0.0
    """AdamW weight decay of the actor"""
    critic_weight_decay: float = 0.0
    """AdamW weight decay of the critic"""
    n_critic_warmup_itr: int = 0
    """first iterations update only the critic"""
    critic_dims: tuple[int, ...] = (256, 256, 256)
    """critic hidden widths (residual, Mish)"""
    max_grad_norm: Optional[float] = None
    """actor gradient-norm clip (None: off, as every official config)"""
    value_batch_size: int = 50_000
    """observations per critic forward pass when (re)computing V over the buffer (memory only)"""


ROBOMIMIC = dict(  # robomimic ids (official cfg/robomimic/finetune/<task>/ft_awr_diffusion_mlp.yaml; paper D.5)
    gamma=0.999,
    num_envs=50,
    actor_lr=1e-5,
    critic_lr=1e-3,
    batch_size=1000,
    scale_reward_factor=1.0,
    replay_ratio=64,
    critic_replay_ratio=16,  # official critic_update_ratio 4: critic steps = actor steps / 4, i.e. 64 / 4
    buffer_size=150_000,  # 3000 vector steps x 50 envs, in transitions
    beta=10.0,
    max_adv_weight=100.0,
    n_critic_warmup_itr=2,
    eval_episodes=50,
)
ROBOMIMIC_N_STEPS = dict(lift=300, can=300, square=400, transport=400)  # N Ta = 4 episodes per env and iteration


def task_defaults(args) -> dict:
    """Robomimic ids: the tables above with act_steps = horizon_steps = Ta; {} (the Gym defaults) otherwise."""
    if not envs.is_robomimic(args.env_id):
        return {}
    task = envs.resolve_env_id(args.env_id)
    ta = envs.ROBOMIMIC_TASKS[task]["act_steps"]
    return dict(ROBOMIMIC, n_steps=ROBOMIMIC_N_STEPS[task], act_steps=ta, horizon_steps=ta)


# ------------------------------------------------------------------------------------------------
# Noise schedule and one DDPM step (copied from dppo.py; paper 3, eq. 3.3)
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
# Noise-prediction networks (copied from dppo.py; same state-dict keys, so checkpoints load across scripts)
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


@torch.no_grad()
def sample(
    actor,
    sched,
    obs,
    K,
    horizon_steps,
    action_dim,
    mode,
    min_sampling_std=0.1,
    randn_clip=3.0,
    clip=1.0,
    generator=None,
):
    """Run the whole K-step reverse chain with `actor` (the baselines fine-tune every step); return the action chunk.
    `mode`: "train" -> std floored at min_sampling_std at every step (exploration, paper 4.3);
            "eval"  -> natural std floored at 1e-3, none at the final step.
    Every step clamps x0 to `clip` and the noise to `randn_clip` std."""
    B = obs.shape[0]
    shape = (B, horizon_steps, action_dim)
    x = torch.randn(shape, device=obs.device, generator=generator)
    for t, _ in denoising_plan(K):
        t_b = torch.full((B,), t, dtype=torch.long, device=x.device)
        mean, var = step_mean_var(actor, sched, x, obs, t_b, clip)
        std = var.sqrt()
        if mode == "train":
            std = std.clamp(min=min_sampling_std)
        else:
            std = std.clamp(min=1e-3) if t > 0 else torch.zeros_like(std)
        noise = torch.randn(shape, device=x.device, generator=generator)
        x = mean + std * noise.clamp(-randn_clip, randn_clip)
    return x


def denoising_loss(net, sched, x0, obs, K, weights=None, generator=None):
    """Denoising loss (paper eq. 3.2): MSE between the added noise and its prediction at a random step; with `weights`
    (B,) each sample's mean-over-(Tp, Da) error is multiplied by its weight before the batch mean (paper eq. A1/A2)."""
    t = torch.randint(0, K, (x0.shape[0],), device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, device=x0.device, generator=generator)
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    per_sample = ((net(x_t, t, obs) - eps) ** 2).mean(dim=(1, 2))
    return per_sample.mean() if weights is None else (per_sample * weights).mean()


# ------------------------------------------------------------------------------------------------
# DAWR: critic, replay buffer, TD(lambda) targets, weights (paper D.3, eqs. A2-A3)
# ------------------------------------------------------------------------------------------------
class Critic(nn.Module):
    """V(s) of the environment observation only (paper 4.2; D.4): residual Mish MLP."""

    def __init__(self, obs_dim, cond_steps, dims=(256, 256, 256)):
        super().__init__()
        self.net = ResidualMLP([obs_dim * cond_steps, *dims, 1], nn.Mish)

    def forward(self, obs):
        return self.net(obs.flatten(1)).squeeze(-1)


class ReplayBuffer:
    """FIFO ring of `rows` vector steps x E envs: obs, executed-chunk sample, scaled reward, terminated,
    truncated and the next observation (the pre-reset one when the episode ended)."""

    def __init__(self, rows, num_envs, obs_shape, chunk_shape):
        self.rows, self.E, self.ptr, self.size = rows, num_envs, 0, 0
        self.obs = np.zeros((rows, num_envs, *obs_shape), np.float32)
        self.next_obs = np.zeros_like(self.obs)
        self.chunks = np.zeros((rows, num_envs, *chunk_shape), np.float32)
        self.rewards, self.terminated, self.truncated = (np.zeros((rows, num_envs), np.float32) for _ in range(3))

    def add(self, obs, chunk, reward, terminated, truncated, next_obs):
        i = self.ptr
        self.obs[i], self.chunks[i], self.rewards[i], self.next_obs[i] = obs, chunk, reward, next_obs
        self.terminated[i], self.truncated[i] = terminated, truncated
        self.ptr, self.size = (i + 1) % self.rows, min(self.size + 1, self.rows)

    def order(self):
        """Row indices oldest to newest."""
        return (np.arange(self.size) + (self.ptr if self.size == self.rows else 0)) % self.rows

    def sample(self, batch_size, generator=None):
        """Indices of a minibatch drawn uniformly with replacement over all size x E stored transitions (official:
        only the first rows)."""
        flat = torch.randint(0, self.size * self.E, (batch_size,), generator=generator).numpy()
        return flat // self.E, flat % self.E  # (position in chronological order, env)


def td_lambda_targets(rewards, values, next_values, terminated, truncated, gamma, lam, alpha=1.0):
    """TD(lambda) value targets over (T, E) arrays in time order (paper D.3, "calculated using TD(lambda)").

    delta_n = r_n + gamma (1 - term_n) V(s'_n) - V(s_n), with s'_n the observation reached by step n (the
    pre-reset one at a time-out, so time-outs are bootstrapped, not treated as failures);
    G_n = alpha delta_n + gamma lam (1 - done_n) G_{n+1}, done = terminated or truncated (the next row is
    another episode); G after the newest row is 0 (its target is the one-step TD target).
    target_n = V(s_n) + G_n. alpha = 1 gives TD(lambda); the official code uses alpha = 0.95.
    """
    targets, G = np.zeros_like(values), np.zeros(values.shape[1:])
    for n in reversed(range(len(rewards))):
        delta = rewards[n] + gamma * (1 - terminated[n]) * next_values[n] - values[n]
        G = alpha * delta + gamma * lam * (1 - np.maximum(terminated[n], truncated[n])) * G
        targets[n] = values[n] + G
    return targets


def awr_weights(advantages, beta, max_weight):
    """Per-minibatch w = min(exp(beta (A - mean) / (std + 1e-6)), max_weight), std unbiased (torch), detached."""
    a = (advantages - advantages.mean()) / (advantages.std() + 1e-6)
    return torch.exp(torch.clamp(beta * a, max=math.log(max_weight))).detach()  # = min(exp(.), w_max), no overflow


def value_loss(critic, obs, targets):
    """Mean squared error between V(s) (B,) and the targets (B,); the official code broadcast (B,1)-(B,) to B x B."""
    return ((critic(obs) - targets) ** 2).mean()


@torch.no_grad()
def buffer_values(critic, buf, rows, batch, device):
    """V(s) and V(s') for the buffer rows `rows` (chronological), in chunks of `batch` observations.

    Inside an episode s' of row n is s of row n + 1, so V(s') is only evaluated where the episode ended
    (terminated or truncated: the pre-reset observation) and on the newest row.
    """

    def v(flat):
        return (
            torch.cat(
                [critic(torch.as_tensor(flat[i : i + batch], device=device)) for i in range(0, len(flat), batch)]
                or [torch.zeros(0, device=device)]
            )
            .cpu()
            .numpy()
        )

    obs = buf.obs[rows]
    values = v(obs.reshape(-1, *obs.shape[2:])).reshape(len(rows), buf.E)
    next_values = np.concatenate([values[1:], np.zeros((1, buf.E), np.float32)])
    fresh = np.maximum(buf.terminated[rows], buf.truncated[rows]) > 0
    fresh[-1] = True
    next_values[fresh] = v(buf.next_obs[rows][fresh])
    return values, next_values


def buffer_targets(critic, buf, args, device):
    """(row order, V, TD(lambda) targets) over the whole buffer with the current critic."""
    rows = buf.order()
    values, next_values = buffer_values(critic, buf, rows, args.value_batch_size, device)
    targets = td_lambda_targets(
        buf.rewards[rows],
        values,
        next_values,
        buf.terminated[rows],
        buf.truncated[rows],
        args.gamma,
        args.td_lambda,
        args.td_alpha,
    )
    return rows, values, targets


def dawr_update(actor, critic, actor_opt, critic_opt, sched, buf, args, device, update_actor=True, generator=None):
    """Critic steps on the TD(lambda) targets, then actor steps weighted by exp(beta A) (official
    agent/finetune/train_awr_diffusion_agent.py, its critic minibatch indexing and broadcasting fixed: docs/dawr.md)."""
    num_batch = int(args.n_steps * args.num_envs / args.batch_size * args.replay_ratio)
    num_critic = int(args.n_steps * args.num_envs / args.batch_size * args.critic_replay_ratio)
    rows, _, targets = buffer_targets(critic, buf, args, device)
    v_losses = []
    for _ in range(num_critic):
        pos, env = buf.sample(args.batch_size, generator)
        loss = value_loss(
            critic,
            torch.as_tensor(buf.obs[rows[pos], env], device=device),
            torch.as_tensor(targets[pos, env], device=device),
        )
        critic_opt.zero_grad()
        loss.backward()
        critic_opt.step()
        v_losses.append(loss.item())
    rows, values, targets = buffer_targets(critic, buf, args, device)  # advantages from the updated critic
    advantages = targets - values
    a_losses, w_means, clipped = [], [], []
    for _ in range(num_batch):
        pos, env = buf.sample(args.batch_size, generator)
        w = awr_weights(torch.as_tensor(advantages[pos, env], device=device), args.beta, args.max_adv_weight)
        loss = denoising_loss(
            actor,
            sched,
            torch.as_tensor(buf.chunks[rows[pos], env], device=device),
            torch.as_tensor(buf.obs[rows[pos], env], device=device),
            len(sched["betas"]),
            w,
        )
        actor_opt.zero_grad()
        loss.backward()
        if update_actor:  # during critic warm-up the loss is computed but not applied (official)
            if args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
            actor_opt.step()
        a_losses.append(loss.item())
        w_means.append(w.mean().item())
        clipped.append((w >= args.max_adv_weight * (1 - 1e-6)).float().mean().item())
    return dict(
        value_loss=float(np.mean(v_losses)) if v_losses else float("nan"),
        actor_loss=float(np.mean(a_losses)),
        weight_mean=float(np.mean(w_means)),
        weight_clipped_frac=float(np.mean(clipped)),
        v_mean=float(values.mean()),
        target_mean=float(targets.mean()),
        advantage_std=float(advantages.std()),
        explained_variance=float(1 - np.var(targets - values) / (np.var(targets) + 1e-8)),
        actor_steps=num_batch,
        critic_steps=num_critic,
    )


# ------------------------------------------------------------------------------------------------
# Evaluation, checks, main
# ------------------------------------------------------------------------------------------------
def eval_act(actor, sched, kw, args, device):
    """The deterministic evaluation action function: no exploration noise (paper D.2)."""

    def act(obs):
        return (
            sample(
                actor,
                sched,
                torch.as_tensor(obs, device=device),
                kw["denoising_steps"],
                kw["horizon_steps"],
                kw["action_dim"],
                "eval",
                randn_clip=args.randn_clip_value,
                clip=args.denoised_clip_value,
            )
            .cpu()
            .numpy()
        )

    return act


def check_args(args):
    arguments.check_ranges(args, None if args.eval_only else args.num_envs * args.n_steps * args.act_steps)
    if args.act_steps > args.horizon_steps:
        envs.fail(
            f"--act-steps {args.act_steps} > --horizon-steps {args.horizon_steps}; use act_steps <= horizon_steps"
        )
    if args.buffer_size < max(args.batch_size, args.num_envs):
        envs.fail(
            f"--buffer-size {args.buffer_size} is smaller than --batch-size {args.batch_size} or --num-envs "
            f"{args.num_envs}; use a buffer of at least max(batch_size, num_envs) transitions"
        )
    if int(args.n_steps * args.num_envs / args.batch_size * args.replay_ratio) < 1:
        envs.fail(
            f"n_steps x num_envs / batch_size x replay_ratio = "
            f"{args.n_steps * args.num_envs / args.batch_size * args.replay_ratio:.3g} actor steps per iteration; "
            f"raise --replay-ratio or lower --batch-size"
        )


def load_diffusion_checkpoint(path, args):
    """Load a diffusion checkpoint of any cleandppo script and check it against the flags (one-line errors)."""
    ckpt = envs.load_diffusion_checkpoint(path, args)
    if ckpt["algo"] == ALGO and "critic" in ckpt and tuple(ckpt["args"]["critic_dims"]) != tuple(args.critic_dims):
        envs.fail(
            f"{path} has critic dims {tuple(ckpt['args']['critic_dims'])}; pass --critic-dims "
            f"{' '.join(map(str, ckpt['args']['critic_dims']))}"
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
    (ckpt, resume or None, path). The run starts from its base 'model' (a DPPO checkpoint's fine-tuned 'model_ft'
    is not used); a checkpoint of this script with optimizer state resumes its run."""
    path = args.checkpoint or envs.bundled_checkpoint(args.env_id, "diffusion", "mlp")
    ckpt = load_diffusion_checkpoint(path, args)
    resume = ckpt if ckpt["algo"] == ALGO and "actor_optimizer" in ckpt else None
    resuming = " -> resuming" if resume and not args.eval_only else ""
    print(f"[load] {path} ({ckpt['algo']}, iteration {ckpt['iteration']}){resuming}")
    if ckpt.get("model_ft") is not None:
        print(f"[load] note: {path} also holds DPPO's fine-tuned 'model_ft'; {ALGO.upper()} starts from its 'model'")
    return ckpt, resume, path


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
    actor = load_actor(ckpt, path, device)  # weights that do not fit stop here, before anything is written
    run_dir, writer, evals, _ = runs.open_run_dir(args, ALGO, resume, path)
    t_start = time.time()  # the run's wall time: the first evaluation and the loop
    kw, normalization = ckpt["model_kwargs"], ckpt["normalization"]
    sched = {k: v.to(device) for k, v in make_schedule(kw["denoising_steps"]).items()}
    act = eval_act(actor, sched, kw, args, device)  # the actor, as it is when called
    if args.eval_only:
        return runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals, device, act, normalization)

    # ---- set-up: a fresh value critic V(s), AdamW, the FIFO replay buffer of vector steps ----
    N, E = args.n_steps, args.num_envs
    obs_dim, action_dim, Tp = kw["obs_dim"], kw["action_dim"], kw["horizon_steps"]
    critic = Critic(obs_dim, args.cond_steps, args.critic_dims).to(device)  # fresh critic (official)
    actor_opt = torch.optim.AdamW(actor.parameters(), lr=args.actor_lr, weight_decay=args.actor_weight_decay)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=args.critic_lr, weight_decay=args.critic_weight_decay)
    buf = ReplayBuffer(args.buffer_size // E, E, (args.cond_steps, obs_dim), (Tp, action_dim))
    # what a checkpoint saves besides the actor and a resume restores, by checkpoint key
    trained = dict(critic=critic, actor_optimizer=actor_opt, critic_optimizer=critic_opt)
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act, args, normalization, buf)
    vec, obs, _, recent_returns = runs.start_envs(args, normalization, start_iter, resume, None)
    progress = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO)
    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        # ---- rollout into the FIFO replay buffer: scaled rewards, time-outs keep their next obs (paper D.3) ----
        for _n in range(N):
            chunk = (
                sample(
                    actor,
                    sched,
                    torch.as_tensor(obs, device=device),
                    kw["denoising_steps"],
                    Tp,
                    action_dim,
                    "train",
                    args.min_sampling_denoising_std,
                    args.randn_clip_value,
                    args.denoised_clip_value,
                )
                .cpu()
                .numpy()
            )
            next_obs, reward, term, trunc, infos = vec.step(chunk[:, : args.act_steps])
            runs.check_finite(iteration, reward=reward, observation=next_obs)
            env_steps += E * args.act_steps  # episodes that end here are logged at this count
            final_obs = envs.final_observations(next_obs, infos)  # the observation reached before any auto-reset
            buf.add(
                obs,
                chunk,
                reward * args.scale_reward_factor,
                term,
                np.logical_and(trunc, np.logical_not(term)),
                final_obs,
            )
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- update: critic on TD(lambda) targets (paper eq. A3), actor by weighted denoising (eq. A2) ----
        t_update = runs.phase("update")  # torch at the update's threads
        stats = dawr_update(
            actor,
            critic,
            actor_opt,
            critic_opt,
            sched,
            buf,
            args,
            device,
            update_actor=iteration >= args.n_critic_warmup_itr,
        )
        t_update = time.time() - t_update
        # value_loss is NaN by design when no critic step ran; the critic's weights stand for it
        runs.check_finite(iteration, actor_loss=stats["actor_loss"], actor_weights=actor, critic_weights=critic)
        iteration += 1

        # ---- log, evaluate, save ----
        losses = ("value_loss", "actor_loss", "weight_mean", "weight_clipped_frac", "explained_variance")
        runs.log_stats(writer, env_steps, "losses", stats, losses)
        runs.log_stats(writer, env_steps, "values", stats, ("v_mean", "target_mean", "advantage_std"))
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        charts = dict(
            learning_rate=actor_opt.param_groups[0]["lr"], critic_learning_rate=critic_opt.param_groups[0]["lr"]
        )
        charts["buffer_size"] = buf.size * E  # in transitions (buf.size: vector steps)
        runs.log_stats(writer, env_steps, "charts", charts)
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(v_loss=stats["value_loss"], actor_loss=stats["actor_loss"])
        progress.update(iteration, num_iters, env_steps, recent_returns, evals, successes, **shown)
        run = runs.checkpoint_state(trained, evals, vec, obs, None, recent_returns)
        state = make_checkpoint(actor, kw, normalization, args, iteration, env_steps, **run)
        runs.save_run(state, run_dir, iteration, num_iters, args, writer, buf)
    progress.close()
    vec.close()
    runs.finish_run(run_dir, ALGO, args, env_steps, time.time() - t_start, evals, device, writer, act, normalization)


if __name__ == "__main__":
    # tyro parses Args from the command line, starting from the task_defaults values (arguments.parse_args)
    runs.run_cli(main, arguments.parse_args(Args, task_defaults))
