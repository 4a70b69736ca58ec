"""DPPO: Diffusion Policy Policy Optimization (Ren et al. 2024), pre-training and fine-tuning.

The denoising chain is a two-layer MDP (paper section 4): every fine-tuned denoising step is a
Gaussian policy step whose likelihood is known in closed form, so PPO applies to it directly.

    # fine-tune the bundled pre-trained diffusion policy
    python cleandppo/dppo.py --env-id Hopper-v2 --ft-denoising-steps 10
    # pre-train (behaviour cloning) on a dataset, then stop
    python cleandppo/dppo.py --env-id Hopper-v2 --dataset hopper-medium-v2 --pretrain-only
"""

import copy
import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn

from cleandppo import arguments, avoid, console, envs, pretraining, runs, vit, workers

ALGO = "dppo"


@dataclass
class Args(arguments.RunArgs):
    # the flags every script shares come first: arguments.RunArgs (--env-id, --seed, --num-envs, --total-timesteps,
    # --checkpoint, --eval-*, --run-dir, ...; docs/contract.md)
    # --- this script's own part of the common contract ---
    dataset: Optional[str] = None
    """pre-training data: a D4RL name (hopper-medium-v2), a Minari id or an hdf5 path"""
    pretrain_only: bool = False
    """stop after pre-training"""
    eval_sampling: Literal["eval", "train"] = "eval"
    """eval: no exploration noise (D.1: DDPM noise but none at the last step; DDIM eta 0); train: as rollouts (D.8)"""
    from_scratch: bool = False
    """DPPO from a freshly initialised network (paper B.2): no dataset or checkpoint, the official scratch preset"""
    # --- diffusion policy (paper 3, D.1) ---
    backbone: Literal["mlp", "unet"] = "mlp"
    """noise-prediction network: residual MLP or Chi et al.'s 1-D conditional UNet"""
    denoising_steps: int = 20
    """K: DDPM denoising steps (must equal the pre-trained model's)"""
    horizon_steps: int = 4
    """Tp: predicted action-chunk length (pre-training)"""
    act_steps: int = 4
    """Ta: executed actions per policy query; the UNet may execute fewer than it predicts"""
    cond_steps: int = 1
    """To: observation history length"""
    time_dim: int = 16
    """MLP: time-embedding width"""
    mlp_dims: tuple[int, ...] = (512, 512, 512)
    """MLP: hidden widths (one residual block)"""
    activation: Literal["relu", "mish"] = "relu"
    """MLP: activation (ReLU for Gym, Mish for Robomimic)"""
    cond_mlp_dims: tuple[int, ...] = ()
    """MLP: widths of the optional observation encoder cond_mlp (official Square: 512 64); fine-tuning: checkpoint's"""
    unet_dim: int = 40
    """UNet: channels of the first level"""
    unet_dim_mults: tuple[int, ...] = (1, 2)
    """UNet: channel multipliers per level"""
    unet_kernel_size: int = 5
    """UNet: convolution kernel"""
    unet_n_groups: int = 8
    """UNet: GroupNorm groups"""
    unet_step_embed_dim: int = 16
    """UNet: diffusion-step embedding width"""
    denoised_clip_value: float = 1.0
    """clamp of the predicted clean chunk x0 at every step"""
    randn_clip_value: float = 3.0
    """clamp of the per-step Gaussian noise (in std units)"""
    # --- pixel tasks (paper 5.2, D.5: a ViT encoder before the MLP; official cfg/robomimic/*/<task>/*_img.yaml) ---
    vit_dim: int = 128
    """pixels: ViT embedding width"""
    vit_depth: int = 1
    """pixels: ViT Transformer layers"""
    vit_heads: int = 4
    """pixels: ViT attention heads"""
    spatial_emb: int = 128
    """pixels: features per camera of the learned spatial embedding that compresses the ViT output"""
    augment: bool = True
    """pixels: random-shift the images by up to 4 pixels in pre-training and in the fine-tuning updates (official)"""
    # --- pre-training (paper D.1; official Gym config) ---
    pretrain_epochs: int = 200
    """passes over the dataset"""
    pretrain_batch_size: int = 128
    """samples per gradient step"""
    pretrain_lr: float = 1e-3
    """peak learning rate (cosine decay to pretrain_min_lr, 1 warm-up epoch)"""
    pretrain_min_lr: float = 1e-4
    """final learning rate"""
    pretrain_weight_decay: float = 1e-6
    """AdamW weight decay"""
    pretrain_save_freq: int = 0
    """also write pretrained_<epoch>.pt every N epochs (0: only pretrained.pt, at the end)"""
    ema_decay: float = 0.995
    """EMA decay of the weights saved for fine-tuning"""
    ema_freq: int = 10
    """EMA update every N gradient steps"""
    ema_start_epoch: int = 20
    """before this epoch the EMA copy just follows the live weights"""
    # --- DPPO fine-tuning (paper 4, D.4; official Gym config) ---
    ft_denoising_steps: int = 10
    """K': number of last denoising steps that are fine-tuned (the rest stay frozen)"""
    ddim_steps: Optional[int] = None
    """fine-tune this many DDIM steps instead of DDPM (eta 1 in training, 0 in evaluation)"""
    n_steps: int = 500
    """policy queries per env per iteration (N)"""
    rollout_parts: int = 0
    """env workers' envs in N parts, each simulating while the policy samples the next (0: auto, 1; docs/envs.md)"""
    gamma: float = 0.99
    """environment discount per policy query"""
    gae_lambda: float = 0.95
    """GAE lambda over environment steps"""
    gamma_denoising: float = 0.99
    """denoising discount: the advantage of fine-tuned step j is scaled by gamma_denoising^(K'-1-j)"""
    min_sampling_denoising_std: float = 0.1
    """floor of the sampling std at every denoising step during training rollouts (exploration)"""
    min_logprob_denoising_std: float = 0.1
    """floor of the std in the Gaussian log-likelihood of a denoising step"""
    clip_ploss_coef: float = 0.01
    """PPO clip ratio at the last (cleanest) denoising step"""
    clip_ploss_coef_base: float = 0.01
    """PPO clip ratio at the noisiest fine-tuned step"""
    clip_ploss_coef_rate: float = 3.0
    """exponential rate of the clip schedule between the two"""
    actor_lr: float = 1e-4
    """actor learning rate (constant unless actor_min_lr is lower)"""
    actor_min_lr: Optional[float] = None
    """cosine-decay the actor learning rate to this value over training (None: constant)"""
    critic_lr: float = 1e-3
    """critic learning rate"""
    critic_min_lr: Optional[float] = None
    """cosine-decay the critic learning rate to this value over training (None: constant)"""
    update_epochs: int = 5
    """passes over each iteration's (env step, denoising step) pairs"""
    batch_size: int = 50_000
    """(env step, denoising step) pairs per minibatch"""
    grad_accumulate: int = 1
    """minibatches whose summed gradients make one optimizer step (official pixel tasks: the batch in pieces)"""
    vf_coef: float = 0.5
    """value-loss weight"""
    target_kl: Optional[float] = 1.0
    """stop the iteration's epochs when the approximate KL exceeds this"""
    max_grad_norm: Optional[float] = None
    """gradient-norm clip (None: off, as every official config)"""
    reward_scale_running: bool = True
    """divide rewards by the std of a running discounted return (gamma 0.99)"""
    n_critic_warmup_itr: int = 0
    """first iterations update only the critic"""
    critic_dims: tuple[int, ...] = (256, 256, 256)
    """critic hidden widths (residual, Mish)"""
    logprob_batch_size: Optional[int] = None
    """env-step samples per pass recomputing old log-probs (memory, speed only; default 500 on 1 thread, else 10000)"""
    update_chunk_size: Optional[int] = None
    """pairs per forward/backward pass of a minibatch (memory and speed only; default 5000 on 1 CPU thread, else all)"""
    train_action_noise: tuple[float, float] = (0.0, 0.0)
    """[low, high] of uniform noise (normalized units) on executed actions from iteration 5 (D.8, Fig. 10)"""
    train_action_noise_mode: Literal["literal", "symmetric"] = "literal"
    """--train-action-noise as D.8 reads (literal: uniform in [low, high], positive) or with a random sign"""
    official_normalization: Optional[str] = None
    """normalization.npz of an official DPPO --checkpoint (default: found next to it; docs/checkpoints.md)"""
    bc_loss_coeff: float = 0.0
    """weight of the BC regulariser: -log-prob under the fine-tuned network of the frozen actor's chains (D.7; 0 off)"""


