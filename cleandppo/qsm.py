"""QSM: Q-score matching (Psenka et al. 2023) as a fine-tuning baseline of the DPPO paper (5.1, D.3, A12-A13).

A double-Q critic learns Bellman targets from a replay buffer of recent experience; the diffusion
actor's score is aligned with the action gradient of Q: buffer chunks are noised to a random
denoising step t, and the negated noise prediction -eps_theta(a_t, t, s) is regressed onto
alpha * grad_a Q(s, a_t), the critic's action gradient at the noisy action.

Sign convention: a DDPM reverse step moves x_t along -eps_theta (its mean is
(x_t - beta_t / sqrt(1 - ab_t) eps_theta) / sqrt(alpha_t)), so -eps_theta plays the role of the score
and aligning it with +grad Q makes every denoising step move the sample uphill in Q.

    # fine-tune the bundled pre-trained diffusion policy (or any checkpoint dppo.py wrote)
    python cleandppo/qsm.py --env-id Hopper-v2
    # resume a run
    python cleandppo/qsm.py --env-id Hopper-v2 --checkpoint runs/<run>/checkpoint_last.pt

Deviations from the official code (see docs/qsm.md): the Q critics are residual MLPs as configured
(the official constructor misspells the flag); the buffer size counts transitions, not vector steps;
time-outs are not terminal.
"""

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cleandppo import arguments, console, envs, runs

ALGO = "qsm"


@dataclass
class Args(arguments.RunArgs):
    # the flags every script shares come first: arguments.RunArgs (--env-id, --seed, --num-envs, --total-timesteps,
    # --checkpoint, --eval-*, --run-dir, ...; docs/contract.md)
    # --- diffusion policy (must match the checkpoint) ---
    denoising_steps: int = 20
    """K: DDPM denoising steps (must equal the pre-trained model's)"""
    horizon_steps: int = 4
    """Tp: predicted action-chunk length (must equal the pre-trained model's)"""
    act_steps: int = 4
    """Ta: executed actions per policy query (= Tp for an MLP policy)"""
    cond_steps: int = 1
    """To: observation history length"""
    min_sampling_denoising_std: float = 0.1
    """floor of the sampling std at every denoising step in rollouts and Bellman-target actions (exploration)"""
    randn_clip_value: float = 3.0
    """clamp of the per-step Gaussian noise (in std units)"""
    denoised_clip_value: float = 1.0
    """clamp of the predicted clean chunk x0 at every step"""

    # --- QSM (paper D.3 eq. A12-A13; official Gym config ft_qsm_diffusion_mlp) ---
    n_steps: int = 500
    """policy queries per env per iteration (N)"""
    gamma: float = 0.99
    """discount per policy query (one executed chunk)"""
    q_grad_coeff: float = 10.0
    """alpha: scale of grad_a Q in the score-matching target (code: 10; paper Table A8: 50)"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (code: 25,000 vector steps x 40 envs = 1e6; paper Table A8: 200k)"""
    batch_size: int = 1000
    """transitions per gradient step (code: 1000; paper Table A8: 256)"""
    replay_ratio: float = 16.0
    """gradient steps per iteration = int(N * E / batch_size * replay_ratio) (code: 16; paper Table A8: 32)"""
    target_ema_rate: float = 0.005
    """tau: soft update of the target critic after every gradient step (official config key: critic_tau)"""
    actor_lr: float = 1e-4
    """actor learning rate (constant, AdamW, no weight decay)"""
    critic_lr: float = 1e-3
    """critic learning rate (constant, AdamW, no weight decay)"""
    scale_reward_factor: float = 0.01
    """rewards are multiplied by this before they enter the buffer"""
    n_critic_warmup_itr: int = 5
    """first iterations update only the critic"""
    critic_dims: tuple[int, ...] = (256, 256, 256)
    """hidden widths of each Q network (residual, Mish; an odd number of equal widths)"""
    max_grad_norm: Optional[float] = None
    """actor gradient-norm clip (None: off, as the official config)"""


