"""benchmark.sh and scripts/slurm_grid.py under faults: bad variables, failed runs, a Slurm cluster's options, a busy
controller, a rerun after the array ended, TensorBoard's messages after a resume.

Slurm here is tests/fake_slurm.py (sbatch, squeue and srun on this machine, no cluster); the grid is test_grid.py's
(DPPO and DRWR on avoid-m2, 400 env steps each). A run made to fail gets a flag its script refuses (one line, at once).
"""

import os
import shlex
import subprocess
import sys

import fake_slurm
import pytest
import torch
from test_grid import benchmark, summary

from cleandppo import envs
from conftest import ROOT, TINY_DIFFUSION, run_main

torch.set_num_threads(1)
BAD_DRWR = "--num-envs 0"  # drwr.py refuses it in one line: "--num-envs must be >= 1, got 0; ..."
TABLE_ROW = "| avoid-m2 | dppo | 0 | 400 |"


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """The fake Slurm first on PATH; returns its state folder."""
    fake_slurm.install(tmp_path / "bin", tmp_path / "slurm_state")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "slurm_state"


def test_bad_grid_variables_stop_before_the_first_run_in_one_line_each(tmp_path):
    out = tmp_path / "out"
    proc = benchmark(out, ALGOS="foo dppo", TASKS="Foo-v0 avoid-m2", BUDGET="abc", SEEDS="x 1", WORKERS="0")
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[:4] == [
        "ALGOS: unknown algorithm 'foo'; choose from: dppo gaussian_ppo gmm_ppo drwr dawr dipo idql dql qsm "
        "exact_likelihood_pg",
        "SEEDS: 'x' is not a whole number >= 0; e.g. SEEDS=\"0 1 2\"",
        "BUDGET=abc is not a whole number >= 1; e.g. BUDGET=1000000",
        "WORKERS=0 is not a whole number >= 1; e.g. WORKERS=2",
    ]
    assert len(lines) == 5 and lines[4].startswith("TASKS: unknown task 'Foo-v0'; known ids: Hopper-v2,")
    assert not out.exists()

    no_torch = tmp_path / "python-without-torch"  # what `python` on a PATH without the project's environment is
    no_torch.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    no_torch.chmod(0o755)
    proc = benchmark(out, PYTHON=str(no_torch))
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip() == (
        f"PYTHON={no_torch} cannot import the scripts' packages (ModuleNotFoundError: No module named 'torch'); "
        "set PYTHON to the Python of this project's environment, e.g. PYTHON=.venv/bin/python "
        "(pip install -r requirements.txt)"
    )


def test_a_failed_run_leaves_the_table_of_the_others_then_a_non_zero_exit(tmp_path, slurm):
    """Locally, then through Slurm with WAIT=1 (the finished DPPO run is skipped, DRWR fails again); a grid where
    every run failed exits non-zero too."""
    proc = benchmark(tmp_path, SIZES_drwr=BAD_DRWR)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert TABLE_ROW in proc.stdout and "| drwr |" not in proc.stdout
    assert f"figures: {tmp_path}/figures" in proc.stdout and (tmp_path / "figures" / "grid.png").exists()
    tail = proc.stdout[proc.stdout.index("[grid] 1 of 2 runs unfinished") :]  # listed after the table
    assert f"{tmp_path}/avoid-m2__drwr__0: error: --num-envs must be >= 1, got 0" in tail

    proc = benchmark(tmp_path, SIZES_drwr=BAD_DRWR, SLURM="1", WAIT="1", CLEANDPPO_SQUEUE_BACKOFF="0.1")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "skip" in proc.stdout and "avoid-m2__dppo__0 (done)" in proc.stdout
    assert TABLE_ROW in proc.stdout and "[grid] 1 of 2 runs unfinished" in proc.stdout

    every = benchmark(tmp_path / "all", ALGOS="drwr", SIZES_drwr=BAD_DRWR)
    assert every.returncode == 1 and "[grid] no run has finished" in every.stdout
    assert "[grid] 1 of 1 runs unfinished" in every.stdout


def test_slurm_grid_takes_the_cluster_options_names_both_job_ids_and_draws_after_the_array(tmp_path, slurm):
    out = tmp_path / "out"
    options = dict(
        ACCOUNT="proj42",
        QOS="high",
        CONSTRAINT="a100|h100",
        EXCLUDE="node[01-02]",
        RESERVATION="course",
        SBATCH_ARGS="--mail-type=END --nice=10",
        SETUP=f"export GRID_SETUP=1\necho setup ran >> {out}/setup.log",
        SIGNAL_DELAY_S="120",
        MAX_TIMEOUTS="5",
    )
    proc = benchmark(out, SLURM="1", WAIT="1", CLEANDPPO_SQUEUE_BACKOFF="0.1", **options)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    script = (slurm / "1000.sbatch").read_text()
    sbatch = dict(account="proj42", qos="high", constraint="a100|h100", exclude="node[01-02]", reservation="course")
    sbatch.update({"mail-type": "END", "nice": "10", "signal": "USR2@120"})
    for name, value in sbatch.items():  # submitit quotes a value as the shell would need (sbatch reads it so)
        assert f"#SBATCH --{name}={shlex.quote(value)}\n" in script, (name, script)
    assert "\n# setup\nexport GRID_SETUP=1\necho setup ran" in script
    assert (out / "setup.log").read_text() == "setup ran\n" * 2  # each task ran the setup lines
    from submitit.core.utils import DelayedSubmission

    assert DelayedSubmission.load(out / "slurm" / "logs" / "1000_0_submitted.pkl")._timeout_countdown == 5
    for task, algo in enumerate(("dppo", "drwr")):
        assert summary(out, algo)["env_steps"] == 400
        log = (out / f"avoid-m2__{algo}__0" / "stdout.log").read_text()
        assert f"[slurm] array task 1000_{task} (SLURM_JOB_ID {1001 + task}) on " in log
        assert f"  array task 1000_{task}: {out}/avoid-m2__{algo}__0" in proc.stdout
    assert TABLE_ROW in proc.stdout

    # the array has ended: the same command without WAIT submits nothing and draws the table and the figures
    os.remove(out / "figures" / "grid.png")
    again = benchmark(out, SLURM="1", CLEANDPPO_SQUEUE_BACKOFF="0.1", **options)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "[slurm] nothing to submit" in again.stdout and TABLE_ROW in again.stdout
    assert (out / "figures" / "grid.png").exists()