# robomimic ids (official cfg/robomimic/finetune/<task>/ft_ppo_diffusion_mlp.yaml; paper D.5): every task, then per task
ROBOMIMIC = dict(gamma=0.999, num_envs=50, activation="mish", eval_episodes=50, n_critic_warmup_itr=2)
ROBOMIMIC |= dict(clip_ploss_coef=0.01, clip_ploss_coef_base=0.001, actor_lr=1e-4, critic_lr=1e-3)
ROBOMIMIC_TASK = dict(
    lift=dict(n_steps=300, batch_size=7500, update_epochs=10, mlp_dims=(512,) * 3, time_dim=16, cond_mlp_dims=()),
    can=dict(n_steps=300, batch_size=7500, update_epochs=10, mlp_dims=(512,) * 3, time_dim=16, cond_mlp_dims=()),
    square=dict(
        n_steps=400, batch_size=10_000, update_epochs=10, mlp_dims=(1024,) * 3, time_dim=32, cond_mlp_dims=(512, 64)
    ),
    transport=dict(
        n_steps=400, batch_size=10_000, update_epochs=5, mlp_dims=(1024,) * 3, time_dim=32, cond_mlp_dims=()
    ),
)


# pixel ids lift-img, ... (paper 5.2, D.5; official cfg/robomimic/{pretrain,finetune}/<task>/*_diffusion_mlp_img.yaml):
# K = 100 pre-trained, the last 5 DDIM steps fine-tuned; minibatches of 500 pairs, grad_accumulate of them per
# optimizer step (the state tasks' 7500 and 10000 pairs); pre-training: batch 256, cosine 1e-4 -> 1e-5, 2000 epochs
ROBOMIMIC_IMG = dict(ROBOMIMIC, denoising_steps=100, ft_denoising_steps=5, ddim_steps=5, time_dim=32, cond_mlp_dims=())
ROBOMIMIC_IMG |= dict(batch_size=500, update_epochs=10, vit_dim=128, vit_depth=1, vit_heads=4, spatial_emb=128)
ROBOMIMIC_IMG |= dict(pretrain_epochs=2000, pretrain_batch_size=256, pretrain_lr=1e-4, pretrain_min_lr=1e-5)
ROBOMIMIC_IMG_TASK = dict(
    lift=dict(n_steps=300, actor_lr=5e-5, grad_accumulate=15, logprob_batch_size=500, mlp_dims=(512,) * 3),
    can=dict(n_steps=300, actor_lr=5e-5, grad_accumulate=15, logprob_batch_size=500, mlp_dims=(512,) * 3),
    square=dict(n_steps=400, actor_lr=1e-5, grad_accumulate=20, logprob_batch_size=1000, mlp_dims=(768,) * 3),
    transport=dict(n_steps=400, actor_lr=1e-5, grad_accumulate=20, logprob_batch_size=1000, mlp_dims=(768,) * 3),
)


