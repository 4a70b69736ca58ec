"""scripts/plot_results.py on synthetic runs with known evaluations: the curves' means, the normalized scores and the
interquartile mean, computed here by hand, and the figure files.

Two tasks x two algorithms x two seeds. task-a logs returns only (min-max normalized over its evaluations: 10..30),
task-b also success rates (its score, as is). Half the runs are named <env>__<algo>__<seed>, the other half carry their
identity in summary.json only.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from conftest import ROOT

STEPS = (0, 100, 200)
RETURNS = {  # task-a: (algo, seed) -> eval/episodic_return at STEPS
    ("dppo", 0): (10, 15, 20),
    ("dppo", 1): (10, 25, 30),
    ("drwr", 0): (10, 12, 14),
    ("drwr", 1): (10, 16, 18),
}
SUCCESS = {  # task-b: eval/success_rate at STEPS (its returns: 100 x the rate)
    ("dppo", 0): (0.1, 0.2, 0.3),
    ("dppo", 1): (0.1, 0.5, 0.7),
    ("drwr", 0): (0.0, 0.6, 0.9),
    ("drwr", 1): (0.2, 0.2, 0.1),
}


def write_run(root, task, algo, seed, returns, success=None):
    name = f"{task}__{algo}__{seed}" if seed == 0 else f"run-{task}-{algo}-{seed}"
    run_dir = os.path.join(root, name)
    writer = SummaryWriter(run_dir)
    for i, step in enumerate(STEPS):
        writer.add_scalar("eval/episodic_return", returns[i], step)
        writer.add_scalar("charts/episodic_return", -1000.0, step)  # not an evaluation: never read
        if success is not None:
            writer.add_scalar("eval/success_rate", success[i], step)
    writer.close()
    if seed != 0:  # identity from summary.json (the folder name says nothing)
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(dict(algo=algo, env_id=task, seed=seed, env_steps=STEPS[-1]), f)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_plot_results_curves_scores_iqm(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "figures"
    for (algo, seed), returns in RETURNS.items():
        write_run(runs, "task-a", algo, seed, returns)
    for (algo, seed), rates in SUCCESS.items():
        write_run(runs, "task-b", algo, seed, [100 * r for r in rates], rates)
    (runs / "not-a-run").mkdir()  # no events: ignored
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts", "plot_results.py"),
            str(runs),
            "--out",
            str(out),
            "--reps",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    # curves: mean, min and max over the two seeds at each step (task-a dppo at 100: 15 and 25)
    curves = {(r["task"], r["algo"], r["metric"], int(r["env_step"])): r for r in read_csv(out / "curves.csv")}
    row = curves[("task-a", "dppo", "return", 100)]
    assert (int(row["seeds"]), float(row["mean"]), float(row["min"]), float(row["max"])) == (2, 20.0, 15.0, 25.0)
    assert float(curves[("task-a", "drwr", "return", 200)]["mean"]) == 16.0  # (14 + 18) / 2
    assert abs(float(curves[("task-b", "drwr", "success", 100)]["mean"]) - 0.4) < 1e-6  # (0.6 + 0.2) / 2 in float32
    assert ("task-a", "dppo", "success", 0) not in curves  # task-a logs no success rate
    assert len(curves) == 2 * 3 + 2 * 2 * 3  # task-a: returns; task-b: returns and success, 3 steps each

    # scores: the last evaluation; task-a normalized by min-max over all its evaluations (10 and 30), task-b's rate
    scores = {(r["task"], r["algo"], int(r["seed"])): float(r["score"]) for r in read_csv(out / "scores.csv")}
    expected = {
        ("task-a", "dppo", 0): (20 - 10) / 20,
        ("task-a", "dppo", 1): (30 - 10) / 20,
        ("task-a", "drwr", 0): (14 - 10) / 20,
        ("task-a", "drwr", 1): (18 - 10) / 20,
        ("task-b", "dppo", 0): 0.3,
        ("task-b", "dppo", 1): 0.7,
        ("task-b", "drwr", 0): 0.9,
        ("task-b", "drwr", 1): 0.1,
    }
    assert scores.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(scores[key] - value) < 1e-6, key

    # IQM of 4 scores = mean of the middle two: dppo {0.3, 0.5, 0.7, 1.0} -> 0.6, drwr {0.1, 0.2, 0.4, 0.9} -> 0.3
    aggregate = {(r["algo"], r["metric"]): r for r in read_csv(out / "aggregate.csv")}
    for algo, iqm, mean in (("dppo", 0.6, 2.5 / 4), ("drwr", 0.3, 1.6 / 4)):
        row = aggregate[(algo, "IQM")]
        assert abs(float(row["estimate"]) - iqm) < 1e-6
        assert float(row["ci_low"]) <= iqm <= float(row["ci_high"])
        assert float(row["ci_low"]) < float(row["ci_high"])  # seeds differ: the bootstrap spreads
        assert abs(float(aggregate[(algo, "Mean")]["estimate"]) - mean) < 1e-6

    # performance profile at tau = 0.5: fraction of the 4 runs scoring above it (dppo: 0.7, 1.0; drwr: 0.9)
    profile = {(r["algo"], round(float(r["tau"]), 6)): float(r["fraction"]) for r in read_csv(out / "profile.csv")}
    assert profile[("dppo", 0.5)] == 0.5 and profile[("drwr", 0.5)] == 0.25

    for name in ("curves_task-a", "curves_task-b", "grid", "aggregate", "profile"):
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, f"{name}.{ext}"


def load_plot_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_results", os.path.join(ROOT, "scripts", "plot_results.py"))
    plot_results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot_results)
    return plot_results


def test_run_identity_from_summary_or_folder_name(tmp_path):
    plot_results = load_plot_results()
    run = tmp_path / "m2__dppo-k10__s1"
    run.mkdir()
    assert plot_results.run_identity(str(run)) == ("m2", "dppo-k10", 1)  # no summary: the folder name, s<seed> too
    (run / "summary.json").write_text(json.dumps(dict(env_id="avoid-m2", algo="dppo", seed=1)))
    assert plot_results.run_identity(str(run)) == ("avoid-m2", "dppo", 1)  # summary.json wins by default
    assert plot_results.run_identity(str(run), from_folder=True) == ("m2", "dppo-k10", 1)
    default_dir = tmp_path / "hopper-v2__dppo__0__1795770000"  # a script's default run dir name
    default_dir.mkdir()
    assert plot_results.run_identity(str(default_dir)) == ("hopper-v2", "dppo", 0)
    assert plot_results.run_identity(str(tmp_path)) is None


def test_a_curve_of_one_evaluation_is_drawn():
    """A line through a single point draws nothing: short curves carry a marker at each evaluation."""
    import matplotlib.pyplot as plt

    plot_results = load_plot_results()
    runs = {("t", "dppo"): {0: {"return": {0: 5.0}}}, ("t", "drwr"): {0: {"return": {0: 4.0, 100: 6.0}}}}
    fig, ax = plt.subplots()
    plot_results.plot_curve(ax, runs, "t", "return", ["dppo", "drwr"])
    assert [len(line.get_xdata()) for line in ax.lines] == [1, 2]
    assert all(line.get_marker() not in (None, "", "None", " ") for line in ax.lines)
    plt.close(fig)


def test_a_score_from_the_first_evaluation_is_warned(capsys):
    """A run with no evaluation after its first (at or before --at) is scored by the policy it started from."""
    plot_results = load_plot_results()
    runs = {("t", "dppo"): {0: {"return": {0: 5.0}}}, ("t", "drwr"): {0: {"return": {0: 4.0, 100: 8.0}}}}
    algos, metric, reference = ["dppo", "drwr"], {"t": "return"}, {"t": (0.0, 10.0)}
    scores, rows, starting = plot_results.run_scores(runs, ["t"], algos, metric, reference, None)
    assert (scores["dppo"]["t"][0], scores["drwr"]["t"][0]) == (0.5, 0.8) and starting == {"dppo": 1}
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[warn]")]
    assert warnings == [
        "[warn] t dppo seed 0: scored by its first evaluation (env step 0), the policy it started from; it has no "
        "later evaluation"
    ]
    _, _, starting = plot_results.run_scores(runs, ["t"], algos, metric, reference, 50)  # drwr read at <= 50 too
    assert starting == {"dppo": 1, "drwr": 1}
    assert "no later evaluation at or before --at" in capsys.readouterr().out


def test_aggregate_tick_labels_do_not_overlap(tmp_path, monkeypatch):
    """Narrow confidence intervals made rliable put 4 long tick labels per panel, which ran into the next panel's."""
    plot_results = load_plot_results()
    boxes = []

    def measure(fig, out, name):
        if name == "aggregate":
            fig.canvas.draw()
            renderer = fig.canvas.get_renderer()
            for ax in fig.axes:
                low, high = ax.get_xlim()
                for tick, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True):
                    if low <= tick <= high and label.get_visible() and label.get_text():
                        boxes.append((label.get_text(), label.get_window_extent(renderer)))
        plot_results.plt.close(fig)

    monkeypatch.setattr(plot_results, "save", measure)
    matrices = {"dppo": np.array([[0.138], [0.144]]), "drwr": np.array([[0.142], [0.147]])}
    plot_results.aggregate_figures(matrices, ["dppo", "drwr"], 50, 0, str(tmp_path))
    assert len(boxes) >= 8  # at least two labels in each of the four panels
    for i, (text_a, a) in enumerate(boxes):
        for text_b, b in boxes[i + 1 :]:
            assert not a.overlaps(b), f"tick labels {text_a} and {text_b} overlap"


