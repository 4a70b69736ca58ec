"""Gaussian policy over action chunks, trained with PPO (DPPO paper 5.2 and D.6).

Three ways to run it:
  * from scratch (plain PPO; how the project's "medium" datasets' behaviour policies are made):
        python cleandppo/gaussian_ppo.py --env-id Hopper-v2 --from-scratch --total-timesteps 1000000
  * behaviour-cloning pre-training from a dataset (fixed std):
        python cleandppo/gaussian_ppo.py --env-id Hopper-v2 --dataset hopper-medium-v2 --pretrain-only
  * PPO fine-tuning of a pre-trained checkpoint (default: the bundled one for --env-id):
        python cleandppo/gaussian_ppo.py --env-id Hopper-v2
A checkpoint can also be rolled out into a D4RL-format dataset with --record-dataset PATH.
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

ALGO = "gaussian_ppo"


@dataclass
class Args(arguments.RunArgs):
    # the flags every script shares come first: arguments.RunArgs (--env-id, --seed, --num-envs, --total-timesteps,
    # --checkpoint, --eval-*, --run-dir, ...; docs/contract.md)
    # --- this script's own part of the common contract ---
    dataset: Optional[str] = None
    """pre-training data: a D4RL name (hopper-medium-v2), a Minari id or an hdf5 path"""
    pretrain_only: bool = False
    """stop after behaviour-cloning pre-training"""
    eval_sampling: Literal["eval", "train"] = "eval"
    """"eval": the mean action, no exploration noise (paper 5); "train": sampled as in the rollouts (Avoid, D.8)"""
    from_scratch: bool = False
    """PPO from a random policy (no dataset, no checkpoint), the official scratch preset"""
    record_dataset: Optional[str] = None
    """roll out --checkpoint's stochastic policy and write a D4RL-format hdf5 to this path"""
    record_transitions: int = 200_000
    """with --record-dataset: number of transitions to record (whole episodes are kept)"""
    target_return: Optional[float] = None
    """stop once the stochastic policy's mean return over the last 50 training episodes reaches this
    (how the 'medium' behaviour policies are made: the recorded data then has about this return)"""
    # --- policy (paper D.6) ---
    backbone: Literal["mlp", "transformer"] = "mlp"
    """network producing the chunk mean: residual MLP or decoder-only Transformer"""
    horizon_steps: int = 4
    """predicted action-chunk length Tp (paper: baselines use DPPO's chunk size)"""
    act_steps: int = 4
    """executed actions per policy query Ta (<= horizon_steps)"""
    cond_steps: int = 1
    """observation history length To"""
    mlp_dims: tuple[int, ...] = (512, 512, 512)
    """hidden widths of the MLP backbone (one residual block for three equal widths)"""
    transformer_dim: int = 96
    """Transformer embedding width"""
    transformer_heads: int = 4
    """Transformer attention heads"""
    transformer_layers: int = 4
    """Transformer decoder layers"""
    fixed_std: float = 0.1
    """std used in pre-training and the initial value of the learned std in fine-tuning"""
    std_min: float = 0.01
    """lower clip of the learned std"""
    std_max: float = 0.2
    """upper clip of the learned std"""
    randn_clip_value: float = 3.0
    """sampled actions are clipped to mean +- randn_clip_value * std"""

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

    # --- pre-training ---
    pretrain_epochs: int = 200
    """passes over the dataset"""
    pretrain_batch_size: int = 128
    """samples per gradient step"""
    pretrain_lr: float = 1e-4
    """learning rate (constant, as the official Gym Gaussian config, unless pretrain_min_lr is set)"""
    pretrain_weight_decay: float = 1e-6
    """AdamW weight decay"""
    pretrain_save_freq: int = 0
    """also write pretrained_<epoch>.pt every N epochs (0: only pretrained.pt, at the end)"""
    pretrain_min_lr: Optional[float] = None
    """final LR of a cosine decay from pretrain_lr (1 warm-up epoch; official Avoid configs); None: constant"""
    ema_decay: Optional[float] = None
    """EMA decay of the weights saved for fine-tuning (official Avoid configs: 0.995); None: no EMA"""
    ema_freq: int = 10
    """EMA update every N gradient steps"""
    ema_start_epoch: int = 20
    """before this epoch the EMA copy just follows the live weights"""

    # --- PPO fine-tuning (paper Gym defaults) ---
    n_steps: int = 500
    """policy queries per env per iteration (N)"""
    rollout_parts: int = 0
    """env workers' envs in N parts, each simulating while the policy samples the next (0: auto, 1; docs/envs.md)"""
    gamma: float = 0.99
    """discount per policy query"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    actor_lr: float = 1e-4
    """actor learning rate"""
    critic_lr: float = 1e-3
    """critic learning rate"""
    update_epochs: int = 5
    """passes over each iteration's batch"""
    batch_size: int = 5000
    """policy queries per minibatch"""
    grad_accumulate: int = 1
    """minibatches whose summed gradients make one optimizer step (official pixel tasks: the batch in pieces)"""
    clip_coef: float = 0.01
    """PPO clip ratio epsilon"""
    vf_coef: float = 0.5
    """value-loss weight"""
    ent_coef: float = 0.0
    """entropy bonus weight"""
    target_kl: Optional[float] = 1.0
    """stop the iteration's epochs when the approximate KL exceeds this"""
    max_grad_norm: Optional[float] = None
    """gradient-norm clip for actor and critic (None: off, as every official config)"""
    reward_scale_running: bool = True
    """divide rewards by the std of a running discounted return (gamma 0.99)"""
    n_critic_warmup_itr: int = 0
    """first iterations update only the critic"""
    critic_dims: tuple[int, ...] = (256, 256, 256)
    """critic hidden widths (residual, Mish)"""
    train_action_noise: tuple[float, float] = (0.0, 0.0)
    """[low, high] of uniform noise (normalized units) on executed actions from iteration 5 (D.8, Fig. 10)"""
    train_action_noise_mode: Literal["literal", "symmetric"] = "literal"
    """--train-action-noise as D.8 reads (literal: uniform in [low, high], positive) or with a random sign"""
    official_normalization: Optional[str] = None
    """normalization.npz of an official DPPO --checkpoint (default: found next to it; docs/checkpoints.md)"""
    bc_loss_coeff: float = 0.0
    """BC regulariser weight: -log-prob under the policy of the frozen pre-trained policy's samples (D.7; 0: off)"""


