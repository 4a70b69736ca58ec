"""scripts/speed.py --quick at tiny sizes: every phase is measured and printed, the ratios are numbers (the values
themselves depend on the machine and its load, so only their structure is checked)."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

PHASES = [
    "raw simulator, 1 process",
    "raw simulator, 2 worker processes",
    "vector env (make_vec_env)",
    "vector env, 2 worker processes",
    "dppo rollout",
    "dppo rollout, 2 worker processes",
    "dppo rollout, 1 worker process, 2 parts each",  # the overlapped rollout (--rollout-parts)
    "dppo rollout, 2 worker processes, 2 parts each",
    "gaussian_ppo rollout",
    "gmm_ppo rollout",
    "DPPO old log-probs",
    "DPPO update",
    "torch matmul, the update's GEMMs",
    "torch matmul, the old log-probs' GEMMs",
    "DPPO iteration",
    "DPPO iteration: rollout",
    "DPPO iteration: update",
    "dppo.main, the whole call",
]


def speed_report(tmp_path, flags: str) -> tuple[str, dict]:
    """Run scripts/speed.py --quick with `flags` and --json; (its stdout, the JSON report)."""
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "speed.py"), "--quick", *flags.split(), "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_quick_report_has_every_phase_and_numeric_ratios(tmp_path):
    tiny = "--seconds 0.05 --num-envs 4 --n-steps 2 --procs 2 --batch-size 20 --iter-batch-size 8 --update-epochs 1"
    tiny += " --parts 2"
    text, report = speed_report(tmp_path, f"{tiny} --threads 2")
    assert "\nSpeed report: Hopper-v2, commit " in text and "load average" in text

    # the table: every phase, the torch phases at 1 and at 2 threads
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| -")][1:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert {c[0] for c in cells} == set(PHASES)
    for phase in ("dppo rollout", "gaussian_ppo rollout", "gmm_ppo rollout", "DPPO update", "DPPO old log-probs"):
        assert {c[1] for c in cells if c[0] == phase} == {"1", "2"}, phase
    assert all(float(c[2]) > 0 for c in cells)
    timed = [c for c in cells if not c[0].startswith(("DPPO iteration", "dppo.main"))]  # measured round-robin
    assert all(c[4].endswith("x") and float(c[4][:-1]) >= 1 for c in timed)  # their spread over the rounds

    # the ratios: one "name: number" line each, the ones the report is for among them
    ratios = dict(re.findall(r"^  (.+): (-?\d+\.\d+)$", text.split("\nratios")[1], flags=re.M))
    for needle in (
        "dppo rollout / raw simulator, 1 thread",
        "vector env: 2 worker processes / this process",
        "dppo rollout, 1 thread: 2 worker processes / this process",
        "dppo rollout, 1 worker process, 2 parts each / 2 worker processes in one part, 1 thread",
        "gaussian_ppo rollout / raw simulator, 2 threads",
        "gmm_ppo rollout: 1 thread / 2 threads",
        "DPPO update GFLOP/s / matmul GFLOP/s, 2 threads",
        "DPPO old log-probs GFLOP/s / matmul GFLOP/s, 1 thread",
        "DPPO iteration: update share",
    ):
        assert needle in ratios, (needle, sorted(ratios))
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in ratios.values())

    assert set(report["ratios"]) == set(ratios) and len(report["rows"]) == len(cells)
    assert {"date", "commit", "cores", "torch", "load_before", "load_after"} <= set(report["machine"])
    it = {r["phase"]: r["value"] for r in report["rows"] if r["phase"].startswith("DPPO iteration")}
    assert it["DPPO iteration"] >= it["DPPO iteration: rollout"] + it["DPPO iteration: update"] - 1e-6


def test_executed_steps_counts_the_envs_whose_episode_ended_too():
    """A vector step where every env ended has no `env_steps` at the top level (the same-step auto-reset moved each
    env's info to `final_info`); where some ended, both hold part of the count."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed", os.path.join(ROOT, "scripts", "speed.py"))
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    every_env_ended = dict(final_info=dict(env_steps=[2, 3], _env_steps=[True, True]), _final_info=[True, True])
    assert speed.executed_steps(every_env_ended) == 5
    one_ended = dict(
        env_steps=[4, 0], _env_steps=[True, False], final_info=dict(env_steps=[0, 1], _env_steps=[False, True])
    )
    assert speed.executed_steps(one_ended) == 5
    assert speed.executed_steps(dict(env_steps=[4, 4], _env_steps=[True, True])) == 8


def plural(threads):
    return f"{threads} thread{'s' * (threads != 1)}"


def test_update_only_report_times_the_baseline_update_beside_this_one(tmp_path):
    """--update-only measures only the DPPO old log-probs and update phases; --baseline COMMIT adds that commit's
    chain_log_probs and ppo_update (git show) on the same batch in the same rounds, at each thread count, and their
    pairs/s ratios."""
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("--baseline reads a commit with git show: not a git checkout")
    tiny = "--seconds 0.05 --num-envs 2 --n-steps 3 --batch-size 20 --threads 2"
    _, report = speed_report(tmp_path, f"--update-only --baseline HEAD {tiny}")
    phases = {(r["phase"], r["threads"], r["unit"]) for r in report["rows"]}
    update_phases = {"DPPO old log-probs", "DPPO update", "DPPO old log-probs at HEAD", "DPPO update at HEAD"}
    update_phases |= {"torch matmul, the update's GEMMs", "torch matmul, the old log-probs' GEMMs"}
    assert {p for p, _, _ in phases} == update_phases
    for threads in (1, 2):
        for phase in ("DPPO old log-probs", "DPPO update"):
            assert {(f"{phase} at HEAD", threads, "pairs/s"), (f"{phase} at HEAD", threads, "GFLOP/s")} <= phases
            assert f"{phase} pairs/s: this code / HEAD, {plural(threads)}" in report["ratios"]
    assert all(math.isfinite(v) and v > 0 for v in report["ratios"].values())
    assert not any(name.startswith(("raw", "dppo rollout", "DPPO iteration")) for name in report["ratios"])


def test_iterations_only_times_a_whole_iteration_of_the_baseline_commit_beside_this_code(tmp_path):
    """--iterations-only --baseline COMMIT: one whole dppo.py iteration of this checkout and one of COMMIT's (a git
    worktree, removed afterwards), each in a process of its own, at 1 thread and at each code's own choice; rows of
    their iteration, rollout and update times and the ratios COMMIT / this code."""
    if not os.path.exists(os.path.join(ROOT, ".git")):
        pytest.skip("--baseline checks a commit out with git worktree: not a git checkout")
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    tiny = "--num-envs 2 --n-steps 2 --iter-batch-size 8 --update-epochs 1"
    _, report = speed_report(tmp_path, f"--iterations-only --baseline HEAD {tiny}")
    rows = {(r["phase"].rsplit(", ", 1)[0], r["threads"]) for r in report["rows"]}
    assert rows == {
        (f"DPPO {part}", threads) for part in ("iteration", "rollout", "update") for threads in ("1", "own")
    }
    assert len(report["rows"]) == 12  # each of the two codes
    expected = {
        f"DPPO {part}, HEAD / this code, threads {t}"
        for part in ("iteration", "rollout", "update")
        for t in "1 own".split()
    }
    assert set(report["ratios"]) == expected
    assert all(math.isfinite(v) and v > 0 for v in report["ratios"].values())
    assert subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout == worktrees
