"""One speed report for the PPO scripts, every phase measured one after another in one process tree
(docs/benchmarks.md).

    python scripts/speed.py                      # the report at the benchmark sizes (a few minutes on 2 cores)
    python scripts/speed.py --quick              # the same phases, smaller, in under a minute
    python scripts/speed.py --json report.json   # also write the rows and ratios as JSON
    python scripts/speed.py --update-only --baseline b3944c0   # the DPPO update alone, beside that commit's

Phases (set up in this order: the simulator ones first, since AsyncVectorEnv forks its workers before torch starts
its threads):
  raw simulator   one gymnasium env (the v4 id the paper id maps to) stepped in a Python loop with random actions,
                  and --procs envs in as many worker processes (AsyncVectorEnv, shared memory): simulator steps/s.
  vector env      envs.make_vec_env as the scripts use it (--num-envs envs, chunks of 4), random chunks: the envs in
                  this process, and in --procs worker processes (--env-workers; workers.WorkerVectorEnv).
  rollout         each PPO script's rollout step on its bundled Hopper checkpoint: its sampler (dppo: 20 denoising
                  steps recording K' of them; gaussian_ppo, gmm_ppo: one forward pass) then the vector-env step, in
                  env steps/s, with the share of the time the sampler takes; dppo's also with its envs in --procs
                  worker processes (1 thread), and overlapped (workers.rollout_step): its envs in 1 and in --procs
                  worker processes, each worker's envs in --parts parts (--rollout-parts).
  DPPO old log-probs  dppo.chain_log_probs over the iteration's --num-envs x --n-steps chains (forward only).
  DPPO update     dppo.ppo_update on a synthetic batch of those chains, one minibatch per call (a negative target_kl
                  stops it after the first: short calls, close in time to the matmul's under a changing load):
                  (env step, denoising step) pairs/s and achieved GFLOP/s, next to a plain torch matmul of the same shapes at the same thread count;
                  with --baseline COMMIT also the chain_log_probs (in that commit's default chunks) and ppo_update of
                  dppo.py as it was at COMMIT (read with git show), on the same batch in the same rounds, and the
                  pairs/s of this code over that one's.
  DPPO iteration  dppo.main for one iteration (rollout + advantages + old log-probs + --update-epochs epochs) from the
                  bundled checkpoint at --iter-threads; its rollout and update times as the loop logs them
                  (time/rollout_s, time/update_s).
The torch phases run at 1 thread and at the default count (small-batch sampling can be much faster on one thread
on a busy machine). All phases but the iteration are measured round-robin: --rounds rounds, each running every phase
for --seconds / --rounds, so that each phase sees the load of every round; a row is the median over the rounds and
its spread the largest over the smallest, a ratio the median of its per-round ratios.

FLOP rule: matmuls only. An nn.Linear(in, out) costs 2 in out FLOPs per row forward and 4 in out backward (the input
and the weight gradients), so 6 in out per row in training and 2 in out per row forward only; the update runs every
Linear layer of the fine-tuned network (time embedding included) and of the critic once per pair, the old log-probs
those of the network alone. Activations, the loss and the optimiser step are not counted. The critic's layers count once per row it was run
on, as counted by a hook during the measured calls (the update runs it once per env-step sample of a minibatch; a
--baseline may run it once per pair). The matmul reference times exactly those GEMMs (X W^T forward; dY W and dY^T X
backward) on preallocated random matrices: the network's at a minibatch of pairs, the critic's at the expected number
of distinct samples among them.

Rates follow the load of the machine: the ratios are what the report is for; the load average before and after and
every row's spread are printed with them.
"""

