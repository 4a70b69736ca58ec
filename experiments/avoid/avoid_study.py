"""Figures of the Avoid study (paper section 6; README.md here), from checkpoints and run directories.

    # sampled trajectories (training noise) of checkpoints, one panel each; Fig. 9 is the pre-trained grid
    python experiments/avoid/avoid_study.py trajectories --out docs/figures/avoid_fig9.png \
        --checkpoints cleandppo/pretrained/avoid-m{1,2,3}-{diffusion,gaussian,gmm}-mlp.pt --columns 3
    # learning curves: mean and min-max band over seeds of each run group (<group>__s<seed> directories)
    python experiments/avoid/avoid_study.py curves --runs runs/avoid/a7 --out docs/figures/avoid_a7.png
    # robustness of fine-tuned policies (Fig. 12): added action noise, wider initial states
    python experiments/avoid/avoid_study.py robustness --runs runs/avoid/a7 --subset m2 \
        --out docs/figures/avoid_fig12.png
    # Fig. 9 as numbers: how far the first fine-tuning iteration's samples spread, and how much of it stays near the data
    python experiments/avoid/avoid_study.py exploration --out docs/figures/avoid_fig9_exploration.csv \
        --checkpoints cleandppo/pretrained/avoid-m{1,2,3}-{diffusion,gaussian,gmm}-mlp.pt
    # each cell's score over seeds with a 95 % bootstrap interval, and the commits its runs came from
    python experiments/avoid/avoid_study.py table --runs runs/avoid/a7 --out docs/figures/avoid_a7_table.csv

Rollouts here call the scripts' own samplers (dppo.sample, gaussian_ppo.sample_action, gmm_ppo.sample_action)
on the batched Avoid core (avoid.step_batch), with the same chunking and one-step-old observations as the
training environments; `--episodes` episodes are run side by side.
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
import torch

from cleandppo import avoid, dppo, envs, gaussian_ppo, gmm_ppo

COLORS = {"dppo-k10": "#8b0000", "dppo-k4": "#e0301e", "dppo-k1": "#f4a582", "gaussian": "tab:blue", "gmm": "tab:green"}


def style(method: str) -> dict:
    """One colour per method across every figure (DPPO: darker = more fine-tuned denoising steps); the diagnostic
    variant <method>-noisy-logprob (experiments/avoid/avoid_noise_logprob_check.py) in its method's colour, dotted."""
    if method.endswith("-noisy-logprob"):
        return {"color": COLORS.get(method.removesuffix("-noisy-logprob"), "tab:gray"), "ls": ":"}
    return {"color": COLORS.get(method, "tab:gray"), "ls": "--" if method == "dppo-k1" else "-"}


# ------------------------------------------------------------------------------------------------
# Policies from checkpoints
# ------------------------------------------------------------------------------------------------
def load_sampler(path: str, mode: str = "train"):
    """(act(obs_norm (n, To, 4)) -> normalized chunk (n, Tp, 2), checkpoint) for any of the three policy kinds.
    mode "train": exploration noise as in fine-tuning rollouts (the paper's Avoid evaluation, D.8)."""
    ckpt = envs.upgrade_checkpoint(torch.load(path, map_location="cpu", weights_only=False))
    if ckpt["policy"] == "diffusion":
        kw = ckpt["model_kwargs"]
        ft_steps = ckpt.get("ft_denoising_steps") or 0
        actor, actor_ft, eval_ft = dppo.build_actors(ckpt, ft_steps, torch.device("cpu"))
        sched = dppo.make_schedule(kw["denoising_steps"])
        plan = dppo.denoising_plan(kw["denoising_steps"], None)

        def act(obs):
            chunk, _ = dppo.sample(actor, actor_ft, sched, torch.as_tensor(obs), plan, eval_ft, mode, dppo.Args())
            return chunk.numpy()

    elif ckpt["policy"] == "gaussian":
        policy = gaussian_ppo._load_policy(ckpt, torch.device("cpu"))

        def act(obs):
            mean, std = policy(torch.as_tensor(obs))
            return (gaussian_ppo.sample_action(mean, std, 3.0) if mode == "train" else mean).numpy()

    else:
        policy = gmm_ppo._load_policy(ckpt, torch.device("cpu"))

        def act(obs):
            means, std, logits = policy(torch.as_tensor(obs))
            chunk = gmm_ppo.sample_action(means, std, logits) if mode == "train" else gmm_ppo.mode_action(means, logits)
            return chunk.numpy()

    return act, ckpt