# Avoid ids (official cfg/d3il/*/avoid_m*, paper D.8; fewer pre-training epochs than the paper: docs/avoid.md)
AVOID = dict(num_envs=50, n_steps=25, total_timesteps=255_000, eval_freq=5, eval_episodes=50, eval_sampling="train")
AVOID |= dict(actor_lr=1e-5, critic_lr=1e-3, n_critic_warmup_itr=1, update_epochs=10, gamma_denoising=0.95)
AVOID |= dict(clip_ploss_coef=0.1, clip_ploss_coef_base=0.1, clip_ploss_coef_rate=1.0)
AVOID |= dict(pretrain_batch_size=16, pretrain_lr=1e-4, pretrain_min_lr=1e-5, pretrain_epochs=300, ema_start_epoch=10)


# --from-scratch (paper B.2; official cfg/gym/scratch/*/ppo_diffusion_mlp.yaml; the network: the Gym defaults): single-
# action chunks, all 10 denoising steps fine-tuned, 10 envs x 1000 steps, clip 0.1 at every step, no denoising discount.
SCRATCH = dict(denoising_steps=10, ft_denoising_steps=10, horizon_steps=1, act_steps=1, cond_steps=1)
SCRATCH |= dict(num_envs=10, n_steps=1000, batch_size=5000, update_epochs=10, actor_lr=1e-4, critic_lr=1e-3)
SCRATCH |= dict(gamma_denoising=1.0, clip_ploss_coef=0.1, clip_ploss_coef_base=0.1, clip_ploss_coef_rate=3.0)
SCRATCH_ITERATIONS = {"hopper-v2": 301}  # the budget: 501 iterations on Walker2d and HalfCheetah


def task_defaults(args) -> dict:
    """Defaults that differ from the Gym values above: the --from-scratch, robomimic (state, pixels) and Avoid tables;
    {} on Gym."""
    task = envs.env_slug(args.env_id)
    if args.from_scratch:
        iterations = SCRATCH_ITERATIONS.get(task, 501)
        return dict(SCRATCH, total_timesteps=iterations * SCRATCH["num_envs"] * SCRATCH["n_steps"])
    if envs.is_image_task(args.env_id):
        task = envs.robomimic_task(args.env_id)
        ta = envs.ROBOMIMIC_TASKS[task]["act_steps"]
        return dict(ROBOMIMIC_IMG, **ROBOMIMIC_IMG_TASK[task], act_steps=ta, horizon_steps=ta)
    if envs.is_robomimic(args.env_id):
        ta = envs.ROBOMIMIC_TASKS[task]["act_steps"]
        return dict(ROBOMIMIC, **ROBOMIMIC_TASK[task], act_steps=ta, horizon_steps=ta)
    if avoid.is_avoid(args.env_id):  # minibatch: half of an iteration's (env step, denoising step) pairs
        return dict(AVOID, batch_size=round(AVOID["n_steps"] * AVOID["num_envs"] * args.ft_denoising_steps / 2))
    return {}


# ---- Noise schedule and one denoising step (paper 3, eq. 3.3; DDIM eq. 4.9) ------------------------------------------
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


def denoising_plan(K: int, ddim_steps: Optional[int]) -> list:
    """Timesteps in execution order with their predecessors: [(t, t_prev), ...], t_prev = -1 at the end.
    DDPM runs t = K-1, ..., 0. DDIM runs the uniform grid {0, r, ..., (S-1) r}, r = K // S, descending."""
    r, S = (1, K) if ddim_steps is None else (K // ddim_steps, ddim_steps)
    grid = list(range(0, S * r, r))[::-1]
    return list(zip(grid, grid[1:] + [-1]))


def step_mean_var(net, sched, x, obs, t, t_prev, ddim: bool, eta: float = 1.0, clip: float = 1.0):
    """Mean and variance of x_{t_prev} given x_t for one reverse step (official `p_mean_var` in
    model/diffusion/diffusion_vpg.py); t, t_prev: (B,) long tensors.
    DDPM (paper eq. 3.3): x0 = sqrt(1/ab) x - sqrt(1/ab - 1) eps, clamped to [-clip, clip];
    mean = coef_x0 x0 + coef_xt x; variance = the posterior variance beta_t (1 - ab_prev)/(1 - ab).
    DDIM (paper eq. 4.9): x0 = (x - sqrt(1 - ab) eps)/sqrt(ab) (official form), clamped, eps recomputed,
    sigma = eta sqrt((1 - ab_prev)/(1 - ab) (1 - ab/ab_prev)); mean = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps
    """
    eps = net(x, t, obs)
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt() if ddim else (1 / ab).sqrt() * x - (1 / ab - 1).sqrt() * eps).clamp(
        -clip, clip
    )
    if not ddim:
        mean = sched["coef_x0"][t].view(-1, 1, 1) * x0 + sched["coef_xt"][t].view(-1, 1, 1) * x
        return mean, sched["posterior_var"][t].clamp(min=1e-20).view(-1, 1, 1).expand_as(mean)
    ab_prev = sched["alpha_bar"][t_prev.clamp(min=0)].where(t_prev >= 0, 1.0).view(-1, 1, 1)  # 1 after the last step
    eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    sigma = (eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()).clamp(min=1e-10)
    mean = ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).clamp(min=0).sqrt() * eps
    return mean, (sigma**2).expand_as(mean)


# ---- Noise-prediction networks (paper D.1) ---------------------------------------------------------------------------
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