ROBOMIMIC = dict(
    num_envs=50,
    gamma=0.999,
    actor_lr=1e-5,
    critic_lr=1e-3,
    batch_size=1000,
    scale_reward_factor=1.0,
    replay_ratio=16.0,
    target_ema_rate=0.005,
    q_grad_coeff=10.0,
    n_critic_warmup_itr=5,
    eval_episodes=50,
)  # robomimic ids (official cfg/robomimic/finetune/<task>/ft_qsm_diffusion_mlp.yaml; paper D.5)
ROBOMIMIC_N_STEPS = dict(lift=300, can=300, square=400, transport=400)  # N Ta = 4 episodes per env and iteration
ROBOMIMIC_BUFFER_VECTOR_STEPS = 5000  # official buffer_size 5000 "* n_envs": transitions = 5000 x num_envs


def task_defaults(args) -> dict:
    """Robomimic ids: the tables above with act_steps = horizon_steps = Ta and a buffer of 5000 vector steps of the
    run's envs; {} (the Gym defaults) otherwise."""
    if not envs.is_robomimic(args.env_id):
        return {}
    task = envs.resolve_env_id(args.env_id)
    ta = envs.ROBOMIMIC_TASKS[task]["act_steps"]
    num_envs = ROBOMIMIC["num_envs"] if args.num_envs == Args.num_envs else args.num_envs  # --num-envs given: its value
    return dict(
        ROBOMIMIC,
        n_steps=ROBOMIMIC_N_STEPS[task],
        buffer_size=ROBOMIMIC_BUFFER_VECTOR_STEPS * num_envs,
        act_steps=ta,
        horizon_steps=ta,
    )