@torch.no_grad()
def rollout(
    path: str,
    episodes: int,
    seed: int,
    mode: str = "train",
    action_noise: float = 0.0,
    init_noise: float = 0.0,
    act_steps: int | None = None,
) -> dict:
    """Run `episodes` Avoid episodes of a checkpoint side by side. `action_noise`: uniform +- noise in normalized
    action units added to every executed action; `init_noise`: start uniform within +- init_noise metres.
    Returns paths (episodes, 101, 2) of the arm, returns (episodes,), success (a step with reward 2, as the env
    counts it: mode 5 passed, beyond the goal line, in the rewarded x band, no collision)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    act, ckpt = load_sampler(path, mode)
    norm, kw = ckpt["normalization"], ckpt["model_kwargs"]
    act_steps = act_steps or kw["horizon_steps"]
    cond_steps = kw["cond_steps"]
    start = avoid.START_XY + rng.uniform(-init_noise, init_noise, (episodes, 2))
    state = avoid.new_state(episodes, start)
    obs = np.concatenate([state["desired"], state["current"]], axis=1)
    history = [envs.normalize_obs(obs, norm)] * cond_steps
    paths, returns, success = [state["current"].copy()], np.zeros(episodes), np.zeros(episodes, dtype=bool)
    for _ in range(avoid.MAX_EPISODE_STEPS // act_steps):
        chunk = act(np.stack(history[-cond_steps:], axis=1).astype(np.float32))[:, :act_steps]
        chunk = chunk + rng.uniform(-action_noise, action_noise, chunk.shape)
        for k in range(act_steps):
            obs, reward = avoid.step_batch(state, envs.unnormalize_action(chunk[:, k], norm))
            history.append(envs.normalize_obs(obs, norm))
            returns += reward
            # the env's success: a step with reward 2 (mode 5, beyond the goal line, in the x band)
            success |= reward >= 2
            paths.append(state["current"].copy())
    return {"paths": np.stack(paths, axis=1), "returns": returns, "success": success}


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def plt_module():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, out: str):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    if out.endswith(".png"):
        fig.savefig(out[:-4] + ".pdf")
    print(f"figure -> {out}")


def checkpoint_name(path: str) -> str:
    """A checkpoint's file name, or its run's name for a run's checkpoint_*.pt / pretrained.pt."""
    name = os.path.basename(path).replace(".pt", "")
    return os.path.basename(os.path.dirname(path)) if name.startswith(("checkpoint", "pretrained")) else name


def trajectories(args):
    plt = plt_module()
    n = len(args.checkpoints)
    cols = args.columns or n
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 3.1 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, path in zip(axes.flat, args.checkpoints):
        out = rollout(path, args.episodes, args.seed, args.mode)
        name = checkpoint_name(path)
        label = name if not args.titles else args.titles.pop(0)
        avoid.draw_scene(ax, f"{label}\nreturn {out['returns'].mean():.1f}, success {out['success'].mean():.2f}")
        for p in out["paths"]:
            ax.plot(p[:, 0], p[:, 1], lw=0.6, alpha=0.7, color="tab:red" if p[-1, 0] < 0.35 else "tab:gray")
        print(
            f"{path}: return {out['returns'].mean():.2f} +- {out['returns'].std():.2f}, "
            f"success {out['success'].mean():.2f}, left-gap share {np.mean(out['paths'][:, -1, 0] < 0.35):.2f}"
        )
    fig.tight_layout()
    save(fig, args.out)