# --from-scratch: the official cfg/gym/scratch/*/ppo_gaussian_mlp.yaml values: single actions, 10 envs x 1000 steps,
# minibatch 500, 10 epochs, clip 0.1, a plain (not residual) ReLU MLP [512, 512, 512], std in [0.01, 1]. The budget
# differs per task: 301 iterations on Hopper, 501 on Walker2d and HalfCheetah (SCRATCH_ITERATIONS).
SCRATCH = dict(
    horizon_steps=1,
    act_steps=1,
    cond_steps=1,
    num_envs=10,
    n_steps=1000,
    batch_size=500,
    update_epochs=10,
    clip_coef=0.1,
    actor_lr=1e-4,
    critic_lr=1e-3,
    target_kl=1.0,
    fixed_std=1.0,
    std_min=0.01,
    std_max=1.0,
    mlp_dims=(512, 512, 512),
)
SCRATCH_ITERATIONS = {"hopper-v2": 301}  # the budget: 501 iterations on Walker2d and HalfCheetah

# Robomimic ids (lift, can, square, transport) get the official values (cfg/robomimic/finetune/<task>/
# ft_ppo_gaussian_{mlp,transformer}.yaml; paper D.5-D.6) for every flag not set explicitly on the command line
# (printed at start), with act_steps = horizon_steps = the task's Ta; the Gym tasks keep the defaults above.
ROBOMIMIC = dict(
    gamma=0.999,
    num_envs=50,
    clip_coef=0.01,
    actor_lr=1e-4,
    critic_lr=1e-3,
    n_critic_warmup_itr=2,
    eval_episodes=50,
    fixed_std=0.1,
    std_min=0.01,
    std_max=0.2,
)
ROBOMIMIC_TASK = dict(
    lift=dict(n_steps=300, batch_size=7500, update_epochs=10, mlp_dims=(512,) * 3, transformer_dim=96),
    can=dict(n_steps=300, batch_size=7500, update_epochs=10, mlp_dims=(512,) * 3, transformer_dim=96),
    square=dict(n_steps=400, batch_size=10_000, update_epochs=10, mlp_dims=(1024,) * 3, transformer_dim=160),
    transport=dict(n_steps=400, batch_size=10_000, update_epochs=5, mlp_dims=(1024,) * 3, transformer_dim=160),
)
# pixel ids lift-img, ... (paper 5.2, D.5; official cfg/robomimic/{pretrain,finetune}/<task>/*_gaussian_mlp_img.yaml):
# minibatches of 1500 (Lift, Can) or 1000, grad_accumulate of them per optimizer step (the state tasks' 7500 and
# 10000); pre-training: batch 256, cosine 1e-4 -> 1e-5, 2000 epochs, the live weights saved (the configs keep an EMA
# copy, but the official GaussianModel fine-tunes the checkpoint's `model`)
ROBOMIMIC_IMG = dict(ROBOMIMIC, update_epochs=10, vit_dim=128, vit_depth=1, vit_heads=4, spatial_emb=128)
ROBOMIMIC_IMG |= dict(pretrain_epochs=2000, pretrain_batch_size=256, pretrain_lr=1e-4, pretrain_min_lr=1e-5)
ROBOMIMIC_IMG_TASK = dict(
    lift=dict(n_steps=300, batch_size=1500, grad_accumulate=5, actor_lr=1e-4, mlp_dims=(512,) * 3),
    can=dict(n_steps=300, batch_size=1500, grad_accumulate=5, actor_lr=1e-4, mlp_dims=(512,) * 3),
    square=dict(n_steps=400, batch_size=1000, grad_accumulate=10, actor_lr=1e-5, mlp_dims=(768,) * 3),
    transport=dict(n_steps=400, batch_size=1000, grad_accumulate=10, actor_lr=1e-5, mlp_dims=(768,) * 3),
)
# Avoid ids (official cfg/d3il/*/avoid_m*, paper D.8): std fixed at 0.1 in fine-tuning too (std_min = std_max)
AVOID = dict(
    num_envs=50,
    n_steps=25,
    batch_size=625,
    update_epochs=10,
    total_timesteps=255_000,
    actor_lr=1e-5,
    critic_lr=1e-3,
    n_critic_warmup_itr=1,
    clip_coef=0.1,
    fixed_std=0.1,
    std_min=0.1,
    std_max=0.1,
    mlp_dims=(256, 256, 256),
    eval_freq=5,
    eval_episodes=50,
    eval_sampling="train",
    pretrain_batch_size=16,
    pretrain_lr=1e-4,
    pretrain_min_lr=1e-5,  # official cfg/d3il/pretrain/avoid_m*/pre_{gaussian,gmm}_mlp.yaml: cosine 1e-4 -> 1e-5
    ema_decay=0.995,  # and the EMA weights
    ema_start_epoch=10,  # as dppo.py's Avoid table
    pretrain_epochs=2000,  # official 5000; 2000 costs about the CPU time of the diffusion policy's 300
)


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    """Linear -> one pre-activation residual block per extra pair of equal widths -> Linear. Other hidden widths (the
    official [256, 256] MLPs) or residual=False (official residual_style False): a plain MLP, activations between."""

    def __init__(self, dims, activation=nn.ReLU, residual=None):
        super().__init__()
        hidden = dims[1:-1]
        self.residual = (len(hidden) % 2 == 1 and len(set(hidden)) == 1) if residual is None else residual
        if self.residual:
            self.inp = nn.Linear(dims[0], hidden[0])
            self.blocks = nn.ModuleList(
                nn.Sequential(
                    activation(), nn.Linear(hidden[0], hidden[0]), activation(), nn.Linear(hidden[0], hidden[0])
                )
                for _ in range((len(hidden) - 1) // 2)
            )
            self.out = nn.Linear(hidden[0], dims[-1])
        else:
            layers = []
            for i in range(len(dims) - 2):
                layers += [nn.Linear(dims[i], dims[i + 1]), activation()]
            self.body = nn.Sequential(*layers)
            self.out = nn.Linear(dims[-2], dims[-1])

    def forward(self, x):
        if self.residual:
            x = self.inp(x)
            for block in self.blocks:
                x = x + block(x)
            return self.out(x)
        return self.out(self.body(x))


class TransformerBackbone(nn.Module):
    """Decoder-only Transformer (paper D.6): one observation token as memory, Tp learned query tokens.

    Query tokens are learned positional embeddings over the chunk; no dropout, no causal mask.
    """

    def __init__(self, obs_in, out_per_step, horizon_steps, dim, heads, layers):
        super().__init__()
        self.obs_proj = nn.Linear(obs_in, dim)
        self.obs_pos = nn.Parameter(torch.zeros(1, 1, dim))
        self.encoder = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))
        self.query_pos = nn.Parameter(torch.zeros(1, horizon_steps, dim))
        layer = nn.TransformerDecoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_per_step)
        for m in self.modules():  # GPT-style init (official `_init_weights`, model/common/transformer.py)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.obs_pos, 0.0, 0.02)
        nn.init.normal_(self.query_pos, 0.0, 0.02)

    def forward(self, obs_flat):
        memory = self.encoder(self.obs_proj(obs_flat)[:, None] + self.obs_pos)
        queries = self.query_pos.expand(obs_flat.shape[0], -1, -1)
        return self.head(self.norm(self.decoder(queries, memory)))  # (B, Tp, out_per_step)


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian over the flattened (Tp, Da) chunk with tanh mean (paper D.6).

    The std is one learned value per action dimension, shared over the chunk, clipped to
    [std_min, std_max]; pre-training keeps it at its initial value (`learn_std=False`).
    With `vision` (a pixel task, paper 5.2: Gaussian-ViT-MLP; official Gaussian_VisionMLP in
    model/common/mlp_gaussian.py) the MLP reads the VisionEncoder features of {"state", "rgb"} observations.
    """

    def __init__(
        self,
        obs_dim,
        action_dim,
        horizon_steps,
        cond_steps,
        backbone="mlp",
        mlp_dims=(512, 512, 512),
        transformer_dim=96,
        transformer_heads=4,
        transformer_layers=4,
        init_std=0.1,
        std_min=0.01,
        std_max=0.2,
        activation="mish",
        obs_norm=False,
        residual=None,
        vision=None,
    ):
        super().__init__()
        self.action_dim, self.horizon_steps = action_dim, horizon_steps
        self.std_min, self.std_max = std_min, std_max
        self.encoder = None if vision is None else vit.VisionEncoder(**vision)
        obs_in = obs_dim * cond_steps if vision is None else self.encoder.out_dim
        act = {"mish": nn.Mish, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        if backbone == "mlp":
            self.net = ResidualMLP([obs_in, *mlp_dims, horizon_steps * action_dim], act, residual)
        else:
            self.net = TransformerBackbone(
                obs_in, action_dim, horizon_steps, transformer_dim, transformer_heads, transformer_layers
            )
        self.logvar = nn.Parameter(torch.full((action_dim,), 2 * math.log(init_std)))  # log sigma^2, as the official
        # running observation statistics, only used (and updated) when training from scratch
        self.obs_norm = obs_norm
        self.register_buffer("obs_mean", torch.zeros(obs_in))
        self.register_buffer("obs_var", torch.ones(obs_in))
        self.register_buffer("obs_count", torch.tensor(1e-4))

    def forward(self, obs):
        """Mean (B, Tp, Da) and std (Da,) for observations (B, To, Do), or pixel ones."""
        x = obs.flatten(1) if self.encoder is None else self.encoder(obs)
        if self.obs_norm:
            x = ((x - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)).clamp(-10, 10)
        mean = torch.tanh(self.net(x).reshape(-1, self.horizon_steps, self.action_dim))
        std = (0.5 * self.logvar).exp().clamp(self.std_min, self.std_max)
        return mean, std

    @torch.no_grad()
    def update_obs_stats(self, obs):
        x = obs.flatten(1)
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.obs_mean, self.obs_count + n
        self.obs_var.copy_(
            (self.obs_var * self.obs_count + batch_var * n + delta**2 * self.obs_count * n / total) / total
        )
        self.obs_mean.add_(delta * n / total)
        self.obs_count.copy_(total)


def sample_action(mean, std, randn_clip_value, generator=None):
    """Gaussian sample, clipped to mean +- randn_clip_value * std (paper D.6)."""
    noise = torch.randn(mean.shape, generator=generator, device=mean.device).clamp(-randn_clip_value, randn_clip_value)
    return mean + std * noise


@torch.no_grad()
def rollout_chunks(policy, args, iteration, obs, rows):
    """The rollout's (executed actions, chunks) of envs `rows` (workers.rollout_step): chunks sampled from the policy,
    their first act_steps executed with D.8's fine-tuning noise (avoid.add_action_noise)."""
    chunk = sample_action(*policy(envs.take_rows(obs, rows)), args.randn_clip_value)
    executed = chunk[:, : args.act_steps].cpu().numpy()
    return avoid.add_action_noise(executed, iteration, args.train_action_noise, args.train_action_noise_mode), chunk


