"""One speed report for the PPO scripts, every phase measured one after another in one process tree (docs/benchmarks.md).

    python scripts/speed.py                      # the report at the benchmark sizes (a few minutes on 2 cores)
    python scripts/speed.py --quick              # the same phases, smaller, in under a minute
    python scripts/speed.py --json report.json   # also write the rows and ratios as JSON

Phases, in this order (the simulator ones first, before torch starts its threads, since AsyncVectorEnv forks):
  raw simulator   one gymnasium env (the v4 id the paper id maps to) stepped in a Python loop with random actions,
                  and --procs envs in as many processes (AsyncVectorEnv, shared memory): simulator steps/s.
  vector env      envs.make_vec_env as the scripts use it (--num-envs envs, one process, chunks of 4), random chunks.
  rollout         each PPO script's rollout step on its bundled Hopper checkpoint: its sampler (dppo: 20 denoising
                  steps recording K' of them; gaussian_ppo, gmm_ppo: one forward pass) then the vector-env step, in
                  env steps/s; at 1 torch thread and at the default count (small-batch sampling can be much faster
                  on one thread on a busy machine), with the share of the time the sampler takes.
  DPPO old log-probs  dppo.chain_log_probs over the iteration's --num-envs x --n-steps chains (forward only).
  DPPO update     dppo.ppo_update (one epoch) on a synthetic batch of those chains: (env step, denoising step) pairs/s
                  and achieved GFLOP/s, next to a plain torch matmul of the same shapes at the same thread count.
  DPPO iteration  dppo.main for one iteration (rollout + advantages + old log-probs + --update-epochs epochs) from the
                  bundled checkpoint; its rollout and update times as the loop logs them (time/rollout_s, time/update_s).

FLOP rule: matmuls only. An nn.Linear(in, out) costs 2 in out FLOPs per row forward and 4 in out backward (the input
and the weight gradients), so 6 in out per row in training and 2 in out per row forward only; the update runs every
Linear layer of the fine-tuned network (time embedding included) and of the critic once per pair, the old log-probs
those of the network alone. Activations, the loss and the optimiser step are not counted. The matmul reference times
exactly those GEMMs (X W^T forward; dY W and dY^T X backward) on preallocated random matrices.

Rates follow the load of the machine: the ratios are what the report is for, since every phase ran under the same
conditions; the load average before and after is printed with them.
"""

import argparse
import contextlib
import datetime
import inspect
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from cleandppo import dppo, envs, gaussian_ppo, gmm_ppo, runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = dict(seconds=1.0, n_steps=5, batch_size=2000, iter_batch_size=500)
FULL = dict(seconds=8.0, n_steps=125, batch_size=50_000, iter_batch_size=12_500)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-id", default="Hopper-v2")
    p.add_argument("--quick", action="store_true", help="smaller sizes and shorter timings (under a minute)")
    p.add_argument("--seconds", type=float, help="time per timed phase (full 8, quick 1)")
    p.add_argument("--procs", type=int, help="processes of the parallel raw-simulator phase (default: the cores)")
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
    import mujoco

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