def read_curve(run_dir: str, tag: str):
    """(env steps, per-iteration mean of `tag`) from a run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return None
    by_step = {}
    for e in acc.Scalars(tag):
        by_step.setdefault(e.step, []).append(e.value)
    steps = np.array(sorted(by_step))
    return steps, np.array([np.mean(by_step[s]) for s in steps])


def group_runs(roots) -> dict:
    """{group: [run dirs]} for directories named <group>__s<seed> under root (or each of several roots)."""
    groups = {}
    runs = [
        run for root in ([roots] if isinstance(roots, str) else roots) for run in glob.glob(os.path.join(root, "*__s*"))
    ]
    for run in sorted(runs):
        if not os.path.isdir(run):  # <run>.log files sit beside the run dirs
            continue
        groups.setdefault(re.sub(r"__s\d+$", "", os.path.basename(run)), []).append(run)
    return groups


def curves(args):
    """One panel per subset (group names start with m1/m2/m3), one line per method, band = min..max over seeds."""
    plt = plt_module()
    groups = {g: r for g, r in group_runs(args.runs).items() if not args.only or any(o in g for o in args.only)}
    if not groups:
        envs.fail(f"no run directories named <group>__s<seed> in {args.runs}")
    panels = sorted({g.split("__")[0] for g in groups})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    rows = []
    for ax, panel in zip(axes[0], panels):
        for group in sorted(g for g in groups if g.split("__")[0] == panel):
            data = [read_curve(r, args.tag) for r in groups[group]]
            data = [d for d in data if d is not None]
            if not data:
                continue
            n = min(len(d[0]) for d in data)
            steps, ys = data[0][0][:n], np.stack([d[1][:n] for d in data])
            method = group.split("__", 1)[1]
            ax.plot(steps, ys.mean(0), label=f"{method} ({len(data)} seed{'s' * (len(data) > 1)})", **style(method))
            ax.fill_between(steps, ys.min(0), ys.max(0), alpha=0.12, color=style(method)["color"])
            rows += [
                dict(group=group, step=int(s), mean=float(m), min=float(lo), max=float(hi), seeds=len(data))
                for s, m, lo, hi in zip(steps, ys.mean(0), ys.min(0), ys.max(0))
            ]
        ax.set_title(f"{panel.upper()}" if re.fullmatch(r"m\d", panel) else panel)
        ax.set_xlabel("environment steps")
        ax.set_ylabel(
            {"charts/episodic_return": "episode return", "charts/success_rate": "success rate"}.get(args.tag, args.tag)
            + " (training noise)"
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, args.out)
    with open(args.out[:-4] + ".csv", "w") as f:
        f.write("group,step,mean,min,max,seeds\n")
        for r in rows:
            f.write(f"{r['group']},{r['step']},{r['mean']:.4f},{r['min']:.4f},{r['max']:.4f},{r['seeds']}\n")


def robustness(args):
    """Fig. 12: return of each fine-tuned policy (checkpoint_last.pt of every run of a subset) against added
    action noise, and from wider initial states; mean over seeds, 50 episodes each, evaluation noise as D.8."""
    plt = plt_module()
    groups = {g: runs for g, runs in group_runs(args.runs).items() if g.split("__")[0] == args.subset}
    if not groups:
        envs.fail(f"no run directories of subset {args.subset} (<{args.subset}__method__s<seed>) in {args.runs}")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.4))
    table = {}
    for group, runs in sorted(groups.items()):
        method = group.split("__", 1)[1]
        ckpts = [
            os.path.join(r, "checkpoint_last.pt") for r in runs if os.path.isfile(os.path.join(r, "checkpoint_last.pt"))
        ]
        for ax, key, levels in ((axes[0], "action_noise", args.action_noise), (axes[1], "init_noise", args.init_noise)):
            means = [
                np.mean([rollout(c, args.episodes, args.seed, "train", **{key: lvl})["returns"].mean() for c in ckpts])
                for lvl in levels
            ]
            table[(method, key)] = means
            ax.plot(levels, means, marker="o", label=f"{method} ({len(ckpts)} seeds)", **style(method))
    axes[0].set_xlabel("added action noise (uniform +-, normalized units)")
    axes[1].set_xlabel("initial position: uniform +- (m) around the default start")
    for ax in axes:
        ax.set_ylabel("episode return")
        ax.legend(fontsize=7)
    fig.suptitle(f"Avoid {args.subset.upper()}: fine-tuned policies under perturbation")
    fig.tight_layout()
    save(fig, args.out)
    with open(args.out[:-4] + ".json", "w") as f:
        json.dump(
            {f"{m}|{k}": v for (m, k), v in table.items()}
            | {"levels": dict(action_noise=args.action_noise, init_noise=args.init_noise)},
            f,
            indent=1,
        )


def summaries(args):
    """One CSV row per run: the numbers of its summary.json (and of summary_iter20.json, where a run was continued)."""
    keys = ("pretrained_eval_return", "final_eval_return", "best_eval_return", "env_steps", "wall_time_s")
    with open(args.out, "w") as f:
        f.write("experiment,run,seed," + ",".join(keys) + ",final_eval_return_at_iteration_20\n")
        for root in args.runs:
            for group, runs in sorted(group_runs(root).items()):
                for run in runs:
                    path = os.path.join(run, "summary.json")
                    if not os.path.isfile(path):
                        continue
                    with open(path) as g:
                        summary = json.load(g)
                    early = os.path.join(run, "summary_iter20.json")
                    at20 = json.load(open(early))["final_eval_return"] if os.path.isfile(early) else ""
                    values = ",".join(
                        f"{summary[k]:.4g}" if isinstance(summary[k], float) else str(summary[k]) for k in keys
                    )
                    f.write(f"{os.path.basename(root)},{group},{summary['seed']},{values},{at20}\n")
    print(f"table -> {args.out}")


# ------------------------------------------------------------------------------------------------
# Numbers: Fig. 9's exploration, each cell's score with its interval
# ------------------------------------------------------------------------------------------------
def visited_cells(paths: np.ndarray, cell: float) -> set:
    """The grid cells (side `cell` metres) that the line segments of `paths` (episodes, steps, 2) pass through,
    sampled every cell/4 along each segment so that no crossed cell is skipped."""
    cells = set()
    for p in paths:
        seg = np.diff(p, axis=0)
        n = np.maximum(1, np.ceil(np.linalg.norm(seg, axis=1) / (cell / 4))).astype(int)
        pts = np.concatenate([p[i] + seg[i] * np.linspace(0, 1, n[i] + 1)[:, None] for i in range(len(seg))])
        cells.update(map(tuple, np.floor(pts / cell).astype(int)))
    return cells


def exploration_numbers(paths: np.ndarray, data_paths: list, radius: float, cell: float) -> dict:
    """Fig. 9 measured, for sampled paths (episodes, steps, 2) against the demonstrations' paths of the subset, each
    sampled path cut where it first passes the farthest y the demonstrations reach (they end at the goal line):
    coverage, the area (m^2) of the cells the samples pass through (how widely they explore); in_tube, the share of
    that area within `radius` of a demonstrated path (how structured the exploration is: around the data, or
    anywhere); tube_share, the share of sampled episodes whose path stays within `radius` of the data throughout."""
    data = np.concatenate(data_paths)
    y_end = data[:, 1].max()
    cut = []
    for p in paths:
        beyond = np.flatnonzero(p[:, 1] > y_end)
        cut.append(p[: beyond[0] + 1] if len(beyond) else p)
    cells = np.array(sorted(visited_cells(cut, cell)), dtype=float)
    centres = (cells + 0.5) * cell
    near_cell = np.array([np.min(np.linalg.norm(data - c, axis=1)) <= radius for c in centres])
    dist = np.array([np.min(np.linalg.norm(p[:, None, :] - data[None], axis=2), axis=1).max() for p in cut])
    return dict(
        coverage=len(cells) * cell**2, in_tube=float(near_cell.mean()), tube_share=float(np.mean(dist <= radius))
    )


def subset_paths(dataset: str, env_id: str) -> list:
    """The arm's paths (current xy, observation columns 2-3) of each demonstration of an Avoid dataset."""
    data = envs.load_dataset(dataset, env_id)
    return [ep["observations"][:, 2:4] for ep in data["episodes"]]


