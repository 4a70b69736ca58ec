"""runs.py section 6: the two-pass tyro parse (explicit flags beat per-task tables), the progress line, the
evaluation record a checkpoint carries, and episode logging. Expected values are written out by hand."""

import dataclasses

import numpy as np
import pytest

from cleandppo import runs


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
    args = runs.parse_args(Toy, toy_defaults, argv=argv)
    assert (args.num_envs, args.n_steps) == (num_envs, n_steps)


def test_parse_args_prints_only_the_table_values_it_kept(capsys):
    runs.parse_args(Toy, toy_defaults, argv=["--env-id", "lift", "--n-steps", "7"])
    line = capsys.readouterr().out.strip()
    assert "num_envs=50" in line and "n_steps" not in line


def test_progress_plain_line_counts_steps_and_time_left(capsys, monkeypatch):
    clock = iter([100.0, 110.0])  # started at t=100, first report at t=110
    monkeypatch.setattr(runs.time, "time", lambda: next(clock))
    progress = runs.Progress(total_steps=1000, done_steps=200)  # pytest's stderr is not a terminal: plain lines
    evals = runs.Evaluations(Writer(), robomimic=True)
    evals.add(0, 3.0, 0.25)
    recent = [100.0] * 10 + [1.0] * 50  # only the last 50 episodes count
    progress.update(3, 10, 400, recent, evals, [True, False, False, False], kl=0.00123, q=float("nan"))
    line = capsys.readouterr().out.strip()
    # 200 steps in 10 s = 20 SPS; 600 steps left = 30 s = 0.5 min; NaN numbers are left out
    assert line == (
        "iter 3/10 | steps 400/1000 | return 1 | eval 3 | success 0.25 | eval_success 0.25 | kl 0.00123 | SPS 20 | "
        "left 0.5m"
    )


def test_progress_line_has_no_success_outside_robomimic(capsys):
    evals = runs.Evaluations(Writer(), robomimic=False)
    runs.Progress(total_steps=10).update(1, 1, 10, [], evals, [])
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

    def fake_run_episodes(act, env_id, episodes, seed, act_steps, cond_steps, normalization, asynchronous):
        calls.append((env_id, episodes, seed, act_steps, cond_steps))
        return [0.0, 2.0, 4.0, 0.0], [10, 10, 10, 10]

    monkeypatch.setattr(runs.envs, "run_episodes", fake_run_episodes)
    args = dataclasses.make_dataclass(
        "A", [("env_id", str), ("eval_episodes", int), ("seed", int), ("act_steps", int), ("cond_steps", int)]
    )("lift", 4, 3, 4, 1)
    args.async_envs = False
    writer = Writer()
    evals = runs.Evaluations(writer, robomimic=True)
    mean, std, success = evals.run(500, None, args, None)
    # returns 0, 2, 4, 0: mean 1.5, population std sqrt((2.25 + 0.25 + 6.25 + 2.25) / 4), two of four > 0
    assert (mean, success) == (1.5, 0.5) and std == pytest.approx((11 / 4) ** 0.5)
    assert calls == [("lift", 4, 10_003, 4, 1)]  # evaluation envs are seeded apart from the training envs
    assert writer.scalars == [("eval/episodic_return", 1.5, 500), ("eval/success_rate", 0.5, 500)]
    assert evals.summary()["pretrained"] == 1.5