def model_kwargs_from(args, obs_dim, action_dim, image_shape=None) -> dict:
    """The network description a checkpoint stores (`model_kwargs`, the keys build_network reads); a pixel task's
    (`image_shape` (C, H, W) of its observations; obs_dim: the proprioception's) also has its ViT's, under "vision"."""
    keys = ["horizon_steps", "cond_steps", "denoising_steps", "backbone", "time_dim", "mlp_dims", "activation"]
    keys += ["cond_mlp_dims", "unet_dim", "unet_dim_mults", "unet_kernel_size", "unet_n_groups"]
    kw = dict(obs_dim=obs_dim, action_dim=action_dim)
    for key in [*keys, "unet_step_embed_dim"]:
        value = getattr(args, key)
        kw[key] = tuple(value) if isinstance(value, list) else value
    if image_shape is not None:
        kw["vision"] = vit.vision_kwargs(args, obs_dim, image_shape)
    return kw


class VisionDiffusionMLP(DiffusionMLP):
    """eps_theta(x_t, t, s) from pixels (paper 5.2, D.5, DPPO-ViT-MLP; official VisionDiffusionMLP in
    model/diffusion/mlp_diffusion.py): DiffusionMLP on [noisy chunk, time embedding, the features of the ViT encoder of
    cleandppo/vit.py, random-shifted in pre-training and fine-tuning]."""

    def __init__(self, vision, action_dim, horizon_steps, time_dim, mlp_dims, activation):
        encoder = vit.VisionEncoder(**vision)
        super().__init__(encoder.out_dim, action_dim, horizon_steps, 1, time_dim, mlp_dims, activation)
        self.encoder = encoder

    def forward(self, x, t, obs):
        return super().forward(x, t, self.encoder(obs))


def build_policy_network(kw: dict) -> nn.Module:
    """The noise-prediction network of a checkpoint's `model_kwargs`: build_network's, or with `vision` (a pixel
    task) the ViT one."""
    if kw.get("vision") is None:
        return build_network(kw)
    return VisionDiffusionMLP(
        kw["vision"], kw["action_dim"], kw["horizon_steps"], kw["time_dim"], tuple(kw["mlp_dims"]), kw["activation"]
    )


# ---- Sampling with chain recording (paper 4.1-4.2) -------------------------------------------------------------------
@torch.no_grad()
def sample(actor, actor_ft, sched, obs, plan, ft_steps, mode, args, generator=None):
    """Run the reverse chain; return (action chunk, chain (B, ft_steps + 1, Tp, Da) of the fine-tuned steps; chain[:, 0]
    is the input of the first). The last `ft_steps` executed steps use `actor_ft`, the earlier ones the frozen `actor`.
    `mode`: "train" -> std floored at args.min_sampling_denoising_std at every step (exploration, paper 4.3);
            "eval"  -> DDPM: natural std floored at 1e-3, none at the final step; DDIM: eta 0 (deterministic).
    Every step clamps x0 to args.denoised_clip_value and the noise to args.randn_clip_value std."""
    ddim = any(t_prev != t - 1 for t, t_prev in plan)
    state = obs["state"] if isinstance(obs, dict) else obs  # (of a pixel observation: its proprioception)
    B = state.shape[0]
    shape = (B, actor.horizon_steps, actor.action_dim)
    x = torch.randn(shape, device=state.device, generator=generator)
    chain = []
    n = len(plan)
    for i, (t, t_prev) in enumerate(plan):
        if i == n - ft_steps:
            chain.append(x)
        net = actor_ft if i >= n - ft_steps else actor
        eta = 0.0 if (ddim and mode == "eval") else 1.0
        t_b = torch.full((B,), t, dtype=torch.long, device=x.device)
        t_prev_b = torch.full_like(t_b, t_prev)
        mean, var = step_mean_var(net, sched, x, obs, t_b, t_prev_b, ddim, eta, args.denoised_clip_value)
        std = var.sqrt()
        if mode == "train":
            std = std.clamp(min=args.min_sampling_denoising_std)
        elif ddim:
            std = torch.zeros_like(std)
        else:
            std = std.clamp(min=1e-3) if t > 0 else torch.zeros_like(std)
        noise = torch.randn(shape, device=x.device, generator=generator)
        x = mean + std * noise.clamp(-args.randn_clip_value, args.randn_clip_value)
        if i >= n - ft_steps:
            chain.append(x)
    chain = torch.stack(chain, dim=1) if chain else x.new_zeros(B, 0, *shape[1:])
    return x, chain


def rollout_chains(actor, actor_ft, sched, plan, args, iteration, obs, rows):
    """The rollout's (executed actions, chains) of envs `rows` (workers.rollout_step): chains sampled in training mode,
    the chunks' first act_steps executed with D.8's fine-tuning noise (avoid.add_action_noise)."""
    obs_rows, K_ft = envs.take_rows(obs, rows), args.ft_denoising_steps
    chunk, chain = sample(actor, actor_ft, sched, obs_rows, plan, K_ft, "train", args)
    executed = chunk[:, : args.act_steps].cpu().numpy()
    return avoid.add_action_noise(executed, iteration, args.train_action_noise, args.train_action_noise_mode), chain


