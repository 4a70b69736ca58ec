"""IDQL: Implicit Diffusion Q-Learning (Hansen-Estruch et al. 2023), a baseline of DPPO (Ren et al. 2024, D.3).

Online fine-tuning of a pre-trained diffusion policy with a replay buffer. The critic is IQL's: V(s)
is an upper expectile of Q over the buffer actions (paper eq. A7), Q(s, a) regresses onto
r + gamma V(s') (A8). The actor is fitted to all buffer actions with the plain denoising loss (A9);
the critic acts only at action selection: several candidate chunks are sampled from the actor and
one is picked, by Boltzmann sampling on the advantage Q - V in training and greedily under Q in
evaluation (D.3).

    python cleandppo/idql.py --env-id Hopper-v2
    python cleandppo/idql.py --checkpoint runs/<run>/checkpoint_last.pt   # resume in place, replay buffer included
"""

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from cleandppo import arguments, console, envs, runs

ALGO = "idql"


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
    """Ta: executed actions per policy query (an MLP executes its whole chunk)"""
    cond_steps: int = 1
    """To: observation history length"""
    min_sampling_denoising_std: float = 0.1
    """floor of the sampling std at every denoising step of the training candidates (exploration)"""
    randn_clip_value: float = 3.0
    """clamp of the per-step Gaussian noise (in std units)"""
    denoised_clip_value: float = 1.0
    """clamp of the predicted clean chunk x0 at every step"""

    # --- IDQL (paper D.3, Table A8 Gym column; official Gym config) ---
    n_steps: int = 500
    """policy queries per env per iteration (N)"""
    gamma: float = 0.99
    """discount per policy query (chunk)"""
    actor_lr: float = 1e-4
    """actor learning rate (AdamW, no weight decay, constant)"""
    critic_lr: float = 1e-3
    """learning rate of the Q and the V critic (AdamW, no weight decay, constant)"""
    batch_size: int = 256
    """transitions per minibatch (paper Table A8; official config 1000)"""
    replay_ratio: int = 16
    """gradient steps per iteration = int(N * E / batch_size * replay_ratio) (paper Table A8; official config 128)"""
    buffer_size: int = 200_000
    """replay-buffer capacity in transitions (paper Table A8; official config 25000 vector steps = 1e6 transitions)"""
    expectile: float = 0.8
    """tau of the expectile loss that fits V to the target Q (0.5 would be the mean)"""
    target_ema_rate: float = 0.001
    """EMA rate of the target Q, updated after every minibatch (official config key: critic_tau)"""
    num_candidates: int = 20
    """action chunks sampled per state; the critic picks one"""
    boltzmann_temperature: float = 0.1
    """training pick ~ softmax((Q - V) / temperature) over the candidates (0+: greedy, large: plain actor sampling)"""
    scale_reward_factor: float = 0.01
    """rewards are multiplied by this before they enter the buffer"""
    n_critic_warmup_itr: int = 5
    """first iterations train only the critics (the actor is not stepped)"""
    critic_dims: tuple[int, ...] = (256, 256, 256)
    """Q and V hidden widths (residual, Mish; an odd number of equal widths)"""


