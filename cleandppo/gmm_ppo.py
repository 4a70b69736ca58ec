"""Gaussian-mixture policy over action chunks, pre-trained by BC and fine-tuned with PPO (DPPO paper 5.2, D.6).

The paper's second non-diffusion parameterization: a mixture of `--num-modes` (5) diagonal
Gaussians over the flattened (Tp, Da) action chunk, with mode weights from a separate head.
    # behaviour-cloning pre-training (mixture negative log-likelihood, fixed std), then stop
    python cleandppo/gmm_ppo.py --env-id Hopper-v2 --dataset hopper-medium-v2 --pretrain-only
    # PPO fine-tuning of a pre-trained checkpoint (default: the bundled one for --env-id)
    python cleandppo/gmm_ppo.py --env-id Hopper-v2
    # what the official log-prob clamp would do on one rollout batch of a checkpoint
    python cleandppo/gmm_ppo.py --env-id Hopper-v2 --checkpoint CKPT --report-official-clamp

Log-probability (deviation from the official code, see docs/gmm_ppo.md): the exact mixture density
by log-sum-exp over modes, divided by Tp*Da (per-dimension mean, the convention of gaussian_ppo.py
and DPPO that the PPO clip ratio 0.01 assumes), then clamped to [-5, 2]. The official code clamps
the *summed* log-density at 2, which saturates for almost every sample, so its ratio stays 1.
"""

import functools
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn

from cleandppo import arguments, avoid, console, envs, pretraining, runs, workers

ALGO = "gmm_ppo"


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
    """"eval": mean of the most likely mode (no exploration noise); "train": sampled as in the rollouts (Avoid, D.8)"""
    official_summed_logprob: bool = False
    """PPO on the official PPO_GMM log-prob (summed density clamped to [-5, 2]; Avoid's default; docs/gmm_ppo.md)"""
    report_official_clamp: bool = False
    """roll out one fine-tuning batch (num-envs x n-steps queries) of --checkpoint and report the fraction
    of samples whose summed log-prob the official clamp at 2 saturates; then stop"""
    # --- policy (paper D.6) ---
    backbone: Literal["mlp", "transformer"] = "mlp"
    """network producing the mode means and weights: residual MLPs or decoder-only Transformer"""
    num_modes: int = 5
    """M: Gaussian components of the mixture (paper: 5)"""
    horizon_steps: int = 4
    """predicted action-chunk length Tp (paper: baselines use DPPO's chunk size)"""
    act_steps: int = 4
    """executed actions per policy query Ta (<= horizon_steps)"""
    cond_steps: int = 1
    """observation history length To"""
    mlp_dims: tuple[int, ...] = (512, 512, 512)
    """hidden widths of each MLP (means, mode logits); one residual block for three equal widths"""
    transformer_dim: int = 96
    """Transformer embedding width"""
    transformer_heads: int = 4
    """Transformer attention heads"""
    transformer_layers: int = 4
    """Transformer decoder layers"""
    fixed_std: float = 0.1
    """std of every mode in pre-training and the initial value of the learned std in fine-tuning"""
    std_min: float = 0.01
    """lower clip of the learned std"""
    std_max: float = 0.2
    """upper clip of the learned std"""

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

    # --- PPO fine-tuning (paper Gym defaults, same as gaussian_ppo.py) ---
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
    clip_coef: float = 0.01
    """PPO clip ratio epsilon"""
    vf_coef: float = 0.5
    """value-loss weight"""
    ent_coef: float = 0.0
    """entropy bonus weight (entropy in the official units: summed over the chunk, see `entropy`)"""
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