# ------------------------------------------------------------------------------------------------
# Noise schedule and one DDPM reverse step (copied from dppo.py; paper 3, eq. 3.3)
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
# Noise-prediction networks (copied from dppo.py; state-dict keys identical so checkpoints load)
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
# Sampling (one network for all K steps)
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# Critic, replay buffer, Bellman targets
# ------------------------------------------------------------------------------------------------
class DoubleQCritic(nn.Module):
    """Two independent Q(s, a) nets on [flattened obs, flattened executed chunk]: residual Mish MLPs (D.3).

    The official CriticObsAct (model/common/critic.py) misspells its residual flag, so its Q nets are plain MLPs; we
    build the residual ones the configs ask for. Only the first `act_steps` actions of a chunk are seen.
    """

    def __init__(self, obs_dim, cond_steps, action_dim, act_steps, dims=(256, 256, 256)):
        super().__init__()
        self.act_steps = act_steps
        in_dim = obs_dim * cond_steps + action_dim * act_steps
        self.q1 = ResidualMLP([in_dim, *dims, 1], nn.Mish)
        self.q2 = ResidualMLP([in_dim, *dims, 1], nn.Mish)

    def forward(self, obs, actions):
        x = torch.cat([obs.flatten(1), actions[:, : self.act_steps].flatten(1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class ReplayBuffer:
    """FIFO ring buffer, one entry per env transition: obs, the sampled chunk (Tp actions; the critic sees the first
    Ta, the executed ones), scaled reward, next obs (the pre-reset one when the episode ended), terminated."""

    def __init__(self, capacity, obs_shape, chunk_shape):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.obs = np.zeros((capacity, *obs_shape), np.float32)
        self.next_obs = np.zeros((capacity, *obs_shape), np.float32)
        self.chunks = np.zeros((capacity, *chunk_shape), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)

    def add(self, obs, chunks, rewards, next_obs, terminated):
        """Append a batch of transitions (one per env); the oldest ones are overwritten when full."""
        idx = (self.pos + np.arange(len(obs))) % self.capacity
        self.obs[idx], self.chunks[idx], self.rewards[idx] = obs, chunks, rewards
        self.next_obs[idx], self.terminated[idx] = next_obs, terminated
        self.pos = int((self.pos + len(obs)) % self.capacity)
        self.size = min(self.capacity, self.size + len(obs))

    def sample(self, batch_size, device):
        """A minibatch drawn uniformly with replacement over the stored transitions (official), as get() returns it."""
        return self.get(np.random.randint(0, self.size, batch_size), device)

    def get(self, idx, device):
        """Transitions `idx` as torch tensors, and `idx` itself."""
        batch = {
            k: torch.as_tensor(getattr(self, k)[idx], device=device)
            for k in ("obs", "chunks", "rewards", "next_obs", "terminated")
        }
        return dict(batch, idx=idx)


def bellman_target(rewards, terminated, next_q1, next_q2, gamma):
    """y = r + gamma (1 - terminated) min(Q1', Q2') (double Q; paper eqs. A6, A11, A12); time-outs are not terminal."""
    return rewards + gamma * (1 - terminated) * torch.minimum(next_q1, next_q2)


def critic_loss(critic, obs, actions, target):
    """MSE(Q1, y) + MSE(Q2, y); also returns (Q1, Q2) for logging."""
    q1, q2 = critic(obs, actions)
    return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean(), q1, q2


@torch.no_grad()
def soft_update(target, source, tau):
    """theta_target <- (1 - tau) theta_target + tau theta."""
    for p_t, p in zip(target.parameters(), source.parameters()):
        p_t.lerp_(p, tau)


# ------------------------------------------------------------------------------------------------
# QSM actor loss (paper eq. A13)
# ------------------------------------------------------------------------------------------------
def qsm_actor_loss(actor, critic, sched, obs, chunks, K, act_steps, q_grad_coeff, t=None, eps=None):
    """MSE(-eps_theta(a_t, t, s), alpha * grad_a Q(s, a_t)); returns (loss, grad_q).

    a_t = sqrt(ab_t) a_0 + sqrt(1 - ab_t) eps noises the buffer chunk a_0 to a random step t (given
    t and eps are used as they are). grad_q is the action gradient at the NOISY action, averaged over
    Q1 and Q2 of the current critic, detached. The DDPM mean moves x_t along -eps_theta, so aligning
    -eps_theta with +grad Q moves samples uphill. Only the executed first Ta rows enter the loss (all
    rows when Tp = Ta, as in every MLP configuration).
    """
    B = chunks.shape[0]
    t = torch.randint(0, K, (B,), device=chunks.device) if t is None else t
    eps = torch.randn_like(chunks) if eps is None else eps
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    x_t = ab.sqrt() * chunks + (1 - ab).sqrt() * eps
    a_exec = x_t[:, :act_steps].detach().requires_grad_(True)
    q1, q2 = critic(obs, a_exec)
    grad_q = torch.autograd.grad((q1.sum() + q2.sum()) / 2, a_exec)[0]  # inputs only: critic grads untouched
    eps_hat = actor(x_t, t, obs)[:, :act_steps]
    return ((-eps_hat - q_grad_coeff * grad_q) ** 2).mean(), grad_q


# ------------------------------------------------------------------------------------------------
# Evaluation, checks, checkpoints, main
# ------------------------------------------------------------------------------------------------
def eval_act(actor, sched, kw, args, device):
    """The deterministic evaluation action function: the whole chain without the exploration floor (paper D.2)."""

    def act(obs):
        chunk = sample(
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
        return chunk.cpu().numpy()

    return act


def num_gradient_steps(args):
    """Official num_batch = int(N * E / batch_size * replay_ratio)."""
    return int(args.n_steps * args.num_envs / args.batch_size * args.replay_ratio)


def check_args(args):
    arguments.check_ranges(args, None if args.eval_only else args.num_envs * args.n_steps * args.act_steps)
    if args.buffer_size < args.batch_size:
        envs.fail(
            f"--buffer-size {args.buffer_size} is smaller than --batch-size {args.batch_size}; "
            f"use a buffer of at least one batch"
        )
    if num_gradient_steps(args) < 1:
        envs.fail(
            f"--replay-ratio {args.replay_ratio} gives 0 gradient steps per iteration "
            f"(int(n_steps * num_envs / batch_size * replay_ratio)); raise it or --n-steps"
        )
    if args.act_steps > args.horizon_steps:
        envs.fail(
            f"--act-steps {args.act_steps} > --horizon-steps {args.horizon_steps}; use act_steps <= horizon_steps"
        )
    if len(args.critic_dims) % 2 != 1 or len(set(args.critic_dims)) != 1:
        envs.fail(f"--critic-dims {args.critic_dims}: give an odd number of equal widths (e.g. 256 256 256)")


def load_diffusion_checkpoint(path, args):
    """Load a diffusion checkpoint and check it against the flags (one-line errors)."""
    ckpt = envs.load_diffusion_checkpoint(path, args)
    if ckpt["algo"] == ALGO and "critic" in ckpt and ckpt["critic_kwargs"]["act_steps"] != args.act_steps:
        envs.fail(
            f"{path} has a critic for chunks of {ckpt['critic_kwargs']['act_steps']} actions; pass --act-steps "
            f"{ckpt['critic_kwargs']['act_steps']}"
        )
    if ckpt["algo"] == ALGO and "critic" in ckpt and tuple(ckpt["critic_kwargs"]["dims"]) != tuple(args.critic_dims):
        dims = tuple(ckpt["critic_kwargs"]["dims"])
        print(f"[load] using the checkpoint's critic dims {dims} (--critic-dims ignored)")
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
    n_grad = num_gradient_steps(args)
    detail = f", {n_grad} gradient steps each (batch {args.batch_size}, buffer {args.buffer_size} transitions)"
    steps_per_iter, num_iters, device = runs.start(args, ALGO, detail)
    ckpt, resume, path = load_start(args)
    actor = load_actor(ckpt, path, device)  # weights that do not fit stop here, before anything is written
    run_dir, writer, evals, _ = runs.open_run_dir(args, ALGO, resume, path)
    t_start = time.time()  # the run's wall time: the first evaluation and the loop
    kw, normalization = ckpt["model_kwargs"], ckpt["normalization"]
    K, Tp, action_dim, obs_dim = kw["denoising_steps"], kw["horizon_steps"], kw["action_dim"], kw["obs_dim"]
    sched = {k: v.to(device) for k, v in make_schedule(K).items()}
    act = eval_act(actor, sched, kw, args, device)  # the actor, as it is when called
    if args.eval_only:
        return runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals, device, act, normalization)

    # ---- set-up: a fresh double Q critic and its target, AdamW, the replay buffer ----
    dims = resume["critic_kwargs"]["dims"] if resume else args.critic_dims  # a resumed run keeps its critic's
    critic_kwargs = dict(obs_dim=obs_dim, cond_steps=args.cond_steps, action_dim=action_dim, act_steps=args.act_steps)
    critic_kwargs["dims"] = tuple(dims)
    critic = DoubleQCritic(**critic_kwargs).to(device)  # fresh critic (official: nothing is pre-trained)
    target_critic = DoubleQCritic(**critic_kwargs).to(device).requires_grad_(False)
    target_critic.load_state_dict(critic.state_dict())
    actor_opt = torch.optim.AdamW(actor.parameters(), lr=args.actor_lr, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=args.critic_lr, weight_decay=0.0)
    buffer = ReplayBuffer(args.buffer_size, (args.cond_steps, obs_dim), (Tp, action_dim))
    # what a checkpoint saves besides the actor and a resume restores, by checkpoint key
    trained = dict(critic=critic, target_critic=target_critic, actor_optimizer=actor_opt, critic_optimizer=critic_opt)
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act, args, normalization, buffer)
    vec, obs, _, recent_returns = runs.start_envs(args, normalization, start_iter, resume, None)
    progress = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO)
    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        # ---- rollout: whole chain with the exploration floor, into the replay buffer (paper D.3, QSM) ----
        for _ in range(args.n_steps):
            chunk = (
                sample(
                    actor,
                    sched,
                    torch.as_tensor(obs, device=device),
                    K,
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
            env_steps += args.num_envs * args.act_steps  # episodes that end here are logged at this count
            final_obs = envs.final_observations(next_obs, infos)  # s' of a finished episode: not the reset one
            buffer.add(obs, chunk, reward * args.scale_reward_factor, final_obs, term)
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- update per minibatch: critic to the Bellman target (paper eq. A12), actor (A13), target critic ----
        t_update = runs.phase("update")  # torch at the update's threads
        update_actor = iteration >= args.n_critic_warmup_itr
        stats = {k: [] for k in ("q_loss", "actor_loss", "q_grad_norm", "q1_mean", "q2_mean", "target_q_mean")}
        for _ in range(n_grad):
            batch = buffer.sample(args.batch_size, device)
            next_actions = sample(
                actor,
                sched,
                batch["next_obs"],
                K,
                Tp,
                action_dim,
                "train",
                args.min_sampling_denoising_std,
                args.randn_clip_value,
                args.denoised_clip_value,
            )
            with torch.no_grad():
                next_q1, next_q2 = target_critic(batch["next_obs"], next_actions)
                y = bellman_target(batch["rewards"], batch["terminated"], next_q1, next_q2, args.gamma)
            loss_q, q1, q2 = critic_loss(critic, batch["obs"], batch["chunks"], y)
            critic_opt.zero_grad()
            loss_q.backward()
            critic_opt.step()
            if update_actor:
                loss_a, grad_q = qsm_actor_loss(
                    actor, critic, sched, batch["obs"], batch["chunks"], K, args.act_steps, args.q_grad_coeff
                )
                actor_opt.zero_grad()
                loss_a.backward()
                if args.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
                actor_opt.step()
                stats["actor_loss"].append(loss_a.item())
                stats["q_grad_norm"].append(grad_q.flatten(1).norm(dim=1).mean().item())
            soft_update(target_critic, critic, args.target_ema_rate)
            for k, v in (
                ("q_loss", loss_q),
                ("q1_mean", q1.mean()),
                ("q2_mean", q2.mean()),
                ("target_q_mean", y.mean()),
            ):
                stats[k].append(v.item())
        t_update = time.time() - t_update
        iteration += 1

        # ---- log, evaluate, save ----
        stats = {k: float(np.mean(v)) for k, v in stats.items() if v}
        runs.check_finite(iteration - 1, **stats, actor_weights=actor, critic_weights=critic)
        runs.log_stats(writer, env_steps, "losses", stats, ("q_loss", "actor_loss"))
        runs.log_stats(writer, env_steps, "values", stats, ("q1_mean", "q2_mean", "target_q_mean", "q_grad_norm"))
        charts = dict(
            learning_rate=actor_opt.param_groups[0]["lr"], critic_learning_rate=critic_opt.param_groups[0]["lr"]
        )
        charts["buffer_size"] = buffer.size
        runs.log_stats(writer, env_steps, "charts", charts)
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(q_loss=stats["q_loss"], actor_loss=stats.get("actor_loss", "- (critic warm-up)"))
        progress.update(iteration, num_iters, env_steps, recent_returns, evals, successes, **shown)
        run = runs.checkpoint_state(trained, evals, vec, obs, None, recent_returns)
        state = make_checkpoint(
            actor, kw, normalization, args, iteration, env_steps, critic_kwargs=critic_kwargs, **run
        )
        runs.save_run(state, run_dir, iteration, num_iters, args, writer, buffer)
    progress.close()
    vec.close()
    runs.finish_run(run_dir, ALGO, args, env_steps, time.time() - t_start, evals, device, writer, act, normalization)


if __name__ == "__main__":
    # tyro parses Args from the command line, starting from the task_defaults values (arguments.parse_args)
    runs.run_cli(main, arguments.parse_args(Args, task_defaults))