# ---- the robomimic comparison studies' tables: robomimic_comparison_figure.py and iteration_times.py ----------------
def fisher_two_sided(a, b, c, d):
    """Two-sided Fisher exact p of [[a, b], [c, d]], summed here from the hypergeometric law: the tables with the same
    margins that are at most as likely as the observed one."""
    from math import comb

    rows, col, n = a + b, a + c, a + b + c + d
    pmf = {
        x: comb(col, x) * comb(n - col, rows - x) / comb(n, rows)
        for x in range(max(0, rows - (n - col)), min(rows, col) + 1)
    }
    return sum(p for p in pmf.values() if p <= pmf[a] * (1 + 1e-9))


def write_comparison_run(runs, name, evals, final=None, times=None):
    """<runs>/<name>/ as dppo.py and gaussian_ppo.py leave it (eval/success_rate at 0, 1500, 3000, each iteration's
    timings and approx. KL (None: a critic warm-up iteration, which logs none), summary.json), and
    <name>_final50/summary.json with the 50-episode success of its last checkpoint."""
    writer = SummaryWriter(os.path.join(runs, name))
    for i, rate in enumerate(evals):
        writer.add_scalar("eval/success_rate", rate, 1500 * i)
    for i, (rollout, update, kl) in enumerate(times or []):
        writer.add_scalar("time/rollout_s", rollout, 1500 * (i + 1))
        writer.add_scalar("time/update_s", update, 1500 * (i + 1))
        if kl is not None:
            writer.add_scalar("losses/approx_kl", kl, 1500 * (i + 1))
    writer.close()
    with open(os.path.join(runs, name, "summary.json"), "w") as f:
        json.dump(dict(args=dict(eval_episodes=5), env_steps=1500 * (len(evals) - 1)), f)
    if final is not None:
        os.makedirs(os.path.join(runs, f"{name}_final50"))
        with open(os.path.join(runs, f"{name}_final50", "summary.json"), "w") as f:
            json.dump(dict(final_eval_success_rate=final), f)


