"""Shared test fixtures and helpers: a tiny D4RL-format Hopper dataset, tiny pre-trained checkpoints, and the
checks every script's tests make (one-line errors, summary.json keys, TensorBoard tags, in-process CLI runs).

Everything runs on CPU with one thread and tiny budgets; fixtures are session-scoped so the suite pays once.
A subprocess run costs several seconds of imports, so tests keep one CLI smoke run per script (plus at most one
stderr check) and run everything else in-process through `run_main`.
"""

import inspect
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
import tyro

from cleandppo import arguments, envs, workers

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY_KEYS = (
    "algo",
    "env_id",
    "seed",
    "env_steps",
    "wall_time_s",
    "pretrained_eval_return",
    "final_eval_return",
    "best_eval_return",
    "args",
)
TINY_DIFFUSION = [
    "--mlp-dims",
    "32",
    "32",
    "32",
    "--time-dim",
    "8",
    "--denoising-steps",
    "6",
    "--ft-denoising-steps",
    "3",
]

# Per script: the flags that make a fine-tuning run of tiny_diffusion_checkpoint (K = 6, Hopper) take seconds
TINY_RUN = "--denoising-steps 6 --num-envs 2 --batch-size 8 --eval-episodes 1 --eval-freq 1"
TINY_CRITIC = "--critic-dims 16 16 16 --buffer-size 64"
TINY_FLAGS = {
    name: f"{TINY_RUN} {flags}".split()
    for name, flags in {
        "dawr": f"{TINY_CRITIC} --n-steps 16 --replay-ratio 4 --critic-replay-ratio 2",
        "drwr": "--n-steps 40 --update-epochs 2",
        "dipo": f"{TINY_CRITIC} --n-steps 4 --replay-ratio 4",
        "idql": f"{TINY_CRITIC} --n-steps 4 --replay-ratio 4 --num-candidates 3",
        "dql": f"{TINY_CRITIC} --n-steps 8 --replay-ratio 2 --n-critic-warmup-itr 1",
        "qsm": f"{TINY_CRITIC} --n-steps 8 --replay-ratio 2 --n-critic-warmup-itr 1",
    }.items()
}


REAL_MACHINE = workers.machine
BUSY_MACHINE = dict(cores=2, load=1.0, busy=1.0, free=1)


@pytest.fixture(autouse=True)
def busy_machine(monkeypatch):
    """Every test sees a 2-core machine with one core busy, whatever the load of the machine it runs on: the auto
    rules (workers.plan_parallel) then step the envs in the test's own process, so its monkeypatches reach them and
    the suite's time does not depend on the load. Tests of worker processes ask for them (--env-workers N); the test
    of workers.machine itself takes REAL_MACHINE back."""
    monkeypatch.setattr(workers, "machine", lambda: dict(BUSY_MACHINE))


def tiny_args(module, *flags, **fields):
    """`module.Args` as `python cleandppo/<module>.py <TINY_FLAGS of the script> flags...` resolves it (through
    arguments.parse_args, so the script's task_defaults apply), then with `fields` set."""
    import dataclasses

    name = module.__name__.rsplit(".", 1)[1]
    args = arguments.parse_args(module.Args, module.task_defaults, [*TINY_FLAGS[name], *map(str, flags)])
    return dataclasses.replace(args, **fields)