# Robomimic ids (lift, can, square, transport) get the official values (cfg/robomimic/finetune/<task>/
# ft_ppo_gmm_{mlp,transformer}.yaml; paper D.5-D.6) for every flag not set explicitly on the command line
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
    mlp_dims=(256, 256),
    eval_freq=5,
    eval_episodes=50,
    eval_sampling="train",
    official_summed_logprob=True,  # the paper's Avoid baselines ran the official PPO_GMM (model/rl/gmm_ppo.py)
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
    Returns the final-LayerNorm token features (B, Tp, d); the GMM heads sit on top (official
    `GMM_Transformer`: per-token mode means, mode logits from all Tp token features together).
    """

    def __init__(self, obs_in, horizon_steps, dim, heads, layers):
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
        for m in self.modules():  # GPT-style init (official `_init_weights`, model/common/transformer.py)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.obs_pos, 0.0, 0.02)
        nn.init.normal_(self.query_pos, 0.0, 0.02)

    def forward(self, obs_flat):
        memory = self.encoder(self.obs_proj(obs_flat)[:, None] + self.obs_pos)
        queries = self.query_pos.expand(obs_flat.shape[0], -1, -1)
        return self.norm(self.decoder(queries, memory))


class GMMPolicy(nn.Module):
    """Mixture of M diagonal Gaussians over the flattened (Tp, Da) chunk (paper 5.2, D.6).

    forward(obs) -> means (B, M, Tp, Da) in [-1, 1] (tanh), std (M, Da), mode logits (B, M).
    The std is one learned value per (mode, action dimension), shared over the chunk and clipped
    to [std_min, std_max] (clipping kills its gradient outside, as the official clamp of log var);
    pre-training keeps it at its initial value.
    """

    def __init__(
        self,
        obs_dim,
        action_dim,
        horizon_steps,
        cond_steps,
        num_modes=5,
        backbone="mlp",
        mlp_dims=(512, 512, 512),
        transformer_dim=96,
        transformer_heads=4,
        transformer_layers=4,
        init_std=0.1,
        std_min=0.01,
        std_max=0.2,
        activation="mish",
    ):
        super().__init__()
        self.action_dim, self.horizon_steps, self.num_modes = action_dim, horizon_steps, num_modes
        self.std_min, self.std_max, self.backbone = std_min, std_max, backbone
        obs_in = obs_dim * cond_steps
        if backbone == "mlp":  # official GMM_MLP: separate networks for the means and the mode weights
            act = {"mish": nn.Mish, "relu": nn.ReLU}[activation]  # official Avoid GMM: ReLU
            self.mean_net = ResidualMLP([obs_in, *mlp_dims, num_modes * horizon_steps * action_dim], act)
            self.logits_net = ResidualMLP([obs_in, *mlp_dims, num_modes], act)
        else:
            self.net = TransformerBackbone(
                obs_in, horizon_steps, transformer_dim, transformer_heads, transformer_layers
            )
            self.mean_head = nn.Linear(transformer_dim, num_modes * action_dim)
            nn.init.normal_(self.mean_head.weight, 0.0, 0.02)
            nn.init.zeros_(self.mean_head.bias)
            self.modes_head = nn.Linear(horizon_steps * transformer_dim, num_modes)
        self.logvar = nn.Parameter(
            torch.full((num_modes, action_dim), 2 * math.log(init_std))
        )  # log sigma^2 (official)

    def forward(self, obs):
        B, M, Tp, Da = obs.shape[0], self.num_modes, self.horizon_steps, self.action_dim
        x = obs.flatten(1)
        if self.backbone == "mlp":
            means = self.mean_net(x).view(B, M, Tp, Da)
            logits = self.logits_net(x)
        else:
            h = self.net(x)  # (B, Tp, d)
            means = self.mean_head(h).view(B, Tp, M, Da).transpose(1, 2)
            logits = self.modes_head(h.reshape(B, -1))
        std = (0.5 * self.logvar).exp().clamp(self.std_min, self.std_max)
        return torch.tanh(means), std, logits


# ------------------------------------------------------------------------------------------------
# Mixture distribution
# ------------------------------------------------------------------------------------------------
def component_log_probs(means, std, actions):
    """log N(a | mu_m, diag sigma_m^2) of each chunk under each mode, summed over Tp*Da: (B, M)."""
    a, s = actions[:, None], std[None, :, None, :]
    elementwise = -((a - means) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)
    return elementwise.sum(dim=(-2, -1))


def mixture_log_prob(means, std, logits, actions):
    """Exact mixture log-density log sum_m pi_m N(a | mu_m, sigma_m), summed over dims: (B,).

    This is what the official code (and the pre-training loss) uses before its clamp.
    """
    return torch.logsumexp(torch.log_softmax(logits, -1) + component_log_probs(means, std, actions), dim=-1)


def log_prob(means, std, logits, actions):
    """PPO log-prob: mixture log-density / (Tp*Da), clamped to [-5, 2] (per-dimension convention)."""
    return (mixture_log_prob(means, std, logits, actions) / actions[0].numel()).clamp(-5.0, 2.0)


def official_log_prob(means, std, logits, actions):
    """The official PPO_GMM log-prob (model/rl/gmm_ppo.py): the *summed* mixture log-density clamped to [-5, 2]."""
    return mixture_log_prob(means, std, logits, actions).clamp(-5.0, 2.0)


def official_clamp_fraction(summed_logp):
    """Fraction of samples the official clamp saturates (summed log-prob above 2: ratio fixed at 1)."""
    return (summed_logp > 2.0).float().mean().item()


def sample_action(means, std, logits, generator=None):
    """Draw a mode from softmax(logits), then a Gaussian chunk around its mean (official: no clip)."""
    B = logits.shape[0]
    mode = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(-1)
    noise = torch.randn(means.shape[0], *means.shape[2:], generator=generator, device=means.device)
    return means[torch.arange(B, device=means.device), mode] + std[mode][:, None, :] * noise


@torch.no_grad()
def rollout_mixture_chunks(policy, args, iteration, obs, rows):
    """The rollout's (executed actions, chunks) of envs `rows` (workers.rollout_step): chunks sampled from the
    mixture, their first act_steps executed with D.8's fine-tuning noise (avoid.add_action_noise)."""
    chunk = sample_action(*policy(obs[rows]))
    executed = chunk[:, : args.act_steps].cpu().numpy()
    return avoid.add_action_noise(executed, iteration, args.train_action_noise, args.train_action_noise_mode), chunk


