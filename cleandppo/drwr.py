"""DRWR: diffusion reward-weighted regression (DPPO paper, 5.1 and D.3), fine-tuning a diffusion policy.

On-policy and critic-free: every iteration collects fresh episodes with the current policy, computes
each chunk's discounted reward-to-go G inside its episode, standardises G over the iteration and
fits the policy with the denoising loss weighted by w = min(exp(beta * G_norm), max_reward_weight).
No buffer: the data of an iteration is used for `update_epochs` passes and then dropped.

    python cleandppo/drwr.py --env-id Hopper-v2                      # bundled pre-trained policy
    python cleandppo/drwr.py --checkpoint runs/.../checkpoint_last.pt  # resume a drwr run
"""

import math
import time
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from cleandppo import arguments, console, envs, runs

ALGO = "drwr"


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

    # --- DRWR (paper D.3, Table A7 Gym column; official ft_rwr_diffusion_mlp config) ---
    n_steps: int = 500
    """policy queries per env per iteration (N); keep N * act_steps >= 2 x 1000 so whole episodes fit"""
    gamma: float = 0.99
    """discount per policy query (chunk step) of the reward-to-go"""
    beta: float = 10.0
    """beta: the weight is exp(beta * standardised reward-to-go)"""
    max_reward_weight: float = 100.0
    """w_max: the exponentiated weight is clipped at this value"""
    update_epochs: int = 16
    """replay ratio: passes over the iteration's samples"""
    batch_size: int = 1000
    """samples per minibatch (the last partial minibatch of an epoch is dropped)"""
    actor_lr: float = 1e-4
    """actor learning rate (constant, as every official config)"""
    actor_weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: Optional[float] = None
    """gradient-norm clip (None: off, as every official config)"""


ROBOMIMIC = dict(
    gamma=0.999,
    num_envs=50,
    actor_lr=1e-5,
    batch_size=1000,
    update_epochs=16,
    beta=10.0,
    max_reward_weight=100.0,
    eval_episodes=50,
)  # robomimic ids (official cfg/robomimic/finetune/<task>/ft_rwr_diffusion_mlp.yaml; paper D.5)
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
# DRWR: episodes of the iteration, reward-to-go, weights (paper D.3, eq. A1)
# ------------------------------------------------------------------------------------------------
def complete_episodes(firsts):
    """(env, start, end) of every episode that both starts and ends inside the iteration; end exclusive.

    firsts: (N + 1, E); firsts[n] = 1 when query n is the first of an episode (firsts[N] marks an episode
    that ended at the last query). Episodes cut by the iteration's start or end are not complete.
    """
    out = []
    for env in range(firsts.shape[1]):
        marks = np.nonzero(firsts[:, env])[0]
        out += [(env, int(a), int(b)) for a, b in zip(marks[:-1], marks[1:])]
    return out


def discounted_returns(rewards, gamma):
    """Reward-to-go G_n = r_n + gamma G_{n+1} inside one episode (G after its last step is 0)."""
    out, running = np.zeros(len(rewards)), 0.0
    for n in reversed(range(len(rewards))):
        running = rewards[n] + gamma * running
        out[n] = running
    return out


def rwr_weights(returns, beta, max_weight):
    """w = min(exp(beta (G - mean) / (std + 1e-3)), max_weight); std over all samples (numpy, ddof 0)."""
    g = (returns - returns.mean()) / (returns.std() + 1e-3)
    return np.exp(np.minimum(beta * g, math.log(max_weight)))  # = min(exp(.), w_max) without overflow


def drwr_update(actor, opt, sched, obs, chunks, weights, args, generator=None):
    """`update_epochs` passes over shuffled minibatches (the last partial one dropped; at least one)."""
    n = obs.shape[0]
    mb = min(args.batch_size, n)
    losses = []
    for _ in range(args.update_epochs):
        perm = torch.randperm(n, generator=generator).to(obs.device)
        for start in range(0, n - mb + 1, mb):
            idx = perm[start : start + mb]
            loss = denoising_loss(actor, sched, chunks[idx], obs[idx], len(sched["betas"]), weights[idx])
            opt.zero_grad()
            loss.backward()
            if args.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
            opt.step()
            losses.append(loss.item())
    return float(np.mean(losses)), len(losses)


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
    if args.batch_size > args.num_envs * args.n_steps:
        envs.fail(
            f"--batch-size {args.batch_size} > num_envs x n_steps = {args.num_envs * args.n_steps} samples an "
            f"iteration can collect; lower --batch-size or raise --n-steps/--num-envs"
        )


