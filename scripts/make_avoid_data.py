"""Make the Avoid datasets (paper section 6): scripted demos of all 24 routes, and the subsets M1, M2, M3.

    python scripts/make_avoid_data.py                          # avoid-all, avoid-m1, avoid-m2, avoid-m3
    python scripts/make_avoid_data.py --d3il-dir DIR           # also D3IL's own demos -> avoid-d3il-*
    python scripts/make_avoid_data.py --d3il-dir DIR --figure docs/figures/avoid_data.png --stats

Files go to $CLEANDPPO_DATA (default ~/.cache/cleandppo/datasets) in the D4RL hdf5 layout the scripts read
(`--dataset avoid-m2`). Subsets are cut with the official filter (script/dataset/filter_d3il_avoid_data.py):
some desired mode (M1: 5|6, M2: 5|7, M3: 5|8) and both required modes 1 and 2, tested on the desired
positions. D3IL's files (data/avoiding/data/*.pkl in the D3IL repositories) carry no license: read them from
where you keep them; they are never copied into this repository.
"""

import argparse
import os

import numpy as np

from cleandppo import avoid, envs


def write(name: str, episodes: list, source: str):
    path = os.path.join(envs.data_dir(), f"{name}.hdf5")
    data = avoid.to_d4rl(episodes)
    envs.write_d4rl_hdf5(path, data, attrs={"env_id": "avoid", "source": source, "episodes": len(episodes)})
    print(f"{name}: {len(episodes)} episodes, {len(data['actions'])} transitions -> {path}")


def stats(episodes: list) -> dict:
    """Numbers compared side by side in docs/avoid.md."""
    lengths = np.array([len(ep["actions"]) for ep in episodes])
    actions = np.concatenate([ep["actions"] for ep in episodes])
    routes = [tuple(int(m) for m in np.nonzero(avoid.episode_modes(ep["observations"][:, :2]))[0]) for ep in episodes]
    return {
        "episodes": len(episodes),
        "length mean/min/max": f"{lengths.mean():.1f} / {lengths.min()} / {lengths.max()}",
        "action x min/max": f"{actions[:, 0].min():.4f} / {actions[:, 0].max():.4f}",
        "action y min/max": f"{actions[:, 1].min():.4f} / {actions[:, 1].max():.4f}",
        "mean |action| x, y": f"{np.abs(actions[:, 0]).mean():.4f}, {np.abs(actions[:, 1]).mean():.4f}",
        "distinct mode sets": len(set(routes)),
        "M1/M2/M3 episodes": "/".join(str(len(avoid.subset(episodes, s))) for s in avoid.SUBSETS),
    }


def figure(path: str, rows: list):
    """One row per source: all demos, then M1, M2, M3 (desired-position paths over the pillars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for r, (label, episodes) in enumerate(rows):
        for c, name in enumerate(["all", *avoid.SUBSETS]):
            chosen = episodes if name == "all" else avoid.subset(episodes, name)
            ax = axes[r, c]
            avoid.draw_scene(ax, f"{label}: {name.upper()} ({len(chosen)})")
            for ep in chosen:
                ax.plot(ep["observations"][:, 2], ep["observations"][:, 3], color=(0.3, 0.3, 0.3), lw=0.6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure -> {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos-per-route", type=int, default=10, help="scripted demos per route (24 routes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--d3il-dir", default=None, help="D3IL's data/avoiding/data directory of *.pkl episodes")
    parser.add_argument("--figure", default=None, help="write the side-by-side path figure here (PNG)")
    parser.add_argument("--stats", action="store_true", help="print the comparison table (markdown)")
    args = parser.parse_args()
    if args.demos_per_route < 1:
        envs.fail(f"--demos-per-route must be >= 1, got {args.demos_per_route}")
    scripted = avoid.make_demos(args.demos_per_route, args.seed)
    write("avoid-all", scripted, "scripted")
    for name in avoid.SUBSETS:
        write(f"avoid-{name}", avoid.subset(scripted, name), "scripted")
    rows = [("scripted", scripted)]
    if args.d3il_dir is not None:
        if not os.path.isdir(args.d3il_dir):
            envs.fail(f"--d3il-dir {args.d3il_dir} is not a directory; pass D3IL's data/avoiding/data")
        real = avoid.read_d3il_episodes(args.d3il_dir)
        if not real:
            envs.fail(f"no *.pkl episode in {args.d3il_dir}; pass D3IL's data/avoiding/data")
        write("avoid-d3il-all", real, "d3il")
        for name in avoid.SUBSETS:
            write(f"avoid-d3il-{name}", avoid.subset(real, name), "d3il")
        rows.append(("D3IL", real))
    if args.stats:
        table = [(label, stats(episodes)) for label, episodes in rows]
        print("| | " + " | ".join(label for label, _ in table) + " |")
        print("| --- |" + " --- |" * len(table))
        for key in table[0][1]:
            print(f"| {key} | " + " | ".join(str(s[key]) for _, s in table) + " |")
    if args.figure:
        figure(args.figure, rows)


if __name__ == "__main__":
    main()