def mode_action(means, logits):
    """Deterministic action: the mean of the most likely mode (official instead samples the mode)."""
    return means[torch.arange(logits.shape[0], device=means.device), logits.argmax(-1)]


def entropy(std, logits, horizon_steps):
    """Official approximation: sum_m softmax(logits)_m * H(component m), averaged over the batch.

    H(component m) is the entropy of the Tp*Da-dimensional diagonal Gaussian (summed over dims).
    """
    component = horizon_steps * (0.5 * math.log(2 * math.pi * math.e) + torch.log(std)).sum(-1)  # (M,)
    return (torch.softmax(logits, -1) * component).sum(-1).mean()


def mixture_std(std, logits):
    """Logged std: the mode-weighted mean sigma (official)."""
    return (torch.softmax(logits, -1) * std.mean(-1)).sum(-1).mean()


def bc_loss(policy, obs, actions):
    """Pre-training loss: mixture negative log-likelihood, summed over dims, averaged over the batch."""
    means, std, logits = policy(obs)
    return -mixture_log_prob(means, std, logits, actions).mean()


class Critic(nn.Module):
    """V(s) of the environment observation only (paper 4.2; D.4): residual Mish MLP."""

    def __init__(self, obs_dim, cond_steps, dims=(256, 256, 256)):
        super().__init__()
        self.net = ResidualMLP([obs_dim * cond_steps, *dims, 1], nn.Mish)

    def forward(self, obs):
        return self.net(obs.flatten(1)).squeeze(-1)


# ------------------------------------------------------------------------------------------------
# PPO pieces (same machinery as gaussian_ppo.py)
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