def log_prob(mean, std, actions):
    """Per-dimension-mean Gaussian log-density of each chunk, clamped to [-5, 2] (official convention).

    Averaging over the Tp*Da elements (instead of summing) is what the official PPO clip ranges
    assume; the clamp only matters for far-off samples.
    """
    var = std**2
    elementwise = -((actions - mean) ** 2) / (2 * var) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return elementwise.mean(dim=(-2, -1)).clamp(-5.0, 2.0)


def entropy(std):
    """Mean elementwise entropy of N(., std^2): 0.5 log(2 pi e std^2)."""
    return (0.5 * math.log(2 * math.pi * math.e) + torch.log(std)).mean()


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


# ------------------------------------------------------------------------------------------------
# PPO pieces
# ------------------------------------------------------------------------------------------------
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


def ppo_update(policy, critic, actor_opt, critic_opt, batch, args, update_actor=True, generator=None, base_policy=None):
    """PPO epochs over one iteration's batch (paper 4, D.6). Returns the last minibatch's stats, read back from the
    device once per minibatch. The gradients of --grad-accumulate minibatches sum into one optimizer step (official
    grad_accumulate; the last minibatch of an epoch steps with what it has)."""
    n = len(batch["actions"])
    mb = min(args.batch_size, n)
    starts = range(0, n - mb + 1, mb)
    stats, clipfracs = {}, []
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(n, generator=generator)
        for k, start in enumerate(starts):
            idx = perm[start : start + mb]
            obs, actions, old_logp = envs.take_rows(batch["obs"], idx), batch["actions"][idx], batch["logprobs"][idx]
            adv, ret = batch["advantages"][idx], batch["returns"][idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            mean, std = policy(obs)
            new_logp = log_prob(mean, std, actions)
            ratio = (new_logp - old_logp).exp()
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
            v_loss = 0.5 * ((critic(obs) - ret) ** 2).mean()
            ent = entropy(std)
            loss = pg_loss - args.ent_coef * ent + args.vf_coef * v_loss
            if args.bc_loss_coeff:  # BC regulariser (D.7, official use_bc_loss)
                teacher = sample_action(*base_policy(obs), args.randn_clip_value)  # the frozen policy's samples
                loss = loss - args.bc_loss_coeff * log_prob(mean, std, teacher).mean()
            if k % args.grad_accumulate == 0:  # a new sum of gradients
                actor_opt.zero_grad()
                critic_opt.zero_grad()
            loss.backward()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - (new_logp - old_logp)).mean()  # k3 estimator
                clipfrac = ((ratio - 1).abs() > args.clip_coef).float().mean()
                logged = [pg_loss, v_loss, ent, approx_kl, ratio.mean(), std.mean(), clipfrac]
                logged = torch.stack(logged).tolist()  # one read-back
            stats = dict(zip(("policy_loss", "value_loss", "entropy", "approx_kl", "ratio", "std"), logged))
            clipfracs.append(logged[-1])
            if (k + 1) % args.grad_accumulate and k + 1 < len(starts):
                continue  # more minibatches to sum before the step
            if args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
            if update_actor:
                actor_opt.step()
                # keep the learned std inside its clip range; the official code lets the parameter drift
                # past the clamp, where its gradient is zero and it can never come back
                with torch.no_grad():
                    policy.logvar.clamp_(2 * math.log(policy.std_min), 2 * math.log(policy.std_max))
            critic_opt.step()
            if args.target_kl is not None and stats["approx_kl"] > args.target_kl:
                stats["clipfrac"] = float(np.mean(clipfracs))
                return stats
    stats["clipfrac"] = float(np.mean(clipfracs)) if clipfracs else 0.0
    return stats


