"""Reliability of every script's run plumbing (issue #12): exact resume after a kill, no hang on a NaN reward,
no silent overwrite of a run dir, Ctrl-C at any point, one line for every bad flag.

Every run here is tiny (2 envs, a few steps, 16-32 wide networks) and in-process."""

import dataclasses
import importlib
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from cleandppo import arguments, envs, gym_tasks, runs
from conftest import (
    TINY_DIFFUSION,
    assert_one_line_error,
    cli_fails,
    event_accumulator,
    main_fails,
    run_main,
    tiny_dppo_args,
)

torch.set_num_threads(1)
SCRIPTS = ("dppo", "gaussian_ppo", "gmm_ppo", "dawr", "drwr", "dipo", "idql", "dql", "qsm", "exact_likelihood_pg")
TIMING_TAGS = ("charts/SPS", "time/rollout_s", "time/update_s", "charts/peak_memory_mb")
DPPO_TINY = [
    *TINY_DIFFUSION,
    *"--num-envs 2 --n-steps 4 --batch-size 8 --eval-episodes 1 --eval-freq 2 --critic-dims 16 16 16".split(),
]


class Killed(BaseException):
    """What kill -9 does to a run: it stops wherever it is, and nothing in the script catches it."""


def kill_at_vector_step(monkeypatch, calls):
    """Make the `calls`-th training vector step raise Killed (every rollout reads envs.finished_episodes once per
    vector step; evaluation does not), after the envs have stepped and before the step is stored."""
    finished, count = envs.finished_episodes, [0]

    def counting(infos):
        count[0] += 1
        if count[0] == calls:
            raise Killed()
        return finished(infos)

    monkeypatch.setattr(envs, "finished_episodes", counting)


def curves(run_dir):
    """Every TensorBoard scalar of a run but the timing ones: {tag: [(step, value), ...]}."""
    acc = event_accumulator(run_dir)
    tags = [t for t in acc.Tags()["scalars"] if t not in TIMING_TAGS and not t.startswith("time/")]
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}