def ppo_update(policy, critic, actor_opt, critic_opt, batch, args, update_actor=True, generator=None):
    """PPO epochs over one iteration's batch (paper 4, D.6). Returns the last minibatch's stats, read back from the
    device once per minibatch."""
    n = len(batch["obs"])
    mb = min(args.batch_size, n)
    stats, clipfracs = {}, []
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - mb + 1, mb):
            idx = perm[start : start + mb]
            obs, actions, old_logp = batch["obs"][idx], batch["actions"][idx], batch["logprobs"][idx]
            adv, ret = batch["advantages"][idx], batch["returns"][idx]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            means, std, logits = policy(obs)
            new_logp = (official_log_prob if args.official_summed_logprob else log_prob)(means, std, logits, actions)
            ratio = (new_logp - old_logp).exp()
            pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)).mean()
            v_loss = 0.5 * ((critic(obs) - ret) ** 2).mean()
            ent = entropy(std, logits, policy.horizon_steps)
            loss = pg_loss - args.ent_coef * ent + args.vf_coef * v_loss
            actor_opt.zero_grad()
            critic_opt.zero_grad()
            loss.backward()
            if args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
                nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
            if update_actor:
                actor_opt.step()
            critic_opt.step()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - (new_logp - old_logp)).mean()  # k3 estimator
                clipfrac = ((ratio - 1).abs() > args.clip_coef).float().mean()
                logged = [pg_loss, v_loss, ent, approx_kl, ratio.mean(), mixture_std(std, logits), clipfrac]
                logged = torch.stack(logged).tolist()  # one read-back
            stats = dict(zip(("policy_loss", "value_loss", "entropy", "approx_kl", "ratio", "std"), logged))
            clipfracs.append(logged[-1])
            if args.target_kl is not None and stats["approx_kl"] > args.target_kl:
                stats["clipfrac"] = float(np.mean(clipfracs))
                return stats
    stats["clipfrac"] = float(np.mean(clipfracs)) if clipfracs else 0.0
    return stats


# ------------------------------------------------------------------------------------------------
# Helpers around the loop
# ------------------------------------------------------------------------------------------------
def model_kwargs_from(args, obs_dim, action_dim):
    return dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon_steps=args.horizon_steps,
        cond_steps=args.cond_steps,
        num_modes=args.num_modes,
        backbone=args.backbone,
        mlp_dims=tuple(args.mlp_dims),
        transformer_dim=args.transformer_dim,
        transformer_heads=args.transformer_heads,
        transformer_layers=args.transformer_layers,
        init_std=args.fixed_std,
        std_min=args.std_min,
        std_max=args.std_max,
    )


def eval_act(policy, args, device):
    """The evaluation action function obs -> chunk (envs.run_episodes, envs.capture_video): the mean of the most likely
    mode (paper: no exploration noise) or, for eval_sampling "train", sampled actions."""

    def act(obs):
        with torch.no_grad():
            means, std, logits = policy(torch.as_tensor(obs, device=device))
            chunk = mode_action(means, logits) if args.eval_sampling == "eval" else sample_action(means, std, logits)
            return chunk.cpu().numpy()

    return act