# ------------------------------------------------------------------------------------------------
# Helpers around the loop
# ------------------------------------------------------------------------------------------------
def model_kwargs_from(args, obs_dim, action_dim, init_std, obs_norm=False, image_shape=None):
    """The policy description a checkpoint stores (GaussianPolicy's arguments); a pixel task's (`image_shape` (C, H, W)
    of its observations; obs_dim: the proprioception's) also has its ViT's, under "vision"."""
    vision = {} if image_shape is None else dict(vision=vit.vision_kwargs(args, obs_dim, image_shape))
    return dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon_steps=args.horizon_steps,
        cond_steps=args.cond_steps,
        backbone=args.backbone,
        mlp_dims=tuple(args.mlp_dims),
        transformer_dim=args.transformer_dim,
        transformer_heads=args.transformer_heads,
        transformer_layers=args.transformer_layers,
        init_std=init_std,
        std_min=args.std_min,
        std_max=args.std_max,
        activation="relu" if args.from_scratch else "mish",
        obs_norm=obs_norm,
        residual=False if args.from_scratch else None,
        **vision,
    )


def eval_act(policy, args, device):
    """The evaluation action function obs -> chunk (envs.run_episodes, envs.capture_video): the mean action (paper: no
    exploration noise) or, for eval_sampling "train", sampled actions."""

    def act(obs):
        with torch.no_grad():
            mean, std = policy(envs.obs_tensor(obs, device))
            return (
                (mean if args.eval_sampling == "eval" else sample_action(mean, std, args.randn_clip_value))
                .cpu()
                .numpy()
            )

    return act


