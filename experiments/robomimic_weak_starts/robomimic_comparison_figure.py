"""Figure and CSV of robomimic_comparison.sh (this folder): success rate against env steps, one line per algorithm.

    python experiments/robomimic_weak_starts/robomimic_comparison_figure.py             # runs/robomimic_lift_comparison
    python experiments/robomimic_weak_starts/robomimic_comparison_figure.py --task can  # runs/robomimic_can_comparison

write docs/figures/robomimic_<task>_comparison.{png,csv}.

Lines: the in-run evaluations (TensorBoard eval/success_rate, the first point is the pre-trained policy; their
episode count is the run's --eval-episodes), mean over seeds with a band from the lowest to the highest seed.
Hollow markers at 0: the pre-trained checkpoints' 50-episode success (--pretrained). Filled markers at the last
step: the 50-episode evaluation of each run's checkpoint_last.pt (mean over seeds, error bar
min-max). The CSV holds every point (algo, seed, env_steps, success_rate, episodes, kind: in-run, final50, or train =
the share of an iteration's training episodes, with exploration noise, that succeeded) and the table printed
to stdout is the final 50-episode success per algorithm and seed, with the change of the mean from the start
and a two-sided Fisher exact test of the pooled final episodes against the start's 50.
"""

import argparse
import csv
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import fisher_exact  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

ALGOS = {"dppo": "DPPO", "gaussian": "Gaussian-PPO", "gmm": "GMM-PPO", "drwr": "DRWR"}
COLORS = {"dppo": "tab:red", "gaussian": "tab:blue", "gmm": "tab:green", "drwr": "tab:purple"}
# variants run beside an algorithm (robomimic_pixels/pixel_comparison.sh), drawn dashed; each starts from its base's
# checkpoint
VARIANTS = {"gaussian-lr1e-5": ("gaussian", "Gaussian-PPO at actor LR 1e-5 (variant)", "tab:cyan")}
for variant, (_, label, color) in VARIANTS.items():
    ALGOS[variant], COLORS[variant] = label, color
# task -> the starting checkpoints' 50-episode success (docs/checkpoints.md, weak Lift / weak Can checkpoints)
PRETRAINED = {
    "lift": ["dppo=0.32", "drwr=0.32", "gaussian=0.38", "gmm=0.60"],
    "can": ["dppo=0.38", "drwr=0.38", "gaussian=0.38", "gmm=0.40"],
}

parser = argparse.ArgumentParser()
parser.add_argument("--task", default="lift", choices=sorted(PRETRAINED), help="sets the defaults of the flags below")
parser.add_argument("--runs", default=None, help="default runs/robomimic_<task>_comparison")
parser.add_argument("--out", default=None, help="default docs/figures/robomimic_<task>_comparison")
parser.add_argument("--title", default=None, help="default '<Task> from weak policies pre-trained on <task>-mhsim'")
parser.add_argument(
    "--pretrained",
    nargs="*",
    default=None,
    help="algo=success: the starting checkpoint's 50-episode success (default: the task's, docs/checkpoints.md), "
    "hollow markers at 0",
)
cli = parser.parse_args()
cli.runs = cli.runs or f"runs/robomimic_{cli.task}_comparison"
cli.out = cli.out or f"docs/figures/robomimic_{cli.task}_comparison"
DATA = {"can": "can-mhsim (diffusion: its better and okay demos)"}  # docs/checkpoints.md, weak Can checkpoints
cli.title = (
    cli.title or f"{cli.task.capitalize()} from weak policies pre-trained on {DATA.get(cli.task, cli.task + '-mhsim')}"
)
cli.pretrained = PRETRAINED[cli.task] if cli.pretrained is None else cli.pretrained

rows, curves, finals = [], {}, {}
for algo in ALGOS:
    for run in sorted(glob.glob(os.path.join(cli.runs, f"{algo}__s*"))):
        if not os.path.isdir(run) or run.endswith("_final50") or not os.path.exists(os.path.join(run, "summary.json")):
            continue  # a final evaluation, or a run still in progress (it writes summary.json at its end)
        seed = int(run.rsplit("__s", 1)[1])
        acc = EventAccumulator(run).Reload()
        if "eval/success_rate" not in acc.Tags()["scalars"]:
            continue
        summary_path = os.path.join(run, "summary.json")
        episodes = json.load(open(summary_path))["args"]["eval_episodes"]
        points = [(e.step, e.value) for e in acc.Scalars("eval/success_rate")]
        curves.setdefault(algo, {})[seed] = points
        rows += [
            dict(algo=algo, seed=seed, env_steps=s, success_rate=v, episodes=episodes, kind="in-run") for s, v in points
        ]
        if "charts/success_rate" in acc.Tags()["scalars"]:  # training episodes (with exploration noise), not plotted
            train = [(e.step, e.value) for e in acc.Scalars("charts/success_rate")]
            rows += [
                dict(algo=algo, seed=seed, env_steps=s, success_rate=v, episodes=None, kind="train") for s, v in train
            ]
        final_path = os.path.join(f"{run}_final50", "summary.json")
        if os.path.exists(final_path):
            final = json.load(open(final_path))["final_eval_success_rate"]
            steps = json.load(open(summary_path))["env_steps"]
            finals.setdefault(algo, {})[seed] = (steps, final)
            rows.append(dict(algo=algo, seed=seed, env_steps=steps, success_rate=final, episodes=50, kind="final50"))