def assert_kill_and_resume_is_exact(module, flags, kill_call, tmp_path, monkeypatch):
    """A run killed inside its third iteration and resumed from its checkpoint_last.pt with the same flags logs
    bit-identical scalars (every tag but timing) to the uninterrupted run, in the same run dir."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_main(module, *flags, "--run-dir", whole)
    with monkeypatch.context() as patch:
        kill_at_vector_step(patch, kill_call)
        with pytest.raises(Killed):
            run_main(module, *flags, "--run-dir", killed)
    assert torch.load(killed / "checkpoint_last.pt", weights_only=False)["iteration"] == 2
    resume_flags = list(flags) if "--checkpoint" in flags else [*flags, "--checkpoint", None]
    resume_flags[resume_flags.index("--checkpoint") + 1] = killed / "checkpoint_last.pt"
    run_main(module, *resume_flags)  # no --run-dir: a resume continues in the checkpoint's own dir
    expected, got = curves(whole), curves(killed)
    assert set(expected) == set(got) and len(expected) >= 5, (sorted(expected), sorted(got))
    for tag in expected:
        assert got[tag] == expected[tag], tag


# ---- item 4: a run killed at any point and resumed gives the uninterrupted run's scalars ------------------------
@pytest.mark.parametrize("bc", [[], ["--bc-loss-coeff", "0.5"]], ids=["plain", "bc"])  # bc: sampling inside the update
def test_dppo_kill_and_resume_is_bit_identical(tiny_diffusion_checkpoint, tmp_path, monkeypatch, bc):
    from cleandppo import dppo

    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_TINY, "--total-timesteps", "160", *bc]
    # 4 vector steps per iteration: the kill lands in the middle of iteration 3
    assert_kill_and_resume_is_exact(dppo, flags, 2 * 4 + 2, tmp_path, monkeypatch)


def pretrained(module, tiny_dataset, run_dir, *flags):
    """A tiny checkpoint pre-trained by `module` for one epoch on the tiny dataset."""
    run_main(
        module,
        "--dataset",
        tiny_dataset,
        "--pretrain-only",
        "--pretrain-epochs",
        "1",
        "--eval-episodes",
        "1",
        "--run-dir",
        run_dir,
        *flags,
    )
    return run_dir / "pretrained.pt"


@pytest.mark.parametrize("bc", [[], ["--bc-loss-coeff", "0.5"]], ids=["plain", "bc"])  # bc: the teacher is restored
def test_gaussian_ppo_kill_and_resume_is_bit_identical(tiny_dataset, tmp_path, monkeypatch, bc):
    from cleandppo import gaussian_ppo

    tiny = ["--mlp-dims", "16", "16", "16", "--critic-dims", "16", "16", "16"]
    ckpt = pretrained(gaussian_ppo, tiny_dataset, tmp_path / "pre", *tiny)
    flags = [
        "--checkpoint",
        ckpt,
        *tiny,
        *"--num-envs 2 --n-steps 4 --batch-size 4 --eval-episodes 1 --eval-freq 2 --total-timesteps 160".split(),
    ]
    flags += bc
    assert_kill_and_resume_is_exact(gaussian_ppo, flags, 2 * 4 + 3, tmp_path, monkeypatch)


def test_gaussian_ppo_from_scratch_kill_and_resume_is_bit_identical(tmp_path, monkeypatch):
    from cleandppo import gaussian_ppo

    flags = "--from-scratch --mlp-dims 16 16 --critic-dims 16 16 16 --num-envs 2 --n-steps 8 --batch-size 8".split()
    flags += "--update-epochs 1 --eval-episodes 1 --eval-freq 2 --total-timesteps 80".split()
    assert_kill_and_resume_is_exact(gaussian_ppo, flags, 2 * 8 + 3, tmp_path, monkeypatch)


def test_gmm_ppo_kill_and_resume_is_bit_identical(tiny_dataset, tmp_path, monkeypatch):
    from cleandppo import gmm_ppo

    tiny = ["--mlp-dims", "16", "16", "16", "--critic-dims", "16", "16", "16"]
    ckpt = pretrained(gmm_ppo, tiny_dataset, tmp_path / "pre", *tiny)
    flags = [
        "--checkpoint",
        ckpt,
        *tiny,
        *"--num-envs 2 --n-steps 4 --batch-size 8 --eval-episodes 1 --eval-freq 2 --total-timesteps 160".split(),
    ]
    assert_kill_and_resume_is_exact(gmm_ppo, flags, 2 * 4 + 3, tmp_path, monkeypatch)


BASE = "--denoising-steps 6 --num-envs 2 --batch-size 8 --eval-episodes 1 --eval-freq 2 --critic-dims 16 16 16".split()
OFF_POLICY = [*BASE, "--buffer-size", "64", "--n-steps", "4"]
FAMILIES = {  # script -> (n_steps, flags): weighted regression, off-policy, exact-likelihood PPO
    "dawr": (8, [*OFF_POLICY[:-2], "--n-steps", "8", "--replay-ratio", "2", "--critic-replay-ratio", "1"]),
    "drwr": (40, [*BASE[:-4], "--n-steps", "40", "--update-epochs", "1"]),
    "dipo": (4, [*OFF_POLICY, "--replay-ratio", "2", "--action-gradient-steps", "2"]),
    "idql": (4, [*OFF_POLICY, "--replay-ratio", "2", "--num-candidates", "3"]),
    "dql": (4, [*OFF_POLICY, "--replay-ratio", "2"]),
    "qsm": (4, [*OFF_POLICY, "--replay-ratio", "2"]),
    "exact_likelihood_pg": (
        4,
        [
            *BASE,
            *"--n-steps 4 --ft-denoising-steps 3 --grad-chunk-size 8 --sde-step-size 0.17 --sde-method euler".split(),
        ]
        + ["--hutchinson-probes", "1"],
    ),
}


@pytest.mark.parametrize("script", sorted(FAMILIES))
def test_baseline_kill_and_resume_is_bit_identical(script, tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    """Off-policy scripts resume with their replay buffer (checkpoint_last.pt holds it), DAWR with its buffer of
    recent iterations, DRWR and exact-likelihood PG with the envs mid-episode: every scalar matches."""
    module = importlib.import_module(f"cleandppo.{script}")
    n_steps, flags = FAMILIES[script]
    total = 5 * 2 * n_steps * 4
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *flags, "--total-timesteps", str(total)]
    assert_kill_and_resume_is_exact(module, flags, 2 * n_steps + 2, tmp_path, monkeypatch)


# ---- item 1: a non-finite reward stops the run in one line; nothing waits forever -------------------------------
class PoisonedReward(gym.Wrapper):
    """Returns a NaN reward from every step once `switch["on"]` is set (the env itself is unchanged)."""

    def __init__(self, env, switch):
        super().__init__(env)
        self.switch = switch

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        return obs, float("nan") if self.switch["on"] else reward, term, trunc, info


def poison_rewards(monkeypatch, switch):
    make = gym.make
    monkeypatch.setattr(gym, "make", lambda *a, **k: PoisonedReward(make(*a, **k), switch))


def test_nan_reward_stops_the_run_in_one_line_and_keeps_the_last_good_checkpoint(
    tiny_diffusion_checkpoint, tmp_path, monkeypatch
):
    from cleandppo import dppo

    switch, finished, count = {"on": False}, envs.finished_episodes, [0]
    poison_rewards(monkeypatch, switch)

    def poison_in_iteration_3(infos):  # vector steps 1-8 are iterations 1 and 2
        count[0] += 1
        switch["on"] = count[0] >= 10
        return finished(infos)

    monkeypatch.setattr(envs, "finished_episodes", poison_in_iteration_3)
    run = tmp_path / "run"
    args = dppo.Args(
        checkpoint=tiny_diffusion_checkpoint,
        run_dir=str(run),
        total_timesteps=160,
        eval_freq=100,
        **dict(zip(("num_envs", "n_steps", "batch_size", "eval_episodes"), (2, 4, 8, 1), strict=True)),
        mlp_dims=(32, 32, 32),
        time_dim=8,
        denoising_steps=6,
        ft_denoising_steps=3,
        critic_dims=(16,) * 3,
    )
    main_fails(
        dppo,
        args,
        "non-finite reward in iteration 3",
        f"{run / 'checkpoint_last.pt'} is the last good",
        writes_nothing=False,
    )
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["iteration"] == 2
    assert runs.all_finite(torch.load(run / "checkpoint_last.pt", weights_only=False)["critic"])
    assert not os.path.exists(run / "checkpoint_3.pt")


def test_evaluation_with_a_nan_reward_or_no_episode_end_stops_in_one_line(monkeypatch):
    act = lambda obs: np.zeros((len(obs), 4, 3))  # noqa: E731
    with monkeypatch.context() as patch:
        poison_rewards(patch, {"on": True})
        with pytest.raises(SystemExit) as e:
            envs.run_episodes(act, "Hopper-v2", 2, 0, 4, 1, None)
        assert_one_line_error(str(e.value), "non-finite reward")
    monkeypatch.setattr(envs, "max_episode_steps", lambda env_id: 8)  # a bound the episode cannot meet
    with pytest.raises(SystemExit) as e:
        envs.run_episodes(act, "Hopper-v2", 2, 0, 4, 1, None)
    assert_one_line_error(str(e.value), "did not end within its time limit")


def test_non_finite_losses_and_weights_are_named():
    net = torch.nn.Linear(2, 2)
    runs.check_finite(0, policy_loss=0.5, critic_weights=net, reward=np.ones(3))
    with torch.no_grad():
        net.weight[0, 0] = float("inf")
    with pytest.raises(SystemExit) as e:
        runs.check_finite(4, policy_loss=0.5, critic_weights=net)
    assert_one_line_error(str(e.value), "non-finite critic weights in iteration 5")
    with pytest.raises(SystemExit) as e:
        runs.check_finite(0, value_loss=float("nan"))
    assert_one_line_error(str(e.value), "non-finite value loss in iteration 1")


# ---- item 2: a run dir that holds a run is refused unless resumed or overwritten -------------------------------
def test_a_run_dir_holding_a_run_is_refused_then_overwritten_on_request(tiny_diffusion_checkpoint, tmp_path):
    from cleandppo import dppo

    run = tmp_path / "run"
    dppo.main(tiny_dppo_args(run, tiny_diffusion_checkpoint))
    before = {name: os.path.getmtime(run / name) for name in os.listdir(run)}
    last = run / "checkpoint_last.pt"
    main_fails(
        dppo,
        tiny_dppo_args(run, tiny_diffusion_checkpoint),
        "already holds a run",
        f"resume it with --checkpoint {last}",
        "--overwrite",
        writes_nothing=False,
    )
    assert {name: os.path.getmtime(run / name) for name in os.listdir(run)} == before  # nothing touched
    dppo.main(tiny_dppo_args(run, tiny_diffusion_checkpoint, overwrite=True))
    assert len([n for n in os.listdir(run) if n.startswith("events.out")]) == 1  # the old curves are gone


def test_a_pretraining_run_dir_is_refused_without_a_resume_hint(tmp_path):
    from cleandppo import dppo

    (tmp_path / "pre").mkdir()
    (tmp_path / "pre" / "pretrained.pt").write_bytes(b"")
    msg = main_fails(
        dppo, dppo.Args(run_dir=str(tmp_path / "pre")), "already holds a run", "--overwrite", writes_nothing=False
    )
    assert "--checkpoint" not in msg


# ---- item 3: Ctrl-C keeps the last finished iteration, in one line ------------------------------------------------
def interrupt_at_vector_step(monkeypatch, calls):
    finished, count = envs.finished_episodes, [0]

    def counting(infos):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt()
        return finished(infos)

    monkeypatch.setattr(envs, "finished_episodes", counting)


@pytest.mark.parametrize("vector_step, finished", [(10, 2), (2, 0)])
def test_ctrl_c_mid_iteration_keeps_the_last_finished_one(
    vector_step, finished, tiny_diffusion_checkpoint, tmp_path, monkeypatch, capsys
):
    from cleandppo import dppo

    run = tmp_path / "run"
    interrupt_at_vector_step(monkeypatch, vector_step)
    with pytest.raises(SystemExit) as e:
        runs.run_cli(dppo.main, tiny_dppo_args(run, tiny_diffusion_checkpoint, total_timesteps=160, eval_freq=100))
    assert e.value.code == 130
    err = capsys.readouterr().err.strip()
    if finished:
        assert_one_line_error(err, f"resume with --checkpoint {run / 'checkpoint_last.pt'}", prefix="interrupted:")
        ckpt = torch.load(run / "checkpoint_last.pt", weights_only=False)
        assert (ckpt["iteration"], ckpt["env_steps"]) == (finished, finished * 2 * 4 * 4)
    else:
        assert_one_line_error(err, "nothing to resume", prefix="interrupted:")
    checkpoints = sorted(n for n in os.listdir(run) if n.startswith("checkpoint"))
    assert checkpoints == (["checkpoint_last.pt"] if finished else [])


def test_ctrl_c_in_the_pre_trained_evaluation_is_one_line(tiny_diffusion_checkpoint, tmp_path, monkeypatch, capsys):
    from cleandppo import dppo

    def interrupted(self, chunk):
        raise KeyboardInterrupt()

    monkeypatch.setattr(envs.ChunkedEnv, "step", interrupted)
    with pytest.raises(SystemExit) as e:
        runs.run_cli(dppo.main, tiny_dppo_args(tmp_path / "run", tiny_diffusion_checkpoint))
    assert e.value.code == 130
    assert_one_line_error(capsys.readouterr().err.strip(), "nothing to resume", prefix="interrupted:")


# ---- item 5: a run dir that cannot be written, a bad checkpoint or dataset: one line, no run dir left ---------------
@pytest.mark.parametrize(
    "where, needle", [("file", "is a file"), ("below_file", "lies below the file"), ("read_only", "cannot write under")]
)
def test_unwritable_run_dirs_are_one_line(where, needle, tmp_path):
    from cleandppo import dppo

    (tmp_path / "file").write_text("")
    run_dir = {"file": tmp_path / "file", "below_file": tmp_path / "file" / "run", "read_only": "/proc/cleandppo-run"}[
        where
    ]  # /proc: read-only even for root
    with pytest.raises(SystemExit) as e:
        dppo.main(dppo.Args(run_dir=str(run_dir)))
    assert_one_line_error(str(e.value), needle, "--run-dir")


@pytest.mark.parametrize("script", ["dppo", "gaussian_ppo", "gmm_ppo"])
def test_a_bad_dataset_or_checkpoint_leaves_no_run_dir(script, tmp_path):
    module = importlib.import_module(f"cleandppo.{script}")
    main_fails(
        module, module.Args(dataset=str(tmp_path / "missing.hdf5"), run_dir=str(tmp_path / "a")), "does not exist"
    )
    main_fails(
        module, module.Args(checkpoint=str(tmp_path / "missing.pt"), run_dir=str(tmp_path / "b")), "does not exist"
    )


# ---- item 6: every flag's range, with the same rules in every script -------------------------------------------------
def numeric_fields(module):
    for field in dataclasses.fields(module.Args):
        value = getattr(module.Args(), field.name)
        if isinstance(value, (int, float, tuple)) and not isinstance(value, bool) or "float" in str(field.type):
            yield field.name, value


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_has_a_rule_and_out_of_range_values_are_one_line(script):
    module = importlib.import_module(f"cleandppo.{script}")
    for name, value in numeric_fields(module):
        floats = isinstance(value, tuple) and value and all(isinstance(v, float) for v in value)
        if isinstance(value, float) or value is None or floats:
            assert name in arguments.FLOAT_RANGES, f"{script}: --{name} has no range in arguments.FLOAT_RANGES"
            low, low_in, high, high_in = arguments.FLOAT_RANGES[name]
            bad = [float("nan")] + ([low - 1.0 if low_in else low] if low is not None else [])
            bad += [high + 1.0 if high_in else high] if high is not None else []
            bad = [(b,) * len(value) for b in bad] if floats else bad
        else:
            bad = [-1] if name in arguments.INT_FROM_ZERO else [0]
            bad = [tuple(bad * max(1, len(value)))] if isinstance(value, tuple) else bad  # () too: (0,)
        for v in bad:
            with pytest.raises(SystemExit) as e:
                arguments.check_ranges(module.Args(**{name: v}))
            assert_one_line_error(str(e.value), arguments.flag(name))


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(
    "flags, needle",
    [
        (dict(gamma=1.5), "--gamma must be in (0, 1], got 1.5"),
        (dict(total_timesteps=0), "--total-timesteps must be >= 1"),
        (dict(total_timesteps=5000), "below one iteration"),
        (dict(actor_lr=-1.0), "--actor-lr must be > 0, got -1.0"),
    ],
)
def test_every_script_checks_ranges_and_the_budget(script, flags, needle, tmp_path):
    module = importlib.import_module(f"cleandppo.{script}")
    main_fails(module, module.Args(run_dir=str(tmp_path / "r"), **flags), needle)


def test_each_flag_has_one_rule():
    names = [name for group in (arguments.FLOAT_RANGES, arguments.INT_FROM_ZERO) for name in group]
    assert len(arguments.FLOAT_RANGES) + len(arguments.INT_FROM_ZERO) == len(set(names))
    with pytest.raises(SystemExit, match="--sde-step-size must be in"):
        arguments.check_ranges(importlib.import_module("cleandppo.exact_likelihood_pg").Args(sde_step_size=2.0))


def test_a_bad_learning_rate_is_one_line_on_the_command_line(tmp_path):
    cli_fails(
        "gmm_ppo.py",
        "--actor-lr",
        "-1",
        "--run-dir",
        tmp_path / "r",
        needles=["--actor-lr must be > 0"],
        run_dir=tmp_path / "r",
    )


# ---- item 7: every error that names a command names one that works -------------------------------------------------
def test_transport_datasets_send_users_to_the_transport_demo_script(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANDPPO_DATA", str(tmp_path))
    monkeypatch.setenv("CLEANDPPO_ROBOMIMIC_URL", "http://127.0.0.1:9/{task}/{kind}.hdf5")  # refused: offline
    for name in ("transport-scripted", "transport-mh"):
        with pytest.raises(SystemExit) as e:
            envs.resolve_dataset(name)
        msg = assert_one_line_error(str(e.value), "transport")
        assert (
            "python scripts/make_robomimic_demos.py --task transport" in msg and "--dataset transport-scripted" in msg
        ), msg


def test_track_without_wandb_and_minari_downloads_name_the_install(tmp_path, monkeypatch):
    from cleandppo import dppo

    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # import wandb raises ImportError
    main_fails(dppo, dppo.Args(track=True, run_dir=str(tmp_path / "r")), "pip install -r requirements-wandb.txt")
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "requirements.txt")) as f:
        assert "minari[hf]" in f.read()  # downloads from the Hugging Face hub need the extra
    minari = pytest.importorskip("minari")

    def offline(*args, **kwargs):
        raise ValueError("no such dataset")

    monkeypatch.setattr(minari, "load_dataset", offline)
    with pytest.raises(SystemExit) as e:
        envs.load_dataset("mujoco/hopper/medium-v0")
    assert_one_line_error(str(e.value), "pip install 'minari[hf]'")


def test_overwrite_keeps_the_checkpoint_the_run_starts_from(tiny_diffusion_checkpoint, tmp_path):
    import shutil

    from cleandppo import dppo

    run = tmp_path / "pre"  # a pre-training run dir, fine-tuned from its own pretrained.pt with --overwrite
    run.mkdir()
    shutil.copy(tiny_diffusion_checkpoint, run / "pretrained.pt")
    (run / "summary.json").write_text("{}")
    dppo.main(tiny_dppo_args(run, str(run / "pretrained.pt"), overwrite=True))
    assert (run / "pretrained.pt").is_file() and (run / "checkpoint_last.pt").is_file()


def test_dppo_kill_9_then_resume_is_bit_identical(tiny_diffusion_checkpoint, tmp_path):
    """The real thing: SIGKILL a dppo process once it has printed its second iteration (whatever it was doing then),
    resume its checkpoint_last.pt in-process with the same flags: the run's curves equal the uninterrupted run's."""
    import signal
    import subprocess
    import sys

    from cleandppo import dppo
    from conftest import ROOT

    flags = [*DPPO_TINY, "--total-timesteps", "160"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_main(dppo, "--checkpoint", tiny_diffusion_checkpoint, *flags, "--run-dir", whole)
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "cleandppo", "dppo.py"),
            "--checkpoint",
            tiny_diffusion_checkpoint,
            *flags,
            "--run-dir",
            str(killed),
        ],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    for line in proc.stdout:
        if line.startswith("iter 2/"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert torch.load(killed / "checkpoint_last.pt", weights_only=False)["iteration"] in (1, 2)
    run_main(dppo, "--checkpoint", killed / "checkpoint_last.pt", *flags)
    assert curves(killed) == curves(whole)


@pytest.mark.parametrize("script", [*sorted(FAMILIES), "gaussian_ppo"])
def test_every_rollout_stops_at_a_nan_reward(script, tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    module = importlib.import_module(f"cleandppo.{script}")
    switch, finished = {"on": False}, envs.finished_episodes
    poison_rewards(monkeypatch, switch)

    def poison_after_the_first_vector_step(infos):
        switch["on"] = True
        return finished(infos)

    monkeypatch.setattr(envs, "finished_episodes", poison_after_the_first_vector_step)
    if script == "gaussian_ppo":
        flags = "--from-scratch --mlp-dims 16 16 --num-envs 2 --n-steps 8 --batch-size 8 --eval-episodes 1".split()
        flags += ["--total-timesteps", "16"]
    else:
        n_steps, flags = FAMILIES[script]
        flags = ["--checkpoint", tiny_diffusion_checkpoint, *flags, "--total-timesteps", str(2 * n_steps * 4)]
    with pytest.raises(SystemExit) as e:
        run_main(module, *flags, "--run-dir", tmp_path / "run")
    assert_one_line_error(str(e.value), "non-finite reward in iteration 1", "no checkpoint was written")


@pytest.mark.parametrize(
    "env_id, env_workers",
    [("Hopper-v2", 1), ("Walker2D-v2", 1), ("HalfCheetah-v2", 1), ("Hopper-v2", 2)],
)
def test_a_restored_vector_env_continues_bit_identically(env_id, env_workers, monkeypatch):
    """Envs restored from vec_env_state (mid-episode, across terminations, time-outs and auto-resets) step exactly as
    the originals: one action per step and a 3-step history, so the history carried over is read."""
    monkeypatch.setattr(gym_tasks, "GYM_MAX_EPISODE_STEPS", 25)  # time-outs (HalfCheetah never terminates) come quickly
    action_dim = envs.env_dims(env_id)[1]
    actions = np.random.default_rng(0).uniform(-1, 1, (120, 2, 1, action_dim))

    def make():
        vec = envs.make_vec_env(env_id, 2, 0, 1, 3, None, env_workers)
        vec.reset(seed=0)
        return vec

    original = make()
    for chunk in actions[:37]:
        original.step(chunk)
    restored = make()
    runs.restore_vec_env(restored, runs.vec_env_state(original))
    for chunk in actions[37:]:
        a, b = original.step(chunk), restored.step(chunk)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        assert envs.finished_episodes(a[4]) == envs.finished_episodes(b[4])  # returns and lengths of ended episodes
    original.close()
    restored.close()


def test_a_restored_robomimic_env_holds_the_simulator_state():
    """Robosuite: the sim state (qpos, qvel, time), step count and placement RNG come back; its controllers' internal
    state does not (README: a resumed robomimic run continues closely, not bit for bit)."""
    pytest.importorskip("robosuite")
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 1, 4, 7))
    original = envs.make_vec_env("lift", 1, 0, 4, 1, None)
    original.reset(seed=0)
    for chunk in actions:
        original.step(chunk)
    restored = envs.make_vec_env("lift", 1, 0, 4, 1, None)
    restored.reset(seed=1)
    runs.restore_vec_env(restored, runs.vec_env_state(original))
    a, b = original.envs[0].unwrapped, restored.envs[0].unwrapped
    assert a.steps == b.steps == 24
    np.testing.assert_array_equal(a.rs_env.sim.get_state().flatten(), b.rs_env.sim.get_state().flatten())
    assert a.rs_env.rng.random() == b.rs_env.rng.random()
    original.close()
    restored.close()


def test_a_resume_in_the_same_second_still_reads_in_order(tmp_path, monkeypatch):
    """Event files are named events.out.tfevents.<second>.<host>.<pid>.<counter> and read in name order: a resume
    within the killed run's second whose counter goes from 9 to 10 would sort first. open_run waits for a new second."""
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(8))  # killed 9, resumed 10
    test_gaussian_ppo_from_scratch_kill_and_resume_is_bit_identical(tmp_path, monkeypatch)