def denoising_loss(net, sched, x0, obs, K):
    """Denoising loss (paper eq. 3.2): MSE between the added noise and its prediction at a random step."""
    t = torch.randint(0, K, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return ((net(x_t, t, obs) - eps) ** 2).mean()


# ---- DPPO: likelihood of a denoising step and the PPO loss over (env step, denoising step) pairs ---------------------
def fine_tuned_timesteps(plan, ft_steps):
    """(t, t_prev) tensors of the fine-tuned steps in execution order: index j = 0 is the noisiest."""
    ft = plan[len(plan) - ft_steps :]
    return torch.tensor([t for t, _ in ft]), torch.tensor([tp for _, tp in ft])


def denoising_log_prob(actor_ft, sched, obs, x_in, x_out, t, t_prev, args, rows=None):
    """log pi(x_out | x_in, s) of one denoising step (paper eq. 4.3), per sample (B,); DDIM when args.ddim_steps.
    The Gaussian std is floored at args.min_logprob_denoising_std (paper 4.3, sigma_min^prob). As the official code:
    elementwise log-densities clamped to [-5, 2], only the first `rows` rows of the chunk (default args.act_steps),
    averaged over (rows, action_dim)."""
    ddim = args.ddim_steps is not None
    mean, var = step_mean_var(actor_ft, sched, x_in, obs, t, t_prev, ddim, 1.0, args.denoised_clip_value)
    std = var.sqrt().clamp(min=args.min_logprob_denoising_std)
    elementwise = -((x_out - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)
    rows = args.act_steps if rows is None else rows
    return elementwise.clamp(-5.0, 2.0)[:, :rows].mean(dim=(-2, -1))


def chain_log_probs(actor_ft, sched, obs, chains, args, rows=None):
    """log-probs (B, K') of every fine-tuned step of recorded chains (B, K' + 1, Tp, Da): all (sample, step) pairs
    in one batch, as the official get_logprobs."""
    B, K_ft = chains.shape[0], chains.shape[1] - 1
    ft_t, ft_t_prev = fine_tuned_timesteps(denoising_plan(len(sched["betas"]), args.ddim_steps), K_ft)
    x_in, x_out = chains[:, :-1].flatten(0, 1), chains[:, 1:].flatten(0, 1)  # (B K', Tp, Da), sample-major
    t, t_prev = ft_t.repeat(B).to(chains.device), ft_t_prev.repeat(B).to(chains.device)
    obs = envs.take_rows(obs, torch.arange(B, device=chains.device).repeat_interleave(K_ft))  # each sample's K' times
    logp = denoising_log_prob(actor_ft, sched, obs, x_in, x_out, t, t_prev, args, rows)
    return logp.view(B, K_ft)


def clip_schedule(ft_steps, clip, clip_base, rate):
    """PPO clip ratio per fine-tuned step j (paper D.4): exponential from clip_base (j=0) to clip (j=K'-1)."""
    if ft_steps == 1:  # the official code divides by zero here
        return torch.tensor([clip])
    u = torch.arange(ft_steps, dtype=torch.float64) / (ft_steps - 1)
    return (clip_base + (clip - clip_base) * (torch.exp(rate * u) - 1) / (math.exp(rate) - 1)).float()


def denoising_discount(ft_steps, gamma_denoising):
    """Advantage weight of fine-tuned step j: gamma_denoising^(K'-1-j) (paper 4.2, B.1)."""
    return gamma_denoising ** torch.arange(ft_steps - 1, -1, -1, dtype=torch.float32)


class Critic(nn.Module):
    """V(s) of the environment observation only (paper 4.2; D.4): residual Mish MLP."""

    def __init__(self, obs_dim, cond_steps, dims=(256, 256, 256)):
        super().__init__()
        self.net = ResidualMLP([obs_dim * cond_steps, *dims, 1], nn.Mish)

    def forward(self, obs):
        return self.net(obs.flatten(1)).squeeze(-1)


class VisionCritic(Critic):
    """V(s) from pixels (official ViTCritic, model/common/critic.py): Critic's MLP on the features of a VisionEncoder
    of its own."""

    def __init__(self, vision, dims=(256, 256, 256)):
        encoder = vit.VisionEncoder(**vision)
        super().__init__(encoder.out_dim, 1, dims)
        self.encoder = encoder

    def forward(self, obs):
        return super().forward(self.encoder(obs))


def build_critic(kw, args):
    """The fresh value critic of fine-tuning (paper eq. 4.8): on the state, or from pixels with a ViT of its own."""
    if kw.get("vision") is None:
        return Critic(kw["obs_dim"], args.cond_steps, args.critic_dims)
    return VisionCritic(kw["vision"], args.critic_dims)


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


def ppo_update(actor, actor_ft, critic, actor_opt, critic_opt, sched, batch, args, update_actor=True, generator=None):
    """PPO epochs over the N*E*K' (env step, denoising step) pairs (paper 4.2; official `PPODiffusion.loss` in
    model/diffusion/diffusion_ppo.py, the update loop in agent/finetune/train_ppo_diffusion_agent.py). `actor` (frozen)
    only samples the chains of the BC regulariser. The policy loss of a minibatch is back-propagated in chunks of
    args.update_chunk_size pairs (chunk_size) whose gradients add up to the minibatch mean's. The value loss is the
    official mean over the minibatch's pairs, with the critic run once per env-step sample of the minibatch (its pairs
    share V(s)). The gradients of --grad-accumulate minibatches sum into one optimizer step (official grad_accumulate;
    the last minibatch of an epoch steps with what it has). The logged numbers are read back once per minibatch."""
    K_ft = batch["chains"].shape[1] - 1
    device = batch["advantages"].device
    num_pairs = len(batch["advantages"]) * K_ft
    mb = min(args.batch_size, num_pairs)
    starts = range(0, num_pairs - mb + 1, mb)
    chunk = workers.chunk_size(args.update_chunk_size, device, 5000, mb)
    clips = clip_schedule(K_ft, args.clip_ploss_coef, args.clip_ploss_coef_base, args.clip_ploss_coef_rate).to(device)
    discounts = denoising_discount(K_ft, args.gamma_denoising).to(device)
    plan = denoising_plan(len(sched["betas"]), args.ddim_steps)
    ft_t, ft_t_prev = (t.to(device) for t in fine_tuned_timesteps(plan, K_ft))
    stats, clipfracs = {}, []
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(num_pairs, generator=generator).to(device)
        for k, start in enumerate(starts):
            flat = perm[start : start + mb]
            pair_i, pair_j = flat // K_ft, flat % K_ft  # env-step sample, fine-tuned denoising index
            pair_adv = batch["advantages"][pair_i]
            pair_adv = (pair_adv - pair_adv.mean()) / (pair_adv.std() + 1e-8)
            pair_adv = pair_adv * discounts[pair_j]  # denoising discount, after normalization (official order)
            if k % args.grad_accumulate == 0:  # a new sum of gradients
                actor_opt.zero_grad()
                critic_opt.zero_grad()
            sums = torch.zeros(4, device=device)  # over the minibatch: policy loss, approximate KL, ratio, clipped
            for c in range(0, mb, chunk):
                i, j, adv = pair_i[c : c + chunk], pair_j[c : c + chunk], pair_adv[c : c + chunk]
                obs = envs.take_rows(batch["obs"], i)
                x_in, x_out = batch["chains"][i, j], batch["chains"][i, j + 1]
                new_logp = denoising_log_prob(actor_ft, sched, obs, x_in, x_out, ft_t[j], ft_t_prev[j], args)
                log_ratio = new_logp - batch["logprobs"][i, j]
                ratio = log_ratio.exp()
                clip_ratio = clips[j]
                pg_sum = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)).sum()
                (pg_sum / mb).backward()  # this chunk's share of the minibatch mean
                with torch.no_grad():
                    kl = (ratio - 1) - log_ratio  # k3 estimator
                    clipped = ((ratio - 1).abs() > clip_ratio).sum()
                    sums += torch.stack([pg_sum, kl.sum(), ratio.sum(), clipped.float()])
            samples, pair_sample = torch.unique(pair_i, return_inverse=True)  # each env-step sample once
            values = critic(envs.take_rows(batch["obs"], samples))[pair_sample]
            v_loss = 0.5 * ((values - batch["returns"][pair_i]) ** 2).mean()
            (args.vf_coef * v_loss).backward()
            if args.bc_loss_coeff:  # BC regulariser (D.7, official use_bc_loss): chains of the frozen actor made
                obs = envs.take_rows(batch["obs"], pair_i)
                _, bc_chains = sample(actor, actor, sched, obs, plan, K_ft, "train", args)  # likely under actor_ft
                bc_logp = chain_log_probs(actor_ft, sched, obs, bc_chains, args, rows=bc_chains.shape[2])
                (-args.bc_loss_coeff * bc_logp.mean()).backward()  # every chunk row, all K' steps (official)
            logged = torch.cat([sums / mb, v_loss.detach().view(1)]).tolist()  # one read-back
            policy_loss, approx_kl, mean_ratio, clipfrac, value_loss = logged
            stats = dict(policy_loss=policy_loss, value_loss=value_loss, approx_kl=approx_kl, ratio=mean_ratio)
            clipfracs.append(clipfrac)
            if (k + 1) % args.grad_accumulate and k + 1 < len(starts):
                continue  # more minibatches to sum before the step
            if args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(actor_ft.parameters(), args.max_grad_norm)
                nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
            if update_actor:
                actor_opt.step()
            critic_opt.step()
            if args.target_kl is not None and stats["approx_kl"] > args.target_kl:
                stats["clipfrac"] = float(np.mean(clipfracs))
                return stats
    stats["clipfrac"] = float(np.mean(clipfracs)) if clipfracs else 0.0
    return stats