def load_diffusion_checkpoint(path, args):
    """Load a diffusion checkpoint (any cleandppo script's) and check it against the flags (one-line errors)."""
    ckpt = envs.load_diffusion_checkpoint(path, args)
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

    # ---- set-up: AdamW on the actor; no critic and no buffer (paper D.3, DRWR) ----
    N, E = args.n_steps, args.num_envs
    obs_dim, action_dim, Tp = kw["obs_dim"], kw["action_dim"], kw["horizon_steps"]
    opt = torch.optim.AdamW(actor.parameters(), lr=args.actor_lr, weight_decay=args.actor_weight_decay)
    trained = dict(actor_optimizer=opt)  # what a checkpoint saves besides the actor and a resume restores
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act, args, normalization)
    # done: whether an episode starts at the next query (one starts at the first query of the run)
    vec, obs, done, recent_returns = runs.start_envs(args, normalization, start_iter, resume, np.ones(E))
    progress = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO)
    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        # ---- rollout with the current policy, exploration floor on every denoising step (paper D.3, DRWR) ----
        buf_obs = np.zeros((N, E, args.cond_steps, obs_dim), np.float32)
        buf_chunk = np.zeros((N, E, Tp, action_dim), np.float32)
        buf_rew, firsts = np.zeros((N, E)), np.zeros((N + 1, E))
        firsts[0] = done
        for n in range(N):
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
            buf_obs[n], buf_chunk[n], buf_rew[n] = obs, chunk, reward
            done = np.logical_or(term, trunc).astype(np.float64)
            firsts[n + 1] = done
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- targets: reward-to-go of every complete episode, standardised, exponentiated, clipped (eq. A1) ----
        t_update = runs.phase("update")  # torch at the update's threads
        episodes = complete_episodes(firsts)
        stats = dict(num_episodes=len(episodes))
        if episodes:
            steps = np.concatenate([np.arange(a, b) for _, a, b in episodes])
            env_idx = np.concatenate([np.full(b - a, e) for e, a, b in episodes])
            returns = np.concatenate([discounted_returns(buf_rew[a:b, e], args.gamma) for e, a, b in episodes])
            weights = rwr_weights(returns, args.beta, args.max_reward_weight)
            # ---- update: the denoising loss weighted by the episode's reward-to-go (paper eq. A1) ----
            loss, n_grad = drwr_update(
                actor,
                opt,
                sched,
                torch.as_tensor(buf_obs[steps, env_idx], device=device),
                torch.as_tensor(buf_chunk[steps, env_idx], device=device),
                torch.as_tensor(weights, dtype=torch.float32, device=device),
                args,
            )
            stats.update(
                actor_loss=loss,
                gradient_steps=n_grad,
                update_samples=len(steps),
                weight_mean=weights.mean(),
                weight_max=weights.max(),
                weight_clipped_frac=np.mean(weights >= args.max_reward_weight),
                return_to_go_mean=returns.mean(),
            )
        else:  # the official code crashes here; we skip the update and say so
            print(
                f"[note] iteration {iteration + 1}: no episode both started and ended inside it; update skipped "
                f"(raise --n-steps so that n_steps x act_steps covers whole episodes)"
            )
        runs.check_finite(iteration, **stats, actor_weights=actor)
        t_update = time.time() - t_update
        iteration += 1

        # ---- log, evaluate, save ----
        losses = ("actor_loss", "weight_mean", "weight_max", "weight_clipped_frac")
        runs.log_stats(writer, env_steps, "losses", stats, losses)
        runs.log_stats(writer, env_steps, "values", stats, ("return_to_go_mean",))
        charts = dict(stats, num_train_episodes=len(episodes), update_skipped=float(not episodes))
        charts["learning_rate"] = opt.param_groups[0]["lr"]
        keys = ("num_train_episodes", "update_skipped", "update_samples", "learning_rate")  # samples: of an update
        runs.log_stats(writer, env_steps, "charts", charts, keys)
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(episodes=len(episodes), actor_loss=stats.get("actor_loss", "- (update skipped)"))
        progress.update(iteration, num_iters, env_steps, recent_returns, evals, successes, **shown)
        run = runs.checkpoint_state(trained, evals, vec, obs, done, recent_returns)
        state = make_checkpoint(actor, kw, normalization, args, iteration, env_steps, **run)
        runs.save_run(state, run_dir, iteration, num_iters, args, writer)
    progress.close()
    vec.close()
    runs.finish_run(run_dir, ALGO, args, env_steps, time.time() - t_start, evals, device, writer, act, normalization)


if __name__ == "__main__":
    # tyro parses Args from the command line, starting from the task_defaults values (arguments.parse_args)
    runs.run_cli(main, arguments.parse_args(Args, task_defaults))