def bootstrap_interval(values, seed: int = 0) -> tuple:
    """95 % percentile bootstrap interval of the mean of `values` (scipy.stats.bootstrap, 10,000 resamples);
    (v, v) for a single value."""
    from scipy.stats import bootstrap

    values = np.asarray(values, dtype=float)
    if len(values) < 2 or np.all(values == values[0]):
        return float(values.mean()), float(values.mean())
    ci = bootstrap((values,), np.mean, n_resamples=10_000, method="percentile", random_state=seed).confidence_interval
    return float(ci.low), float(ci.high)


def exploration(args):
    """Fig. 9 as numbers: each checkpoint sampled with the training noise, `--episodes` episodes per seed."""
    rows = []
    for path in args.checkpoints:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        env_id, dataset = ckpt["env_id"], ckpt.get("dataset") or ckpt["env_id"]
        data_paths = subset_paths(dataset, env_id)
        per_seed = [
            exploration_numbers(rollout(path, args.episodes, seed)["paths"], data_paths, args.radius, args.cell)
            for seed in range(args.seeds)
        ]
        row = dict(
            checkpoint=checkpoint_name(path), env_id=env_id, dataset=dataset, seeds=args.seeds, episodes=args.episodes
        )
        for key in ("coverage", "in_tube", "tube_share"):
            values = [n[key] for n in per_seed]
            lo, hi = bootstrap_interval(values)
            row |= {key: float(np.mean(values)), f"{key}_lo": lo, f"{key}_hi": hi}
        rows.append(row)
        print(
            f"{row['checkpoint']}: coverage {row['coverage']:.4f} m^2 [{row['coverage_lo']:.4f}, {row['coverage_hi']:.4f}]"
            f" | in tube {row['in_tube']:.2f} [{row['in_tube_lo']:.2f}, {row['in_tube_hi']:.2f}]"
            f" | whole path in tube {row['tube_share']:.2f} [{row['tube_share_lo']:.2f}, {row['tube_share_hi']:.2f}]"
        )
    write_csv(args.out, rows)


