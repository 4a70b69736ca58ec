"""arguments.py and runs.py section 5: the two-pass tyro parse (explicit flags beat per-task tables), the progress
line, the evaluation record a checkpoint carries, and episode logging. Expected values are written out by hand."""

import dataclasses
import gc
import io
import sys

import numpy as np
import pytest

from cleandppo import arguments, console, runs


@dataclasses.dataclass
class Toy:
    env_id: str = "Hopper-v2"
    num_envs: int = 40
    n_steps: int = 500
    from_scratch: bool = False


def toy_defaults(args):
    if args.from_scratch:
        return dict(num_envs=16, n_steps=128)
    if args.env_id == "lift":
        return dict(num_envs=50, n_steps=300)
    return {}


@pytest.mark.parametrize(
    "argv, num_envs, n_steps",
    [
        ([], 40, 500),  # Gym: the class defaults
        (["--env-id", "lift"], 50, 300),  # the task's table
        (["--env-id", "lift", "--n-steps=7"], 50, 7),  # an explicit flag wins, '=' spelling
        (["--n-steps", "7", "--env-id", "lift"], 50, 7),  # in any position
        (["--from-scratch", "--num-envs=8"], 8, 128),  # a preset never overrides what was given
        (["--from-scratch", "--num-envs", "8"], 8, 128),
    ],
)
def test_parse_args_explicit_flags_beat_the_table(argv, num_envs, n_steps, capsys):
    args = arguments.parse_args(Toy, toy_defaults, argv=argv)
    assert (args.num_envs, args.n_steps) == (num_envs, n_steps)


def test_parse_args_prints_only_the_table_values_it_kept(capsys):
    arguments.parse_args(Toy, toy_defaults, argv=["--env-id", "lift", "--n-steps", "7"])
    line = capsys.readouterr().out.strip()
    assert "num_envs=50" in line and "n_steps" not in line


def test_progress_plain_line_counts_steps_and_time_left(capsys, monkeypatch):
    clock = iter([100.0, 110.0])  # started at t=100, first report at t=110
    monkeypatch.setattr(runs.time, "time", lambda: next(clock))
    progress = console.Progress(total_steps=1000, done_steps=200)  # pytest's stderr is not a terminal: plain lines
    evals = runs.Evaluations(Writer(), robomimic=True)
    evals.add(0, 3.0, 0.25)
    recent = [100.0] * 10 + [1.0] * 50  # only the last 50 episodes count
    progress.update(3, 10, 400, recent, evals, [True, False, False, False], kl=0.00123, q=float("nan"))
    line = capsys.readouterr().out.strip()
    # 200 steps in 10 s = 20 SPS; 600 steps left = 30 s = 0.5 min; NaN numbers are left out
    assert line == (
        "iter 3/10 | steps 400/1000 | return 1 | eval 3 (before training) | success 0.25 | eval_success 0.25 | "
        "kl 0.00123 | SPS 20 | left 0.5m"
    )


def test_progress_line_has_no_success_outside_robomimic(capsys):
    evals = runs.Evaluations(Writer(), robomimic=False)
    console.Progress(total_steps=10).update(1, 1, 10, [], evals, [])
    assert "success" not in capsys.readouterr().out


class Writer:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_evaluations_keep_pretrained_last_best_and_survive_a_checkpoint():
    writer = Writer()
    evals = runs.Evaluations(writer, robomimic=True)
    evals.add(0, 5.0, 0.2)
    evals.add(100, 9.0, 0.6)
    evals.add(200, 7.0, 0.4)
    assert evals.summary() == dict(pretrained=5.0, final=7.0, best=9.0, success=(0.2, 0.4, 0.6))
    assert writer.scalars[:2] == [("eval/episodic_return", 5.0, 0), ("eval/success_rate", 0.2, 0)]
    resumed = runs.Evaluations(Writer(), robomimic=True)
    resumed.load_state_dict(evals.state_dict())
    resumed.add(300, 8.0, 0.5)  # a later evaluation after the resume: pre-trained and best come from the checkpoint
    assert resumed.summary() == dict(pretrained=5.0, final=8.0, best=9.0, success=(0.2, 0.5, 0.6))


def test_evaluations_log_no_success_rate_outside_robomimic():
    writer = Writer()
    evals = runs.Evaluations(writer, robomimic=False)
    evals.add(0, 1.0, float("nan"))
    assert [t for t, _, _ in writer.scalars] == ["eval/episodic_return"]
    assert evals.summary()["success"] == ()