# ---- per-task defaults and presets of the PPO scripts (arguments.parse_args; parsing builds no env) ------------
PPO_SCRIPTS = ["dppo", "gaussian_ppo", "gmm_ppo", "exact_likelihood_pg"]


@pytest.mark.parametrize("module", PPO_SCRIPTS)
def test_per_task_defaults_keep_explicit_flags(module, capsys):
    import importlib

    mod = importlib.import_module(f"cleandppo.{module}")
    argv = ["--env-id", "TwoArmTransport", "--num-envs", "3", "--gamma=0.9"]
    args = arguments.parse_args(mod.Args, mod.task_defaults, argv=argv)
    assert args.num_envs == 3 and args.gamma == 0.9  # given on the command line, in either spelling: kept
    assert (args.n_steps, args.batch_size, args.update_epochs, args.act_steps, args.horizon_steps) == (
        400,
        10_000,
        5,
        8,
        8,
    )
    assert args.eval_episodes == 50 and args.n_critic_warmup_itr == 2
    assert "[TwoArmTransport] defaults for this task:" in capsys.readouterr().out
    if module == "dppo":
        assert args.clip_ploss_coef_base == 0.001 and args.activation == "mish" and args.actor_lr == 1e-4
    elif module == "exact_likelihood_pg":
        assert args.actor_lr == 1e-5
    else:
        assert args.clip_coef == 0.01 and (args.std_min, args.std_max) == (0.01, 0.2) and args.actor_lr == 1e-4
    assert mod.task_defaults(mod.Args()) == {}  # the Gym tasks keep the Args defaults
    assert arguments.parse_args(mod.Args, mod.task_defaults, argv=[]) == mod.Args()


