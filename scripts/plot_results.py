"""Figures and aggregate scores of a grid of runs, offline, from the runs' TensorBoard event files.

    python scripts/plot_results.py runs/benchmark --out docs/figures/benchmark
    python scripts/plot_results.py runs/benchmark --out figs --at 200000     # score runs at <= 200k env steps
    python scripts/plot_results.py runs/benchmark --out figs --reference avoid-m2=0,60   # a task's 0 and 1

A run is a folder under the root with TensorBoard event files. Its task, algorithm and seed come from its
summary.json (`env_id`, `algo`, `seed`) when it has one (an unfinished run has none), else from the folder name
`<env>__<algo>__<seed>` that benchmark.sh gives it. Curves are the in-run evaluations (`eval/episodic_return`,
and `eval/success_rate` where a task logs it) against environment steps; the first point is the pre-trained policy.

Writes into --out (PNG and PDF for each figure):
  curves_<task>     one panel per metric: mean over seeds, band from the lowest to the highest seed, one line per
                    algorithm (one colour per algorithm in every figure; the seed count is in the legend)
  grid              one panel per task (the score metric of each task), the paper's layout
  aggregate         interquartile mean, median, mean and optimality gap of the scores over tasks and seeds, with
                    95% stratified-bootstrap confidence intervals (rliable; Agarwal et al. 2021)
  profile           performance profiles: fraction of runs (all tasks and seeds) scoring above tau, with CIs (rliable)
  curves.csv        task, algo, metric, env_step, seeds, mean, min, max: the curves' numbers
  scores.csv        each run's score: its last evaluation (at or before --at), raw and normalized
  aggregate.csv     algo, metric, estimate, ci_low, ci_high;  profile.csv: algo, tau, fraction, ci_low, ci_high

Scores (what aggregate and profile compare): a run's last evaluation. On tasks that log `eval/success_rate` that
rate, as it is (already in [0, 1]). Otherwise the return, normalized per task to (return - low) / (high - low) with
  - low, high = the task's --reference when given;
  - else D4RL's reference returns of a random (0) and an expert (1) policy for the three Gym tasks;
  - else the lowest and highest evaluation of every run of the task, over all algorithms, seeds and steps
    (min-max: a relative scale, which changes when runs are added).
An algorithm enters the aggregates with the seeds it has on every task (others are dropped, with a note). A run whose
score is its first evaluation (no later one, at or before --at) is scored by the policy it started from: a [warn] line
names it, and the algorithm's [aggregate] line counts them. Curves of up to 12 evaluations have a marker at each.
"""

import argparse
import csv
import glob
import json
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rliable import library as rly  # noqa: E402
from rliable import metrics, plot_utils  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

# one colour per algorithm, in every figure (DPPO, Gaussian and GMM as in experiments/avoid/avoid_study.py)
COLORS = {
    "dppo": "#8b0000",
    "gaussian_ppo": "tab:blue",
    "gmm_ppo": "tab:green",
    "drwr": "tab:orange",
    "dawr": "tab:purple",
    "dipo": "tab:brown",
    "idql": "tab:pink",
    "dql": "tab:olive",
    "qsm": "tab:cyan",
    "exact_likelihood_pg": "tab:gray",
}
# D4RL's normalization (d4rl/infos.py REF_MIN_SCORE, REF_MAX_SCORE): returns of a random and an expert policy
D4RL_REFERENCE = {
    "hopper-v2": (-20.272305, 3234.3),
    "walker2d-v2": (1.629008, 4592.3),
    "halfcheetah-v2": (-280.178953, 12135.0),
}
METRICS = {"return": "eval/episodic_return", "success": "eval/success_rate"}
AGGREGATES = ("IQM", "Median", "Mean", "Optimality Gap")
SHORT_CURVE = 12  # curves of this many evaluations or fewer are drawn with a marker at each


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder holding the run folders (searched recursively)")
    parser.add_argument("--out", default=None, help="output folder (default: <root>/figures)")
    parser.add_argument("--at", type=int, default=None, help="score each run by its last evaluation at or before this")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="TASK=LOW,HIGH",
        help="returns that normalize to 0 and 1 on TASK (repeat for several tasks)",
    )
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the confidence intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument(
        "--names-from-folders",
        action="store_true",
        help="take task, algorithm and seed from the folder names <task>__<algo>__<seed> (seed may read s0) even "
        "where summary.json exists, e.g. to tell apart runs of one script with different flags (dppo-k10, dppo-k4)",
    )
    return parser.parse_args()