def test_the_comparison_table_tests_each_algorithm_and_variant_against_its_start(tmp_path):
    """The pixel study's table: per seed the 50-episode final success, the mean, its change from the start and a
    two-sided Fisher test of the pooled 50 x seeds final episodes against the start's 50. A variant (the Gaussian at
    actor LR 1e-5) gets its base's start, its own row and line, and its runs never mix with the base's."""
    runs, out = tmp_path / "runs", tmp_path / "figure"
    write_comparison_run(runs, "dppo__s0", (0.2, 0.4, 0.6), final=0.44)
    write_comparison_run(runs, "dppo__s1", (0.0, 0.2, 0.2), final=0.16)
    write_comparison_run(runs, "gaussian__s0", (1.0, 0.0, 0.0), final=0.0)
    write_comparison_run(runs, "gaussian-lr1e-5__s0", (1.0, 0.8, 0.8), final=0.58)
    write_comparison_run(runs, "gaussian-lr1e-5__s1", (1.0, 0.6, 0.4), final=0.14)
    write_comparison_run(runs, "gaussian__s2", (1.0,))  # unfinished: no summary.json, never read
    os.remove(runs / "gaussian__s2" / "summary.json")
    script = os.path.join(ROOT, "experiments", "robomimic_weak_starts", "robomimic_comparison_figure.py")
    args = ["--task", "lift", "--runs", str(runs), "--out", str(out), "--pretrained", "dppo=0.28", "gaussian=0.48"]
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    table = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:] for line in done.stdout.splitlines()}
    p_dppo = fisher_two_sided(22 + 8, 100 - 30, 14, 36)  # 0.44 + 0.16 of 2 x 50 against 0.28 of 50
    p_gaussian = fisher_two_sided(0, 50, 24, 26)
    p_variant = fisher_two_sided(29 + 7, 100 - 36, 24, 26)  # against the Gaussian's start, 0.48
    assert table["DPPO"] == ["0.44", "0.16", "0.300", f"+0.02 (p = {p_dppo:.2g})"]
    assert table["Gaussian-PPO"] == ["0.00", "–", "0.000", f"-0.48 (p = {p_gaussian:.2g})"]
    assert table["Gaussian-PPO at actor LR 1e-5 (variant)"] == ["0.58", "0.14", "0.360", f"-0.12 (p = {p_variant:.2g})"]
    rows = read_csv(str(out) + ".csv")
    finals = {(r["algo"], r["seed"]): float(r["success_rate"]) for r in rows if r["kind"] == "final50"}
    assert finals == {
        ("dppo", "0"): 0.44,
        ("dppo", "1"): 0.16,
        ("gaussian", "0"): 0.0,
        ("gaussian-lr1e-5", "0"): 0.58,
        ("gaussian-lr1e-5", "1"): 0.14,
    }
    in_run = [(r["algo"], r["seed"], r["env_steps"]) for r in rows if r["kind"] == "in-run"]
    assert len(in_run) == 15 and ("gaussian", "0", "3000") in in_run
    assert os.path.getsize(str(out) + ".png") > 10_000


