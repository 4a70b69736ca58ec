"""--env-workers, --sampling-threads, --update-threads (cleandppo/workers.py, runs.py section 7): envs stepped by
worker processes return what gymnasium's SyncVectorEnv returns; a run gives the same numbers with or without them,
and resumes exactly with them; a worker that dies stops the run in one line, never a hang; the auto rules; torch's
thread counts per phase of the loop.

Every run is tiny (2 envs, Hopper, 16-32 wide networks) and in-process but one, the SIGKILL of a worker of a real
run. Each test runs under an alarm: a hang fails it instead of the suite."""

import gc
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_runs import FAMILIES, Killed, assert_kill_and_resume_is_exact, curves, kill_at_vector_step, pretrained

from cleandppo import arguments, avoid, dppo, envs, gaussian_ppo, gmm_ppo, gym_tasks, idql, runs, workers
from conftest import REAL_MACHINE, ROOT, TINY_DIFFUSION, assert_one_line_error, run_main

torch.set_num_threads(1)
DPPO_FLAGS = [
    *TINY_DIFFUSION,
    *"--num-envs 2 --n-steps 4 --batch-size 8 --eval-episodes 2 --eval-freq 2 --critic-dims 16 16 16".split(),
]
GAUSSIAN_FLAGS = (
    "--from-scratch --mlp-dims 16 16 --critic-dims 16 16 16 --num-envs 2 --n-steps 8 --batch-size 8".split()
)
GAUSSIAN_FLAGS += "--update-epochs 1 --eval-episodes 2 --eval-freq 2".split()


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a test that runs for more than 5 minutes (a worker that nobody notices died would wait forever)."""

    def hung(*_):
        raise TimeoutError("the test ran for 5 minutes: something waits forever")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---- the vector env: gymnasium's SyncVectorEnv is the reference --------------------------------------------------
@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("workers_count", [2, 3])
def test_worker_processes_return_what_sync_vector_env_returns(workers_count, parts, monkeypatch):
    """Observations (dtype too), rewards, terminations, truncations and the infos (their keys, masks, final_obs and
    final_info at terminations and time-outs) equal gymnasium's SyncVectorEnv of the same envs, step by step; 5 envs
    in 2 or 3 groups of unequal size; stepped whole or, as an overlapped rollout sends them, in 2 parts per worker
    (step_async_part, then step_wait)."""
    monkeypatch.setattr(gym_tasks, "GYM_MAX_EPISODE_STEPS", 25)  # time-outs too, not only falls
    fns = [lambda: envs.make_env("Hopper-v2", 2, 3, None) for _ in range(5)]
    reference = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    parallel = envs.make_vec_env("Hopper-v2", 5, 0, 2, 3, None, workers_count, None, parts)
    assert isinstance(parallel, workers.WorkerVectorEnv) and len(parallel.processes) == workers_count
    a, b = reference.reset(seed=0), parallel.reset(seed=0)
    np.testing.assert_array_equal(a[0], b[0])
    actions = np.random.default_rng(0).uniform(-1, 1, (60, 5, 2, 3))
    ended = np.zeros(2, int)
    in_parts = parallel.parts()
    assert [list(rows) for rows in in_parts] == {
        (2, 1): [[0, 1, 2], [3, 4]],
        (3, 1): [[0, 1], [2, 3], [4]],
        (2, 2): [[0, 1], [2], [3], [4]],
        (3, 2): [[0], [1], [2], [3], [4]],
    }[workers_count, parts]
    for chunk in actions:
        a = reference.step(chunk)
        if parts == 1:
            b = parallel.step(chunk)
        else:
            for rows in in_parts:
                parallel.step_async_part(rows, chunk[rows])
            b = parallel.step_wait()
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
        assert repr(a[4]) == repr(b[4])  # same keys in the same order, same arrays and masks
        ended += a[2].sum(), (a[3] & ~a[2]).sum()
    assert ended.min() > 0, ended  # both kinds of episode end were stepped over
    assert reference.get_attr("episode_length") == parallel.get_attr("episode_length")
    reference.close()
    parallel.close()
    assert not any(p.is_alive() for p in parallel.processes)


def test_parts_out_of_order_or_missing_are_refused():
    """An overlapped step sends every part in env order before step_wait: anything else is a bug of the caller."""
    vec = envs.make_vec_env("Hopper-v2", 4, 0, 2, 1, None, 2, None, 2)
    vec.reset(seed=0)
    first, second, *rest = vec.parts()
    with pytest.raises(ValueError, match="not the next part"):
        vec.step_async_part(second, np.zeros((len(second), 2, 3)))
    with pytest.raises(ValueError, match="not the next part"):
        vec.step_async_part(np.arange(1, 3), np.zeros((2, 2, 3)))  # across the two workers' envs
    vec.step_async_part(first, np.zeros((len(first), 2, 3)))
    with pytest.raises(RuntimeError, match="step_wait after the actions of 1 of the 4 envs"):
        vec.step_wait()
    assert len(vec.get_attr("episode_return")) == 4  # the workers are still in step
    vec.close()


def test_an_env_error_in_a_worker_is_raised_here_as_in_this_process():
    """An env's own exception comes back as itself (with the worker's traceback as a note), and the workers stay
    in step: the vector env answers the next command."""
    vec = envs.make_vec_env("Hopper-v2", 3, 0, 2, 1, None, 2)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="chunk has 1 actions, act_steps is 2") as e:
        vec.step(np.zeros((3, 1, 3)))  # ChunkedEnv.step's own check
    assert any("env worker process of Hopper-v2" in note for note in e.value.__notes__)
    assert len(vec.get_attr("episode_return")) == 3
    vec.close()


def test_one_env_steps_in_this_process_whatever_the_workers_asked():
    """A worker process for a single env (a one-episode evaluation) would only add a pipe to every step."""
    vec = envs.make_vec_env("Hopper-v2", 1, 0, 2, 1, None, 2)
    assert isinstance(vec, gym.vector.SyncVectorEnv)
    vec.close()
    vec = envs.make_vec_env("Hopper-v2", 2, 0, 2, 1, None, 2)
    assert isinstance(vec, workers.WorkerVectorEnv) and len(vec.processes) == 2
    vec.close()


# ---- a run: the same numbers with and without worker processes; exact resume with them ---------------------------
def final_weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoint_last.pt", weights_only=False)
    return {
        k: v for k, v in ckpt.items() if k in ("model", "model_ft", "critic", "value_critic") and isinstance(v, dict)
    }


@pytest.mark.parametrize("script", ["dppo", "gaussian_ppo", "idql"])
def test_a_run_gives_the_same_numbers_with_worker_processes(script, tiny_diffusion_checkpoint, tmp_path):
    """Every curve (returns, losses, evaluations) and the final weights of a 2-iteration run are the same with the
    envs (and the evaluation's) stepped in this process and in 2 worker processes; summary.json says which. IDQL
    stands for the off-policy scripts (replay buffer, critics)."""
    module = {"dppo": dppo, "gaussian_ppo": gaussian_ppo, "idql": idql}[script]
    flags = {
        "dppo": ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_FLAGS, "--total-timesteps", "64"],
        "gaussian_ppo": [*GAUSSIAN_FLAGS, "--total-timesteps", "32"],
        "idql": ["--checkpoint", tiny_diffusion_checkpoint, *FAMILIES["idql"][1], "--total-timesteps", "64"],
    }[script]  # 2 iterations each
    for n in (1, 2):
        run_main(module, *flags, "--env-workers", n, "--run-dir", tmp_path / str(n))
    one, two = curves(tmp_path / "1"), curves(tmp_path / "2")
    assert one == two and len(one) >= 5 and any(tag.startswith("losses/") for tag in one)
    assert len(one["eval/episodic_return"]) == 2
    w1, w2 = final_weights(tmp_path / "1"), final_weights(tmp_path / "2")
    assert w1.keys() == w2.keys() and w1
    for key in w1:
        for name in w1[key]:
            assert torch.equal(w1[key][name], w2[key][name]), (key, name)
    for n in (1, 2):
        parallel = json.loads((tmp_path / str(n) / "summary.json").read_text())["parallel"]
        assert parallel["env_workers"] == n and f"--env-workers {n}" in parallel["env_workers_why"]


def test_a_killed_run_with_worker_processes_resumes_exactly(tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    """test_runs.assert_kill_and_resume_is_exact with the envs in 2 worker processes: the envs' state mid-episode
    is read from the workers into the checkpoint and written back into fresh workers on the resume."""
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_FLAGS, "--total-timesteps", "160", "--env-workers", "2"]
    assert_kill_and_resume_is_exact(dppo, flags, 2 * 4 + 2, tmp_path, monkeypatch)


# ---- the overlapped rollout (--rollout-parts): each part sampled and sent on its own; exact resume ----------------
class RecordingEnv:
    """A stand-in for WorkerVectorEnv with the calls rollout_step makes, recorded in `calls`."""

    def __init__(self, groups, rollout_parts, calls):
        self.groups, self.rollout_parts, self.calls = groups, rollout_parts, calls

    parts = workers.WorkerVectorEnv.parts

    def step(self, actions):
        self.calls.append(("step", actions.tolist()))
        return "stepped"

    def step_async_part(self, rows, actions):
        self.calls.append(("send", rows.tolist(), actions.tolist()))

    def step_wait(self):
        self.calls.append(("wait",))
        return "stepped"


def test_rollout_step_samples_and_sends_each_part_in_env_order():
    """Envs 0-4 in 2 workers ([0, 1, 2], [3, 4]) and 2 parts each: the policy samples rows 0-1, 2, 3, 4 in turn, each
    part's actions go to its worker before the next part is sampled, step_wait comes after the last; the records come
    back joined in env order. One part: one call for all envs, then vec.step."""
    calls, obs, groups = [], np.arange(5), [np.arange(3), np.arange(3, 5)]

    def act(obs, rows):
        calls.append(("sample", rows))
        return obs[rows] * 10, torch.as_tensor(obs[rows])

    records, stepped = workers.rollout_step(RecordingEnv(groups, 2, calls), act, obs)
    assert calls == [
        ("sample", slice(0, 2)),
        ("send", [0, 1], [0, 10]),
        ("sample", slice(2, 3)),
        ("send", [2], [20]),
        ("sample", slice(3, 4)),
        ("send", [3], [30]),
        ("sample", slice(4, 5)),
        ("send", [4], [40]),
        ("wait",),
    ]
    assert records.tolist() == [0, 1, 2, 3, 4] and stepped == "stepped"
    calls.clear()
    records, stepped = workers.rollout_step(RecordingEnv(groups, 1, calls), act, obs)
    assert calls == [("sample", slice(None)), ("step", [0, 10, 20, 30, 40])] and records.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("script", ["dppo", "gaussian_ppo"])
def test_a_run_in_parts_repeats_itself(script, tiny_diffusion_checkpoint, tmp_path, capsys):
    """2 envs in 2 worker processes sampled env by env while the other simulates (--rollout-parts 2): each part draws
    its own noise, so the run repeats exactly with the same parts and differs from one batch's (--rollout-parts 1);
    the start-up line and summary.json say how the rollout ran."""
    module = {"dppo": dppo, "gaussian_ppo": gaussian_ppo}[script]
    flags = {
        "dppo": ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_FLAGS, "--total-timesteps", "64"],
        "gaussian_ppo": [*GAUSSIAN_FLAGS, "--total-timesteps", "32"],
    }[script]  # 2 iterations each
    rollout_steps, step_async_part = [], workers.WorkerVectorEnv.step_async_part
    for name, parts in (("a", 2), ("b", 2), ("one", 1)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(
                workers.WorkerVectorEnv, "step_async_part", lambda *a: rollout_steps.append(a[1]) or step_async_part(*a)
            )
            run_main(module, *flags, "--env-workers", 2, "--rollout-parts", parts, "--run-dir", tmp_path / name)
        parallel = json.loads((tmp_path / name / "summary.json").read_text())["parallel"]
        assert (parallel["env_workers"], parallel["rollout_parts"]) == (2, parts)
    assert "[envs] rollout in 2 part(s) per worker: --rollout-parts" in capsys.readouterr().out
    assert len(rollout_steps) == 2 * 2 * 2 * (4 if script == "dppo" else 8)  # 2 parts a step, 2 runs in parts
    assert curves(tmp_path / "a") == curves(tmp_path / "b") != curves(tmp_path / "one")


def test_a_killed_run_in_parts_resumes_exactly(tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_FLAGS, "--total-timesteps", "160", "--env-workers", "2"]
    assert_kill_and_resume_is_exact(dppo, [*flags, "--rollout-parts", "2"], 2 * 4 + 2, tmp_path, monkeypatch)


def test_gmm_in_parts_draws_its_own_modes_and_repeats(tiny_dataset, tmp_path):
    """gmm_ppo in parts too: each part draws its own modes (torch.multinomial) and noise, so the run's numbers differ
    from one batch's, and repeat exactly with the same parts."""
    tiny = ["--mlp-dims", "16", "16", "16", "--critic-dims", "16", "16", "16"]
    ckpt = pretrained(gmm_ppo, tiny_dataset, tmp_path / "pre", *tiny)
    flags = ["--checkpoint", ckpt, *tiny, *"--num-envs 2 --n-steps 4 --batch-size 8 --eval-episodes 1".split()]
    flags += ["--env-workers", 2, "--total-timesteps", 32]
    for name, parts in (("a", 2), ("b", 2), ("one", 1)):
        run_main(gmm_ppo, *flags, "--rollout-parts", parts, "--run-dir", tmp_path / name)
    assert curves(tmp_path / "a") == curves(tmp_path / "b")
    assert curves(tmp_path / "a") != curves(tmp_path / "one")


# ---- a worker that dies: one line, the last checkpoint kept, no hang ----------------------------------------------
@pytest.mark.parametrize("leaves_a_process", [False, True], ids=["alone", "leaves-a-process"])
def test_a_worker_that_exits_stops_the_run_in_one_line(
    leaves_a_process, tiny_diffusion_checkpoint, tmp_path, monkeypatch
):
    """An env that ends its process (os._exit, as a crash in the simulator would) once iteration 1 is saved, alone
    (its pipe reads as closed) or leaving behind a process of its own that holds the worker's pipe open (it never
    does): within seconds, one line naming the worker, the env, the exit code, the last checkpoint and the flag that
    steps the envs in this process; the other worker is ended too."""
    run = tmp_path / "run"
    last, main_pid, step = run / "checkpoint_last.pt", os.getpid(), envs.ChunkedEnv.step

    def exits_in_a_worker(self, chunk):
        if os.getpid() != main_pid and last.exists():
            if leaves_a_process and os.fork() == 0:  # the env's own process: it outlives the worker for a minute
                (tmp_path / f"left-{os.getpid()}").touch()
                time.sleep(60)
                os._exit(0)
            os._exit(3)
        return step(self, chunk)

    monkeypatch.setattr(envs.ChunkedEnv, "step", exits_in_a_worker)
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_FLAGS, "--total-timesteps", "160", "--eval-freq", "10"]
    t0 = time.time()
    try:
        with pytest.raises(SystemExit) as e:
            run_main(dppo, *flags, "--env-workers", "2", "--run-dir", run)
    finally:
        for left in tmp_path.glob("left-*"):
            os.kill(int(left.name[5:]), signal.SIGKILL)
    assert time.time() - t0 < 45
    assert_one_line_error(
        str(e.value), "env worker process", "of Hopper-v2) died (exit code 3)", f"{last} is the last good checkpoint"
    )
    assert "rerun with --env-workers 1" in str(e.value)
    assert torch.load(last, weights_only=False)["iteration"] == 1
    gc.collect()
    assert not multiprocessing.active_children()