def write_csv(out: str, rows: list):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(",".join(rows[0]) + "\n")
        for r in rows:
            f.write(",".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + "\n")
    print(f"table -> {out}")


def table(args):
    """Per run group: the mean over seeds of `--tag` over the iterations in `--window` (1-based, inclusive), with a
    95 % bootstrap interval over seeds, the seeds counted, and the commits the runs came from (summary.json)."""
    groups = {g: r for g, r in group_runs(args.runs).items() if not args.only or any(o in g for o in args.only)}
    if not groups:
        envs.fail(f"no run directories named <group>__s<seed> in {args.runs}")
    first, last = args.window
    rows = []
    for group, runs in sorted(groups.items()):
        values, commits, unfinished = [], set(), 0
        for run in runs:
            path = os.path.join(run, "summary.json")
            if not os.path.isfile(path):
                unfinished += 1
                continue
            summary = json.load(open(path))
            commits.add(f"{summary.get('git_commit') or 'unknown'}{'+dirty' if summary.get('git_dirty') else ''}")
            curve = read_curve(run, args.tag)
            if curve is None or len(curve[1]) < last:
                envs.fail(f"{run} has {0 if curve is None else len(curve[1])} iterations of {args.tag}, not {last}")
            values.append(float(np.mean(curve[1][first - 1 : last])))
        if not values:
            continue
        lo, hi = bootstrap_interval(values)
        rows.append(
            dict(
                group=group,
                tag=args.tag,
                window=f"{first}-{last}",
                mean=float(np.mean(values)),
                lo=lo,
                hi=hi,
                seeds=len(values),
                per_seed=" ".join(f"{v:.3g}" for v in values),
                unfinished=unfinished,
                commits=" ".join(sorted(commits)),
            )
        )
        print(f"{group}: {rows[-1]['mean']:.3g} [{lo:.3g}, {hi:.3g}] over {len(values)} seeds ({rows[-1]['commits']})")
    write_csv(args.out, rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("trajectories", help="sampled trajectories of checkpoints")
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--titles", nargs="+", default=None)
    p.add_argument("--columns", type=int, default=None)
    p.add_argument("--mode", choices=["train", "eval"], default="train")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("curves", help="learning curves from run directories")
    p.add_argument("--runs", required=True, nargs="+", help="directories holding <subset>__<method>__s<seed> run dirs")
    p.add_argument("--tag", default="charts/episodic_return")
    p.add_argument("--only", nargs="+", default=None, help="keep the run groups whose name contains one of these")
    p.add_argument("--out", required=True)
    p = sub.add_parser("summaries", help="one CSV row per finished run (its summary.json)")
    p.add_argument("--runs", required=True, nargs="+")
    p.add_argument("--out", required=True)
    p = sub.add_parser("robustness", help="fine-tuned policies under action noise and wider initial states")
    p.add_argument("--runs", required=True)
    p.add_argument("--subset", default="m2")
    p.add_argument("--action-noise", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4])
    p.add_argument("--init-noise", type=float, nargs="+", default=[0.0, 0.02, 0.04, 0.06, 0.08])
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--out", required=True)
    p = sub.add_parser("exploration", help="Fig. 9 as numbers: coverage and structure of first-iteration samples")
    p.add_argument("--checkpoints", nargs="+", required=True)
    p.add_argument("--episodes", type=int, default=50, help="episodes per seed")
    p.add_argument("--seeds", type=int, default=5, help="sampling seeds 0..seeds-1 (the interval is over them)")
    p.add_argument("--radius", type=float, default=0.03, help="tube radius around the demonstrated paths (m)")
    p.add_argument("--cell", type=float, default=0.01, help="grid cell side for the covered area (m)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("table", help="each run group's mean over seeds with a 95 %% bootstrap interval")
    p.add_argument("--runs", required=True, nargs="+")
    p.add_argument("--tag", default="charts/episodic_return")
    p.add_argument("--window", type=int, nargs=2, default=[47, 51], help="first and last iteration (1-based)")
    p.add_argument("--only", nargs="+", default=None, help="keep the run groups whose name contains one of these")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "trajectories":
        for path in args.checkpoints:
            if not os.path.isfile(path):
                envs.fail(
                    f"checkpoint {path} does not exist; "
                    "make the bundled ones with: bash experiments/avoid/avoid_study.sh pretrain"
                )
        trajectories(args)
    else:
        globals()[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