def test_iteration_times_median_over_iterations_and_dppo_over_each_gaussian(tmp_path):
    """iteration_times.py: each iteration's rollout + update and its update's approx. KL, the median per algorithm
    over every run's iterations, and DPPO's median over each Gaussian's beside Table A4's Lift ratio (194.9 / 153.6)."""
    runs, out = tmp_path / "runs", tmp_path / "times.csv"
    write_comparison_run(runs, "dppo__s0", (0, 0, 0), times=[(40, 200, None), (50, 230, 1e-4), (45, 250, 2e-4)])
    write_comparison_run(runs, "dppo__s1", (0, 0, 0), times=[(44, 220, 3e-4), (46, 240, 4e-4), (48, 210, 5e-4)])
    write_comparison_run(runs, "gaussian__s0", (0, 0, 0), times=[(30, 10, 4.4), (35, 60, 0.9), (40, 20, 1.7)])
    write_comparison_run(runs, "gaussian-lr1e-5__s0", (0, 0, 0), times=[(40, 50, 0.01), (42, 60, 0.02), (44, 55, 0.0)])
    script = os.path.join(ROOT, "experiments", "robomimic_pixels", "iteration_times.py")
    done = subprocess.run(
        [sys.executable, script, "--runs", str(runs), "--out", str(out)], capture_output=True, text=True, check=True
    )
    dppo = np.median([240, 280, 295, 264, 286, 258])  # rollout + update of its 6 iterations: 272
    gaussian, variant = np.median([40, 95, 60]), np.median([90, 102, 99])
    lines = done.stdout.splitlines()
    assert "| dppo | 6 | 45.5 | 225.0 | 272.0 |" in lines
    assert "| gaussian | 3 | 35.0 | 20.0 | 60.0 |" in lines
    assert "| gaussian-lr1e-5 | 3 | 42.0 | 55.0 | 99.0 |" in lines
    assert f"DPPO / gaussian per iteration: {dppo / gaussian:.2f} here; Table A4 (lift): 1.27" in lines
    assert f"DPPO / gaussian-lr1e-5 per iteration: {dppo / variant:.2f} here; Table A4 (lift): 1.27" in lines
    rows = read_csv(str(out))
    assert len(rows) == 12 and {r["algo"] for r in rows} == {"dppo", "gaussian", "gaussian-lr1e-5"}
    by_iteration = {(r["algo"], r["seed"], r["iteration"]): r for r in rows}
    assert float(by_iteration["dppo", "1", "3"]["iteration_s"]) == 258
    assert float(by_iteration["gaussian", "0", "1"]["approx_kl"]) == pytest.approx(4.4)
    assert float(by_iteration["dppo", "0", "2"]["approx_kl"]) == pytest.approx(1e-4)
    assert by_iteration["dppo", "0", "1"]["approx_kl"] == "nan"  # the warm-up iteration's update logs none