import argparse
import contextlib
import copy
import dataclasses
import datetime
import importlib.util
import inspect
import io
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cleandppo import dppo, envs, gaussian_ppo, gmm_ppo, runs, workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = dict(seconds=1.0, rounds=2, n_steps=5, batch_size=2000, iter_batch_size=500)
FULL = dict(seconds=9.0, rounds=3, n_steps=125, batch_size=50_000, iter_batch_size=12_500)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="Hopper-v2")
    p.add_argument("--quick", action="store_true", help="smaller sizes and shorter timings (under a minute)")
    p.add_argument("--seconds", type=float, help="time per phase, all rounds together (full 9, quick 1)")
    p.add_argument("--rounds", type=int, help="rounds of the round-robin over the phases (full 3, quick 2)")
    p.add_argument("--procs", type=int, help="worker processes of the parallel phases (default: the cores)")
    p.add_argument(
        "--parts", type=int, nargs="*", default=[2, 4], help="--rollout-parts of the overlapped dppo rollouts"
    )
    p.add_argument("--num-envs", type=int, default=40, help="envs of the rollouts, the update batch and the iteration")
    p.add_argument("--n-steps", type=int, help="policy queries per env of the update batch and the iteration (125, 5)")
    p.add_argument("--act-steps", type=int, default=4, help="actions executed per policy query")
    p.add_argument("--ft-denoising-steps", type=int, default=10, help="K'")
    p.add_argument("--batch-size", type=int, help="update phase: pairs per minibatch (full 50000, quick 2000)")
    p.add_argument("--iter-batch-size", type=int, help="iteration: pairs per minibatch (benchmark.sh 12500, quick 500)")
    p.add_argument("--update-epochs", type=int, default=5, help="iteration: epochs over the pairs")
    p.add_argument("--threads", type=int, help="the default torch thread count (default: torch's, i.e. the cores)")
    p.add_argument("--iter-threads", type=int, default=1, help="torch threads of the iteration (benchmark.sh's: 1)")
    p.add_argument("--no-iteration", action="store_true", help="skip the dppo.main iteration")
    p.add_argument("--update-only", action="store_true", help="only the DPPO old log-probs and update phases")
    p.add_argument(
        "--baseline",
        help="a git commit: also time the DPPO update of dppo.py as it was there, and (without --update-only) one whole "
        "iteration of that commit's dppo.py beside one of this code's, each in a process of its own",
    )
    p.add_argument("--iterations-only", action="store_true", help="with --baseline: only the two codes' iterations")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.procs = args.procs or len(os.sched_getaffinity(0))
    args.threads = args.threads or torch.get_num_threads()
    return args


# ---- machine --------------------------------------------------------------------------------------------------------
def machine(args) -> dict:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        commit += " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return dict(
        date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        commit=commit,
        cpu=cpu,
        cores=len(os.sched_getaffinity(0)),
        torch=torch.__version__,
        torch_threads=args.threads,
        mujoco=mujoco.__version__,
        python=platform.python_version(),
        load_before=os.getloadavg()[0],
    )


# ---- phases: each a setup, then a function that does one unit of work and returns how much ----------------------
class Phase:
    """One measured rate: `work()` runs one unit (100 simulator steps, one rollout step, one update epoch, ...) at
    `threads` torch threads and returns its size in `unit`s; `scale` turns the rate into a second row (GFLOP/s)."""

    def __init__(self, name, threads, unit, work, note="", scale=None, warmup=None):
        self.name, self.threads, self.unit, self.work, self.note = name, threads, unit, work, note
        self.scale, self.warmup, self.rates, self.elapsed = scale, warmup or work, [], 0.0

    def gflop(self):
        """GFLOP per unit (None: no GFLOP row); a callable `scale` is read after the measurement."""
        return self.scale() if callable(self.scale) else self.scale

    def measure(self, seconds):
        """Repeat the unit for `seconds` (at least once); append the rate."""
        if self.threads != "-":
            torch.set_num_threads(self.threads)
        done, t0 = 0.0, time.perf_counter()
        while done == 0 or time.perf_counter() - t0 < seconds:
            done += self.work()
        elapsed = time.perf_counter() - t0
        self.rates.append(done / elapsed)
        self.elapsed += elapsed


