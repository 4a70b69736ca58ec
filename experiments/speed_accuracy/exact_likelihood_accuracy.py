"""Accuracy and cost of the exact (probability-flow ODE) likelihood of cleandppo/exact_likelihood_pg.py.

Prints the three tables of docs/exact_likelihood_pg.md ("Accuracy and cost of the likelihood"):
  (a) Gaussian data N(mu, s^2 I), closed-form eps: mean |error| (nats/dim) per solver;
  (b) the bundled pre-trained Hopper policy on rollout chunks: error and correlation of each solver
      against RK4 with step 0.0125;
  (c) ms per chunk: old log-likelihood (no graph) and training forward + backward.

    OMP_NUM_THREADS=1 python experiments/speed_accuracy/exact_likelihood_accuracy.py
"""

import argparse
import copy
import dataclasses
import math
import time

import numpy as np
import torch

from cleandppo import envs
from cleandppo import exact_likelihood_pg as el

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--points", type=int, default=64, help="Gaussian points per s")
p.add_argument("--num-envs", type=int, default=10, help="Hopper envs (seeds seed..seed+E-1)")
p.add_argument("--rollout-steps", type=int, default=10, help="policy queries per env: chunks = envs x steps")
p.add_argument("--timing-batch", type=int, default=50, help="chunks per timed call in (c)")
p.add_argument("--timing-repeats", type=int, default=3, help="timed calls per setting in (c); the median is printed")
p.add_argument("--checkpoint", default=None, help="default: the bundled Hopper-v2 diffusion MLP")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--skip", nargs="*", default=[], choices=["gaussian", "hopper", "timing"])
cli = p.parse_args()
torch.manual_seed(cli.seed)
K = 20
sde = el.VPSDE(el.make_schedule(K)["betas"])
betas = el.make_schedule(K)["betas"].double()
print(
    f"(0) K = {K}: beta(t) {sde.rates[0]:.4g} on the first interval, {sde.rates[-1]:.4g} on the last; "
    f"ab(1) = {sde.alpha_bar(1.0):.2g}, -log ab(1) = {-math.log(sde.alpha_bar(1.0)):.3g}; unscaled sum(beta_i)/K = "
    f"{betas.sum().item() / K:.3g}; sqrt(1 - ab_0) = {math.sqrt(1 - sde.alpha_bar(1 / K)):.3g}\n"
)

# ---- (a) Gaussian data, closed-form eps (as tests/test_exact_likelihood_pg.py) ----
if "gaussian" not in cli.skip:
    D = 12
    g = torch.Generator().manual_seed(cli.seed)
    mu = (torch.rand(D, generator=g, dtype=torch.float64) > 0.5).double() * 0.6 - 0.3
    solvers = [("euler", 0.05), ("euler", 0.01), ("euler", 0.001), ("rk4", 0.05), ("rk4", 0.01)]
    print(
        f"(a) Gaussian N(mu, s^2 I), D = {D}, mu = +-0.3, t_min = 1/K, {cli.points} points: mean |error| (max) nats/dim"
    )
    print("| s | " + " | ".join(f"{m} {h}" for m, h in solvers) + " |")
    for s in (0.05, 0.1, 0.3):
        x = mu + s * torch.randn(cli.points, D, generator=g, dtype=torch.float64)
        ab = sde.alpha_bar(1 / K)
        var = ab * s**2 + 1 - ab  # marginal N(sqrt(ab) mu, var I) at t_min

        def eps_fn(y, t, s=s):  # s of this iteration (the closure is used inside it)
            a = sde.alpha_bar(t)
            return math.sqrt(1 - a) * (y - math.sqrt(a) * mu) / (a * s**2 + 1 - a)

        ref = torch.distributions.Normal(math.sqrt(ab) * mu, math.sqrt(var)).log_prob(x).sum(-1)
        cells = []
        for m, h in solvers:
            err = ((el.pf_ode_log_likelihood(eps_fn, sde, x, 1 / K, h, m) - ref) / D).abs()
            cells.append(f"{err.mean().item():.2g} ({err.max().item():.2g})")
        print(f"| {s} | " + " | ".join(cells) + " |", flush=True)

# ---- the bundled checkpoint ----
targs = el.Args()
path = cli.checkpoint or envs.bundled_checkpoint(targs.env_id, "diffusion", targs.backbone)
ckpt = el.load_diffusion_checkpoint(path, targs)
kw = ckpt["model_kwargs"]
actor = el.build_network(kw)
actor.load_state_dict(ckpt["model"])
actor.requires_grad_(False)
actor_ft = copy.deepcopy(actor).requires_grad_(True)
K_ft, Tp, Da = targs.ft_denoising_steps, kw["horizon_steps"], kw["action_dim"]