# ---- Pre-training (paper D.1): behaviour cloning with the denoising loss, EMA weights for fine-tuning ----------------
def make_checkpoint(actor, kw, normalization, args, iteration, env_steps, **extra):
    """What every checkpoint of a diffusion script holds: the network `actor` as 'model' (the one every diffusion
    script can start from), its description, the normalization, the run's flags and the script's `extra` entries;
    on robomimic the env meta in use, restored when loading."""
    if envs.is_robomimic(args.env_id):
        extra["robomimic_env_args"] = envs.robomimic_env_args(args.env_id)
    ckpt = dict(algo=ALGO, policy="diffusion", backbone=kw["backbone"], model=actor.state_dict(), model_kwargs=kw)
    ckpt |= dict(normalization=normalization, env_id=args.env_id, args=asdict(args))
    return ckpt | dict(iteration=iteration, env_steps=env_steps, **extra)


def pretrain(args, data, run_dir, writer, device):
    """Behaviour cloning on `data` (envs.load_dataset) with the denoising loss (pretraining.behaviour_cloning: AdamW,
    cosine LR, EMA weights, the official loop); writes run_dir/pretrained.pt and returns it."""
    samples = pretraining.make_samples(data, args)
    obs_dim, image_shape = envs.obs_dims(samples[0])
    kw = model_kwargs_from(args, obs_dim, samples[1].shape[1], image_shape)
    net = build_policy_network(kw).to(device)
    sched = {k: v.to(device) for k, v in make_schedule(args.denoising_steps).items()}
    loss_fn = lambda obs, x0: denoising_loss(net, sched, x0, obs, args.denoising_steps)  # noqa: E731
    checkpoint = lambda weights: make_checkpoint(weights, kw, data["normalization"], args, 0, 0)  # noqa: E731
    return pretraining.behaviour_cloning(net, loss_fn, samples, args, device, writer, checkpoint, run_dir)