def make_checkpoint(policy, kwargs, normalization, args, iteration, env_steps, **extra):
    if envs.is_robomimic(args.env_id):  # the env meta in use (a dataset's env_args), restored when loading
        extra["robomimic_env_args"] = envs.robomimic_env_args(args.env_id)
    return dict(
        algo=ALGO,
        policy="gaussian",
        backbone=args.backbone,
        model=policy.state_dict(),
        model_kwargs=kwargs,
        normalization=normalization,
        env_id=args.env_id,
        args=asdict(args),
        iteration=iteration,
        env_steps=env_steps,
        **extra,
    )


def pretrain(args, data, run_dir, writer, device):
    """Behaviour cloning on `data` (envs.load_dataset) with fixed std: minimize the mean elementwise Gaussian NLL
    (pretraining.behaviour_cloning: AdamW, the LR schedule, EMA weights, the official loop)."""
    samples = pretraining.make_samples(data, args)
    (obs_dim, image_shape), action_dim = envs.obs_dims(samples[0]), samples[1].shape[1]
    kwargs = model_kwargs_from(args, obs_dim, action_dim, args.fixed_std, image_shape=image_shape)
    policy = GaussianPolicy(**kwargs).to(device)
    policy.logvar.requires_grad_(False)  # std fixed during pre-training (paper D.6)

    def nll(obs, actions):
        mean, std = policy(obs)
        return (((actions - mean) ** 2) / (2 * std**2) + torch.log(std) + 0.5 * math.log(2 * math.pi)).mean()

    checkpoint = lambda weights: make_checkpoint(weights, kwargs, data["normalization"], args, 0, 0)  # noqa: E731
    return pretraining.behaviour_cloning(policy, nll, samples, args, device, writer, checkpoint, run_dir)


