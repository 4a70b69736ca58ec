"""Worker processes that step a vector env's envs (--env-workers), and how many the machine has room for.

WorkerVectorEnv is gymnasium's SyncVectorEnv with same-step auto-reset, its envs split into `workers` consecutive
groups, each group stepped by one forked process. It returns what SyncVectorEnv returns, bit for bit and in the same
order: every worker steps its envs by SyncVectorEnv's own per-env rule (step; when the episode ends, keep its last
observation and info, reset), and the main process batches the observations and merges the per-env infos with
VectorEnv._add_info in env order, as SyncVectorEnv does. Env i is still seeded with seed + i.

Why not gymnasium's AsyncVectorEnv: it runs one process per env (40 processes for --num-envs 40, however many cores
there are) and sends one message per env per step; here W processes each step a share of the envs, one message per
worker per step. The observations travel in that message with the infos (a few floats per env: shared memory would
save nothing measurable). docs/benchmarks.md has the measured ratios.

A worker that dies (a segfault in the simulator, kill -9, out of memory) stops the run in one line naming the env,
the worker and the fix; the other workers are ended and nothing waits forever (a dead worker's pipe reads as
end-of-file). An env's own Python error is raised again in the main process, as in-process stepping raises it.
Workers are forked: they inherit the main process's state (the robomimic env meta, test patches), and Ctrl-C is the
main process's to handle (workers ignore SIGINT).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import traceback

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from cleandppo.common import fail


# ------------------------------------------------------------------------------------------------
# How many processes: the cores this process may use, minus those other processes keep busy
# ------------------------------------------------------------------------------------------------
def cpu_jiffies(cpus, stat: str | None = None) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over the `cpus` ids, from /proc/stat's per-core lines (`stat`: its text, else
    read); busy = total - idle - iowait over the first 8 fields (guest time is inside user). None where the file is
    missing (not Linux) or lists none of `cpus`."""
    if stat is None:
        try:
            with open("/proc/stat") as f:
                stat = f.read()
        except OSError:
            return None
    busy = total = 0.0
    for line in stat.splitlines():
        name, *fields = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [float(v) for v in fields[:8]]
            total += sum(values)
            busy += sum(values) - values[3] - (values[4] if len(values) > 4 else 0.0)
    return (busy, total) if total else None