# ------------------------------------------------------------------------------------------------
# Runs: identity and evaluation curves
# ------------------------------------------------------------------------------------------------
def run_identity(run_dir: str, from_folder: bool = False):
    """(task, algo, seed) of a run: summary.json's keys, else (or with `from_folder`) the folder name
    <env>__<algo>__<seed>, the seed optionally written s<seed>; None if neither."""
    path = os.path.join(run_dir, "summary.json")
    if os.path.isfile(path) and not from_folder:
        with open(path) as f:
            summary = json.load(f)
        if all(k in summary for k in ("env_id", "algo", "seed")):
            return summary["env_id"].lower(), summary["algo"], int(summary["seed"])
    parts = os.path.basename(os.path.normpath(run_dir)).split("__")
    seed = parts[2].removeprefix("s") if len(parts) >= 3 else ""
    if seed.isdigit():
        return parts[0].lower(), parts[1], int(seed)
    return None


def read_curves(run_dir: str) -> dict:
    """{metric: {env_step: value}} of a run's evaluations (every event file in the folder; the last value per step)."""
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0}).Reload()
    tags = acc.Tags()["scalars"]
    return {m: {e.step: e.value for e in acc.Scalars(tag)} for m, tag in METRICS.items() if tag in tags}


def load_runs(root: str, from_folders: bool = False) -> dict:
    """{(task, algo): {seed: {metric: {env_step: value}}}} of every run folder under `root`."""
    runs = defaultdict(dict)
    folders = sorted(
        {os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "events.out.tfevents.*"), recursive=True)}
    )
    for run_dir in folders:
        identity = run_identity(run_dir, from_folders)
        curves = read_curves(run_dir) if identity else {}
        if not curves.get("return"):
            print(
                f"[skip] {run_dir}: "
                + ("no <env>__<algo>__<seed> name or summary.json" if not identity else "no evaluations")
            )
            continue
        task, algo, seed = identity
        runs[(task, algo)][seed] = curves
    return runs


def algo_order(algos) -> list:
    """benchmark.sh's order (COLORS), then any other algorithm by name."""
    known = [a for a in COLORS if a in algos]
    return known + sorted(a for a in algos if a not in COLORS)


def color(algo: str, algos: list) -> str:
    others = [a for a in algos if a not in COLORS]
    return COLORS.get(algo) or plt.cm.Dark2(others.index(algo) % 8)


# ------------------------------------------------------------------------------------------------
# Curves: mean and min-max band over seeds at each evaluation step
# ------------------------------------------------------------------------------------------------
def aggregate_curve(by_seed: dict, metric: str):
    """(steps, seeds, mean, min, max) over the seeds that logged each step (an unfinished run counts where it got)."""
    series = [curves[metric] for curves in by_seed.values() if metric in curves]
    steps = np.array(sorted({s for values in series for s in values}))
    rows = [[values[s] for values in series if s in values] for s in steps]
    n = np.array([len(r) for r in rows])
    return (
        steps,
        n,
        np.array([np.mean(r) for r in rows]),
        np.array([min(r) for r in rows]),
        np.array([max(r) for r in rows]),
    )


def plot_curve(ax, runs: dict, task: str, metric: str, algos: list):
    for algo in algos:
        by_seed = runs.get((task, algo), {})
        if not any(metric in c for c in by_seed.values()):
            continue
        steps, n, mean, low, high = aggregate_curve(by_seed, metric)
        marker = "o" if len(steps) <= SHORT_CURVE else None  # a line through one point draws nothing
        ax.plot(steps, mean, color=color(algo, algos), marker=marker, ms=4, label=f"{algo} ({n.max()} seeds)")
        ax.fill_between(steps, low, high, color=color(algo, algos), alpha=0.15, lw=0)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("eval success rate" if metric == "success" else "eval return")
    ax.grid(alpha=0.25)


def save(fig, out: str, name: str):
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"{name}.{ext}"), bbox_inches="tight", dpi=150)
    plt.close(fig)