def test_sigkill_of_a_worker_of_a_real_run_is_one_line(tiny_diffusion_checkpoint, tmp_path):
    """The real thing: kill -9 one env worker of a dppo process once it has printed iteration 1; the process ends
    (exit code 1) with one stderr line naming the signal, and its checkpoint_last.pt is iteration 1's."""
    run = tmp_path / "run"
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_FLAGS, "--total-timesteps", "1600", "--eval-freq", "100"]
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "cleandppo", "dppo.py"), *flags, "--env-workers", "2", "--run-dir", run],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
    )
    for line in proc.stdout:
        if line.startswith("iter 1/"):
            break
    while not (run / "checkpoint_last.pt").exists():  # saved right after that line
        time.sleep(0.05)
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    assert len(children) >= 2, children  # the two env workers (a resource tracker may be one more)
    os.kill(children[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1, err
    assert_one_line_error(lines[-1], "died (killed by SIGKILL)", "rerun with --env-workers 1", "checkpoint_last.pt")
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["iteration"] in (1, 2)
    assert f"{run / 'checkpoint_last.pt'} is the last good checkpoint" in lines[-1]


# ---- the plan: how many processes, how many threads ----------------------------------------------------------------
class Flags:
    def __init__(
        self, env_id="Hopper-v2", num_envs=40, env_workers=0, sampling_threads=0, update_threads=0, rollout_parts=0
    ):
        self.env_id, self.num_envs, self.env_workers = env_id, num_envs, env_workers
        self.sampling_threads, self.update_threads, self.rollout_parts = sampling_threads, update_threads, rollout_parts


def seen(cores, busy):
    return dict(cores=cores, load=busy, busy=busy, free=max(0, int(cores - busy + 0.5)))


# /proc/stat as Linux writes it: the sum line, then one line per core (user nice system idle iowait irq softirq steal
# guest guest_nice, in jiffies)
STAT = """cpu  900 0 100 2000 0 0 0 0 0 0
cpu0 300 10 40 600 50 5 5 0 7 0
cpu1 600 0 60 1400 0 0 0 0 0 0

intr 12345
"""


def test_cpu_jiffies_sums_the_process_cores_busy_and_total():
    # cpu0: total 300+10+40+600+50+5+5+0 = 1010, idle 600 + iowait 50 -> busy 360 (guest's 7 is already in user)
    assert workers.cpu_jiffies({0}, STAT) == (360.0, 1010.0)
    assert workers.cpu_jiffies({0, 1}, STAT) == (360.0 + 660.0, 1010.0 + 2060.0)
    assert workers.cpu_jiffies({5}, STAT) is None


def test_machine_counts_the_cores_busy_now_not_the_lagging_load_average(monkeypatch):
    monkeypatch.setattr(workers, "machine", REAL_MACHINE)  # conftest.busy_machine stands in for it elsewhere
    snapshots = iter([(1000.0, 4000.0), (1160.0, 4200.0)])  # 160 of 200 jiffies busy on 2 cores: 1.6 cores busy
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(workers.os, "getloadavg", lambda: (1.9, 1.0, 1.0))  # just-stopped jobs still counted here
    monkeypatch.setattr(workers, "cpu_jiffies", lambda cpus, stat=None: next(snapshots))
    assert workers.machine(window=0.0) == dict(cores=2, load=1.9, busy=1.6, free=0)
    snapshots = iter([(1000.0, 4000.0), (1010.0, 4200.0)])  # 0.1 core busy: both free, whatever the load average
    assert workers.machine(window=0.0)["free"] == 2
    monkeypatch.setattr(workers, "cpu_jiffies", lambda cpus, stat=None: None)  # no /proc/stat: the load average
    assert workers.machine(window=0.0) == dict(cores=2, load=1.9, busy=1.9, free=0)


@pytest.mark.parametrize(
    "flags, machine, expected",
    [
        (Flags(), seen(2, 1.67), (1, 1, 1)),  # the busy 2-core machine: nothing free
        (Flags(), seen(2, 0.1), (2, 1, 2)),  # idle: a worker and an update thread per core
        (Flags(), seen(2, 0.9), (1, 1, 1)),  # one core free: no worker processes
        (Flags(), seen(16, 3.0), (13, 1, 2)),  # torch was given 2 threads: the update takes no more
        (Flags(num_envs=3), seen(16, 0.0), (3, 1, 2)),  # at most one worker per env
        (Flags(num_envs=1), seen(16, 0.0), (1, 1, 2)),
        (Flags(env_id="avoid-m2"), seen(16, 0.0), (1, 1, 2)),  # one batched numpy env
        (Flags(env_workers=1), seen(16, 0.0), (1, 1, 2)),
        (Flags(env_workers=64, sampling_threads=3, update_threads=5), seen(2, 1.9), (40, 3, 5)),
    ],
)
def test_the_auto_rules(flags, machine, expected):
    plan = workers.plan_parallel(flags, 2, machine, avoid.is_avoid(flags.env_id))
    assert (plan["env_workers"], plan["sampling_threads"], plan["update_threads"]) == expected
    if flags.env_workers == 64:
        assert "at most one per env (40)" in plan["env_workers_why"]
        assert "more processes than the 2 cores" in plan["env_workers_why"]


@pytest.mark.parametrize(
    "flags, machine, expected, why",
    [
        (Flags(), seen(2, 0.1), (2, 1), "auto: 1 per worker"),  # measured: no overlap pays on 2 cores
        (Flags(rollout_parts=4), seen(2, 0.1), (2, 4), "--rollout-parts"),
        (Flags(rollout_parts=4), seen(2, 1.9), (1, 1), "envs in this process: nothing to overlap"),
        (Flags(rollout_parts=None), seen(2, 0.1), (2, 1), "this script samples every env at once"),  # off-policy
    ],
)
def test_the_rollout_parts_rule(flags, machine, expected, why):
    plan = workers.plan_parallel(flags, 2, machine)
    assert (plan["env_workers"], plan["rollout_parts"]) == expected and plan["rollout_parts_why"] == why


def test_a_resume_of_a_run_in_parts_keeps_its_parts_and_workers(monkeypatch, capsys):
    """The parts decide the batches the policy sampled, and they follow the env workers: a resume on a machine where
    auto would choose no workers keeps both; flags win."""
    monkeypatch.setitem(runs._run, "plan", workers.plan_parallel(Flags(), 2, seen(2, 1.9)))  # in this process
    saved = workers.plan_parallel(Flags(rollout_parts=2), 2, seen(2, 0.0))
    runs.resume_threads(Flags(), saved)
    assert (runs._run["plan"]["env_workers"], runs._run["plan"]["rollout_parts"]) == (2, 2)
    assert "rollout in 2 part(s) per worker: as the resumed run chose it" in capsys.readouterr().out
    monkeypatch.setitem(runs._run, "plan", workers.plan_parallel(Flags(env_workers=1), 2, seen(2, 1.9)))
    runs.resume_threads(Flags(env_workers=1), saved)
    assert runs._run["plan"]["env_workers"] == 1
    monkeypatch.setitem(runs._run, "plan", workers.plan_parallel(Flags(), 2, seen(2, 1.9)))
    runs.resume_threads(Flags(), workers.plan_parallel(Flags(), 2, seen(2, 0.0)))  # saved: 2 workers, one part
    assert runs._run["plan"]["env_workers"] == 1  # no parts: the workers change no number


def test_async_envs_names_the_new_flag():
    for spelling in ("--async-envs", "--async_envs", "--no-async-envs"):
        with pytest.raises(SystemExit) as e:
            arguments.parse_args(dppo.Args, dppo.task_defaults, [spelling])
        assert_one_line_error(str(e.value), "--async-envs is gone", "--env-workers")


def test_each_phase_runs_at_its_threads_and_the_start_says_so(tiny_diffusion_checkpoint, tmp_path, monkeypatch, capsys):
    """--sampling-threads 1 --update-threads 2: torch samples (rollouts and evaluations) at 1 thread and updates at
    2; the start-up lines and summary.json say so, and the process's own count is back when the run ends."""
    seen_threads = {"sample": set(), "update": set()}
    sample, update = dppo.sample, dppo.ppo_update

    def spy_sample(*a, **k):
        seen_threads["sample"].add(torch.get_num_threads())
        return sample(*a, **k)

    def spy_update(*a, **k):
        seen_threads["update"].add(torch.get_num_threads())
        return update(*a, **k)

    monkeypatch.setattr(dppo, "sample", spy_sample)
    monkeypatch.setattr(dppo, "ppo_update", spy_update)
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_FLAGS, "--total-timesteps", "64"]
    try:
        torch.set_num_threads(3)  # what the process was given: restored at the end
        run_main(dppo, *flags, "--sampling-threads", 1, "--update-threads", 2, "--run-dir", tmp_path / "run")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)
    assert seen_threads == {"sample": {1}, "update": {2}}
    out = capsys.readouterr().out
    assert "[threads] torch: sampling 1 (--sampling-threads), update 2 (--update-threads)" in out
    assert "[envs] stepped in " in out
    parallel = json.loads((tmp_path / "run" / "summary.json").read_text())["parallel"]
    assert (parallel["sampling_threads"], parallel["update_threads"]) == (1, 2)