def machine(window: float = 0.1) -> dict:
    """The cores this process may run on (os.sched_getaffinity), how many of them other processes keep busy now and
    the cores free of them (rounded to the nearest whole core, at least 0). Busy now: the cores' busy share over the
    next `window` seconds (/proc/stat, while this process sleeps); where that cannot be read, the 1-minute load
    average, which lags: it still counts, for about a minute, jobs that have just stopped (measured:
    docs/benchmarks.md#on-the-idle-machine-122-and-why-2-is-out-of-reach-there)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy, before = load, cpu_jiffies(cpus)
    if before is not None:
        time.sleep(window)
        after = cpu_jiffies(cpus)
        if after is not None and after[1] > before[1]:
            busy = len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    return dict(cores=len(cpus), load=round(load, 2), busy=round(busy, 2), free=max(0, int(len(cpus) - busy + 0.5)))


def choose_workers(requested: int, num_envs: int, batched: bool, seen: dict) -> tuple[int, str]:
    """(env worker processes, why) for --env-workers `requested` (0 = auto) and --num-envs `num_envs` on a machine
    `seen` (machine()); 1 means the envs step in this process. `batched`: one numpy env steps all envs at once (Avoid),
    nothing to share out. Auto takes processes when more than one core is free: one per free core, at most one per env
    (the main process samples while they wait, and waits while they step, so it needs no core of its own)."""
    where = f"{seen['cores']} cores, {seen['busy']:.2f} busy now, {seen['free']} free"
    if batched:
        return 1, "one batched numpy env steps them all (Avoid)"
    if requested == 0:
        if seen["free"] < 2 or num_envs < 2:
            return 1, f"auto: {where} (processes pay when more than one core is free)"
        workers = min(seen["free"], num_envs)
        return workers, f"auto: one per free core, at most one per env ({where})"
    if requested == 1:
        return 1, "--env-workers 1"
    workers = min(requested, num_envs)
    why = f"--env-workers {requested}" + (f", at most one per env ({num_envs})" if workers < requested else "")
    if workers > seen["cores"]:
        why += f"; more processes than the {seen['cores']} cores: they take turns"
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1, f"{why}, but this platform cannot fork"
    return workers, why


# ------------------------------------------------------------------------------------------------
# The worker: SyncVectorEnv's same-step rule, env by env
# ------------------------------------------------------------------------------------------------
def step_same_step(env, action):
    """One env's step as SyncVectorEnv does it with same-step auto-reset: (obs, reward, terminated, truncated, final,
    info), `final` the ended episode's {"final_obs", "final_info"} (None when it goes on), obs and info then the reset
    ones."""
    obs, reward, terminated, truncated, info = env.step(action)
    final = None
    if terminated or truncated:
        final = {"final_obs": obs, "final_info": info}
        obs, info = env.reset()
    return obs, reward, terminated, truncated, final, info


def serve(conn, env_fns, inherited):
    """A worker's loop: build its envs, then answer the main process's commands until "close" or until the main
    process is gone (its pipe reads end-of-file). An env's exception goes back to be raised there."""
    for other in inherited:  # the main process's ends of the pipes: only it holds them, so EOF means it is gone
        other.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs = [fn() for fn in env_fns]
    while True:
        try:
            command, data = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if command == "step":  # envs first, first + 1, ... of this worker's, one action each
                first, actions = data
                reply = [step_same_step(envs[first + i], action) for i, action in enumerate(actions)]
            elif command == "reset":
                reply = [env.reset(seed=s, options=data["options"]) for env, s in zip(envs, data["seeds"], strict=True)]
            elif command == "get_attr":
                reply = [env.get_wrapper_attr(data) for env in envs]
            elif command == "set_attr":
                name, values = data
                reply = [env.set_wrapper_attr(name, value) for env, value in zip(envs, values, strict=True)]
            elif command == "spaces":
                env = envs[0]
                reply = env.observation_space, env.action_space, dict(env.metadata), env.render_mode
            elif command == "close":
                [env.close() for env in envs]
                conn.send(("ok", None))
                return
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", reply))
        except BaseException as e:  # noqa: BLE001 (the env's error, whatever it is, belongs to the main process)
            try:
                conn.send(("error", (e, traceback.format_exc())))
            except Exception:  # an exception that does not pickle: its text
                conn.send(("error", (RuntimeError(f"{e.__class__.__name__}: {e}"), traceback.format_exc())))


