"""benchmark.sh's grid: two runs at a time locally, the budget check, and the same grid through Slurm (submitit).

The grid: DPPO and DRWR on avoid-m2 (pure numpy, bundled checkpoint), one iteration of 4 envs x 25 queries x 4 actions
= 400 env steps each (SIZES_<algo>). The Slurm test needs a controller that answers (scripts/local_slurm.sh makes one).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

GRID = dict(
    ALGOS="dppo drwr",
    TASKS="avoid-m2",
    SEEDS="0",
    BUDGET="400",
    SIZES_dppo="--num-envs 4 --n-steps 25 --eval-freq 1 --eval-episodes 4",
    SIZES_drwr="--num-envs 4 --n-steps 25 --batch-size 50 --eval-freq 1 --eval-episodes 4",
    PLOT_ARGS="--reps 100",  # few bootstrap resamples: the figures' time, not their numbers, matters here
)
FIGURES = ("grid.png", "grid.pdf", "curves_avoid-m2.png", "aggregate.png", "profile.pdf", "curves.csv")


def benchmark(out, **env):
    """`bash benchmark.sh` with GRID and `env`, its runs with the Python that runs the tests (not the PATH's)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHON": sys.executable, **GRID, **env}
    env["OUT"] = str(out)
    return subprocess.run(["bash", "benchmark.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def summary(out, algo):
    with open(out / f"avoid-m2__{algo}__0" / "summary.json") as f:
        return json.load(f)


def test_local_grid_two_workers_skips_finished_runs(tmp_path):
    proc = benchmark(tmp_path, WORKERS="2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    spans = []
    for algo in ("dppo", "drwr"):
        s = summary(tmp_path, algo)
        assert (s["algo"], s["env_steps"]) == (algo, 400)
        end = os.path.getmtime(tmp_path / f"avoid-m2__{algo}__0" / "summary.json")
        spans.append((end - s["wall_time_s"], end))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, "WORKERS=2: the two runs should overlap in time"
    for name in FIGURES:
        assert (tmp_path / "figures" / name).stat().st_size > 0, name
    assert "| avoid-m2 | dppo | 0 | 400 |" in proc.stdout  # summarize.py's table

    rerun = benchmark(tmp_path, WORKERS="2")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.count("(done already:") == 2
    for algo in ("dppo", "drwr"):
        assert os.path.getmtime(tmp_path / f"avoid-m2__{algo}__0" / "summary.json") in [s for _, s in spans]


def test_budget_below_one_iteration_stops_at_the_start(tmp_path):
    proc = benchmark(tmp_path / "out", BUDGET="399")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "BUDGET=399 is below one iteration of dppo on avoid-m2 (400 env steps = --num-envs x --n-steps x act steps); "
        "set BUDGET=400 or more"
    )
    assert not (tmp_path / "out").exists()


def slurm_unavailable():
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (bash scripts/local_slurm.sh installs and starts a one-node Slurm)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "the Slurm controller does not answer (bash scripts/local_slurm.sh starts one)"
    return None


@pytest.mark.skipif(slurm_unavailable() is not None, reason=str(slurm_unavailable()))
def test_slurm_grid_resubmission_is_safe(tmp_path):
    first = benchmark(tmp_path, SLURM="1")  # submits, does not wait
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "[slurm] submitted array" in first.stdout
    second = benchmark(tmp_path, SLURM="1", WAIT="1")  # both still queued or running: nothing submitted twice
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert second.stdout.count("(queued already: array task") == 2 and "[slurm] nothing to submit" in second.stdout
    for algo in ("dppo", "drwr"):
        assert summary(tmp_path, algo)["env_steps"] == 400
    assert (tmp_path / "figures" / "grid.png").exists()

    # an interrupted run (checkpoint_last.pt, no summary.json) is resubmitted and resumes in place
    os.remove(tmp_path / "avoid-m2__drwr__0" / "summary.json")
    third = benchmark(tmp_path, SLURM="1", WAIT="1")
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert "skip" in third.stdout and "avoid-m2__dppo__0 (done)" in third.stdout
    log = (tmp_path / "avoid-m2__drwr__0" / "stdout.log").read_text()
    assert f"--checkpoint {tmp_path}/avoid-m2__drwr__0/checkpoint_last.pt" in log
    assert "[resume] drwr run at iteration 1" in log
    assert summary(tmp_path, "drwr")["env_steps"] == 400