def test_a_resume_keeps_the_thread_counts_its_run_chose(monkeypatch, capsys):
    """Auto counts may differ on a resume (the machine's load moved): the run's own counts are kept, a flag wins."""
    monkeypatch.setitem(runs._run, "plan", workers.plan_parallel(Flags(), 2, seen(2, 1.9)))  # update 1
    runs.resume_threads(Flags(), dict(sampling_threads=1, update_threads=2))
    assert runs._run["plan"]["update_threads"] == 2 and "as the resumed run chose it" in capsys.readouterr().out
    monkeypatch.setitem(runs._run, "plan", workers.plan_parallel(Flags(update_threads=1), 2, seen(2, 1.9)))
    runs.resume_threads(Flags(update_threads=1), dict(sampling_threads=1, update_threads=2))
    assert runs._run["plan"]["update_threads"] == 1


def test_a_resumed_run_updates_at_the_threads_its_run_chose(tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    """Auto update threads: the free cores when the run starts (2 here). Killed in iteration 3 and resumed on a
    machine that is busy now (auto would take 1), the run's last update still runs at 2 threads."""
    update_threads, update = [], dppo.ppo_update

    def spy_update(*a, **k):
        update_threads.append(torch.get_num_threads())
        return update(*a, **k)

    monkeypatch.setattr(dppo, "ppo_update", spy_update)
    flags = [*DPPO_FLAGS, "--total-timesteps", "96", "--env-workers", "1"]  # 3 iterations of 32 env steps
    run = tmp_path / "run"
    try:
        torch.set_num_threads(2)  # what torch is given: auto takes no more
        monkeypatch.setattr(workers, "machine", lambda: seen(2, 0.0))
        with monkeypatch.context() as patch:
            kill_at_vector_step(patch, 2 * 4 + 2)
            with pytest.raises(Killed):
                run_main(dppo, "--checkpoint", tiny_diffusion_checkpoint, *flags, "--run-dir", run)
        assert update_threads == [2, 2]
        torch.set_num_threads(2)
        monkeypatch.setattr(workers, "machine", lambda: seen(2, 2.0))
        run_main(dppo, "--checkpoint", run / "checkpoint_last.pt", *flags)
    finally:
        torch.set_num_threads(1)
    assert update_threads == [2, 2, 2]