# robomimic ids (official cfg/robomimic/finetune/<task>/ft_idql_diffusion_mlp.yaml; paper D.5); their buffer of 5000
# vector steps of 50 envs is 250k transitions here
ROBOMIMIC = dict(
    num_envs=50,
    gamma=0.999,
    actor_lr=1e-5,
    critic_lr=1e-3,
    batch_size=1000,
    scale_reward_factor=1.0,
    replay_ratio=128,
    buffer_size=250_000,
    target_ema_rate=0.001,
    num_candidates=10,
    n_critic_warmup_itr=5,
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
# Diffusion core (copied from dppo.py, DDPM only, one network for all steps)
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


def denoising_loss(net, sched, x0, obs, K):
    """Denoising loss (paper eq. 3.2): MSE between the added noise and its prediction at a random step."""
    t = torch.randint(0, K, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return ((net(x_t, t, obs) - eps) ** 2).mean()


# ------------------------------------------------------------------------------------------------
# Replay buffer, critics, IDQL update and action selection (paper D.3, eqs. A7-A9)
# ------------------------------------------------------------------------------------------------
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


class ValueCritic(nn.Module):
    """V(s) of the flattened observation: residual Mish MLP (official CriticObs)."""

    def __init__(self, obs_dim, cond_steps, dims=(256, 256, 256)):
        super().__init__()
        self.net = ResidualMLP([obs_dim * cond_steps, *dims, 1], nn.Mish)

    def forward(self, obs):
        return self.net(obs.flatten(1)).squeeze(-1)


def expectile_loss(diff, tau):
    """IQL's expectile regression (eq. A7): mean(|tau - 1(diff < 0)| diff^2), diff = target - prediction.

    A residual above the prediction weighs tau, one below weighs 1 - tau; tau = 0.5 is half the MSE
    (fits the mean), tau > 0.5 an upper expectile (towards the best actions in the buffer).
    """
    weight = torch.where(diff > 0, torch.full_like(diff, tau), torch.full_like(diff, 1 - tau))
    return (weight * diff**2).mean()


def q_target_from_v(rewards, terminated, next_v, gamma):
    """y = r + gamma (1 - terminated) V(s') (eq. A8); time-outs are not terminal."""
    return rewards + gamma * (1 - terminated) * next_v


def critic_loss(critic, obs, actions, target):
    """MSE(Q1, y) + MSE(Q2, y); also returns (Q1, Q2) for logging."""
    q1, q2 = critic(obs, actions)
    return ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean(), q1, q2


@torch.no_grad()
def soft_update(target, source, tau):
    """theta_target <- (1 - tau) theta_target + tau theta."""
    for p_t, p in zip(target.parameters(), source.parameters()):
        p_t.lerp_(p, tau)


def boltzmann_choice(adv, temperature, generator=None):
    """One candidate index per state drawn with probability softmax(adv / temperature); adv (B, S).

    Returns (indices (B,), probabilities (B, S)). Adding any per-state constant to adv (e.g. V(s))
    leaves the probabilities unchanged, so softmax((Q - V)/T) = softmax(Q/T).
    """
    probs = torch.softmax(adv / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1), probs


@torch.no_grad()
def select_actions(actor, q_target, v_critic, sched, obs, kw, args, mode, generator=None):
    """Sample `num_candidates` chunks per state and pick one (paper D.3); returns (chunks (B, Tp, Da), max prob).

    mode "train": candidates from the exploration sampler, Boltzmann pick on A = min(Q1', Q2') - V.
    mode "eval": candidates from the no-extra-noise sampler, the argmax of min(Q1', Q2') (greedy).
    """
    B, S = obs.shape[0], args.num_candidates
    obs_rep = obs.repeat_interleave(S, dim=0)  # state-major: rows b*S .. b*S + S-1 belong to state b
    cands = sample(
        actor,
        sched,
        obs_rep,
        kw["denoising_steps"],
        kw["horizon_steps"],
        kw["action_dim"],
        mode,
        args.min_sampling_denoising_std,
        args.randn_clip_value,
        args.denoised_clip_value,
        generator,
    )
    q = torch.minimum(*q_target(obs_rep, cands)).view(B, S)
    cands = cands.view(B, S, *cands.shape[1:])
    if mode == "eval":
        return cands[torch.arange(B), q.argmax(-1)], 1.0
    idx, probs = boltzmann_choice(q - v_critic(obs)[:, None], args.boltzmann_temperature, generator)
    return cands[torch.arange(B), idx], probs.max(-1).values.mean().item()


def idql_update(
    actor, q_critic, q_target, v_critic, actor_opt, q_opt, v_opt, sched, buffer, args, num_batch, update_actor, device
):
    """One iteration of IDQL updates on minibatches of the buffer; returns the mean of each logged statistic."""
    stats = {k: [] for k in ("v_loss", "q_loss", "actor_loss", "v_mean", "q1_mean", "q2_mean", "target_q_mean")}
    for _ in range(num_batch):
        b = buffer.sample(args.batch_size, device)
        # V <- upper expectile of the target Q's minimum at the buffer actions (A7)
        with torch.no_grad():
            target_q = torch.minimum(*q_target(b["obs"], b["chunks"]))
        v = v_critic(b["obs"])
        v_loss = expectile_loss(target_q - v, args.expectile)
        v_opt.zero_grad()
        v_loss.backward()
        v_opt.step()
        # Q <- r + gamma V(s') with the updated V (A8), double Q, then the target Q follows slowly
        with torch.no_grad():
            y = q_target_from_v(b["rewards"], b["terminated"], v_critic(b["next_obs"]), args.gamma)
        q_loss, q1, q2 = critic_loss(q_critic, b["obs"], b["chunks"], y)
        q_opt.zero_grad()
        q_loss.backward()
        q_opt.step()
        soft_update(q_target, q_critic, args.target_ema_rate)
        # actor <- plain denoising loss on the same buffer chunks (A9), no weighting
        if update_actor:
            actor_loss = denoising_loss(actor, sched, b["chunks"], b["obs"], args.denoising_steps)
            actor_opt.zero_grad()
            actor_loss.backward()
            actor_opt.step()
            stats["actor_loss"].append(actor_loss.item())
        for k, x in (
            ("v_loss", v_loss),
            ("q_loss", q_loss),
            ("v_mean", v.mean()),
            ("q1_mean", q1.mean()),
            ("q2_mean", q2.mean()),
            ("target_q_mean", target_q.mean()),
        ):
            stats[k].append(x.item())
    return {k: float(np.mean(v)) for k, v in stats.items() if v}


# ------------------------------------------------------------------------------------------------
# Evaluation, checks, main
# ------------------------------------------------------------------------------------------------
def eval_act(actor, q_target, v_critic, sched, kw, args, device, use_critic):
    """The deterministic evaluation action function, without extra noise: greedy over candidates when
    `use_critic`, else one sample of the actor (the pre-trained policy, before any critic is trained)."""

    def act(obs):
        obs = torch.as_tensor(obs, device=device)
        if use_critic:
            return select_actions(actor, q_target, v_critic, sched, obs, kw, args, "eval")[0].cpu().numpy()
        return (
            sample(
                actor,
                sched,
                obs,
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
    if args.buffer_size < args.batch_size:
        envs.fail(
            f"--buffer-size {args.buffer_size} is smaller than --batch-size {args.batch_size}; "
            f"raise --buffer-size or lower --batch-size"
        )
    if args.act_steps > args.horizon_steps:
        envs.fail(
            f"--act-steps {args.act_steps} > --horizon-steps {args.horizon_steps}; use act_steps <= horizon_steps"
        )
    if len(args.critic_dims) % 2 != 1 or len(set(args.critic_dims)) != 1:
        envs.fail(f"--critic-dims needs an odd number of equal widths (e.g. 256 256 256), got {list(args.critic_dims)}")


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
    N, E = args.n_steps, args.num_envs
    num_batch = max(1, int(N * E / args.batch_size * args.replay_ratio))
    detail = f", {num_batch} minibatches of {args.batch_size} each"
    steps_per_iter, num_iters, device = runs.start(args, ALGO, detail)
    ckpt, resume, path = load_start(args)
    actor = load_actor(ckpt, path, device)  # weights that do not fit stop here, before anything is written
    kw, normalization = ckpt["model_kwargs"], ckpt["normalization"]
    sched = {k: v.to(device) for k, v in make_schedule(kw["denoising_steps"]).items()}
    obs_dim, action_dim, Tp = kw["obs_dim"], kw["action_dim"], kw["horizon_steps"]
    q_critic = DoubleQCritic(obs_dim, args.cond_steps, action_dim, args.act_steps, args.critic_dims).to(device)
    q_target = copy.deepcopy(q_critic).requires_grad_(False)
    v_critic = ValueCritic(obs_dim, args.cond_steps, args.critic_dims).to(device)
    critics = dict(critic=q_critic, target_critic=q_target, value_critic=v_critic)  # by checkpoint key
    runs.restore_parts(resume, critics)  # on a resume, before any evaluation: they pick its actions
    run_dir, writer, evals, _ = runs.open_run_dir(args, ALGO, resume, path)
    t_start = time.time()  # the run's wall time: the first evaluation and the loop
    # evaluation: the actor alone while the critics are fresh (the pre-trained policy), greedy over candidates after
    act_pretrained = eval_act(actor, q_target, v_critic, sched, kw, args, device, use_critic=False)
    act = eval_act(actor, q_target, v_critic, sched, kw, args, device, use_critic=True)
    if args.eval_only:
        act = act_pretrained if resume is None else act
        return runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals, device, act, normalization)

    # ---- set-up: AdamW for the actor and the critics, the replay buffer ----
    actor_opt = torch.optim.AdamW(actor.parameters(), lr=args.actor_lr, weight_decay=0.0)
    q_opt = torch.optim.AdamW(q_critic.parameters(), lr=args.critic_lr, weight_decay=0.0)
    v_opt = torch.optim.AdamW(v_critic.parameters(), lr=args.critic_lr, weight_decay=0.0)
    buffer = ReplayBuffer(args.buffer_size, (args.cond_steps, obs_dim), (Tp, action_dim))
    # what a checkpoint saves besides the actor and the critics and a resume restores, by checkpoint key
    trained = dict(actor_optimizer=actor_opt, critic_optimizer=q_opt, value_optimizer=v_opt)
    start_iter, env_steps = runs.resume_or_evaluate(resume, trained, evals, act_pretrained, args, normalization, buffer)
    vec, obs, _, recent_returns = runs.start_envs(args, normalization, start_iter, resume, None)
    progress = console.Progress(num_iters * steps_per_iter, env_steps, desc=ALGO)
    iteration = start_iter

    while iteration < num_iters:
        t_iter, successes = runs.phase("rollout"), []  # successes: of this iteration's finished episodes (robomimic)
        # ---- rollout: Boltzmann pick among candidate chunks into the replay buffer (paper D.3, IDQL) ----
        max_probs = []
        for _ in range(N):
            chunk, max_prob = select_actions(
                actor, q_target, v_critic, sched, torch.as_tensor(obs, device=device), kw, args, "train"
            )
            chunk = chunk.cpu().numpy()
            max_probs.append(max_prob)
            next_obs, reward, term, trunc, infos = vec.step(chunk[:, : args.act_steps])
            runs.check_finite(iteration, reward=reward, observation=next_obs)
            env_steps += E * args.act_steps  # episodes that end here are logged at this count
            # next state of a finished episode: its last observation (not the reset one); only
            # termination cuts the bootstrap, a time-out does not
            final_obs = envs.final_observations(next_obs, infos)
            buffer.add(obs, chunk, reward * args.scale_reward_factor, final_obs, term)
            runs.log_episodes(writer, infos, env_steps, recent_returns, successes)
            obs = next_obs
        t_rollout = time.time() - t_iter

        # ---- update: V by expectile (paper eq. A7), Q on V(s') (A8), target Q, actor (A9) ----
        t_update = runs.phase("update")  # torch at the update's threads
        stats = idql_update(
            actor,
            q_critic,
            q_target,
            v_critic,
            actor_opt,
            q_opt,
            v_opt,
            sched,
            buffer,
            args,
            num_batch,
            iteration >= args.n_critic_warmup_itr,
            device,
        )
        t_update = time.time() - t_update
        runs.check_finite(iteration, **stats, actor_weights=actor, q_weights=q_critic, v_weights=v_critic)
        iteration += 1

        # ---- log, evaluate, save ----
        runs.log_stats(writer, env_steps, "losses", stats, ("q_loss", "v_loss", "actor_loss"))
        runs.log_stats(writer, env_steps, "values", stats, ("q1_mean", "q2_mean", "v_mean", "target_q_mean"))
        charts = dict(boltzmann_max_prob=float(np.mean(max_probs)), learning_rate=actor_opt.param_groups[0]["lr"])
        charts["buffer_size"] = buffer.size
        runs.log_stats(writer, env_steps, "charts", charts)
        sps = steps_per_iter / (time.time() - t_iter)
        runs.log_iteration(writer, env_steps, sps, t_rollout, t_update, device, successes)
        if iteration % args.eval_freq == 0 or iteration == num_iters:
            evals.run(env_steps, act, args, normalization)
        shown = dict(q_loss=stats["q_loss"], actor_loss=stats.get("actor_loss", "- (critic warm-up)"))
        progress.update(iteration, num_iters, env_steps, recent_returns, evals, successes, **shown)
        run = runs.checkpoint_state(critics | trained, evals, vec, obs, None, recent_returns)
        state = make_checkpoint(actor, kw, normalization, args, iteration, env_steps, **run)
        runs.save_run(state, run_dir, iteration, num_iters, args, writer, buffer)
    progress.close()
    vec.close()
    runs.finish_run(run_dir, ALGO, args, env_steps, time.time() - t_start, evals, device, writer, act, normalization)


if __name__ == "__main__":
    # tyro parses Args from the command line, starting from the task_defaults values (arguments.parse_args)
    runs.run_cli(main, arguments.parse_args(Args, task_defaults))