def curve_figures(runs: dict, tasks: list, algos: list, score_metric: dict, out: str):
    """curves_<task> figures, the grid figure, and curves.csv."""
    rows = []
    for task in tasks:
        task_metrics = [
            m for m in METRICS if any(m in c for (t, _), s in runs.items() if t == task for c in s.values())
        ]
        fig, axes = plt.subplots(1, len(task_metrics), figsize=(5.5 * len(task_metrics), 3.8), squeeze=False)
        for ax, metric in zip(axes[0], task_metrics):
            plot_curve(ax, runs, task, metric, algos)
            ax.set_title(task)
            for algo in algos:
                if any(metric in c for c in runs.get((task, algo), {}).values()):
                    for step, n, mean, low, high in zip(*aggregate_curve(runs[(task, algo)], metric)):
                        rows.append([task, algo, metric, int(step), int(n), mean, low, high])
        axes[0][0].legend(fontsize="small")
        save(fig, out, f"curves_{task}")
    columns = min(3, len(tasks))
    grid_rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(4.5 * columns, 3.5 * grid_rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        plot_curve(ax, runs, task, score_metric[task], algos)
        ax.set_title(task)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    legend = {}  # every algorithm of any panel; seed counts differ by task: they are in curves_<task>
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label.split(" (")[0], handle)
    fig.legend(
        legend.values(),
        legend.keys(),
        loc="lower center",
        ncol=min(5, len(legend)),
        bbox_to_anchor=(0.5, -0.08 * grid_rows),
    )
    fig.tight_layout()
    save(fig, out, "grid")
    with open(os.path.join(out, "curves.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["task", "algo", "metric", "env_step", "seeds", "mean", "min", "max"], *rows])


# ------------------------------------------------------------------------------------------------
# Scores: a run's last evaluation, normalized per task (module docstring)
# ------------------------------------------------------------------------------------------------
def last_eval(values: dict, at):
    steps = [s for s in values if at is None or s <= at]
    return (max(steps), values[max(steps)]) if steps else (None, None)


def task_range(runs: dict, task: str, references: dict):
    """(low, high, how) of a return task: --reference, D4RL's, else min-max over every evaluation of the task."""
    if task in references:
        return (*references[task], "--reference")
    if task in D4RL_REFERENCE:
        return (*D4RL_REFERENCE[task], "D4RL random/expert")
    values = [v for (t, _), s in runs.items() if t == task for c in s.values() for v in c["return"].values()]
    return min(values), max(values), "min-max over the runs"


def run_scores(runs: dict, tasks: list, algos: list, score_metric: dict, references: dict, at):
    """{algo: {task: {seed: score}}}, the rows of scores.csv and {algo: how many of its scores are a run's first
    evaluation}. A run scored by its first evaluation (no later one, at or before --at) is scored by the policy it
    started from, not by any training: each such run is named in a [warn] line."""
    scores, rows, starting = defaultdict(lambda: defaultdict(dict)), [], defaultdict(int)
    for task in tasks:
        metric = score_metric[task]
        low, high, how = (0.0, 1.0, "success rate") if metric == "success" else task_range(runs, task, references)
        print(f"[scores] {task}: {how}, 0 = {low:g}, 1 = {high:g}")
        for algo in algos:
            for seed, curves in sorted(runs.get((task, algo), {}).items()):
                step, raw = last_eval(curves.get(metric, {}), at)
                if step is None:
                    continue
                scores[algo][task][seed] = (raw - low) / (high - low) if high > low else 0.0
                rows.append([task, algo, seed, metric, step, raw, scores[algo][task][seed]])
                if step == min(curves[metric]):
                    starting[algo] += 1
                    later = " at or before --at" if at is not None else ""
                    print(
                        f"[warn] {task} {algo} seed {seed}: scored by its first evaluation (env step {step}), the "
                        f"policy it started from; it has no later evaluation{later}"
                    )
    return scores, rows, starting


def score_matrices(scores: dict, tasks: list) -> dict:
    """{algo: (seeds x tasks) array} over the seeds an algorithm has on every task (rliable's layout)."""
    matrices = {}
    for algo, by_task in scores.items():
        if any(task not in by_task for task in tasks):
            print(f"[aggregate] {algo} left out: no runs on " + ", ".join(t for t in tasks if t not in by_task))
            continue
        seeds = sorted(set.intersection(*(set(by_task[t]) for t in tasks)))
        dropped = sorted(set().union(*(set(by_task[t]) for t in tasks)) - set(seeds))
        if dropped:
            print(f"[aggregate] {algo}: seeds {dropped} left out (not run on every task)")
        if seeds:
            matrices[algo] = np.array([[by_task[t][s] for t in tasks] for s in seeds])
    return matrices


def aggregate_figures(matrices: dict, algos: list, reps: int, seed: int, out: str, starting: dict | None = None):
    """aggregate and profile figures and CSVs, with rliable's estimators and stratified bootstrap. `starting`:
    {algo: scores that are a run's first evaluation}, said in the printed lines."""
    algos = [a for a in algos if a in matrices]
    colors = {a: color(a, algos) for a in algos}

    def aggregate(x):
        return np.array(
            [
                metrics.aggregate_iqm(x),
                metrics.aggregate_median(x),
                metrics.aggregate_mean(x),
                metrics.aggregate_optimality_gap(x),
            ]
        )

    np.random.seed(seed)  # rliable's StratifiedBootstrap draws from numpy's global generator
    point, interval = rly.get_interval_estimates(matrices, aggregate, reps=reps)
    fig, _ = plot_utils.plot_interval_estimates(
        point,
        interval,
        metric_names=AGGREGATES,
        algorithms=algos,
        colors=colors,
        xlabel="normalized score",
        xlabel_y_coordinate=-0.6 / (0.37 * len(algos)),  # 0.6 inch below the axes (rliable: 0.37 inch per row)
        max_ticks=3,  # rliable's 4 ticks in its xx-large font ran into the next panel's ("0.147" into "0.138")
        wspace=0.25,
    )
    save(fig, out, "aggregate")
    with open(os.path.join(out, "aggregate.csv"), "w", newline="") as f:
        rows = [
            [a, name, point[a][i], interval[a][0, i], interval[a][1, i]]
            for a in algos
            for i, name in enumerate(AGGREGATES)
        ]
        csv.writer(f).writerows([["algo", "metric", "estimate", "ci_low", "ci_high"], *rows])

    all_scores = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(min(0.0, all_scores.min()), max(1.0, all_scores.max()), 101)
    profiles, profile_cis = rly.create_performance_profile(matrices, taus, reps=reps)
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(
        profiles,
        taus,
        performance_profile_cis=profile_cis,
        colors=colors,
        ax=ax,
        xlabel=r"normalized score $\tau$",
        ylabel=r"fraction of runs with score $> \tau$",
    )
    handles = [plt.Line2D([], [], color=colors[a]) for a in algos]
    ax.legend(handles, [f"{a} ({len(matrices[a])} seeds)" for a in algos], fontsize="small")
    save(fig, out, "profile")
    with open(os.path.join(out, "profile.csv"), "w", newline="") as f:
        rows = [
            [a, tau, profiles[a][i], profile_cis[a][0, i], profile_cis[a][1, i]]
            for a in algos
            for i, tau in enumerate(taus)
        ]
        csv.writer(f).writerows([["algo", "tau", "fraction", "ci_low", "ci_high"], *rows])
    for a in algos:
        first = (starting or {}).get(a, 0)
        note = f" ({first} of {matrices[a].size} scores are first evaluations: see [warn])" if first else ""
        print(
            f"[aggregate] {a}: IQM {point[a][0]:.3f} [{interval[a][0, 0]:.3f}, {interval[a][1, 0]:.3f}] "
            f"over {matrices[a].shape[1]} tasks x {matrices[a].shape[0]} seeds{note}"
        )


def main():
    cli = parse_args()
    out = cli.out or os.path.join(cli.root, "figures")
    references = {}
    for ref in cli.reference:
        task, _, bounds = ref.partition("=")
        low, high = map(float, bounds.split(","))
        references[task.lower()] = (low, high)
    runs = load_runs(cli.root, cli.names_from_folders)
    if not runs:
        raise SystemExit(f"no run with evaluations under {cli.root}; pass the folder benchmark.sh wrote (its OUT)")
    os.makedirs(out, exist_ok=True)
    tasks = sorted({task for task, _ in runs})
    algos = algo_order({algo for _, algo in runs})
    # a task's score: its success rate where every run of it logs one, else its return
    score_metric = {
        t: "success" if all("success" in c for (t2, _), s in runs.items() if t2 == t for c in s.values()) else "return"
        for t in tasks
    }
    curve_figures(runs, tasks, algos, score_metric, out)
    scores, rows, starting = run_scores(runs, tasks, algos, score_metric, references, cli.at)
    with open(os.path.join(out, "scores.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["task", "algo", "seed", "metric", "env_step", "raw", "score"], *rows])
    matrices = score_matrices(scores, tasks)
    if matrices:
        aggregate_figures(matrices, algos, cli.reps, cli.seed, out, starting)
    print(f"[figures] {out}: " + " ".join(sorted(os.listdir(out))))


if __name__ == "__main__":
    main()