def make_checkpoint(policy, kwargs, normalization, args, iteration, env_steps, **extra):
    if envs.is_robomimic(args.env_id):  # the env meta in use (a dataset's env_args), restored when loading
        extra["robomimic_env_args"] = envs.robomimic_env_args(args.env_id)
    return dict(
        algo=ALGO,
        policy="gmm",
        backbone=kwargs["backbone"],
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
    """Behaviour cloning on `data` (envs.load_dataset), std fixed: minimize the mixture NLL of chunks (paper D.6;
    pretraining.behaviour_cloning: AdamW, the LR schedule, EMA weights, the official loop)."""
    samples = pretraining.make_samples(data, args)
    kwargs = model_kwargs_from(args, samples[0].shape[1], samples[1].shape[1])
    policy = GMMPolicy(**kwargs).to(device)
    policy.logvar.requires_grad_(False)  # std fixed during pre-training (paper D.6)
    loss_fn = lambda obs, actions: bc_loss(policy, obs, actions)  # noqa: E731
    checkpoint = lambda weights: make_checkpoint(weights, kwargs, data["normalization"], args, 0, 0)  # noqa: E731
    ckpt = pretraining.behaviour_cloning(policy, loss_fn, samples, args, device, writer, checkpoint, run_dir)
    policy.logvar.requires_grad_(True)
    return ckpt


def report_official_clamp(policy, args, normalization, device, checkpoint, run_dir, writer):
    """One rollout batch as a fine-tuning iteration collects it; how many samples the official clamp saturates:
    printed, written to run_dir/official_clamp.json and returned. The run ends here (its `writer` is closed).

    The official PPO_GMM clamps the summed mixture log-density to [-5, 2]; every sample above 2 gets
    log-prob exactly 2 before and after the update, so its ratio is 1 and its policy gradient is zero.
    """
    e = envs.make_vec_env(args.env_id, args.num_envs, args.seed, args.act_steps, args.cond_steps, normalization)
    obs, _ = e.reset(seed=args.seed)
    summed, ours = [], []
    with torch.no_grad():
        for _ in range(args.n_steps):
            means, std, logits = policy(torch.as_tensor(obs, device=device))
            chunk = sample_action(means, std, logits)
            summed.append(mixture_log_prob(means, std, logits, chunk))
            ours.append(summed[-1] / chunk[0].numel())
            obs = e.step(chunk[:, : args.act_steps].cpu().numpy())[0]
    e.close()
    summed, ours = torch.cat(summed), torch.cat(ours)
    report = dict(
        checkpoint=checkpoint,
        env_id=args.env_id,
        samples=len(summed),
        chunk_dims=int(chunk[0].numel()),
        summed_logprob_mean=summed.mean().item(),
        summed_logprob_min=summed.min().item(),
        official_saturated_fraction=official_clamp_fraction(summed),
        official_low_clamped_fraction=(summed < -5).float().mean().item(),
        per_dim_logprob_mean=ours.mean().item(),
        per_dim_clamped_fraction=((ours > 2) | (ours < -5)).float().mean().item(),
    )
    print(
        f"[official-clamp] {report['samples']} samples of {args.env_id} (Tp*Da = {report['chunk_dims']}) "
        f"from {checkpoint}"
    )
    print(
        f"[official-clamp] summed log-prob mean {report['summed_logprob_mean']:.2f} "
        f"(min {report['summed_logprob_min']:.2f}); "
        f"official clamp at 2 saturates {100 * report['official_saturated_fraction']:.1f}% of samples"
    )
    print(
        f"[official-clamp] per-dimension log-prob (this script) mean {report['per_dim_logprob_mean']:.3f}; "
        f"outside [-5, 2]: {100 * report['per_dim_clamped_fraction']:.1f}%"
    )
    with open(os.path.join(run_dir, "official_clamp.json"), "w") as f:
        json.dump(report, f, indent=2)
    writer.close()
    return report


def task_defaults(args) -> dict:
    """Defaults that differ from the Gym fine-tuning values above: the robomimic and Avoid tables; {} for the Gym
    tasks."""
    task = envs.env_slug(args.env_id)
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
    if not (0 < args.std_min <= args.fixed_std <= args.std_max):
        envs.fail(
            f"need 0 < --std-min <= --fixed-std <= --std-max, got {args.std_min}, {args.fixed_std}, {args.std_max}"
        )
    fine_tuning = not (args.eval_only or args.pretrain_only or args.report_official_clamp)
    arguments.check_ranges(args, args.num_envs * args.n_steps * args.act_steps if fine_tuning else None)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def load_start(args):
    """The checkpoint this run starts from, read and checked before anything is written, and the run it resumes:
    (ckpt, resume or None, path). ckpt is None when the run pre-trains on --dataset first. The checkpoint's chunk
    length and number of modes replace the flags'; where fine-tuning starts, its model_kwargs take --std-min/--std-max
    (fine-tuning clips the learned std, paper D.6). A checkpoint with a critic resumes its run."""
    if args.dataset is not None and args.checkpoint is None:
        return None, None, None
    path = args.checkpoint or envs.bundled_checkpoint(args.env_id, "gmm", args.backbone)
    ckpt = envs.load_checkpoint(path, "gmm", args.env_id, args.backbone, hints=vars(args))
    kw = ckpt["model_kwargs"]
    if kw["horizon_steps"] < args.act_steps or kw["cond_steps"] != args.cond_steps:
        envs.fail(
            f"{path} predicts chunks of {kw['horizon_steps']} with history {kw['cond_steps']}; "
            f"pass --horizon-steps {kw['horizon_steps']} --act-steps <= {kw['horizon_steps']} "
            f"--cond-steps {kw['cond_steps']}"
        )
    if kw["num_modes"] != args.num_modes:
        print(f"[load] {path} has {kw['num_modes']} modes; using them (--num-modes {args.num_modes} ignored)")
    args.horizon_steps, args.num_modes = kw["horizon_steps"], kw["num_modes"]
    if "critic" not in ckpt and not args.eval_only:
        ckpt = dict(ckpt, model_kwargs=dict(kw, std_min=args.std_min, std_max=args.std_max))
    resume = ckpt if "critic" in ckpt and not args.eval_only and not args.report_official_clamp else None
    print(f"[load] {path} ({ckpt['algo']}, iteration {ckpt['iteration']})")
    if envs.is_robomimic(args.env_id) and ckpt.get("robomimic_env_args"):  # the env meta the policy was trained with
        envs.set_robomimic_env_args(args.env_id, ckpt["robomimic_env_args"])
    return ckpt, resume, path


def main(args):
    check_args(args)
    steps_per_iter, num_iters, device = runs.start(args, ALGO)
    ckpt, resume, path = load_start(args)
    policy = None if ckpt is None else _load_policy(ckpt, device)  # a checkpoint that does not fit stops here
    run_dir, writer, evals, data = runs.open_run_dir(args, ALGO, resume, path, load_data=ckpt is None)
    if ckpt is None:
        ckpt, path = pretrain(args, data, run_dir, writer, device), os.path.join(run_dir, "pretrained.pt")
        policy = _load_policy(ckpt, device)
    kwargs, normalization = ckpt["model_kwargs"], ckpt["normalization"]
    if args.report_official_clamp:
        return report_official_clamp(policy, args, normalization, device, path, run_dir, writer)
    act = eval_act(policy, args, device)  # the policy, as it is when called
    if args.eval_only or args.pretrain_only:
        return runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals, device, act, normalization)

    # ---- set-up: a fresh value critic V(s), AdamW ----
    obs_dim, action_dim = kwargs["obs_dim"], kwargs["action_dim"]
    critic = Critic(obs_dim, args.cond_steps, args.critic_dims).to(device)  # fresh critic (official)
    actor_opt = torch.optim.AdamW(policy.parameters(), lr=args.actor_lr, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=args.critic_lr, weight_decay=0.0)
    scaler = envs.RunningRewardScaler(args.num_envs)
    # what a checkpoint saves besides the network and a resume restores, by checkpoint key
    trained = dict(critic=critic, actor_optimizer=actor_opt, critic_optimizer=critic_opt, reward_scaler=scaler)
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act, args, normalization)
    vec, obs, firsts, recent_returns = runs.start_envs(args, normalization, start_iter, resume, np.ones(args.num_envs))
    progress, t_start = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO), time.time()

    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        # ---- rollout: chunks sampled from the mixture (paper D.6) ----
        buf_obs = np.zeros((args.n_steps, args.num_envs, args.cond_steps, obs_dim), np.float32)
        buf_act = np.zeros((args.n_steps, args.num_envs, args.horizon_steps, action_dim), np.float32)
        buf_rew, buf_term, buf_timeout, buf_first = (np.zeros((args.n_steps, args.num_envs)) for _ in range(4))
        buf_final = np.zeros_like(buf_obs)  # observation reached before any auto-reset
        policy_step = functools.partial(rollout_mixture_chunks, policy, args, iteration)
        for n in range(args.n_steps):
            obs_t = torch.as_tensor(obs, device=device)
            chunk, (next_obs, reward, term, trunc, infos) = workers.rollout_step(vec, policy_step, obs_t)
            runs.check_finite(iteration, reward=reward, observation=next_obs)
            env_steps += args.num_envs * args.act_steps  # episodes that end here are logged at this count
            buf_obs[n], buf_act[n], buf_rew[n], buf_first[n] = obs, chunk.cpu().numpy(), reward, firsts
            buf_term[n], buf_timeout[n] = term, np.logical_and(trunc, np.logical_not(term))
            buf_final[n] = envs.final_observations(next_obs, infos)
            firsts = np.logical_or(term, trunc).astype(np.float64)
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- advantages: GAE on the learned V(s) (paper eq. 3.2 and 4.2) ----
        with torch.no_grad():
            flat = lambda x: torch.as_tensor(x.reshape(-1, *x.shape[2:]), device=device)  # noqa: E731
            values = critic(flat(buf_obs)).cpu().numpy().reshape(args.n_steps, args.num_envs)
            final_values = critic(flat(buf_final)).cpu().numpy().reshape(args.n_steps, args.num_envs)
            last_value = critic(torch.as_tensor(obs, device=device)).cpu().numpy()
        rewards = scaler(buf_rew, buf_first) if args.reward_scale_running else buf_rew
        # a time-out is not a failure: bootstrap it with V(last obs) (the official code treats it as terminal)
        rewards = rewards + args.gamma * final_values * buf_timeout
        dones = np.maximum(buf_term, buf_timeout)
        next_values = np.concatenate([values[1:], last_value[None]], 0)
        advantages, returns = compute_gae(rewards, values, next_values, dones, args.gamma, args.gae_lambda)
        with torch.no_grad():
            means, std, logits = policy(flat(buf_obs))
            summed_logp = mixture_log_prob(means, std, logits, flat(buf_act))
            scale = 1 if args.official_summed_logprob else args.horizon_steps * action_dim
            old_logp = (summed_logp / scale).clamp(-5.0, 2.0)  # = (official_)log_prob(...)
        batch = dict(
            obs=flat(buf_obs),
            actions=flat(buf_act),
            logprobs=old_logp,
            advantages=torch.as_tensor(advantages.reshape(-1), dtype=torch.float32, device=device),
            returns=torch.as_tensor(returns.reshape(-1), dtype=torch.float32, device=device),
        )

        # ---- update: PPO on the mixture's log-likelihood (paper eq. 4.5, D.4, D.6) ----
        t_update = runs.phase("update")  # torch at the update's threads
        update_actor = iteration >= args.n_critic_warmup_itr  # critic warm-up over: the actor updates too
        stats = ppo_update(policy, critic, actor_opt, critic_opt, batch, args, update_actor=update_actor)
        runs.check_finite(iteration, **stats, policy_weights=policy, critic_weights=critic)
        t_update = time.time() - t_update
        iteration += 1

        # ---- log, evaluate, save ----
        stats["explained_variance"] = 1 - np.var(returns - values) / (np.var(returns) + 1e-8)
        runs.log_stats(writer, env_steps, "losses", stats)
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        saturated = official_clamp_fraction(summed_logp)  # the share of samples the official clamp saturates
        charts = dict(official_clamp_saturated=saturated, learning_rate=actor_opt.param_groups[0]["lr"])
        runs.log_stats(writer, env_steps, "charts", charts)
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(kl=stats["approx_kl"], std=stats["std"])
        progress.update(iteration, num_iters, env_steps, recent_returns, evals, successes, **shown)
        run = runs.checkpoint_state(trained, evals, vec, obs, firsts, recent_returns)
        state = make_checkpoint(policy, kwargs, normalization, args, iteration, env_steps, **run)
        runs.save_run(state, run_dir, iteration, num_iters, args, writer)
    progress.close()
    vec.close()
    runs.finish_run(run_dir, ALGO, args, env_steps, time.time() - t_start, evals, device, writer, act, normalization)


def _load_policy(ckpt, device):
    policy = GMMPolicy(**ckpt["model_kwargs"]).to(device)
    missing, unexpected = policy.load_state_dict(ckpt["model"], strict=False)
    if unexpected or missing:
        envs.fail(
            f"checkpoint does not fit the GMM {ckpt['model_kwargs']['backbone']} network "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); it was written by another architecture"
        )
    return policy


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    # tyro parses Args from the command line, starting from the task_defaults values (arguments.parse_args)
    runs.run_cli(main, arguments.parse_args(Args, task_defaults))