def record_dataset(policy, args, normalization, device):
    """Roll out the stochastic policy (chunks of 1) and save D4RL-format data in raw units."""
    if args.act_steps != 1:
        envs.fail("--record-dataset needs a checkpoint with act_steps 1 (train it with --from-scratch)")
    e = envs.make_vec_env(args.env_id, args.num_envs, args.seed, 1, args.cond_steps, normalization)
    obs, _ = e.reset(seed=args.seed)
    keys = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    per_env = [{k: [] for k in keys} for _ in range(args.num_envs)]
    episode_returns, count = [], 0
    while count < args.record_transitions:
        with torch.no_grad():
            mean, std = policy(torch.as_tensor(obs, device=device))
            chunk = sample_action(mean, std, args.randn_clip_value).cpu().numpy()
        next_obs, reward, term, trunc, infos = e.step(chunk)
        final_next = envs.final_observations(next_obs, infos)
        for i in range(args.num_envs):
            buf = per_env[i]
            buf["observations"].append(envs.unnormalize_obs(obs[i, -1], normalization))
            buf["actions"].append(envs.unnormalize_action(np.clip(chunk[i, 0], -1, 1), normalization))
            buf["rewards"].append(reward[i])
            buf["terminals"].append(term[i])
            buf["timeouts"].append(trunc[i] and not term[i])
            buf["next_observations"].append(envs.unnormalize_obs(final_next[i, -1], normalization))
            if term[i] or trunc[i]:  # keep whole episodes only
                for k in keys:
                    keys[k].extend(buf[k])
                count += len(buf["rewards"])
                episode_returns.append(float(np.sum(buf["rewards"])))
                per_env[i] = {k: [] for k in keys}
        obs = next_obs
    data = {k: np.asarray(v, dtype=np.float32 if k not in ("terminals", "timeouts") else bool) for k, v in keys.items()}
    envs.write_d4rl_hdf5(
        args.record_dataset,
        data,
        attrs=dict(
            env_id=args.env_id,
            source="cleandppo gaussian_ppo --record-dataset",
            behaviour_checkpoint=str(args.checkpoint),
            mean_episode_return=float(np.mean(episode_returns)),
            episodes=len(episode_returns),
        ),
    )
    print(
        f"[record] {len(data['rewards'])} transitions, {len(episode_returns)} episodes, "
        f"mean return {np.mean(episode_returns):.1f} +- {np.std(episode_returns):.1f} -> {args.record_dataset}"
    )


def task_defaults(args) -> dict:
    """Defaults that differ from the Gym fine-tuning values above: --from-scratch's preset, the robomimic (state,
    pixels) and Avoid tables; {} for the Gym tasks."""
    task = envs.env_slug(args.env_id)
    if args.from_scratch:
        iterations = SCRATCH_ITERATIONS.get(task, 501)
        return dict(SCRATCH, total_timesteps=iterations * SCRATCH["num_envs"] * SCRATCH["n_steps"])
    if envs.is_image_task(args.env_id):
        task = envs.robomimic_task(args.env_id)
        ta = envs.ROBOMIMIC_TASKS[task]["act_steps"]
        return dict(ROBOMIMIC_IMG, **ROBOMIMIC_IMG_TASK[task], act_steps=ta, horizon_steps=ta)
    if avoid.is_avoid(args.env_id):
        return dict(AVOID)
    if not envs.is_robomimic(args.env_id):
        return {}
    ta = envs.ROBOMIMIC_TASKS[task]["act_steps"]
    table = dict(ROBOMIMIC, **ROBOMIMIC_TASK[task], act_steps=ta, horizon_steps=ta)
    if task == "transport" and args.backbone == "transformer":
        table["fixed_std"] = 0.08  # the Transport Transformer configs start from std 0.08
    return table