# ---- Evaluation, checks, main ----------------------------------------------------------------------------------------
def eval_act(actor, actor_ft, sched, plan, ft_steps, args, device):
    """The evaluation action function obs -> chunk (envs.run_episodes, envs.capture_video), sampled as
    args.eval_sampling says; the last `ft_steps` denoising steps run the fine-tuned network."""

    def act(obs):
        obs = envs.obs_tensor(obs, device)
        chunk, _ = sample(actor, actor_ft, sched, obs, plan, ft_steps, args.eval_sampling, args)
        return chunk.cpu().numpy()

    return act


def check_args(args):
    fine_tuning = not (args.eval_only or args.pretrain_only)
    arguments.check_ranges(args, args.num_envs * args.n_steps * args.act_steps if fine_tuning else None)
    if args.act_steps > args.horizon_steps:
        envs.fail(f"--act-steps {args.act_steps} > --horizon-steps {args.horizon_steps}; use --act-steps <= it")
    if args.ddim_steps is not None:
        if args.denoising_steps % args.ddim_steps:
            envs.fail(f"--ddim-steps {args.ddim_steps} must divide --denoising-steps {args.denoising_steps}")
        if args.ft_denoising_steps > args.ddim_steps:
            envs.fail(
                f"--ft-denoising-steps {args.ft_denoising_steps} > --ddim-steps {args.ddim_steps}; use at most that"
            )
    elif args.ft_denoising_steps > args.denoising_steps:
        K = args.denoising_steps
        envs.fail(f"--ft-denoising-steps {args.ft_denoising_steps} > --denoising-steps {K}; use at most {K}")
    if args.from_scratch and (args.dataset or args.pretrain_only):
        envs.fail("--from-scratch starts from a fresh network: drop --dataset/--pretrain-only (or --from-scratch)")
    if envs.is_image_task(args.env_id) and (args.from_scratch or args.backbone != "mlp"):
        envs.fail(
            f"{args.env_id} is a pixel task: DPPO-ViT-MLP (--backbone mlp) from a pre-trained policy; drop "
            "--from-scratch and --backbone unet"
        )


def build_actors(ckpt, ft_denoising_steps, device):
    """(frozen actor, fine-tuned actor, fine-tuned steps run in evaluation): two equal copies of a pre-trained network
    (0), or a DPPO checkpoint's `model_ft` for the last K' steps (K', the official code's later eval fix)."""
    actor = build_policy_network(ckpt["model_kwargs"]).to(device)
    try:
        actor.load_state_dict(ckpt["model"])
    except RuntimeError:
        envs.fail("checkpoint weights do not fit the network its model_kwargs describe; another architecture wrote it")
    actor.requires_grad_(False)  # frozen copy for the early denoising steps (paper 4.3)
    actor_ft = copy.deepcopy(actor).requires_grad_(True)
    if ckpt.get("model_ft") is None:
        return actor, actor_ft, 0
    actor_ft.load_state_dict(ckpt["model_ft"])
    return actor, actor_ft, ft_denoising_steps


def load_start(args):
    """The checkpoint this run starts from, read and checked before anything is written, and the run it resumes:
    (ckpt, resume or None, path). ckpt is None when the run pre-trains on --dataset first; with --from-scratch it is
    a fresh network on identity normalization (paper B.2). A dppo checkpoint with a critic resumes its run."""
    if args.from_scratch and args.checkpoint is None:
        obs_dim, action_dim = envs.env_dims(args.env_id)
        kw = model_kwargs_from(args, obs_dim, action_dim)
        normalization = envs.identity_normalization(obs_dim, action_dim)
        return make_checkpoint(build_policy_network(kw), kw, normalization, args, 0, 0), None, None
    if args.dataset is not None and args.checkpoint is None:
        return None, None, None
    path = args.checkpoint or envs.bundled_checkpoint(args.env_id, "diffusion", args.backbone)
    ckpt = envs.load_diffusion_checkpoint(path, args, same_horizon=False, continues_ft=True)
    print(f"[load] {path} ({ckpt['algo']}, iteration {ckpt['iteration']})")
    resume = ckpt if ckpt["algo"] == ALGO and "critic" in ckpt and not args.eval_only else None
    return ckpt, resume, path