# ---- raw simulator --------------------------------------------------------------------------------------------------
def raw_single(args) -> float:
    """Simulator steps/s of one env stepped in a loop, random actions, resetting ended episodes."""
    env = gym.make(envs.resolve_env_id(args.env_id), max_episode_steps=1000)
    env.reset(seed=0)
    rng, steps, t0 = np.random.default_rng(0), 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        for _ in range(100):
            _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape) * 0.1)
            if term or trunc:
                env.reset()
        steps += 100
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def raw_parallel(args) -> float:
    """Simulator steps/s of args.procs envs, one per process (AsyncVectorEnv, shared memory, same-step reset)."""
    gym_id = envs.resolve_env_id(args.env_id)
    vec = gym.vector.AsyncVectorEnv(
        [lambda: gym.make(gym_id, max_episode_steps=1000)] * args.procs,
        shared_memory=True,
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    vec.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (64, *vec.action_space.shape)) * 0.1
    for k in range(5):  # the workers' first steps
        vec.step(actions[k])
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        vec.step(actions[steps // args.procs % 64])
        steps += args.procs
    rate = steps / (time.perf_counter() - t0)
    vec.close()
    return rate


# ---- rollouts -------------------------------------------------------------------------------------------------------
def timed_rollout(args, act_fn, normalization, threads):
    """(env steps/s, sampler share of the time) of act_fn(obs) -> chunk then the vector-env step, as in the loops."""
    torch.set_num_threads(threads)
    vec = envs.make_vec_env(args.env_id, args.num_envs, 0, args.act_steps, 1, normalization)
    obs, _ = vec.reset(seed=0)
    act_fn(obs)  # warm-up
    steps, t_act, t0 = 0, 0.0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        t = time.perf_counter()
        chunk = act_fn(obs)
        t_act += time.perf_counter() - t
        obs, _, _, _, infos = vec.step(chunk[:, : args.act_steps])
        steps += int(np.sum(infos["env_steps"]))
    elapsed = time.perf_counter() - t0
    vec.close()
    torch.set_num_threads(args.threads)
    return steps / elapsed, t_act / elapsed


def samplers(args):
    """{script: (act_fn, normalization)}: each PPO script's rollout sampling on its bundled checkpoint."""
    cpu = torch.device("cpu")
    ckpt = envs.load_checkpoint(envs.bundled_checkpoint(args.env_id, "diffusion"), "diffusion", args.env_id)
    actor, actor_ft, _ = dppo.build_actors(ckpt, args.ft_denoising_steps, cpu)
    K = ckpt["model_kwargs"]["denoising_steps"]
    sched, plan, dppo_args = dppo.make_schedule(K), dppo.denoising_plan(K, None), dppo.Args()

    def dppo_act(obs):
        chunk, _ = dppo.sample(
            actor, actor_ft, sched, torch.as_tensor(obs), plan, args.ft_denoising_steps, "train", dppo_args
        )
        return chunk.numpy()

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


# ---- DPPO update and its FLOPs --------------------------------------------------------------------------------------
def linear_shapes(module, *inputs):
    """[(rows, in, out), ...] of every nn.Linear that one forward pass of `module` on `inputs` runs."""
    shapes, hooks = [], []
    for m in module.modules():
        if isinstance(m, nn.Linear):
            hooks.append(
                m.register_forward_hook(
                    lambda mod, x, y: shapes.append(
                        (x[0].numel() // mod.in_features, mod.in_features, mod.out_features)
                    )
                )
            )
    with torch.no_grad():
        module(*inputs)
    for h in hooks:
        h.remove()
    return shapes


def per_row(shapes, rows):
    """[(in, out), ...] per input row from linear_shapes on a batch of `rows`."""
    return [(i, o) for r, i, o in shapes for _ in range(r // rows)]


def matmul_rate(layers, rows, seconds, backward=True):
    """GFLOP/s of the GEMMs of `layers` [(in, out), ...] on `rows` rows: X W^T, and with `backward` dY W and dY^T X."""
    g = torch.Generator().manual_seed(0)
    mats = [
        (torch.randn(rows, i, generator=g), torch.randn(o, i, generator=g), torch.randn(rows, o, generator=g))
        for i, o in layers
    ]
    flops = sum((6 if backward else 2) * rows * i * o for i, o in layers)

    def once():
        for x, w, dy in mats:
            torch.mm(x, w.t())
            if backward:
                torch.mm(dy, w)
                torch.mm(dy.t(), x)

    once()
    reps, t0 = 0, time.perf_counter()
    while reps < 2 or time.perf_counter() - t0 < seconds:
        once()
        reps += 1
    return flops * reps / (time.perf_counter() - t0) / 1e9


def update_phases(args, rows):
    """Old log-probs and one ppo_update epoch on a synthetic batch of num_envs x n_steps chains, and the matmul
    reference, at each thread count: appends rows."""
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
    pairs, chunk = samples * K_ft, train_args.logprob_batch_size
    mb = min(args.batch_size, pairs)

    # FLOPs per pair from the layer shapes (module docstring)
    probe_x, probe_t = torch.zeros(2, Tp, Da), torch.zeros(2, dtype=torch.long)
    actor_layers = per_row(linear_shapes(actor_ft, probe_x, probe_t, obs[:2]), 2)
    critic_layers = per_row(linear_shapes(critic, obs[:2]), 2)
    fwd_actor = sum(2 * i * o for i, o in actor_layers)
    train_pair = sum(6 * i * o for i, o in actor_layers + critic_layers)

    def old_log_probs():  # forward only, in the loop's chunks of logprob_batch_size env-step samples
        with torch.no_grad():
            parts = [
                dppo.chain_log_probs(actor_ft, sched, obs[s : s + chunk], chains[s : s + chunk], train_args)
                for s in range(0, samples, chunk)
            ]
        return torch.cat(parts)

    batch = dict(obs=obs, chains=chains, logprobs=old_log_probs(), advantages=torch.randn(samples, generator=g))
    batch["returns"] = torch.randn(samples, generator=g)
    actor_opt = torch.optim.AdamW(actor_ft.parameters(), lr=1e-4, weight_decay=0.0)
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=1e-3, weight_decay=0.0)
    small = {k: v[: max(1, mb // K_ft)] for k, v in batch.items()}  # one minibatch: the warm-up

    for threads in thread_counts(args):
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        old_log_probs()
        elapsed = time.perf_counter() - t0
        note = f"{pairs} pairs, forward only, {fwd_actor / 1e6:.2f} MFLOP/pair"
        rows.append(row("DPPO old log-probs", threads, pairs / elapsed, "pairs/s", note))
        rows.append(row("DPPO old log-probs", threads, pairs * fwd_actor / elapsed / 1e9, "GFLOP/s"))

        dppo.ppo_update(actor, actor_ft, critic, actor_opt, critic_opt, sched, small, train_args, generator=g)
        reps, t0 = 0, time.perf_counter()
        while reps < 1 or time.perf_counter() - t0 < args.seconds:
            dppo.ppo_update(actor, actor_ft, critic, actor_opt, critic_opt, sched, batch, train_args, generator=g)
            reps += 1
        elapsed = time.perf_counter() - t0
        done = reps * (pairs // mb) * mb
        note = f"{pairs} pairs, minibatches of {mb}, {reps} epoch(s), {train_pair / 1e6:.2f} MFLOP/pair"
        rows.append(row("DPPO update", threads, done / elapsed, "pairs/s", note))
        rows.append(row("DPPO update", threads, done * train_pair / elapsed / 1e9, "GFLOP/s"))
        matmul = matmul_rate(actor_layers + critic_layers, mb, args.seconds)
        rows.append(row("torch matmul, the update's GEMMs", threads, matmul, "GFLOP/s", f"{mb} rows, fwd + bwd"))
        matmul = matmul_rate(actor_layers, min(pairs, chunk * K_ft), args.seconds, backward=False)
        note = f"{min(pairs, chunk * K_ft)} rows, forward"
        rows.append(row("torch matmul, the old log-probs' GEMMs", threads, matmul, "GFLOP/s", note))
    torch.set_num_threads(args.threads)


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


# ---- report ---------------------------------------------------------------------------------------------------------
def row(phase, threads, value, unit, note=""):
    return dict(phase=phase, threads=threads, value=float(value), unit=unit, note=note)


def find(rows, phase, unit, threads=None):
    for r in rows:
        if r["phase"] == phase and r["unit"] == unit and (threads is None or r["threads"] == threads):
            return r["value"]
    raise KeyError((phase, unit, threads))


def ratios(args, rows) -> dict:
    out = {}
    raw1 = find(rows, "raw simulator, 1 process", "env steps/s")
    rawn = find(rows, f"raw simulator, {args.procs} worker processes", "env steps/s")
    out["raw simulator: N processes / 1 process"] = rawn / raw1
    out["vector env / raw simulator"] = find(rows, "vector env (make_vec_env)", "env steps/s") / raw1
    for script in ("dppo", "gaussian_ppo", "gmm_ppo"):
        for threads in thread_counts(args):
            rate = find(rows, f"{script} rollout", "env steps/s", threads)
            out[f"{script} rollout / raw simulator, {threads} thread{'s' * (threads > 1)}"] = rate / raw1
        if args.threads != 1:
            one, many = (find(rows, f"{script} rollout", "env steps/s", t) for t in (1, args.threads))
            out[f"{script} rollout: 1 thread / {args.threads} threads"] = one / many
    best = max(find(rows, "dppo rollout", "env steps/s", t) for t in thread_counts(args))
    out[f"dppo rollout (best threads) / raw simulator in {args.procs} processes"] = best / rawn
    for threads in thread_counts(args):
        plural = f"{threads} thread{'s' * (threads > 1)}"
        update = find(rows, "DPPO update", "GFLOP/s", threads)
        matmul = find(rows, "torch matmul, the update's GEMMs", "GFLOP/s", threads)
        out[f"DPPO update GFLOP/s / matmul GFLOP/s, {plural}"] = update / matmul
        old = find(rows, "DPPO old log-probs", "GFLOP/s", threads)
        matmul = find(rows, "torch matmul, the old log-probs' GEMMs", "GFLOP/s", threads)
        out[f"DPPO old log-probs GFLOP/s / matmul GFLOP/s, {plural}"] = old / matmul
    if args.threads != 1:
        one, many = (find(rows, "DPPO update", "pairs/s", t) for t in (1, args.threads))
        out[f"DPPO update: 1 thread / {args.threads} threads"] = one / many
    if not args.no_iteration:
        it = find(rows, "DPPO iteration", "s")
        out["DPPO iteration: rollout share"] = find(rows, "DPPO iteration: rollout", "s") / it
        out["DPPO iteration: update share"] = find(rows, "DPPO iteration: update", "s") / it
    return out


def print_report(info, args, rows, ratio):
    print(
        f"Speed report: {args.env_id}, commit {info['commit']}, {info['date']}; {info['cores']} cores ({info['cpu']}), "
        f"torch {info['torch']} ({info['torch_threads']} threads by default), MuJoCo {info['mujoco']}, "
        f"Python {info['python']}; load average {info['load_before']:.2f} before, {info['load_after']:.2f} after"
    )
    sizes = f"{args.num_envs} envs x {args.n_steps} queries x {args.act_steps} actions, K' = {args.ft_denoising_steps}"
    print(f"sizes: {sizes}; {args.seconds:g} s per timed phase{' (--quick)' if args.quick else ''}")
    print()
    print(f"| {'phase':40} | threads | {'value':>10} | {'unit':11} | note")
    print(f"| {'-' * 40} | ------- | {'-' * 10} | {'-' * 11} | ----")
    for r in rows:
        print(f"| {r['phase']:40} | {r['threads']!s:>7} | {r['value']:10.4g} | {r['unit']:11} | {r['note']}")
    print()
    print("ratios")
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
    info, rows = machine(args), []
    rows.append(row("raw simulator, 1 process", "-", raw_single(args), "env steps/s", "gymnasium env, Python loop"))
    rows.append(
        row(
            f"raw simulator, {args.procs} worker processes",
            "-",
            raw_parallel(args),
            "env steps/s",
            "AsyncVectorEnv, shared memory",
        )
    )
    chunk = (args.num_envs, args.act_steps, envs.env_dims(args.env_id)[1])
    rng = np.random.default_rng(0)
    rate, _ = timed_rollout(args, lambda obs: rng.uniform(-0.1, 0.1, chunk), None, args.threads)
    rows.append(row("vector env (make_vec_env)", "-", rate, "env steps/s", f"{args.num_envs} envs, random chunks"))
    for script, (act_fn, normalization) in samplers(args).items():
        for threads in thread_counts(args):
            rate, share = timed_rollout(args, act_fn, normalization, threads)
            rows.append(row(f"{script} rollout", threads, rate, "env steps/s", f"sampler {share:.0%} of the time"))
    update_phases(args, rows)
    if not args.no_iteration:
        it = iteration(args)
        note = f"{it['steps']} env steps, {args.update_epochs} epochs of minibatches of {args.iter_batch_size} pairs"
        rows.append(row("DPPO iteration", args.iter_threads, it["iteration"], "s", note))
        rows.append(row("DPPO iteration: rollout", args.iter_threads, it["rollout"], "s", "time/rollout_s"))
        rows.append(row("DPPO iteration: update", args.iter_threads, it["update"], "s", "time/update_s"))
        rows.append(
            row("dppo.main, the whole call", args.iter_threads, it["main"], "s", "with two 1-episode evaluations")
        )
    info["load_after"] = os.getloadavg()[0]
    ratio = ratios(args, rows)
    print_report(info, args, rows, ratio)
    out = dict(machine=info, args=vars(args), rows=rows, ratios=ratio)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