def slurm_grid(grid, *flags, **env):
    env = {**os.environ, "CLEANDPPO_SQUEUE_BACKOFF": "0.05", **env}
    return subprocess.run(
        [sys.executable, "scripts/slurm_grid.py", str(grid), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def queued_run(tmp_path, slurm):
    """A grid of one run whose array task 500_0 is still pending in the fake Slurm."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "slurm_job_id").write_text("500_0")
    (slurm / "500.sbatch").write_text("#!/bin/bash\n")
    (slurm / "500_0.pending").write_text("")
    (tmp_path / "grid.tsv").write_text(f"{run}\ttrue\n")
    return tmp_path / "grid.tsv"


def test_an_squeue_error_is_retried_and_never_read_as_not_queued(tmp_path, slurm):
    grid = queued_run(tmp_path, slurm)
    (slurm / "squeue_failures").write_text("2")  # a busy controller, twice
    proc = slurm_grid(grid)
    assert proc.returncode == 0, proc.stderr
    assert "(queued already: array task 500_0)" in proc.stdout and "[slurm] nothing to submit" in proc.stdout
    assert not (slurm / "next_id").exists()  # nothing submitted

    (slurm / "squeue_failures").write_text("100")  # a controller that stays down: one line, nothing submitted
    proc = slurm_grid(grid, "--wait")
    assert proc.returncode == 2 and not (slurm / "next_id").exists()
    assert proc.stderr.strip() == (
        "[slurm] error: squeue -j 500_0 failed 5 times (squeue: error: slurm_load_jobs error: Socket timed out on "
        "send/recv operation); the Slurm controller may be busy or down: rerun this command later (finished runs are "
        "kept; nothing was submitted twice)"
    )


def test_a_job_slurm_no_longer_knows_is_not_queued(tmp_path, slurm):
    grid = queued_run(tmp_path, slurm)
    (tmp_path / "run" / "slurm_job_id").write_text("7_0")  # purged from the controller: "Invalid job id specified"
    proc = slurm_grid(grid, "--wait", "--poll", "0.2")
    assert "[slurm] submitted job 1000: 1 run;" in proc.stdout, proc.stdout + proc.stderr  # one run: a plain job
    assert proc.returncode == 1 and "[slurm] grid done: 0 runs finished, 1 not" in proc.stdout  # `true` wrote none
    assert "[slurm] job 1000 (not an array task) on " in (tmp_path / "run" / "stdout.log").read_text()


def test_the_table_of_a_resumed_run_has_no_tensorboard_messages(tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    """A run killed after flushing iteration 2's curves but before its checkpoint, then resumed: its event files hold
    steps the resume logs again, which TensorBoard drops with an "out of order" warning that stays out of the table."""
    from cleandppo import dppo

    class Killed(BaseException):
        pass

    save = envs.save_checkpoint

    def killed_saving_iteration_2(ckpt, path):
        if ckpt["iteration"] == 2:
            raise Killed()
        save(ckpt, path)

    run = tmp_path / "runs" / "hopper-v2__dppo__0"
    flags = [*TINY_DIFFUSION, *"--num-envs 2 --n-steps 4 --batch-size 8 --eval-episodes 1 --eval-freq 1".split()]
    flags += ["--critic-dims", "16", "16", "16", "--total-timesteps", "96", "--checkpoint"]
    with monkeypatch.context() as patch:
        patch.setattr(envs, "save_checkpoint", killed_saving_iteration_2)
        with pytest.raises(Killed):
            run_main(dppo, *flags, tiny_diffusion_checkpoint, "--run-dir", run)
    run_main(dppo, *flags, run / "checkpoint_last.pt")
    proc = subprocess.run(
        [sys.executable, "scripts/summarize.py", str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.count("\n") == 3 and "| Hopper-v2 | dppo | 0 | 96 |" in proc.stdout


def test_a_run_dir_with_only_numbered_checkpoints_is_never_overwritten(tmp_path, slurm):
    """Events and checkpoint_2.pt but no checkpoint_last.pt: not "stopped before its first iteration" (which the grid
    restarts with --overwrite); the script refuses the dir in one line naming the checkpoint, locally and on Slurm."""
    run = tmp_path / "avoid-m2__dppo__0"
    run.mkdir()
    (run / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    (run / "checkpoint_2.pt").write_bytes(b"iteration 2")
    for mode in ({}, {"SLURM": "1", "WAIT": "1"}):
        proc = benchmark(tmp_path, ALGOS="dppo", CLEANDPPO_SQUEUE_BACKOFF="0.1", **mode)
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert f"resume it with --checkpoint {run}/checkpoint_2.pt" in proc.stdout
        assert (run / "checkpoint_2.pt").read_bytes() == b"iteration 2"