def test_log_episodes_logs_only_the_finished_ones():
    writer, recent, successes = Writer(), [3.0], []
    infos = {
        "final_info": {
            "episode_return": np.array([10.0, 0.0, 30.0]),
            "_episode_return": np.array([True, False, True]),
            "episode_length": np.array([5, 0, 7]),
            "episode_success": np.array([True, False, False]),
            "_episode_success": np.array([True, False, True]),
        }
    }
    runs.log_episodes(writer, infos, 64, recent, successes)
    assert recent == [3.0, 10.0, 30.0]
    assert successes == [True, False]
    assert writer.scalars == [
        ("charts/episodic_return", 10.0, 64),
        ("charts/episodic_length", 5, 64),
        ("charts/episodic_return", 30.0, 64),
        ("charts/episodic_length", 7, 64),
    ]


def test_evaluations_run_records_mean_std_and_success(monkeypatch):
    calls = []

    def fake_run_episodes(act, env_id, episodes, seed, act_steps, cond_steps, normalization, env_workers, stopped):
        calls.append((env_id, episodes, seed, act_steps, cond_steps))
        return [0.0, 2.0, 4.0, 0.0], [10, 10, 10, 10]

    monkeypatch.setattr(runs.envs, "run_episodes", fake_run_episodes)
    args = dataclasses.make_dataclass(
        "A", [("env_id", str), ("eval_episodes", int), ("seed", int), ("act_steps", int), ("cond_steps", int)]
    )("lift", 4, 3, 4, 1)
    writer = Writer()
    evals = runs.Evaluations(writer, robomimic=True)
    mean, std, success = evals.run(500, None, args, None)
    # returns 0, 2, 4, 0: mean 1.5, population std sqrt((2.25 + 0.25 + 6.25 + 2.25) / 4), two of four > 0
    assert (mean, success) == (1.5, 0.5) and std == pytest.approx((11 / 4) ** 0.5)
    assert calls == [("lift", 4, 10_003, 4, 1)]  # evaluation envs are seeded apart from the training envs
    assert writer.scalars == [("eval/episodic_return", 1.5, 500), ("eval/success_rate", 0.5, 500)]
    assert evals.summary()["pretrained"] == 1.5


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_moves_within_an_iteration(capsys, monkeypatch):
    """A long rollout shows life: log_episodes (called after every vector step) moves the run's Progress; in a log
    file a line comes after Progress.first seconds, then every Progress.interval seconds, and when the rollout ends
    (its iteration's last env step) a line says the update runs, if the last line is Progress.first seconds old."""
    clock = Clock(100.0)
    monkeypatch.setattr(runs.time, "time", clock)
    monkeypatch.setitem(console.current, "per_iter", 500)  # what prepare_run_dir sets: env steps per iteration
    progress = console.Progress(total_steps=1000)
    for t, steps in ((105.0, 100), (111.0, 200), (120.0, 300), (125.0, 500), (171.0, 700), (190.0, 900)):
        clock.now = t
        runs.log_episodes(Writer(), {}, steps, [], [])
    progress.close()
    clock.now = 500.0
    runs.log_episodes(Writer(), {}, 1000, [], [])  # a closed Progress says nothing more
    # at 111 s: 200 steps in 11 s = 18 SPS, 800 left = 44 s; at 125 s: 500 in 25 s = 20 SPS, 500 left = 25 s;
    # 171 s is 46 s after the last line, 190 s 65 s: 900 in 90 s = 10 SPS, 100 left = 10 s
    assert capsys.readouterr().out.splitlines() == [
        "... steps 200/1000 | SPS 18 | left 0.7m",
        "... steps 500/1000 | rollout done, updating | SPS 20 | left 0.4m",
        "... steps 900/1000 | SPS 10 | left 0.2m",
    ]
    monkeypatch.setattr(sys, "stderr", Terminal())  # on a terminal the bar follows every step
    progress = console.Progress(total_steps=1000)
    runs.log_episodes(Writer(), {}, 300, [], [])
    assert progress.bar.n == 300 and "updating" not in str(progress.bar.postfix)
    runs.log_episodes(Writer(), {}, 500, [], [])
    assert progress.bar.n == 500 and "updating" in str(progress.bar.postfix)
    progress.close()