@pytest.mark.parametrize("module", PPO_SCRIPTS)
@pytest.mark.parametrize("spelling", [["--n-steps=7"], ["--n-steps", "7"]])
def test_lift_defaults_apply_but_an_explicit_flag_wins(module, spelling):
    """`--env-id lift --n-steps=7`: n_steps stays 7, every other lift default applies (parsing builds no env)."""
    import importlib

    mod = importlib.import_module(f"cleandppo.{module}")
    args = arguments.parse_args(mod.Args, mod.task_defaults, argv=["--env-id", "lift", *spelling])
    table = mod.task_defaults(mod.Args(env_id="lift"))
    assert table["n_steps"] == 300 and args.n_steps == 7
    assert {k: getattr(args, k) for k in table if k != "n_steps"} == {k: v for k, v in table.items() if k != "n_steps"}
    assert (args.gamma, args.num_envs, args.batch_size, args.act_steps, args.horizon_steps) == (0.999, 50, 7500, 4, 4)


@pytest.mark.parametrize("module", ["dppo", "gaussian_ppo"])
@pytest.mark.parametrize("spelling", [["--num-envs=8"], ["--num-envs", "8"]])
def test_from_scratch_preset_keeps_explicit_flags(module, spelling):
    """--from-scratch: the official cfg/gym/scratch values (budget per task), but an explicit --num-envs stays."""
    mod = importlib.import_module(f"cleandppo.{module}")
    args = arguments.parse_args(mod.Args, mod.task_defaults, argv=["--from-scratch", *spelling])
    preset = mod.task_defaults(mod.Args(from_scratch=True))
    assert preset["num_envs"] == 10 and args.num_envs == 8
    assert {k: getattr(args, k) for k in preset if k != "num_envs"} == {
        k: v for k, v in preset.items() if k != "num_envs"
    }
    assert (args.horizon_steps, args.act_steps, args.n_steps, args.update_epochs) == (1, 1, 1000, 10)
    assert args.total_timesteps == 301 * 10 * 1000  # Hopper: 301 iterations of 10 envs x 1000 steps
    walker = arguments.parse_args(mod.Args, mod.task_defaults, argv=["--from-scratch", "--env-id", "Walker2D-v2"])
    assert walker.total_timesteps == 501 * 10 * 1000 and walker.num_envs == 10
    if module == "dppo":
        assert (args.denoising_steps, args.ft_denoising_steps, args.gamma_denoising) == (10, 10, 1.0)
        assert (args.clip_ploss_coef, args.clip_ploss_coef_base, args.batch_size, args.actor_lr) == (
            0.1,
            0.1,
            5000,
            1e-4,
        )
    else:
        assert (args.batch_size, args.clip_coef, args.mlp_dims, args.std_max, args.actor_lr) == (
            500,
            0.1,
            (512, 512, 512),
            1.0,
            1e-4,
        )