def check_args(args):
    if args.act_steps > args.horizon_steps:
        envs.fail(
            f"--act-steps {args.act_steps} > --horizon-steps {args.horizon_steps}; use act_steps <= horizon_steps"
        )
    if args.backbone == "transformer" and args.from_scratch:
        envs.fail("--from-scratch supports --backbone mlp only")
    if envs.is_image_task(args.env_id) and (args.from_scratch or args.record_dataset or args.backbone != "mlp"):
        envs.fail(
            f"{args.env_id} is a pixel task: Gaussian-ViT-MLP (--backbone mlp) from a pre-trained policy; drop "
            "--from-scratch, --record-dataset and --backbone transformer"
        )
    if args.std_min <= 0:
        envs.fail(f"--std-min must be > 0, got {args.std_min}; pass e.g. --std-min 0.01")
    fine_tuning = not (args.eval_only or args.pretrain_only or args.record_dataset)
    arguments.check_ranges(args, args.num_envs * args.n_steps * args.act_steps if fine_tuning else None)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def load_start(args):
    """The checkpoint this run starts from, read and checked before anything is written, and the run it resumes:
    (ckpt, resume or None, path). ckpt is None when the run pre-trains on --dataset first; with --from-scratch it
    describes a fresh policy on identity normalization, without weights (paper B.2). Where fine-tuning starts, its
    model_kwargs take --std-min/--std-max (fine-tuning clips the learned std, paper D.6). A checkpoint with a critic
    resumes its run."""
    if args.from_scratch and args.checkpoint is None:
        obs_dim, action_dim = envs.env_dims(args.env_id)
        kw = model_kwargs_from(args, obs_dim, action_dim, args.fixed_std, obs_norm=True)
        return dict(model_kwargs=kw, normalization=envs.identity_normalization(obs_dim, action_dim)), None, None
    if args.dataset is not None and args.checkpoint is None:
        return None, None, None
    path = args.checkpoint or envs.bundled_checkpoint(args.env_id, "gaussian", args.backbone)
    ckpt = envs.load_checkpoint(path, "gaussian", args.env_id, args.backbone, hints=vars(args))
    kw = ckpt["model_kwargs"]
    if kw["horizon_steps"] < args.act_steps or kw["cond_steps"] != args.cond_steps:
        envs.fail(
            f"{path} predicts chunks of {kw['horizon_steps']} with history {kw['cond_steps']}; "
            f"pass --horizon-steps {kw['horizon_steps']} --act-steps <= {kw['horizon_steps']} "
            f"--cond-steps {kw['cond_steps']}"
        )
    args.horizon_steps = kw["horizon_steps"]
    if "critic" not in ckpt and not args.record_dataset and not args.eval_only:
        ckpt = dict(ckpt, model_kwargs=dict(kw, std_min=args.std_min, std_max=args.std_max))
    resume = ckpt if "critic" in ckpt and not args.eval_only and not args.record_dataset else None
    print(f"[load] {path} ({ckpt['algo']}, iteration {ckpt['iteration']})")
    if envs.is_robomimic(args.env_id) and ckpt.get("robomimic_env_args"):  # the env meta the policy was trained with
        envs.set_robomimic_env_args(args.env_id, ckpt["robomimic_env_args"])
    if args.from_scratch and resume is None:
        envs.fail(
            f"--from-scratch --checkpoint resumes a from-scratch run, and {path} is none; pass that run's "
            "checkpoint_last.pt, or drop --from-scratch to fine-tune this checkpoint"
        )
    return ckpt, resume, path