os.makedirs(os.path.dirname(os.path.abspath(cli.out)), exist_ok=True)
with open(cli.out + ".csv", "w", newline="") as f:
    writer = csv.DictWriter(f, ["algo", "seed", "env_steps", "success_rate", "episodes", "kind"])
    writer.writeheader()
    writer.writerows(rows)

fig, ax = plt.subplots(figsize=(6.4, 5.0))
for i, (algo, by_seed) in enumerate(curves.items()):
    n = min(len(p) for p in by_seed.values())  # runs cut short (none in a finished study) are trimmed
    steps = np.array([s for s, _ in list(by_seed.values())[0][:n]])
    values = np.array([[v for _, v in p[:n]] for p in by_seed.values()])
    label = f"{ALGOS[algo]} ({len(by_seed)} seeds)"
    ax.plot(steps, values.mean(0), "--" if algo in VARIANTS else "-", color=COLORS[algo], label=label)
    ax.fill_between(steps, values.min(0), values.max(0), color=COLORS[algo], alpha=0.15)
    if algo in finals:
        f_steps = np.array([s for s, _ in finals[algo].values()])
        f_vals = np.array([v for _, v in finals[algo].values()])
        x = f_steps.mean() + (i - 1.5) * 0.01 * f_steps.mean()  # side by side at the last step
        err = [[f_vals.mean() - f_vals.min()], [f_vals.max() - f_vals.mean()]]
        ax.errorbar(x, f_vals.mean(), yerr=err, fmt="D", color=COLORS[algo], capsize=3, markersize=6)
for i, item in enumerate(cli.pretrained):
    algo, value = item.split("=")
    if algo in curves:
        x = (i - 1.5) * 0.01 * max(s for f in finals.values() for s, _ in f.values()) if finals else 0
        ax.plot(x, float(value), "D", mfc="none", color=COLORS[algo], markersize=6)
ax.plot([], [], "kD", label="50-episode eval of the last checkpoint (mean, min-max)")
ax.plot([], [], "kD", mfc="none", label="50-episode eval of the pre-trained checkpoint")
ax.set_xlabel("fine-tuning env steps")
ax.set_ylabel("success rate (no exploration noise)")
ax.set_ylim(-0.02, 1.02)
episodes = sorted({r["episodes"] for r in rows if r["kind"] == "in-run" and r["episodes"]})
ax.set_title(
    f"{cli.title}\nlines: in-run evals ({'/'.join(map(str, episodes))} episodes), mean and min-max band over seeds",
    fontsize=9,
)
ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below the axes: over no curve
fig.tight_layout()
fig.savefig(cli.out + ".png", dpi=120)

# change from the start: two-sided Fisher exact test of the pooled final episodes (50 per seed) against the start's 50
start = {algo: float(value) for algo, value in (item.split("=") for item in cli.pretrained)}
start |= {variant: start[base] for variant, (base, _, _) in VARIANTS.items() if base in start}
seeds = sorted({s for f in finals.values() for s in f})
print("| algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | change from start (p) |")
for algo, by_seed in finals.items():
    vals = [by_seed[s][1] for s in sorted(by_seed)]
    wins, start_wins = round(50 * sum(vals)), round(50 * start[algo])
    p = fisher_exact([[wins, 50 * len(vals) - wins], [start_wins, 50 - start_wins]])[1]
    change = f"{np.mean(vals) - start[algo]:+.2f} (p = {p:.2g})"
    cells = [f"{by_seed[s][1]:.2f}" if s in by_seed else "–" for s in seeds]  # – : a seed this algorithm lacks
    print(f"| {ALGOS[algo]} | " + " | ".join(cells) + f" | {np.mean(vals):.3f} | {change} |")
