"""A run under real faults: numbered checkpoints mark a run, two runs into one dir, a full disk, wall time over resumed
segments, a resume with nothing left to do, strict summary.json, and inputs that used to end in a traceback.

Every run here is tiny (tests/test_runs.py's DPPO_TINY, or Avoid with its bundled checkpoint) and in-process; the
lock test holds the run dir's lock from a second process, as a second run would."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cleandppo import envs, runs
from conftest import ROOT, TINY_DIFFUSION, assert_one_line_error, main_fails, read_summary, run_main, tiny_dppo_args

torch.set_num_threads(1)
DPPO_TINY = [
    *TINY_DIFFUSION,
    *"--num-envs 2 --n-steps 4 --batch-size 8 --eval-episodes 1 --eval-freq 2 --critic-dims 16 16 16".split(),
]


def strict_json(path):
    """The file parsed as strict JSON (NaN and Infinity are not JSON)."""

    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    with open(path) as f:
        return json.load(f, parse_constant=refuse)


def dppo_args(run_dir, checkpoint, **fields):
    return tiny_dppo_args(run_dir, checkpoint, **{"total_timesteps": 64, **fields})


# ---- a dir that holds only numbered checkpoints holds a run ---------------------------------------------------------
def test_a_dir_with_only_a_numbered_checkpoint_is_a_run_and_is_not_overwritten(tiny_diffusion_checkpoint, tmp_path):
    from cleandppo import dppo

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_2.pt").write_bytes(b"iteration 2 of an earlier run")
    main_fails(
        dppo,
        dppo_args(run, tiny_diffusion_checkpoint),
        "already holds a run",
        f"resume it with --checkpoint {run / 'checkpoint_2.pt'}",
        "--overwrite",
        writes_nothing=False,
    )
    assert (run / "checkpoint_2.pt").read_bytes() == b"iteration 2 of an earlier run"
    assert sorted(os.listdir(run)) == ["checkpoint_2.pt"]


# ---- two runs into one dir: the second is refused while the first holds it; a killed one leaves no stale lock --------
def hold_lock(run_dir):
    """A second process that locks `run_dir` as a run does (runs.lock_run_dir) and then sleeps; returns it, locked."""
    code = (
        f"import os; from cleandppo import runs; os.makedirs({str(run_dir)!r}); runs.lock_run_dir({str(run_dir)!r}); "
        "print('locked', flush=True); input()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_a_locked_dir_is_refused_and_a_killed_run_leaves_no_lock(tiny_diffusion_checkpoint, tmp_path):
    from cleandppo import dppo

    run = tmp_path / "run"
    args = dppo_args(run, tiny_diffusion_checkpoint)
    assert runs.prepare_run_dir(args, "dppo") == str(run)  # both runs found the dir free ...
    other = hold_lock(run)  # ... and the other one opened it first
    try:
        with pytest.raises(SystemExit) as e:
            runs.open_run(str(run), args)
        assert_one_line_error(str(e.value), f"--run-dir {run} is in use by another run (pid {other.pid} on")
        assert not [n for n in os.listdir(run) if n.startswith("events.out")]  # nothing written into the other's run
        main_fails(dppo, args, f"is in use by another run (pid {other.pid}", writes_nothing=False)  # checked up front
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait(timeout=30)
    dppo.main(args)  # the killed holder's lock went with it
    read_summary(run, env_steps=64)


# ---- a full disk: one line, no temporary file, the previous checkpoint stays ---------------------------------------
def test_a_full_disk_stops_in_one_line_and_keeps_the_last_checkpoint(tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    """From iteration 2 on, checkpoint_last.pt.tmp is /dev/full: the real torch.save hits ENOSPC there."""
    from cleandppo import dppo

    run, finished, count = tmp_path / "run", envs.finished_episodes, [0]

    def fill_disk_in_iteration_2(infos):  # vector steps 1-4: iteration 1, 5-8: iteration 2
        count[0] += 1
        if count[0] == 5:
            os.symlink("/dev/full", run / "checkpoint_last.pt.tmp")
        return finished(infos)

    monkeypatch.setattr(envs, "finished_episodes", fill_disk_in_iteration_2)
    msg = main_fails(
        dppo,
        dppo_args(run, tiny_diffusion_checkpoint, eval_freq=100),
        f"cannot write {run / 'checkpoint_last.pt'} (No space left on device",
        "free some space",
        f"resume with --checkpoint {run / 'checkpoint_last.pt'}",
        writes_nothing=False,
    )
    assert "MB free there" in msg
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["iteration"] == 1


def test_a_full_disk_at_the_summary_or_the_curves_is_one_line_too(tmp_path, monkeypatch):
    import dataclasses
    import errno

    @dataclasses.dataclass
    class A:
        env_id: str = "Hopper-v2"
        seed: int = 0

    os.symlink("/dev/full", tmp_path / "summary.json.tmp")
    with pytest.raises(SystemExit) as e:
        runs.write_summary(str(tmp_path), "dppo", A(), 10, 1.5, 3.0, 4.0, 5.0)
    assert_one_line_error(str(e.value), f"cannot write {tmp_path / 'summary.json'} (No space left on device")
    assert os.listdir(tmp_path) == []

    def events_on_a_full_disk():  # TensorBoard's writer raises where the script logs next
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(runs._run, "dir", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        runs.run_cli(events_on_a_full_disk)
    assert_one_line_error(str(e.value), f"cannot write {tmp_path} (No space left on device", "free some space")


# ---- wall time over segments; a resume with nothing left to do; strict JSON ----------------------------------------
class Killed(BaseException):
    """kill -9: the run stops where it is."""


def test_wall_time_adds_up_over_resumed_segments(tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    from cleandppo import dppo

    run, finished, count = tmp_path / "run", envs.finished_episodes, [0]
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_TINY, "--total-timesteps", "96"]

    def killed_in_iteration_2(infos):
        count[0] += 1
        if count[0] == 6:
            raise Killed()
        return finished(infos)

    t0 = time.time()
    with monkeypatch.context() as patch:
        patch.setattr(envs, "finished_episodes", killed_in_iteration_2)
        with pytest.raises(Killed):
            run_main(dppo, *flags, "--run-dir", run)
    first = time.time() - t0
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert ckpt["iteration"] == 1 and 0 < ckpt["wall_time_s"] < first
    ckpt["wall_time_s"] = 1000.0  # as if the earlier segments had taken 1000 s
    torch.save(ckpt, run / "checkpoint_last.pt")
    t0 = time.time()
    run_main(dppo, "--checkpoint", run / "checkpoint_last.pt", *flags[2:])
    second = time.time() - t0
    wall = strict_json(run / "summary.json")["wall_time_s"]
    assert 1000.0 < wall < 1000.0 + second
    assert 1000.0 < torch.load(run / "checkpoint_last.pt", weights_only=False)["wall_time_s"] <= wall


def test_a_resume_from_the_final_checkpoint_keeps_the_finished_summary(tiny_diffusion_checkpoint, tmp_path):
    from cleandppo import dppo

    run = tmp_path / "run"
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_TINY, "--total-timesteps", "64", "--eval-freq", "1"]
    run_main(dppo, *flags, "--run-dir", run)
    finished = (run / "summary.json").read_text()
    run_main(dppo, "--checkpoint", run / "checkpoint_last.pt", *flags[2:])  # nothing left to do: summary kept
    assert (run / "summary.json").read_text() == finished

    # killed after its final checkpoint, before its summary: the resume writes the checkpoint's evaluations and time
    os.remove(run / "summary.json")
    run_main(dppo, "--checkpoint", run / "checkpoint_last.pt", *flags[2:])
    summary, before = strict_json(run / "summary.json"), json.loads(finished)
    for key in ("env_steps", "pretrained_eval_return", "final_eval_return", "best_eval_return"):
        assert summary[key] == before[key], key
    assert np.isfinite(summary["final_eval_return"])
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert summary["wall_time_s"] == ckpt["wall_time_s"] > 0.01


def test_summary_json_is_strict_with_null_for_missing_numbers(tmp_path):
    import dataclasses

    @dataclasses.dataclass
    class A:
        env_id: str = "Hopper-v2"
        seed: int = 0
        logprob_min: float = float("-inf")

    runs.write_summary(
        str(tmp_path), "dppo", A(), 10, 1.5, 3.0, float("nan"), float("-inf"), (0.5, np.float32(1), None)
    )
    s = strict_json(tmp_path / "summary.json")
    assert (s["pretrained_eval_return"], s["final_eval_return"], s["best_eval_return"]) == (3.0, None, None)
    assert (s["final_eval_success_rate"], s["best_eval_success_rate"], s["args"]["logprob_min"]) == (1.0, None, None)
    assert os.listdir(tmp_path) == ["summary.json"]


def test_summary_code_version_is_null_outside_a_git_checkout(tmp_path, monkeypatch):
    """The package copied outside any git checkout, or no git program: git_commit and git_dirty are null."""
    import dataclasses

    @dataclasses.dataclass
    class A:
        env_id: str = "Hopper-v2"
        seed: int = 0

    assert subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True).returncode != 0
    monkeypatch.setattr(runs, "__file__", str(tmp_path / "cleandppo" / "runs.py"))
    runs.write_summary(str(tmp_path), "dppo", A(), 10, 1.5, 3.0, 4.0, 5.0)
    s = strict_json(tmp_path / "summary.json")
    assert (s["git_commit"], s["git_dirty"]) == (None, None) and s["final_eval_return"] == 4.0
    monkeypatch.setattr(runs, "__file__", os.path.join(ROOT, "cleandppo", "runs.py"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run
    assert runs.code_version() == dict(git_commit=None, git_dirty=None)


def test_summary_code_version_of_a_git_checkout(tmp_path):
    """A checkout with one commit: its full hash, clean; then dirty with an untracked file, and with an edit."""

    def git(*command):
        user = ["-c", "user.name=t", "-c", "user.email=t@t"]
        return subprocess.run(["git", *user, "-C", str(tmp_path), *command], capture_output=True, text=True, check=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD").stdout.strip()
    assert len(head) == 40 and runs.code_version(str(tmp_path)) == dict(git_commit=head, git_dirty=False)
    (tmp_path / "b.py").write_text("")
    assert runs.code_version(str(tmp_path)) == dict(git_commit=head, git_dirty=True)
    os.remove(tmp_path / "b.py")
    (tmp_path / "a.py").write_text("x = 2\n")
    assert runs.code_version(str(tmp_path)) == dict(git_commit=head, git_dirty=True)


# ---- inputs that used to end in a traceback ------------------------------------------------------------------
def test_ddim_steps_zero_is_one_line(tmp_path):
    from cleandppo import dppo

    main_fails(dppo, dppo.Args(ddim_steps=0, run_dir=str(tmp_path / "r")), "--ddim-steps must be >= 1, got 0")


def test_a_bad_npz_dataset_is_one_line(tmp_path):
    from cleandppo import dppo

    np.save(tmp_path / "array.npy", np.zeros(3))
    os.replace(tmp_path / "array.npy", tmp_path / "renamed.npz")
    (tmp_path / "garbage.npz").write_bytes(bytes(range(256)) * 4)
    np.savez(tmp_path / "whole.npz", states=np.zeros((4, 11)))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "whole.npz").read_bytes()[:200])
    for name, needle in [
        ("missing.npz", "does not exist"),
        ("renamed.npz", "holds one .npy array, not an .npz archive"),
        ("garbage.npz", "cannot read"),
        ("truncated.npz", "cannot read"),
    ]:
        args = dppo.Args(dataset=str(tmp_path / name), pretrain_only=True, run_dir=str(tmp_path / "r"))
        main_fails(dppo, args, str(tmp_path / name), needle, "pass an official train.npz")


def test_a_resume_with_another_num_envs_names_the_flag(tmp_path):
    """Avoid's batched vector env (the reshape error of the issue) and a Gym vector env alike."""
    from cleandppo import dppo

    avoid = "--env-id avoid-m2 --n-steps 25 --eval-episodes 2 --eval-freq 1 --total-timesteps 800".split()
    run_main(dppo, *avoid, "--num-envs", "4", "--run-dir", tmp_path / "avoid")
    with pytest.raises(SystemExit) as e:
        run_main(dppo, *avoid, "--num-envs", "2", "--checkpoint", tmp_path / "avoid" / "checkpoint_last.pt")
    assert_one_line_error(str(e.value), "this checkpoint ran 4 envs", "pass --num-envs 4")


def test_a_gym_resume_with_another_num_envs_names_the_flag(tiny_diffusion_checkpoint, tmp_path):
    from cleandppo import dppo

    run = tmp_path / "run"
    dppo.main(dppo_args(run, tiny_diffusion_checkpoint, total_timesteps=32))
    resumed = dppo_args(run, str(run / "checkpoint_last.pt"), num_envs=4, total_timesteps=64)
    main_fails(dppo, resumed, "this checkpoint ran 2 envs", "pass --num-envs 2", writes_nothing=False)