# ------------------------------------------------------------------------------------------------
# The vector env the scripts step
# ------------------------------------------------------------------------------------------------
class WorkerVectorEnv(gym.vector.VectorEnv):
    """`len(env_fns)` envs in `workers` forked processes (consecutive groups, np.array_split sizes); what
    SyncVectorEnv(env_fns, autoreset_mode=SAME_STEP) returns, bit for bit. `what` names the envs in messages (the env
    id); `stopped()`, when given, says what the stopped run keeps (its last checkpoint), for the one-line message of
    a worker that died."""

    def __init__(self, env_fns, workers: int, what: str, stopped=None, rollout_parts: int = 1):
        self.num_envs, self.what, self.stopped, self.rollout_parts = len(env_fns), what, stopped, rollout_parts
        self.groups = np.array_split(np.arange(self.num_envs), min(workers, self.num_envs))
        ctx = multiprocessing.get_context("fork")
        self.conns, self.processes, self.closed = [], [], False
        for group in self.groups:
            parent, child = ctx.Pipe()
            fns = [env_fns[i] for i in group]
            process = ctx.Process(target=serve, args=(child, fns, [*self.conns, parent]), daemon=True)
            process.start()
            child.close()  # the worker's end lives in the worker only: its death reads as EOF here
            self.conns.append(parent)
            self.processes.append(process)
        self.sent = []  # the workers, in order, of the step messages whose replies step_wait has not read yet
        self.sent_envs = 0  # the envs those messages step
        obs_space, act_space, metadata, render_mode = self.ask(0, "spaces", None)
        self.single_observation_space, self.single_action_space = obs_space, act_space
        self.observation_space = batch_space(obs_space, self.num_envs)
        self.action_space = batch_space(act_space, self.num_envs)
        self.metadata = dict(metadata, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.render_mode = render_mode

    def __repr__(self):
        return f"WorkerVectorEnv({self.what}, num_envs={self.num_envs}, workers={len(self.groups)})"

    # ---- talking to the workers ----
    def receive(self, k: int):
        """Worker k's reply; its death stops the run in one line (died): its pipe reads as closed, or, should a process
        of the env's own outlive it holding the pipe open, its process is found gone within a second."""
        conn, process = self.conns[k], self.processes[k]
        while not multiprocessing.connection.wait([conn], timeout=1.0):
            if not process.is_alive():
                self.died(k)
        try:
            return conn.recv()
        except (EOFError, OSError):
            self.died(k)

    def send_all(self, command: str, per_worker):
        for k, conn in enumerate(self.conns):
            try:
                conn.send((command, per_worker[k]))
            except OSError:  # its end is closed: it died
                self.died(k)

    def gather(self, order=None) -> list:
        """The replies of workers `order` (default: one from each), concatenated in that order; an env's exception is
        raised once all replies are in (so the workers stay in step with the main process)."""
        replies = [self.receive(k) for k in (range(len(self.conns)) if order is None else order)]
        for status, value in replies:
            if status == "error":
                error, trace = value
                error.add_note(f"in an env worker process of {self.what}:\n{trace}")
                raise error
        return [item for _, reply in replies for item in reply]

    def ask(self, k: int, command: str, data):
        self.conns[k].send((command, data))
        status, value = self.receive(k)
        if status == "error":
            raise value[0]
        return value

    def died(self, k: int):
        process, group = self.processes[k], self.groups[k]
        process.join(timeout=5)
        code = process.exitcode
        if code is None:
            cause = "its pipe closed"
        elif code < 0:
            cause = f"killed by {signal.Signals(-code).name}"
        else:
            cause = f"exit code {code}"
        self.close(terminate=True)
        envs = f"env {group[0]}" if len(group) == 1 else f"envs {group[0]}-{group[-1]}"
        kept = self.stopped() if self.stopped is not None else "the run stopped"
        fail(
            f"env worker process {process.pid} ({envs} of {self.what}) died ({cause}); {kept}; rerun with "
            "--env-workers 1 to step the envs in this process (an env's own crash then shows where it happens)"
        )

    # ---- the VectorEnv interface ----
    def reset(self, *, seed=None, options=None):
        """As SyncVectorEnv.reset: seed None (no seeding), an int (env i gets seed + i) or one seed per env."""
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seed = [int(seed) + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"{len(seed)} seeds for {self.num_envs} envs")
        self.finish_pending()
        self.send_all("reset", [dict(seeds=[seed[i] for i in g], options=options) for g in self.groups])
        infos, observations = {}, []
        for i, (obs, info) in enumerate(self.gather()):
            observations.append(obs)
            infos = self._add_info(infos, info, i)
        return self.batch(observations), infos

    def step_async(self, actions):
        """Send every worker its envs' actions; step_wait collects the result."""
        actions = list(iterate(self.action_space, actions))
        self.send_all("step", [(0, [actions[i] for i in g]) for g in self.groups])
        self.sent, self.sent_envs = list(range(len(self.groups))), self.num_envs

    def parts(self) -> list:
        """The envs in parts for an overlapped rollout (rollout_step): each worker's group split into `rollout_parts`
        consecutive parts (np.array_split sizes, at most one per env), in env order."""
        return [part for g in self.groups for part in np.array_split(g, min(self.rollout_parts, len(g)))]

    def step_async_part(self, rows, actions):
        """Send envs `rows` (a part of parts(): consecutive, one worker's) their actions; the worker steps them while
        the caller samples the next part's. The parts go in env order, all of them before step_wait."""
        first = self.sent_envs  # the parts sent so far cover envs 0 .. first - 1
        k = next((k for k, g in enumerate(self.groups) if g[0] <= rows[0] <= g[-1]), None)
        if k is None or rows[0] != first or rows[-1] > self.groups[k][-1]:
            raise ValueError(f"envs {rows[0]}-{rows[-1]}: not the next part of one worker's envs (parts())")
        try:
            self.conns[k].send(("step", (int(rows[0] - self.groups[k][0]), list(actions))))
        except OSError:  # its end is closed: it died
            self.died(k)
        self.sent.append(k)
        self.sent_envs += len(rows)

    def step_wait(self):
        order, self.sent, self.sent_envs = self.sent, [], 0
        infos, observations = {}, []
        rewards, terminations, truncations = (np.zeros(self.num_envs, dtype) for dtype in (np.float64, bool, bool))
        replies = self.gather(order)
        if len(replies) != self.num_envs:
            raise RuntimeError(f"step_wait after the actions of {len(replies)} of the {self.num_envs} envs")
        for i, (obs, reward, terminated, truncated, final, info) in enumerate(replies):
            observations.append(obs)
            rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
            if final is not None:
                infos = self._add_info(infos, final, i)
            infos = self._add_info(infos, info, i)
        return self.batch(observations), rewards, terminations, truncations, infos

    def batch(self, observations):
        """The envs' observations as one array, as SyncVectorEnv concatenates them."""
        space = self.single_observation_space
        return concatenate(space, observations, create_empty_array(space, self.num_envs))

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def finish_pending(self):
        if self.sent:
            self.step_wait()

    def get_attr(self, name: str) -> tuple:
        self.finish_pending()
        self.send_all("get_attr", [name] * len(self.groups))
        return tuple(self.gather())

    def set_attr(self, name: str, values):
        if not isinstance(values, (list, tuple)):
            values = [values] * self.num_envs
        if len(values) != self.num_envs:
            raise ValueError(f"{len(values)} values for {self.num_envs} envs")
        self.finish_pending()
        self.send_all("set_attr", [(name, [values[i] for i in g]) for g in self.groups])
        self.gather()

    def close_extras(self, terminate: bool = False, **kwargs):
        """Ask each worker to close its envs and end (a second at most each), then end whatever is left."""
        if not terminate:
            for conn in self.conns:
                try:
                    conn.send(("close", None))
                except OSError:
                    pass
        for process in self.processes:
            process.join(timeout=0 if terminate else 1)
            if process.is_alive():
                process.terminate()
                process.join()
        for conn in self.conns:
            conn.close()

    def __del__(self):
        if not getattr(self, "closed", True):
            self.close(terminate=True)


def rollout_step(vec, act, *act_args):
    """One vector step of every env with the policy in the loop: `act(*act_args, rows)` returns the actions to execute
    for envs `rows` (a slice) and a tensor the script records for them. One call for all envs, then vec.step; a
    WorkerVectorEnv with rollout_parts P > 1 (--rollout-parts): each worker's envs in P parts, each sent to its worker
    as soon as it is sampled, so the workers simulate one part while the policy samples the next, and the records
    joined in env order. Each part draws its own noise: a run repeats with the same parts, not one batch's numbers.
    Returns (records, vec.step's 5-tuple)."""
    import torch

    if getattr(vec, "rollout_parts", 1) <= 1:
        actions, record = act(*act_args, slice(None))
        return record, vec.step(actions)
    records = []
    for rows in vec.parts():
        actions, record = act(*act_args, slice(int(rows[0]), int(rows[-1]) + 1))
        vec.step_async_part(rows, actions)
        records.append(record)
    return torch.cat(records), vec.step_wait()


# ------------------------------------------------------------------------------------------------
# The run's plan: env worker processes and torch's threads in each phase of the loop (runs.start, runs.phase)
# ------------------------------------------------------------------------------------------------
AUTO_ROLLOUT_PARTS = 1  # measured: docs/benchmarks.md


def plan_parallel(args, given_threads: int, seen: dict, batched: bool = False) -> dict:
    """The run's env worker processes and torch threads, from --env-workers, --sampling-threads and --update-threads
    (0 = auto) on a machine `seen` (machine()); `batched`: one numpy env steps them all (Avoid); `given_threads`:
    torch's count when the run starts (OMP_NUM_THREADS, else the cores). Auto rules, each measured (docs/benchmarks.md):
    - env workers: choose_workers (processes when more than one core is free, one per free core);
    - sampling (rollouts and evaluations): 1 thread. A policy query is one small batch (a row per env); with more
      threads they wait for each other, and when a core is busy every operation waits for the slowest;
    - update: the free cores, at least 1 and at most `given_threads`.
    The env workers never change a number; the thread counts may change the last digits (floating-point sums in
    another order), so a resume keeps its run's counts (resume_threads) and a flag fixes them across machines."""
    env_workers, why = choose_workers(args.env_workers, args.num_envs, batched, seen)
    plan = dict(env_workers=env_workers, env_workers_why=why, **seen, given_threads=given_threads)
    parts = getattr(args, "rollout_parts", None)  # the PPO scripts' flag; the others never split their rollouts
    plan["rollout_parts"] = (parts or AUTO_ROLLOUT_PARTS) if env_workers > 1 and parts is not None else 1
    if parts is None:
        plan["rollout_parts_why"] = "this script samples every env at once"
    elif env_workers == 1:
        plan["rollout_parts_why"] = "envs in this process: nothing to overlap"
    else:
        plan["rollout_parts_why"] = "--rollout-parts" if parts else f"auto: {AUTO_ROLLOUT_PARTS} per worker"
    plan["sampling_threads"] = args.sampling_threads or 1
    plan["sampling_threads_why"] = "--sampling-threads" if args.sampling_threads else "auto: a small batch, 1 thread"
    plan["update_threads"] = args.update_threads or max(1, min(given_threads, seen["free"]))
    plan["update_threads_why"] = (
        "--update-threads" if args.update_threads else f"auto: the free cores, at most torch's {given_threads}"
    )
    return plan


def print_plan(plan: dict):
    where = "this process" if plan["env_workers"] == 1 else f"{plan['env_workers']} worker processes"
    print(f"[envs] stepped in {where}: {plan['env_workers_why']}", flush=True)
    if plan["env_workers"] > 1 and plan["rollout_parts_why"] != "this script samples every env at once":
        print(f"[envs] rollout in {plan['rollout_parts']} part(s) per worker: {plan['rollout_parts_why']}", flush=True)
    print(
        f"[threads] torch: sampling {plan['sampling_threads']} ({plan['sampling_threads_why']}), update "
        f"{plan['update_threads']} ({plan['update_threads_why']}); env workers run no torch",
        flush=True,
    )


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: leave them); returns the count before."""
    import torch

    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    return before


def chunk_size(flag, device, one_thread, otherwise):
    """A chunk-size flag's value (--update-chunk-size, --logprob-batch-size: memory and speed only), or its default:
    `one_thread` when torch computes on one CPU thread (there, large tensors are fresh memory from the kernel at each
    allocation, and chunks that stay small are faster), else `otherwise` (on more threads, each op's threads wait
    for each other; chunks of the sizes above are slower on a busy machine). Measured: docs/benchmarks.md#the-update."""
    import torch

    if flag is not None:
        return flag
    return one_thread if device.type == "cpu" and torch.get_num_threads() == 1 else otherwise