def test_evaluation_shows_progress_and_the_first_is_marked(capsys, monkeypatch):
    """An evaluation reports its policy queries against the most an episode takes (avoid: 100 steps / 4 + 1 = 26);
    the progress line marks the evaluation of the starting policy until another one is made, across a resume."""
    clock = Clock(0.0)
    monkeypatch.setattr(runs.time, "time", clock)

    def fake_run_episodes(act, env_id, episodes, *rest):
        for _ in range(26):
            clock.now += 1.0
            act(None)
        return [float(clock.now)], [100]

    monkeypatch.setattr(runs.envs, "run_episodes", fake_run_episodes)
    args = dataclasses.make_dataclass(
        "A", [("env_id", str), ("eval_episodes", int), ("seed", int), ("act_steps", int), ("cond_steps", int)]
    )("avoid-m2", 1, 0, 4, 1)
    evals = runs.Evaluations(Writer(), robomimic=False)
    evals.run(0, lambda obs: obs, args, None)  # returns 26.0
    # the 10th query at 10 s: 16 left at 1 s each = 0.27 min; the episode ends before the next line is due
    assert capsys.readouterr().out.splitlines() == [
        "... eval before training: 10/26 policy queries (at most; one serves every env) | left 0.3m at most"
    ]
    progress = console.Progress(total_steps=10)
    progress.update(1, 2, 5, [], evals, [])
    assert "| eval 26.0 (before training) |" in capsys.readouterr().out
    resumed = runs.Evaluations(Writer(), robomimic=False)
    resumed.load_state_dict(evals.state_dict())
    progress.update(1, 2, 5, [], resumed, [])
    assert "| eval 26.0 (before training) |" in capsys.readouterr().out
    resumed.run(5, lambda obs: obs, args, None)  # returns 52.0
    progress.update(2, 2, 10, [], resumed, [])
    assert "| eval 52.0 | SPS" in capsys.readouterr().out
    progress.close()


def test_ctrl_c_message_on_its_own_line_after_the_bars(monkeypatch):
    """On a terminal the Ctrl-C line used to land on the end of the bar (`...clipfrac 0.0297interrupted: ...`), which
    tqdm then redrew over: the bars are closed first, the message is the last line written."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setitem(runs._run, "dir", None)
    monkeypatch.setitem(runs._run, "resume_from", None)

    def main():
        progress = console.Progress(total_steps=100, desc="dppo")
        evals = runs.Evaluations(Writer(), robomimic=False)
        evals.add(0, 5.0, float("nan"))
        progress.update(1, 2, 50, [1.0], evals, [], clipfrac=0.0297)
        console.EvalProgress(10, 26, "at 50 steps").tick()  # Ctrl-C during an evaluation
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        runs.run_cli(main)
    gc.collect()  # a bar left open would draw itself again when collected
    message = "interrupted: the unfinished iteration was dropped; no iteration finished, nothing to resume\n"
    out = terminal.getvalue()
    assert stop.value.code == 130 and "clipfrac 0.0297" in out
    assert out.endswith("\n" + message), repr(out[-300:])


def test_ctrl_c_in_a_pretraining_names_its_continuation(tmp_path, monkeypatch, capsys):
    """A pre-training stopped by Ctrl-C after it wrote its state (or its pretrained.pt, in the closing evaluation)
    says that the same command continues it (it has no checkpoint to resume with --checkpoint); without either, or
    in a run that does not pre-train, the usual line."""
    monkeypatch.setitem(runs._run, "dir", str(tmp_path))
    monkeypatch.setitem(runs._run, "resume_from", None)
    monkeypatch.setitem(runs._run, "pretrains", True)

    def main():
        raise KeyboardInterrupt

    def message():
        with pytest.raises(SystemExit):
            runs.run_cli(main)
        return capsys.readouterr().err

    assert "no iteration finished, nothing to resume" in message()
    (tmp_path / "pretrained.pt").write_bytes(b"")  # killed in its closing evaluation
    goes_on = "interrupted: the pre-training goes on from {} when the same command is run again"
    assert goes_on.format(tmp_path / "pretrained.pt") in message()
    (tmp_path / runs.PRETRAIN_STATE).write_bytes(b"")
    assert goes_on.format(tmp_path / runs.PRETRAIN_STATE) in message()
    monkeypatch.setitem(runs._run, "pretrains", False)  # a fine-tuning run started from a pretrained.pt in its dir
    assert "no iteration finished, nothing to resume" in message()