def loglik(obs, chunks, method, step, probes=None, create_graph=False):
    a = dataclasses.replace(targs, sde_method=method, sde_step_size=step)
    return el.action_log_likelihood(actor, actor_ft, sde, obs, chunks, a, probes, create_graph)


if "hopper" not in cli.skip or "timing" not in cli.skip:
    # rollout chunks: DPPO's training sampler (exploration floor) on E seeded envs for a few steps
    sched = el.make_schedule(K)
    plan = [(t, t - 1) for t in reversed(range(K))]  # DDPM timesteps in order, as exact_likelihood_pg.main
    vec = envs.make_vec_env(
        targs.env_id, cli.num_envs, cli.seed, targs.act_steps, targs.cond_steps, ckpt["normalization"]
    )
    o, _ = vec.reset(seed=cli.seed)
    all_obs, all_chunks = [], []
    with torch.no_grad():
        for _ in range(cli.rollout_steps):
            obs_t = torch.as_tensor(o, dtype=torch.float32)
            chunk, _ = el.sample(actor, actor_ft, sched, obs_t, plan, K_ft, "train", targs)
            all_obs.append(obs_t)
            all_chunks.append(chunk)
            o, *_ = vec.step(chunk[:, : targs.act_steps].numpy())
    vec.close()
    obs, chunks = torch.cat(all_obs), torch.cat(all_chunks)
    print(
        f"\n[checkpoint] {path}: {len(chunks)} rollout chunks "
        f"({cli.num_envs} envs x {cli.rollout_steps} steps, seed {cli.seed})"
    )

# ---- (b) solver error on the pre-trained Hopper policy ----
if "hopper" not in cli.skip:
    t0 = time.time()
    with torch.no_grad():
        ref = loglik(obs, chunks, "rk4", 0.0125)
    clamped = ((ref < targs.logprob_min) | (ref > targs.logprob_max)).float().mean().item()
    print(
        f"(b) reference RK4 0.0125, exact divergence ({time.time() - t0:.0f} s): log-lik mean {ref.mean():.3f}, "
        f"range [{ref.min():.3f}, {ref.max():.3f}] nats/dim, clamped fraction {clamped:.2f}"
    )
    probes = el.rademacher((len(chunks), 2, Tp * Da), generator=torch.Generator().manual_seed(cli.seed))
    print("| solver | mean |error| (nats/dim) | max |error| | correlation with the reference |")
    for name, m, h, pr in [
        ("RK4 0.05 (default)", "rk4", 0.05, None),
        ("Euler 0.0125", "euler", 0.0125, None),
        ("Euler 0.05 (official)", "euler", 0.05, None),
        ("Euler 0.05, 2 probes (official)", "euler", 0.05, probes),
    ]:
        with torch.no_grad():
            lp = loglik(obs, chunks, m, h, pr)
        err = (lp - ref).abs()
        corr = np.corrcoef(lp.numpy(), ref.numpy())[0, 1]
        print(f"| {name} | {err.mean():.3g} | {err.max():.3g} | {corr:.3f} |", flush=True)

# ---- (c) cost per chunk ----
if "timing" not in cli.skip:
    B = min(cli.timing_batch, len(chunks))
    ob, ch = obs[:B], chunks[:B]
    pr = el.rademacher((B, 2, Tp * Da), generator=torch.Generator().manual_seed(cli.seed))
    print(
        f"\n(c) ms per chunk, batches of {B}, median of {cli.timing_repeats}, "
        f"{torch.get_num_threads()} thread(s), step 0.05"
    )
    print("| solver | old log-lik (no graph) | training forward + backward |")
    for name, m, probes in [
        ("RK4, exact (default)", "rk4", None),
        ("RK4, 2 probes", "rk4", pr),
        ("Euler, exact", "euler", None),
        ("Euler, 2 probes (official)", "euler", pr),
    ]:
        old, train = [], []
        for _ in range(cli.timing_repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                loglik(ob, ch, m, 0.05, probes)
            old.append(time.perf_counter() - t0)
            actor_ft.zero_grad()
            t0 = time.perf_counter()
            loglik(ob, ch, m, 0.05, probes, create_graph=True).sum().backward()
            train.append(time.perf_counter() - t0)
        print(f"| {name} | {1e3 * np.median(old) / B:.1f} ms | {1e3 * np.median(train) / B:.1f} ms |", flush=True)