def run_script(script, *flags, timeout=300, check=True):
    """Run `python cleandppo/<script> flags...` in a subprocess; return the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "cleandppo", script), *map(str, flags)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_main(module, *flags):
    """In-process `python cleandppo/<module>.py flags...`: the flags are parsed as the CLI does (arguments.parse_args
    with the script's task_defaults where it has them; main takes the command line too where it still does)."""
    flags = [str(f) for f in flags]
    if hasattr(module, "task_defaults"):
        return module.main(arguments.parse_args(module.Args, module.task_defaults, argv=flags))
    args = tyro.cli(module.Args, args=flags)
    if len(inspect.signature(module.main).parameters) > 1:
        return module.main(args, flags)
    return module.main(args)


def assert_one_line_error(message, *needles, prefix="error:"):
    """`message` is one line starting with `prefix` and containing every needle; returns it."""
    assert message.startswith(prefix) and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def main_fails(module, args, *needles, prefix="error:", writes_nothing=True):
    """`module.main(args)` stops with a one-line SystemExit (Python prints it as the only stderr line, exit code 1)
    naming every needle, and, unless told otherwise, creates no run dir. Returns the message."""
    with pytest.raises(SystemExit) as e:
        module.main(args)
    msg = assert_one_line_error(str(e.value), *needles, prefix=prefix)
    if writes_nothing:
        assert not os.path.exists(args.run_dir), args.run_dir
    return msg


def cli_fails(script, *flags, needles=(), prefix="error:", run_dir=None):
    """`python cleandppo/<script> flags...` exits non-zero with exactly one stderr line (no traceback) that starts
    with `prefix` and names every needle; `run_dir`, when given, is not created. Returns that line."""
    proc = run_script(script, *flags, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    if run_dir is not None:
        assert not os.path.exists(run_dir)
    return assert_one_line_error(lines[0], *needles, prefix=prefix)


def stub_checkpoint(path, policy, algo=None):
    """An empty checkpoint of another policy family at `path` (for the "holds a <policy> policy" refusals)."""
    algo = algo or {"gaussian": "gaussian_ppo", "gmm": "gmm_ppo", "diffusion": "dppo"}[policy]
    torch.save(dict(algo=algo, policy=policy, backbone="mlp", model={}, env_id="Hopper-v2"), path)
    return str(path)


def _holds(record, keys, expected):
    assert set(keys) <= set(record), set(keys) - set(record)
    for key, value in expected.items():
        assert record[key] == value, (key, record[key], value)
    return record


def read_summary(run_dir, keys=SUMMARY_KEYS, **expected):
    """summary.json of a run: it holds every key in `keys` and the `expected` values; returns it."""
    with open(os.path.join(run_dir, "summary.json")) as f:
        return _holds(json.load(f), keys, expected)


def read_checkpoint(run_dir, keys=(), name="checkpoint_last.pt", **expected):
    """A run's checkpoint: it holds every key in `keys` and the `expected` values; returns it."""
    return _holds(torch.load(os.path.join(run_dir, name), weights_only=False), keys, expected)


def event_accumulator(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run_dir)).Reload()


def scalar_tags(run_dir):
    """The set of TensorBoard scalar tags a run wrote."""
    return set(event_accumulator(run_dir).Tags()["scalars"])


def scalar_values(run_dir, tag):
    """The logged values of one TensorBoard scalar, in step order."""
    return [e.value for e in event_accumulator(run_dir).Scalars(tag)]


CHECKPOINT_KEYS = "algo policy backbone model model_kwargs normalization env_id args iteration env_steps rng vec_env"


def cli_smoke_run(script, checkpoint, run_dir, total_timesteps, *flags, keys="", tags=""):
    """`python cleandppo/<script>.py --checkpoint .. --total-timesteps .. --run-dir .. <TINY_FLAGS[script]> flags`, two
    iterations long: its output reaches "iter 2/2"; summary.json, checkpoint_2.pt and checkpoint_last.pt (with
    CHECKPOINT_KEYS and `keys`) are written; the scalar `tags` are logged (the common ones: test_contract.py).
    `keys` and `tags` are space-separated. Returns (stdout, summary)."""
    flags = ["--total-timesteps", total_timesteps, "--run-dir", run_dir, *TINY_FLAGS[script], *flags]
    proc = run_script(f"{script}.py", "--checkpoint", checkpoint, *flags)
    assert "iter 2/2" in proc.stdout, proc.stdout[-2000:]
    summary = read_summary(run_dir, algo=script, env_steps=total_timesteps)
    expected = dict(algo=script, policy="diffusion", iteration=2, env_steps=total_timesteps)
    read_checkpoint(run_dir, {*CHECKPOINT_KEYS.split(), *keys.split()}, **expected)
    assert os.path.isfile(os.path.join(run_dir, "checkpoint_2.pt"))
    missing = set(tags.split()) - scalar_tags(run_dir)
    assert not missing, sorted(missing)
    return proc.stdout, summary


class ConstEps(nn.Module):
    """eps_theta = c_t for every input: c0 at t = 0, c1 at t >= 1 (learnable scalars)."""

    def __init__(self, c0=0.0, c1=0.0):
        super().__init__()
        self.c0, self.c1 = nn.Parameter(torch.tensor(c0)), nn.Parameter(torch.tensor(c1))

    def forward(self, x, t, obs):
        c = torch.where(t == 0, self.c0, self.c1).view(-1, 1, 1)
        return c.expand_as(x)


class QuadraticQ(nn.Module):
    """Q1 = -|a - a*|^2, Q2 = Q1 - offset (a stand-in critic with a known maximiser)."""

    def __init__(self, a_star, offset=1.0):
        super().__init__()
        self.a_star, self.offset = a_star, offset

    def forward(self, obs, a):
        q = -((a - self.a_star) ** 2).flatten(1).sum(-1)
        return q, q - self.offset


def noise_mse(net, sched, x0, obs, K):
    """The plain denoising loss, written here: MSE between drawn noise and its prediction at a uniform step."""
    t = torch.randint(0, K, (x0.shape[0],))
    eps = torch.randn_like(x0)
    ab = sched["alpha_bar"][t].view(-1, 1, 1)
    return ((net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, obs) - eps) ** 2).mean()