def simulator_phases(args, closers) -> list:
    """The raw simulator in this process and in args.procs worker processes, and the scripts' vector env."""
    gym_id, rng = envs.resolve_env_id(args.env_id), np.random.default_rng(0)
    env = gym.make(gym_id, max_episode_steps=1000)
    env.reset(seed=0)
    closers.append(env.close)

    def raw_single():
        for _ in range(100):
            _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape) * 0.1)
            if term or trunc:
                env.reset()
        return 100

    vec = gym.vector.AsyncVectorEnv(
        [lambda: gym.make(gym_id, max_episode_steps=1000)] * args.procs,
        shared_memory=True,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    vec.reset(seed=0)
    closers.append(vec.close)
    actions = rng.uniform(-1, 1, (10, *vec.action_space.shape)) * 0.1

    def raw_parallel():
        for a in actions:
            vec.step(a)
        return 10 * args.procs

    chunk = (args.num_envs, args.act_steps, envs.env_dims(args.env_id)[1])
    vector_env = rollout_work(args, lambda obs: rng.uniform(-0.1, 0.1, chunk), None, closers, [])
    workers = rollout_work(args, lambda obs: rng.uniform(-0.1, 0.1, chunk), None, closers, [], args.procs)
    return [
        Phase("raw simulator, 1 process", "-", "env steps/s", raw_single, "gymnasium env, Python loop"),
        Phase(f"raw simulator, {args.procs} worker processes", "-", "env steps/s", raw_parallel, "AsyncVectorEnv"),
        Phase("vector env (make_vec_env)", "-", "env steps/s", vector_env, f"{args.num_envs} envs, random chunks"),
        Phase(f"vector env, {args.procs} worker processes", "-", "env steps/s", workers, "--env-workers"),
    ]


def executed_steps(infos: dict) -> int:
    """Env steps a vector step executed: `env_steps` of the envs that go on, and of those whose episode ended (their
    info moved to `final_info` by the same-step auto-reset; when every env ended, there is no `env_steps` at all)."""
    steps = 0
    for info in (infos, infos.get("final_info", {})):
        if "env_steps" in info:
            steps += int(np.sum(np.where(info["_env_steps"], info["env_steps"], 0)))
    return steps


def rollout_work(args, act_fn, normalization, closers, sampler_time, env_workers=1, parts=1):
    """One rollout step as the loops do it (workers.rollout_step): act_fn(obs) -> chunk, then the vector-env step (its
    envs in `env_workers` processes; with `parts` > 1 each worker's envs in that many parts, the workers simulating
    one part while the next is sampled); returns its env steps and adds the sampler's time to sampler_time[0]."""
    vec = envs.make_vec_env(args.env_id, args.num_envs, 0, args.act_steps, 1, normalization, env_workers, None, parts)
    if parts > 1 and env_workers == 1:  # one worker process to overlap with (--env-workers 1 keeps the envs here)
        vec.close()
        fns = [lambda: envs.make_env(args.env_id, args.act_steps, 1, normalization)] * args.num_envs
        vec = workers.WorkerVectorEnv(fns, 1, args.env_id, None, parts)
    closers.append(vec.close)
    state = dict(obs=vec.reset(seed=0)[0])
    sampler_time.append(0.0)

    def act(obs, rows):
        t = time.perf_counter()
        chunk = act_fn(obs[rows])[:, : args.act_steps]
        sampler_time[0] += time.perf_counter() - t
        return chunk, torch.as_tensor(chunk)

    def work():
        _, (state["obs"], _, _, _, infos) = workers.rollout_step(vec, act, state["obs"])
        return executed_steps(infos)

    return work


def samplers(args) -> dict:
    """{script: (act_fn, normalization)}: each PPO script's rollout sampling on its bundled checkpoint."""
    cpu = torch.device("cpu")
    ckpt = envs.load_checkpoint(envs.bundled_checkpoint(args.env_id, "diffusion"), "diffusion", args.env_id)
    actor, actor_ft, _ = dppo.build_actors(ckpt, args.ft_denoising_steps, cpu)
    K = ckpt["model_kwargs"]["denoising_steps"]
    sched, plan, dppo_args = dppo.make_schedule(K), dppo.denoising_plan(K, None), dppo.Args()

    def dppo_act(obs):
        obs = torch.as_tensor(obs)
        return dppo.sample(actor, actor_ft, sched, obs, plan, args.ft_denoising_steps, "train", dppo_args)[0].numpy()

    out = {"dppo": (dppo_act, ckpt["normalization"])}
    ckpt_g = envs.load_checkpoint(envs.bundled_checkpoint(args.env_id, "gaussian"), "gaussian", args.env_id)
    gaussian = gaussian_ppo._load_policy(ckpt_g, cpu)
    clip = gaussian_ppo.Args().randn_clip_value

    @torch.no_grad()
    def gaussian_act(obs):
        return gaussian_ppo.sample_action(*gaussian(torch.as_tensor(obs)), clip).numpy()

    out["gaussian_ppo"] = (gaussian_act, ckpt_g["normalization"])
    ckpt_m = envs.load_checkpoint(envs.bundled_checkpoint(args.env_id, "gmm"), "gmm", args.env_id)
    gmm = gmm_ppo._load_policy(ckpt_m, cpu)

    @torch.no_grad()
    def gmm_act(obs):
        return gmm_ppo.sample_action(*gmm(torch.as_tensor(obs))).numpy()

    out["gmm_ppo"] = (gmm_act, ckpt_m["normalization"])
    return out


def rollout_name(procs, parts):
    where = f"{procs} worker process{'es' if procs > 1 else ''}"
    return f"dppo rollout, {where}" + (f", {parts} parts each" if parts > 1 else "")


def rollout_phases(args, closers) -> tuple[list, dict]:
    """Each script's rollout step at each thread count (one vector env per script and thread count); also returns
    {phase: [sampler seconds]} for the sampler's share of the time."""
    phases, sampler_times = [], {}
    for script, (act_fn, normalization) in samplers(args).items():
        for threads in thread_counts(args):
            sampler_time = []
            work = rollout_work(args, act_fn, normalization, closers, sampler_time)
            phases.append(Phase(f"{script} rollout", threads, "env steps/s", work))
            sampler_times[phases[-1]] = sampler_time
        if script == "dppo":  # the envs in worker processes, sampling at 1 thread; overlapped in parts
            for procs, parts in [(args.procs, 1)] + [(w, p) for w in sorted({1, args.procs}) for p in args.parts]:
                sampler_time = []
                work = rollout_work(args, act_fn, normalization, closers, sampler_time, procs, parts)
                phases.append(Phase(rollout_name(procs, parts), 1, "env steps/s", work))
                sampler_times[phases[-1]] = sampler_time
    return phases, sampler_times


# ---- DPPO update and its FLOPs --------------------------------------------------------------------------------------
def linear_layers(module, rows, *inputs):
    """[(in, out), ...] of the nn.Linear layers one forward pass of `module` on `inputs` (a batch of `rows`) runs,
    each once per row."""
    shapes, hooks = [], []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            hook = m.register_forward_hook(lambda mod, x, y: shapes.append((x[0].numel(), mod.in_features, mod)))
            hooks.append(hook)
    with torch.no_grad():
        module(*inputs)
    for h in hooks:
        h.remove()
    return [(m.in_features, m.out_features) for n, _, m in shapes for _ in range(n // m.in_features // rows)]


def matmul_work(layers, rows, backward, critic=((), 0)):
    """One pass of the GEMMs of `layers` on `rows` rows (X W^T; with `backward` also dY W and dY^T X) on preallocated
    random matrices, and those of `critic` = (layers, rows) likewise; returns its GFLOP."""
    g = torch.Generator().manual_seed(0)
    shapes = [(rows, i, o) for i, o in layers] + [(critic[1], i, o) for i, o in critic[0]]
    mats = [
        (torch.randn(n, i, generator=g), torch.randn(o, i, generator=g), torch.randn(n, o, generator=g))
        for n, i, o in shapes
    ]
    gflop = sum((6 if backward else 2) * n * i * o for n, i, o in shapes) / 1e9

    def work():
        for x, w, dy in mats:
            torch.mm(x, w.t())
            if backward:
                torch.mm(dy, w)
                torch.mm(dy.t(), x)
        return gflop

    return work


def update_phases(args) -> list:
    """dppo.chain_log_probs (the old log-probs) and one ppo_update minibatch on a synthetic batch of num_envs x n_steps
    chains at the benchmark shapes, and the matmul reference of each, at each thread count; with args.baseline the
    ppo_update of that commit's dppo.py on the same batch."""
    cpu = torch.device("cpu")
    ckpt = envs.load_checkpoint(envs.bundled_checkpoint(args.env_id, "diffusion"), "diffusion", args.env_id)
    kw = ckpt["model_kwargs"]
    actor, actor_ft, _ = dppo.build_actors(ckpt, args.ft_denoising_steps, cpu)
    sched = dppo.make_schedule(kw["denoising_steps"])
    K_ft, Tp, Da, obs_dim = args.ft_denoising_steps, kw["horizon_steps"], kw["action_dim"], kw["obs_dim"]
    samples = args.num_envs * args.n_steps
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(samples, 1, obs_dim, generator=g)
    chains = torch.randn(samples, K_ft + 1, Tp, Da, generator=g) * 0.5
    train_args = dppo.Args(act_steps=args.act_steps, batch_size=args.batch_size, update_epochs=1, target_kl=None)
    critic = dppo.Critic(obs_dim, 1, train_args.critic_dims)
    pairs, mb = samples * K_ft, min(args.batch_size, samples * K_ft)

    # FLOPs per pair from the layer shapes (module docstring)
    actor_layers = linear_layers(actor_ft, 2, torch.zeros(2, Tp, Da), torch.zeros(2, dtype=torch.long), obs[:2])
    critic_layers = linear_layers(critic, 2, obs[:2])
    fwd_pair = sum(2 * i * o for i, o in actor_layers) / 1e9
    train_pair, critic_row = (sum(6 * i * o for i, o in layers) / 1e9 for layers in (actor_layers, critic_layers))

    def old_log_probs(module=dppo):  # forward only, in the loop's chunks of env-step samples
        n = logprob_chunk(module, cpu)
        with torch.no_grad():
            parts = [
                module.chain_log_probs(actor_ft, sched, obs[s : s + n], chains[s : s + n], train_args)
                for s in range(0, samples, n)
            ]
        return torch.cat(parts)

    batch = dict(obs=obs, chains=chains, logprobs=old_log_probs(), advantages=torch.randn(samples, generator=g))
    batch["returns"] = torch.randn(samples, generator=g)
    small = {k: v[: max(1, mb // K_ft)] for k, v in batch.items()}  # one minibatch: the warm-up
    one_minibatch = dataclasses.replace(train_args, target_kl=-1.0)  # the approximate KL (k3) is never negative

    def update_work(module, actor_ft, critic):
        """(work, warm-up, GFLOP per pair): one minibatch of `module`.ppo_update on its own copy of the networks; the
        critic's rows counted by a hook over every call (module docstring)."""
        actor_opt = torch.optim.AdamW(actor_ft.parameters(), lr=1e-4, weight_decay=0.0)
        critic_opt = torch.optim.AdamW(critic.parameters(), lr=1e-3, weight_decay=0.0)
        count = dict(pairs=0, rows=0)
        critic.register_forward_hook(lambda m, x, y: count.__setitem__("rows", count["rows"] + len(x[0])))

        def update(b=batch):
            module.ppo_update(actor, actor_ft, critic, actor_opt, critic_opt, sched, b, one_minibatch, generator=g)
            count["pairs"] += mb
            return mb

        return update, lambda: update(small), lambda: train_pair + critic_row * count["rows"] / count["pairs"]

    def all_old_log_probs(module=dppo):
        old_log_probs(module)
        return pairs

    # the critic's rows in a minibatch: its distinct samples, S (1 - P(none of a sample's K' pairs drawn))
    no_pair = math.prod((pairs - mb - k) / (pairs - k) for k in range(K_ft)) if pairs - mb >= K_ft else 0.0
    critic_rows = round(samples * (1 - no_pair))
    matmul_train = matmul_work(actor_layers, mb, backward=True, critic=(critic_layers, critic_rows))
    train_note = f"{pairs} pairs, minibatches of {mb}"
    mm_note = f"{mb} rows, critic {critic_rows}, fwd + bwd"
    if args.baseline:  # its own copies of the networks, made before any update moves them
        base = baseline_dppo(args.baseline)
        base_update, base_warmup, base_scale = update_work(base, copy.deepcopy(actor_ft), copy.deepcopy(critic))
    update, warmup, update_scale = update_work(dppo, actor_ft, critic)
    phases = []
    for t in thread_counts(args):
        with threads(t):  # the loop's chunks of env-step samples at t threads
            n, n_base = logprob_chunk(dppo, cpu), logprob_chunk(base, cpu) if args.baseline else None
        note = f"{pairs} pairs, chunks of {n} samples, {fwd_pair * 1e3:.2f} MFLOP/pair"
        phases.append(Phase("DPPO old log-probs", t, "pairs/s", all_old_log_probs, note, fwd_pair))
        if args.baseline:
            name, work = f"DPPO old log-probs at {args.baseline}", lambda: all_old_log_probs(base)
            phases.append(Phase(name, t, "pairs/s", work, f"{pairs} pairs, chunks of {n_base} samples", fwd_pair))
        rows = min(pairs, n * K_ft)
        matmul_fwd = matmul_work(actor_layers, rows, backward=False)
        phases.append(Phase("torch matmul, the old log-probs' GEMMs", t, "GFLOP/s", matmul_fwd, f"{rows} rows"))
        phases.append(Phase("DPPO update", t, "pairs/s", update, train_note, update_scale, warmup))
        if args.baseline:  # right after this code's, so that both see the same load
            name = f"DPPO update at {args.baseline}"
            phases.append(Phase(name, t, "pairs/s", base_update, train_note, base_scale, base_warmup))
        phases.append(Phase("torch matmul, the update's GEMMs", t, "GFLOP/s", matmul_train, mm_note))
    return phases


def logprob_chunk(module, device):
    """Env-step samples per chain_log_probs call in `module`'s loop at the current thread count: as dppo.main chooses
    them (workers.chunk_size of --logprob-batch-size: 500 on one CPU thread, else 10000); code that had its own
    logprob_chunk, or a fixed default, as it did."""
    if hasattr(module, "logprob_chunk"):
        return module.logprob_chunk(module.Args(), device)
    return workers.chunk_size(module.Args().logprob_batch_size, device, 500, 10_000)


@contextlib.contextmanager
def threads(n):
    """torch at n threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def baseline_dppo(commit):
    """dppo.py as it was at `commit` (git show), imported as a module of its own."""
    try:
        source = subprocess.run(
            ["git", "show", f"{commit}:cleandppo/dppo.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"--baseline {commit}: git show {commit}:cleandppo/dppo.py failed ({e})") from None
    path = os.path.join(tempfile.mkdtemp(prefix="speed-baseline-"), "dppo_baseline.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("dppo_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def thread_counts(args):
    """The torch thread counts every torch phase but the iteration runs at: 1 and the default."""
    return sorted({1, args.threads})


# ---- one DPPO iteration ---------------------------------------------------------------------------------------------
def iteration(args) -> dict:
    """dppo.main for one iteration from the bundled checkpoint (1-episode evaluations before and after); the times of
    the iteration as the loop passes them to runs.log_iteration, and the whole main's wall time."""
    seen = {}
    original = runs.log_iteration

    def spy(*a, **k):
        bound = inspect.signature(original).bind(*a, **k).arguments
        seen.update(rollout=bound["t_rollout"], update=bound["t_update"], sps=bound["steps_per_second"])
        return original(*a, **k)

    steps = args.num_envs * args.n_steps * args.act_steps
    run_dir = tempfile.mkdtemp(prefix="speed-")
    flags = dict(env_id=args.env_id, num_envs=args.num_envs, n_steps=args.n_steps, act_steps=args.act_steps)
    flags |= dict(ft_denoising_steps=args.ft_denoising_steps, batch_size=args.iter_batch_size, cuda=False)
    flags |= dict(update_epochs=args.update_epochs, total_timesteps=steps, eval_episodes=1, save_freq=10**6)
    flags |= dict(run_dir=run_dir, overwrite=True)
    log = io.StringIO()
    torch.set_num_threads(args.iter_threads)
    runs.log_iteration = spy
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            dppo.main(dppo.Args(**flags))
    except BaseException:
        print(log.getvalue(), file=sys.stderr)
        raise
    finally:
        runs.log_iteration = original
        torch.set_num_threads(args.threads)
        shutil.rmtree(run_dir, ignore_errors=True)
    wall = time.perf_counter() - t0
    if not seen:
        raise RuntimeError("dppo.main never called runs.log_iteration(t_rollout=..., t_update=...): update speed.py")
    return dict(steps=steps, iteration=steps / seen["sps"], rollout=seen["rollout"], update=seen["update"], main=wall)


# ---- one whole DPPO iteration of this code and of --baseline's, each in a process and a checkout of its own --------
def checkout(commit, closers) -> str:
    """A detached git worktree of `commit` in a temporary dir, removed at the end (closers)."""
    path = os.path.join(tempfile.mkdtemp(prefix="speed-checkout-"), "repo")
    try:
        subprocess.run(["git", "worktree", "add", "--detach", path, commit], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"--baseline {commit}: git worktree add failed ({e}); pass a commit of this repo") from None
    remove = ["git", "worktree", "remove", "--force", path]
    closers.append(lambda: subprocess.run(remove, cwd=ROOT, capture_output=True))
    return path


def iteration_process(repo, args, threads) -> dict:
    """dppo.py of checkout `repo` for one iteration from its bundled checkpoint, as `python cleandppo/dppo.py` in a
    process of its own (PYTHONPATH: the checkout); `threads` 1 sets OMP_NUM_THREADS=1, None leaves the code its own
    choice. The iteration's times come from its TensorBoard scalars (time/rollout_s, time/update_s, charts/SPS)."""
    run_dir = os.path.join(tempfile.mkdtemp(prefix="speed-iteration-"), "run")
    steps = args.num_envs * args.n_steps * args.act_steps
    flags = f"--env-id {args.env_id} --num-envs {args.num_envs} --n-steps {args.n_steps} --act-steps {args.act_steps}"
    flags += f" --ft-denoising-steps {args.ft_denoising_steps} --batch-size {args.iter_batch_size}"
    flags += f" --update-epochs {args.update_epochs} --total-timesteps {steps} --eval-episodes 1 --save-freq 1000000"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env |= dict(PYTHONPATH=repo, PYTHONWARNINGS="ignore") | (dict(OMP_NUM_THREADS=str(threads)) if threads else {})
    script = os.path.join(repo, "cleandppo", "dppo.py")
    cmd = [sys.executable, script, *flags.split(), "--no-cuda", "--run-dir", run_dir]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0}).Reload()
    last = {tag: acc.Scalars(tag)[-1].value for tag in ("time/rollout_s", "time/update_s", "charts/SPS")}
    with open(os.path.join(run_dir, "summary.json")) as f:
        plan = json.load(f).get("parallel")  # what the run chose (absent before the speed work)
    shutil.rmtree(os.path.dirname(run_dir), ignore_errors=True)
    chose = "" if not plan else f"; {plan['env_workers']} env process(es), update at {plan['update_threads']} thread(s)"
    times = dict(iteration=steps / last["charts/SPS"], rollout=last["time/rollout_s"], update=last["time/update_s"])
    return times | dict(chose=chose)


def baseline_iterations(args, info, closers) -> tuple[list, dict]:
    """One iteration of this code and one of --baseline's at 1 thread (OMP_NUM_THREADS=1), then at each code's own
    thread choice, the two codes alternating (which runs first swaps between the settings, so that neither always
    meets the machine first); rows of their times, and the ratios --baseline / this code."""
    old = checkout(args.baseline, closers)
    rows, ratio = [], {}
    for threads, order in ((1, ("this", "baseline")), (None, ("baseline", "this"))):
        times = {code: iteration_process(ROOT if code == "this" else old, args, threads) for code in order}
        label = "1" if threads else "own"
        for code in ("this", "baseline"):
            name = info["commit"].split()[0] if code == "this" else args.baseline
            for part in ("iteration", "rollout", "update"):
                note = "a process of its own" + (times[code]["chose"] if part == "iteration" else "")
                rows.append(row(f"DPPO {part}, {name}", label, times[code][part], "s", note))
        for part in ("iteration", "rollout", "update"):
            ratio[f"DPPO {part}, {args.baseline} / this code, threads {label}"] = (
                times["baseline"][part] / times["this"][part]
            )
    return rows, ratio


# ---- report ---------------------------------------------------------------------------------------------------------
def median(values):
    return float(np.median(values))


def plural(threads):
    return f"{threads} thread{'s' * (threads != 1)}"


def ratios(args, phases) -> dict:
    """Each ratio per round (both rates measured in the same round, minutes apart at most), then the median."""
    by = {(p.name, p.threads): p for p in phases}

    def rate(name, threads="-", scaled=False):
        p = by[(name, threads)]
        return np.array(p.rates) * (p.gflop() if scaled else 1.0)

    out = {} if args.update_only else rollout_ratios(args, rate)
    for threads in thread_counts(args):
        update = rate("DPPO update", threads, scaled=True)
        out[f"DPPO update GFLOP/s / matmul GFLOP/s, {plural(threads)}"] = update / rate(
            "torch matmul, the update's GEMMs", threads
        )
        old = rate("DPPO old log-probs", threads, scaled=True)
        out[f"DPPO old log-probs GFLOP/s / matmul GFLOP/s, {plural(threads)}"] = old / rate(
            "torch matmul, the old log-probs' GEMMs", threads
        )
        if args.baseline:
            for phase in ("DPPO old log-probs", "DPPO update"):
                base = rate(f"{phase} at {args.baseline}", threads)
                out[f"{phase} pairs/s: this code / {args.baseline}, {plural(threads)}"] = rate(phase, threads) / base
    if args.threads != 1:
        one, many = (rate("DPPO update", t) for t in (1, args.threads))
        out[f"DPPO update: 1 thread / {plural(args.threads)}"] = one / many
    return {name: median(values) for name, values in out.items()}


def rollout_ratios(args, rate) -> dict:
    """The simulator's and the rollouts' ratios (per round); `rate(name, threads)` gives a phase's rates."""
    raw1, rawn = rate("raw simulator, 1 process"), rate(f"raw simulator, {args.procs} worker processes")
    out = {"raw simulator: N processes / 1 process": rawn / raw1}
    out["vector env / raw simulator"] = rate("vector env (make_vec_env)") / raw1
    out[f"vector env: {args.procs} worker processes / this process"] = rate(
        f"vector env, {args.procs} worker processes"
    ) / rate("vector env (make_vec_env)")
    out[f"dppo rollout, 1 thread: {args.procs} worker processes / this process"] = rate(
        f"dppo rollout, {args.procs} worker processes", 1
    ) / rate("dppo rollout", 1)
    plain = rate(f"dppo rollout, {args.procs} worker processes", 1)
    for procs in sorted({1, args.procs}):
        for parts in args.parts:
            name = rollout_name(procs, parts)
            out[f"{name} / {args.procs} worker processes in one part, 1 thread"] = rate(name, 1) / plain
    for script in ("dppo", "gaussian_ppo", "gmm_ppo"):
        for threads in thread_counts(args):
            out[f"{script} rollout / raw simulator, {plural(threads)}"] = rate(f"{script} rollout", threads) / raw1
        if args.threads != 1:
            one, many = (rate(f"{script} rollout", t) for t in (1, args.threads))
            out[f"{script} rollout: 1 thread / {plural(args.threads)}"] = one / many
    best = np.max([rate("dppo rollout", t) for t in thread_counts(args)], axis=0)
    out[f"dppo rollout (faster thread count) / raw simulator in {args.procs} processes"] = best / rawn
    return out


def table_rows(phases, sampler_times) -> list:
    """One row per phase (median over the rounds, spread = max/min), a GFLOP/s row after each scaled one."""
    rows = []
    for p in phases:
        note = p.note
        if p in sampler_times:
            note = f"sampler {sampler_times[p][0] / p.elapsed:.0%} of the time"
        spread = max(p.rates) / min(p.rates)
        rows.append(row(p.name, p.threads, median(p.rates), p.unit, note, spread))
        if p.scale:
            rows.append(row(p.name, p.threads, median(p.rates) * p.gflop(), "GFLOP/s", "", spread))
    return rows


def row(phase, threads, value, unit, note="", spread=None):
    return dict(phase=phase, threads=threads, value=float(value), unit=unit, spread=spread, note=note)


def print_report(info, args, rows, ratio):
    print(
        f"Speed report: {args.env_id}, commit {info['commit']}, {info['date']}; {info['cores']} cores ({info['cpu']}), "
        f"torch {info['torch']} ({info['torch_threads']} threads by default), MuJoCo {info['mujoco']}, "
        f"Python {info['python']}; load average {info['load_before']:.2f} before, {info['load_after']:.2f} after"
    )
    sizes = f"{args.num_envs} envs x {args.n_steps} queries x {args.act_steps} actions, K' = {args.ft_denoising_steps}"
    quick = " (--quick)" if args.quick else ""
    print(f"sizes: {sizes}; every phase {args.rounds} x {args.seconds / args.rounds:.3g} s, interleaved{quick}")
    print("value: the median over the rounds; spread: the largest over the smallest")
    print()
    print(f"| {'phase':40} | threads | {'value':>10} | {'unit':11} | spread | note")
    print(f"| {'-' * 40} | ------- | {'-' * 10} | {'-' * 11} | ------ | ----")
    for r in rows:
        spread = "" if r["spread"] is None else f"{r['spread']:.2f}x"
        value = f"{r['value']:10.4g}"
        print(f"| {r['phase']:40} | {r['threads']!s:>7} | {value} | {r['unit']:11} | {spread:>6} | {r['note']}")
    print()
    print("ratios (each the median of its per-round ratios)")
    for name, value in ratio.items():
        print(f"  {name}: {value:.3f}")


def main(argv=None):
    """Measure every phase, print the report and return it (the --json content)."""
    entry_threads = torch.get_num_threads()
    try:
        return report(parse(argv))
    finally:
        torch.set_num_threads(entry_threads)


def report(args):
    torch.set_num_threads(args.threads)
    info, closers = machine(args), []
    if args.iterations_only:
        if not args.baseline:
            raise SystemExit("--iterations-only compares this code with --baseline COMMIT: pass --baseline")
        try:
            rows, ratio = baseline_iterations(args, info, closers)
        finally:
            for close in closers:
                close()
        return finish(info, args, rows, ratio)
    try:
        phases, sampler_times = [], {}
        if not args.update_only:  # first: AsyncVectorEnv forks its workers before torch starts its threads
            phases = simulator_phases(args, closers)
            rollouts, sampler_times = rollout_phases(args, closers)
            phases += rollouts
        phases += update_phases(args)
        for p in phases:
            if p.threads != "-":
                torch.set_num_threads(p.threads)
            p.warmup()
        for times in sampler_times.values():
            times[0] = 0.0
        for _ in range(args.rounds):  # round-robin: every phase sees the machine's load of every round
            for p in phases:
                p.measure(args.seconds / args.rounds)
    finally:
        for close in closers:
            close()
        torch.set_num_threads(args.threads)
    rows = table_rows(phases, sampler_times)
    ratio = ratios(args, phases)
    if not (args.no_iteration or args.update_only):
        it = iteration(args)
        note = f"{it['steps']} env steps, {args.update_epochs} epochs of minibatches of {args.iter_batch_size} pairs"
        rows.append(row("DPPO iteration", args.iter_threads, it["iteration"], "s", note))
        rows.append(row("DPPO iteration: rollout", args.iter_threads, it["rollout"], "s", "time/rollout_s"))
        rows.append(row("DPPO iteration: update", args.iter_threads, it["update"], "s", "time/update_s"))
        note = "with two 1-episode evaluations"
        rows.append(row("dppo.main, the whole call", args.iter_threads, it["main"], "s", note))
        ratio["DPPO iteration: rollout share"] = it["rollout"] / it["iteration"]
        ratio["DPPO iteration: update share"] = it["update"] / it["iteration"]
    return finish(info, args, rows, ratio)


def finish(info, args, rows, ratio) -> dict:
    """Print the report, write it to --json, return it."""
    info["load_after"] = os.getloadavg()[0]
    print_report(info, args, rows, ratio)
    out = dict(machine=info, args=vars(args), rows=rows, ratios=ratio)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
