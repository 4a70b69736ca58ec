"""What a run prints as it goes: tqdm bars on a terminal, plain lines in a log file (CI, Slurm, nohup). Progress
follows a run over env steps, EvalProgress an evaluation over policy queries; run_cli (runs.py) closes every bar
on Ctrl-C so that its message gets a line of its own.
"""

from __future__ import annotations

import sys
import time
import weakref

import numpy as np

from cleandppo import envs


def number(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


bars: list = []  # the tqdm bars on the terminal now (a run's, an evaluation's); runs.run_cli closes them on Ctrl-C
# a weak reference to the run's Progress, which runs.log_episodes moves within iterations, and the env steps of an
# iteration (--num-envs x --n-steps x --act-steps in every script; set by runs.prepare_run_dir): a rollout's last step
current = {"run": lambda: None, "per_iter": 0}


def open_bar(**tqdm_args):
    """A tqdm bar on a terminal (registered, so close_bars can end it), None in a log file."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(dynamic_ncols=True, **tqdm_args)
    bars.append(bar)
    return bar


def close_bar(bar):
    if bar is not None:
        bar.close()
        if bar in bars:
            bars.remove(bar)


def close_bars():
    """Close every bar still drawn, newest first (each ends its line on the terminal)."""
    while bars:
        bars.pop().close()


class Progress:
    """A run's progress over env steps. On a terminal: a tqdm bar with rate, ETA and the latest numbers as postfix;
    it moves after every vector step of a rollout (runs.log_episodes calls tick), not only at the end of an iteration.
    Otherwise (log files, CI): one plain line per iteration with the same numbers and the time left, and within an
    iteration a line of the steps done and the time left every `interval` seconds (the first after `first`), so a
    long rollout shows life early."""

    first, interval = 10.0, 60.0

    def __init__(self, total_steps: int, done_steps: int = 0, desc: str = ""):
        self.total, self.start, self.t0 = total_steps, done_steps, time.time()
        self.shown_at = self.t0 - self.interval + self.first  # when the last plain line was printed
        self.shown = ""  # the bar's postfix: the last iteration's numbers
        self.bar = open_bar(total=total_steps, initial=done_steps, desc=desc, unit="step", unit_scale=True)
        current["run"] = weakref.ref(self)

    def rate(self, env_steps: int, now: float) -> tuple[float, float]:
        """(env steps per second since this Progress started, seconds left at that rate)."""
        sps = (env_steps - self.start) / max(now - self.t0, 1e-9)
        return sps, (self.total - env_steps) / sps if sps > 0 else float("nan")

    def tick(self, env_steps: int):
        """Within an iteration: `env_steps` done so far. At the rollout's last step the update follows, which can
        take minutes: the bar says so, and so does a plain line when the last one is `first` seconds old."""
        per_iter = current["per_iter"]
        updating = per_iter > 0 and env_steps % per_iter == 0
        if self.bar is not None:
            self.bar.update(env_steps - self.bar.n)  # tqdm redraws at most every 0.1 s
            if updating:
                self.bar.set_postfix_str(f"{self.shown} | updating" if self.shown else "updating", refresh=True)
            return
        now = time.time()
        if now - self.shown_at >= (self.first if updating else self.interval):
            self.shown_at = now
            sps, left = self.rate(env_steps, now)
            what = " | rollout done, updating" if updating else ""
            print(f"... steps {env_steps}/{self.total}{what} | SPS {sps:.0f} | left {left / 60:.1f}m", flush=True)

    def update(self, iteration: int, num_iters: int, env_steps: int, recent_returns, evals, successes, **numbers):
        """Report the end of `iteration`: the mean return of the last 50 training episodes, the last evaluation
        (marked "(before training)" while it is the first one, that of the policy the run started from), on
        robomimic tasks the iteration's and the last evaluation's success rates, then the script's own `numbers`
        (kl, q_loss, ...) as given; NaN ones are omitted."""
        shown = {"return": np.mean(recent_returns[-50:]) if recent_returns else float("nan"), "eval": evals.last}
        if evals.robomimic:
            shown.update(success=envs.success_rate(successes), eval_success=evals.last_success)
        shown = {k: v for k, v in dict(shown, **numbers).items() if not (isinstance(v, float) and np.isnan(v))}
        first = " (before training)" if evals.count == 1 else ""
        text = " | ".join(f"{k} {number(v)}{first if k == 'eval' else ''}" for k, v in shown.items())
        if self.bar is not None:
            self.bar.update(env_steps - self.bar.n)
            self.shown = f"iter {iteration}/{num_iters} | {text}"
            self.bar.set_postfix_str(self.shown, refresh=True)
            return
        self.shown_at = now = time.time()
        sps, left = self.rate(env_steps, now)
        print(
            f"iter {iteration}/{num_iters} | steps {env_steps}/{self.total} | {text} | SPS {sps:.0f} | "
            f"left {left / 60:.1f}m",
            flush=True,
        )

    def close(self):
        close_bar(self.bar)
        current["run"] = lambda: None


class EvalProgress:
    """Where an evaluation is: its policy queries so far against the most its episodes can take (each ends by the
    task's time limit, most earlier; the image tasks' episodes in rounds, envs.run_episodes). A tqdm bar on a
    terminal, removed when done; otherwise a plain line every Progress.interval seconds (the first after
    Progress.first)."""

    def __init__(self, episodes: int, most_queries: int, what: str):
        self.episodes, self.most, self.what, self.done, self.t0 = episodes, most_queries, what, 0, time.time()
        self.shown_at = self.t0 - Progress.interval + Progress.first
        desc = f"eval {what}, {episodes} episodes"
        self.bar = open_bar(total=most_queries, desc=desc, unit="query", leave=False)

    def tick(self):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.time()
        if now - self.shown_at >= Progress.interval:
            self.shown_at = now
            left = (self.most - self.done) * (now - self.t0) / self.done
            print(
                f"... eval {self.what}: {self.done}/{self.most} policy queries (at most; one serves every env) | "
                f"left {left / 60:.1f}m at most",
                flush=True,
            )

    def close(self):
        close_bar(self.bar)