def main(args):
    check_args(args)
    steps_per_iter, num_iters, device = runs.start(args, ALGO)
    ckpt, resume, path = load_start(args)
    policy = None if ckpt is None else _load_policy(ckpt, device)  # a checkpoint that does not fit stops here
    run_dir, writer, evals, data = runs.open_run_dir(args, ALGO, resume, path, load_data=ckpt is None)
    if ckpt is None:
        ckpt = pretrain(args, data, run_dir, writer, device)
        policy = _load_policy(ckpt, device)
    kwargs, normalization = ckpt["model_kwargs"], ckpt["normalization"]
    if args.record_dataset:
        return record_dataset(policy, args, normalization, device)
    act = eval_act(policy, args, device)  # the policy, as it is when called
    if args.eval_only or args.pretrain_only:
        return runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals, device, act, normalization)

    # ---- set-up: a fresh value critic V(s), the BC teacher, AdamW ----
    action_dim = kwargs["action_dim"]
    critic = build_critic(kwargs, args).to(device)  # fresh critic (official)
    base_policy = copy.deepcopy(policy).requires_grad_(False) if args.bc_loss_coeff else None  # teacher of the BC term
    actor_opt = torch.optim.AdamW(policy.parameters(), lr=args.actor_lr, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=args.critic_lr, weight_decay=0.0)
    scaler = envs.RunningRewardScaler(args.num_envs)
    # what a checkpoint saves besides the networks and a resume restores, by checkpoint key
    trained = dict(critic=critic, actor_optimizer=actor_opt, critic_optimizer=critic_opt, reward_scaler=scaler)
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act, args, normalization)
    if resume is not None and base_policy is not None:  # the BC teacher stays the policy the fine-tuning started from
        base_policy.load_state_dict(resume.get("base_model") or base_policy.state_dict())
    vec, obs, firsts, recent_returns = runs.start_envs(args, normalization, start_iter, resume, np.ones(args.num_envs))
    progress, t_start = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO), time.time()

    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        # ---- rollout: chunks sampled from the Gaussian, clipped to --randn-clip-value std (paper D.6) ----
        buf_obs = envs.RolloutObs(obs, args.n_steps)
        buf_act = np.zeros((args.n_steps, args.num_envs, args.horizon_steps, action_dim), np.float32)
        buf_rew, buf_term, buf_timeout, buf_first = (np.zeros((args.n_steps, args.num_envs)) for _ in range(4))
        buf_final = envs.RolloutObs(obs, args.n_steps)  # observation reached before any auto-reset
        policy_step = functools.partial(rollout_chunks, policy, args, iteration)
        for n in range(args.n_steps):
            obs_t = envs.obs_tensor(obs, device)
            if args.from_scratch:
                policy.update_obs_stats(obs_t)
            chunk, (next_obs, reward, term, trunc, infos) = workers.rollout_step(vec, policy_step, obs_t)
            chunk = chunk.cpu().numpy()
            runs.check_finite(iteration, reward=reward, observation=next_obs)
            env_steps += args.num_envs * args.act_steps  # episodes that end here are logged at this count
            buf_obs[n], buf_act[n], buf_rew[n], buf_first[n] = obs, chunk, reward, firsts
            buf_term[n], buf_timeout[n] = term, np.logical_and(trunc, np.logical_not(term))
            buf_final[n] = envs.final_observations(next_obs, infos)
            firsts = np.logical_or(term, trunc).astype(np.float64)
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- advantages: GAE on the learned V(s) (paper eq. 3.2 and 4.2) ----
        flat_obs = buf_obs.flat(device)
        if args.augment:  # pixels: random shifts, once per iteration (official fine-tuning agents; D.5)
            flat_obs = vit.shift_images(flat_obs)
        with torch.no_grad():
            flat = lambda x: torch.as_tensor(x.reshape(-1, *x.shape[2:]), device=device)  # noqa: E731
            values = critic(flat_obs).cpu().numpy().reshape(args.n_steps, args.num_envs)
            final_values = critic(buf_final.flat(device)).cpu().numpy().reshape(args.n_steps, args.num_envs)
            last_value = critic(envs.obs_tensor(obs, device)).cpu().numpy()
        rewards = scaler(buf_rew, buf_first) if args.reward_scale_running else buf_rew
        # a time-out is not a failure: bootstrap it with V(last obs) (the official code treats it as terminal)
        rewards = rewards + args.gamma * final_values * buf_timeout
        dones = np.maximum(buf_term, buf_timeout)
        next_values = np.concatenate([values[1:], last_value[None]], 0)
        advantages, returns = compute_gae(rewards, values, next_values, dones, args.gamma, args.gae_lambda)
        with torch.no_grad():
            mean, std = policy(flat_obs)
            old_logp = log_prob(mean, std, flat(buf_act))
        batch = dict(
            obs=flat_obs,
            actions=flat(buf_act),
            logprobs=old_logp,
            advantages=torch.as_tensor(advantages.reshape(-1), dtype=torch.float32, device=device),
            returns=torch.as_tensor(returns.reshape(-1), dtype=torch.float32, device=device),
        )

        # ---- update: PPO on the Gaussian likelihood, with the BC term (paper eq. 4.5, D.4, D.6) ----
        t_update = runs.phase("update")  # torch at the update's threads
        update_actor = iteration >= args.n_critic_warmup_itr  # critic warm-up over: the actor updates too
        stats = ppo_update(
            policy, critic, actor_opt, critic_opt, batch, args, update_actor=update_actor, base_policy=base_policy
        )
        runs.check_finite(iteration, **stats, policy_weights=policy, critic_weights=critic)
        t_update = time.time() - t_update
        iteration += 1

        # ---- log, evaluate, save ----
        stats["explained_variance"] = 1 - np.var(returns - values) / (np.var(returns) + 1e-8)
        runs.log_stats(writer, env_steps, "losses", stats)
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        runs.log_stats(writer, env_steps, "charts", dict(learning_rate=actor_opt.param_groups[0]["lr"]))
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(kl=stats["approx_kl"], std=stats["std"])
        progress.update(iteration, num_iters, env_steps, recent_returns, evals, successes, **shown)
        run = runs.checkpoint_state(trained, evals, vec, obs, firsts, recent_returns)
        teacher = None if base_policy is None else base_policy.state_dict()
        state = make_checkpoint(policy, kwargs, normalization, args, iteration, env_steps, base_model=teacher, **run)
        runs.save_run(state, run_dir, iteration, num_iters, args, writer)
        mean_ret = np.mean(recent_returns[-50:]) if recent_returns else float("nan")
        if args.target_return is not None and len(recent_returns) >= 50 and mean_ret >= args.target_return:
            print(f"[stop] mean training return {mean_ret:.1f} >= --target-return {args.target_return}")
            break
    progress.close()
    vec.close()
    runs.finish_run(run_dir, ALGO, args, env_steps, time.time() - t_start, evals, device, writer, act, normalization)


def _load_policy(ckpt, device):
    policy = GaussianPolicy(**ckpt["model_kwargs"]).to(device)
    if "model" not in ckpt:  # --from-scratch: the policy keeps its initialization
        return policy
    missing, unexpected = policy.load_state_dict(ckpt["model"], strict=False)
    if unexpected or [m for m in missing if not m.startswith("obs_")]:
        envs.fail(
            f"checkpoint does not fit the Gaussian {ckpt['model_kwargs']['backbone']} network "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); it was written by another architecture"
        )
    return policy


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    # tyro parses Args from the command line, starting from the task_defaults values (arguments.parse_args)
    runs.run_cli(main, arguments.parse_args(Args, task_defaults))