def main(args):
    check_args(args)
    steps_per_iter, num_iters, device = runs.start(args, ALGO)
    ckpt, resume, path = load_start(args)
    run_dir, writer, evals, data = runs.open_run_dir(args, ALGO, resume, path, load_data=ckpt is None)
    if ckpt is None:
        ckpt = pretrain(args, data, run_dir, writer, device)
    kw, normalization = ckpt["model_kwargs"], ckpt["normalization"]
    actor, actor_ft, eval_ft_steps = build_actors(ckpt, args.ft_denoising_steps, device)
    sched = {k: v.to(device) for k, v in make_schedule(kw["denoising_steps"]).items()}
    plan = denoising_plan(kw["denoising_steps"], args.ddim_steps)
    K_ft = args.ft_denoising_steps
    if args.pretrain_only or args.eval_only:
        act = eval_act(actor, actor_ft, sched, plan, eval_ft_steps, args, device)
        return runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals, device, act, normalization)

    # ---- set-up: a fresh value critic V(s) (paper eq. 4.8), AdamW with cosine-annealed learning rates ----
    action_dim, Tp = kw["action_dim"], kw["horizon_steps"]
    critic = build_critic(kw, args).to(device)  # fresh critic (official)
    actor_opt = torch.optim.AdamW(actor_ft.parameters(), lr=args.actor_lr, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=args.critic_lr, weight_decay=0.0)
    actor_min_lr = args.actor_lr if args.actor_min_lr is None else args.actor_min_lr
    critic_min_lr = args.critic_lr if args.critic_min_lr is None else args.critic_min_lr
    actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(actor_opt, num_iters, actor_min_lr)
    critic_sched = torch.optim.lr_scheduler.CosineAnnealingLR(critic_opt, num_iters, critic_min_lr)
    scaler = envs.RunningRewardScaler(args.num_envs)
    # what a checkpoint saves besides the networks and a resume restores, by checkpoint key
    trained = dict(critic=critic, actor_optimizer=actor_opt, critic_optimizer=critic_opt, reward_scaler=scaler)
    trained |= dict(actor_lr_schedule=actor_sched, critic_lr_schedule=critic_sched)
    act_pretrained = eval_act(actor, actor_ft, sched, plan, 0, args, device)  # the policy fine-tuning starts from
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act_pretrained, args, normalization)
    vec, obs, firsts, recent_returns = runs.start_envs(args, normalization, start_iter, resume, np.ones(args.num_envs))
    progress, t_start = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO), time.time()
    act = eval_act(actor, actor_ft, sched, plan, K_ft, args, device)  # the fine-tuned policy, as it is when called
    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        # ---- rollout: record the fine-tuned part of every denoising chain (paper 4.1, eqs. 4.1-4.3) ----
        N, E = args.n_steps, args.num_envs
        buf_obs = envs.RolloutObs(obs, N)
        buf_final = envs.RolloutObs(obs, N)  # observation reached before any auto-reset
        buf_chain = torch.zeros((N, E, K_ft + 1, Tp, action_dim), device=device)
        buf_rew, buf_term, buf_timeout, buf_first = (np.zeros((N, E)) for _ in range(4))
        policy_step = functools.partial(rollout_chains, actor, actor_ft, sched, plan, args, iteration)
        for n in range(N):
            obs_t = envs.obs_tensor(obs, device)
            chain, (next_obs, reward, term, trunc, infos) = workers.rollout_step(vec, policy_step, obs_t)
            runs.check_finite(iteration, reward=reward, observation=next_obs)
            env_steps += E * args.act_steps  # episodes that end here are logged at this count
            buf_obs[n], buf_chain[n], buf_rew[n], buf_first[n] = obs, chain, reward, firsts
            buf_term[n], buf_timeout[n] = term, np.logical_and(trunc, np.logical_not(term))
            buf_final[n] = envs.final_observations(next_obs, infos)
            firsts = np.logical_or(term, trunc).astype(np.float64)
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- advantages over env steps: GAE on V(s) of the env state only (paper 4.2, eqs. 4.6-4.8) ----
        t_update = runs.phase("update")  # torch at the update's threads
        flat = lambda x: torch.as_tensor(x.reshape(-1, *x.shape[2:]), device=device)  # noqa: E731
        flat_obs = buf_obs.flat(device)
        if args.augment:  # pixels: random shifts, once per iteration (official fine-tuning agents; D.5)
            flat_obs = vit.shift_images(flat_obs)
        with torch.no_grad():
            values = critic(flat_obs).cpu().numpy().reshape(N, E)
            final_values = critic(buf_final.flat(device)).cpu().numpy().reshape(N, E)
            last_value = critic(envs.obs_tensor(obs, device)).cpu().numpy()
        rewards = scaler(buf_rew, buf_first) if args.reward_scale_running else buf_rew
        # a time-out is not a failure: bootstrap it with V(last obs) (the official code treats it as terminal)
        rewards = rewards + args.gamma * final_values * buf_timeout
        dones = np.maximum(buf_term, buf_timeout)
        next_values = np.concatenate([values[1:], last_value[None]], 0)
        advantages, returns = compute_gae(rewards, values, next_values, dones, args.gamma, args.gae_lambda)
        # ---- old log-probs of every (env step, denoising step) pair (paper eq. 4.4) ----
        chains = buf_chain.reshape(N * E, K_ft + 1, Tp, action_dim)
        old_logp = torch.zeros(N * E, K_ft, device=device)
        with torch.no_grad():
            chunk = workers.chunk_size(args.logprob_batch_size, device, 500, 10_000)  # env-step samples per call
            for s0 in range(0, N * E, chunk):
                sl = slice(s0, s0 + chunk)
                old_logp[sl] = chain_log_probs(actor_ft, sched, envs.take_rows(flat_obs, sl), chains[sl], args)
        targets = dict(advantages=flat(advantages.astype(np.float32)), returns=flat(returns.astype(np.float32)))
        batch = dict(obs=flat_obs, chains=chains, logprobs=old_logp, **targets)

        # ---- update: PPO over the denoising steps, clipped per step (paper 4.2, eq. 4.5; D.4) ----
        update_actor = iteration >= args.n_critic_warmup_itr  # critic warm-up over: the actor updates too
        stats = ppo_update(actor, actor_ft, critic, actor_opt, critic_opt, sched, batch, args, update_actor)
        runs.check_finite(iteration, **stats, actor_weights=actor_ft, critic_weights=critic)
        if update_actor:
            actor_sched.step()
        critic_sched.step()
        t_update = time.time() - t_update
        iteration += 1

        # ---- log, evaluate, save ----
        stats["explained_variance"] = 1 - np.var(returns - values) / (np.var(returns) + 1e-8)
        runs.log_stats(writer, env_steps, "losses", stats)
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        lrs = dict(learning_rate=actor_opt.param_groups[0]["lr"], critic_learning_rate=critic_opt.param_groups[0]["lr"])
        runs.log_stats(writer, env_steps, "charts", lrs)
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(kl=stats["approx_kl"], clipfrac=stats["clipfrac"])
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