def assert_actor_update_climbs_quadratic_q(module, actor_loss, iters):
    """Behaviour-clone a tiny `module.DiffusionMLP` (K = 6, one 2-d action, zero states) around (-0.4, 0.4), then take
    `iters` Adam steps on `actor_loss(actor, critic, sched, obs, data, K, i)` (data() draws a fresh BC batch) against
    QuadraticQ with a* = (0.5, -0.3): the eval samples' Q must rise by > 0.5 and their mean halve its distance to a*."""
    torch.manual_seed(0)
    K, Da, n = 6, 2, 128
    sched, a_star = module.make_schedule(K), torch.tensor([0.5, -0.3])
    actor = module.DiffusionMLP(2, Da, 1, 1, time_dim=8, mlp_dims=(32, 32, 32), activation="relu")
    obs = torch.zeros(n, 1, 2)
    data = lambda: torch.tensor([-0.4, 0.4]) + 0.05 * torch.randn(n, 1, Da)  # noqa: E731
    opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    for _ in range(150):  # behaviour cloning around (-0.4, 0.4)
        loss = noise_mse(actor, sched, data(), obs, K)
        opt.zero_grad()
        loss.backward()
        opt.step()
    critic = QuadraticQ(a_star)

    def measure():
        x = module.sample(actor, sched, torch.zeros(512, 1, 2), K, 1, Da, "eval")
        return x.mean((0, 1)), critic(None, x)[0].mean().item()

    mean0, q0 = measure()
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    for i in range(iters):
        loss = actor_loss(actor, critic, sched, obs, data, K, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mean1, q1 = measure()
    assert q1 > q0 + 0.5, (q0, q1)
    assert (mean1 - a_star).norm() < 0.5 * (mean0 - a_star).norm(), (mean0, mean1)


def record_random_hopper(path, episodes=3, seed=0, max_steps=200):
    """Write a D4RL-format file of random-action Hopper episodes (time-outs at `max_steps`)."""
    env = gym.make(envs.resolve_env_id("Hopper-v2"))
    rng = np.random.default_rng(seed)
    keys = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        for t in range(max_steps):
            action = rng.uniform(-0.3, 0.3, 3).astype(np.float32)
            next_obs, reward, term, trunc, _ = env.step(action)
            timeout = t == max_steps - 1 and not term
            for k, v in zip(keys, (obs, action, reward, term, timeout, next_obs), strict=True):
                keys[k].append(v)
            obs = next_obs
            if term or timeout:
                break
    data = {k: np.asarray(v, np.float32 if k not in ("terminals", "timeouts") else bool) for k, v in keys.items()}
    envs.write_d4rl_hdf5(path, data, attrs={"env_id": "Hopper-v2"})
    return data


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "tiny-hopper.hdf5")
    record_random_hopper(path)
    return path


@pytest.fixture(scope="session")
def tiny_diffusion_checkpoint(tiny_dataset, tmp_path_factory):
    """A diffusion checkpoint pre-trained by dppo.py (in-process) for 2 epochs on the tiny dataset (K = 6)."""
    from cleandppo import dppo

    run = tmp_path_factory.mktemp("dppo_pre")
    run_main(
        dppo,
        "--dataset",
        tiny_dataset,
        "--pretrain-only",
        "--pretrain-epochs",
        "2",
        "--run-dir",
        run,
        "--eval-episodes",
        "1",
        *TINY_DIFFUSION,
    )
    return str(run / "pretrained.pt")


def tiny_demos(task="lift", lengths=(5, 7, 4), drop_key=None, seed=0):
    """Random robomimic-format demos of `lengths` (obs keys of `task`, 7-d actions, reward 1, done on the last step)."""
    rng = np.random.default_rng(seed)
    dims = {
        "robot0_eef_pos": 3,
        "robot0_eef_quat": 4,
        "robot0_gripper_qpos": 2,
        "object": envs.ROBOMIMIC_TASKS[task]["obs_dim"] - 9,
    }
    demos = []
    for n in lengths:
        obs = {k: rng.normal(size=(n, d)) for k, d in dims.items() if k != drop_key}
        demos.append(
            dict(
                obs=obs,
                actions=rng.uniform(-1, 1, (n, 7)),
                rewards=np.eye(1, n, n - 1)[0],
                dones=np.eye(1, n, n - 1)[0].astype(int),
            )
        )
    return demos


def tiny_dppo_args(run_dir, checkpoint, **flags):
    """dppo.Args for a two-iteration fine-tuning run of tiny_diffusion_checkpoint into run_dir (flags override)."""
    from cleandppo import dppo

    tiny = dict(
        num_envs=2,
        n_steps=4,
        batch_size=8,
        eval_episodes=1,
        mlp_dims=(32, 32, 32),
        time_dim=8,
        denoising_steps=6,
        ft_denoising_steps=3,
        critic_dims=(16, 16, 16),
        total_timesteps=32,
    )
    return dppo.Args(checkpoint=checkpoint, run_dir=str(run_dir), **{**tiny, **flags})
