"""The contract all ten scripts keep (docs/contract.md): the ALGO constant, the common
Args fields in their order, task_defaults, no command-line parsing outside arguments.parse_args, and what one tiny
fine-tuning run on avoid-m2 leaves behind (TensorBoard tags, summary.json keys). Every test runs once per script, so
a script that breaks the contract fails under its own name.

The avoid-m2 runs start from the bundled checkpoints (numpy env, no MuJoCo): one iteration of 2 envs x 25 chunks of 4
actions, so that at least one episode ends (the time limit is 100 steps), and two evaluations of one episode each.
"""

import dataclasses
import importlib
import inspect
import json
import os
import subprocess

import imageio
import pytest
import torch

import conftest
from conftest import run_main, scalar_tags

torch.set_num_threads(1)
SCRIPTS = ("dppo", "gaussian_ppo", "gmm_ppo", "exact_likelihood_pg", "dawr", "drwr", "dipo", "idql", "dql", "qsm")
COMMON_FIELDS = tuple(  # docs/contract.md item 2, in this order
    "env_id seed num_envs total_timesteps checkpoint eval_only eval_freq eval_episodes run_dir overwrite save_freq "
    "cuda torch_deterministic track capture_video env_workers sampling_threads update_threads".split()
)
ONE_ITERATION = "--env-id avoid-m2 --num-envs 2 --n-steps 25 --total-timesteps 200 --eval-episodes 1 --eval-freq 1"
SMALL = {  # per script: what makes its one iteration take a second or two
    "dppo": "--ft-denoising-steps 2 --batch-size 50 --update-epochs 1 --n-critic-warmup-itr 0",
    "gaussian_ppo": "--batch-size 50 --update-epochs 1 --n-critic-warmup-itr 0",
    "gmm_ppo": "--batch-size 50 --update-epochs 1 --n-critic-warmup-itr 0",
    "exact_likelihood_pg": "--ft-denoising-steps 2 --batch-size 50 --grad-chunk-size 50 --update-epochs 1 "
    "--sde-method euler --sde-step-size 0.1 --hutchinson-probes 1 --n-critic-warmup-itr 0",
    "dawr": "--batch-size 50 --buffer-size 200 --replay-ratio 1 --critic-replay-ratio 1 --critic-dims 16 16 16",
    "drwr": "--batch-size 50 --update-epochs 1",
    "dipo": "--batch-size 50 --buffer-size 200 --replay-ratio 1 --critic-dims 16 16 16 --n-critic-warmup-itr 0 "
    "--action-gradient-steps 1",
    "idql": "--batch-size 50 --buffer-size 200 --replay-ratio 1 --critic-dims 16 16 16 --n-critic-warmup-itr 0 "
    "--num-candidates 2",
    "dql": "--batch-size 50 --buffer-size 200 --replay-ratio 1 --critic-dims 16 16 16 --n-critic-warmup-itr 0",
    "qsm": "--batch-size 50 --buffer-size 200 --replay-ratio 1 --critic-dims 16 16 16 --n-critic-warmup-itr 0",
}
REPLAY_BUFFER = ("dawr", "dipo", "idql", "dql", "qsm")
PPO = ("dppo", "gaussian_ppo", "gmm_ppo", "exact_likelihood_pg")
TAGS = tuple(  # docs/contract.md item 6: every fine-tuning run
    "charts/episodic_return charts/episodic_length charts/SPS charts/learning_rate charts/peak_memory_mb "
    "eval/episodic_return time/rollout_s time/update_s".split()
)
PPO_TAGS = ("losses/policy_loss", "losses/value_loss", "losses/approx_kl", "losses/clipfrac")  # docs/contract.md item 6
SUMMARY_KEYS = (
    *conftest.SUMMARY_KEYS,
    "peak_memory_mb",
    "git_commit",
    "git_dirty",
    "parallel",
)  # docs/contract.md item 7


def load(script):
    return importlib.import_module(f"cleandppo.{script}")


@pytest.mark.parametrize("script", SCRIPTS)
def test_algo_constant_names_the_script(script):
    assert load(script).ALGO == script


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_same_helpers_have_the_same_names(script):
    module = load(script)  # docs/contract.md items 3-5
    for name in ("task_defaults", "check_args", "eval_act", "main"):
        assert callable(getattr(module, name, None)), f"{script} has no {name}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_args_start_with_the_common_fields_in_order(script):
    names = tuple(field.name for field in dataclasses.fields(load(script).Args))
    assert names[: len(COMMON_FIELDS)] == COMMON_FIELDS, names[: len(COMMON_FIELDS)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_task_defaults_return_args_fields(script):
    module = load(script)
    fields = {field.name for field in dataclasses.fields(module.Args)}
    assert module.task_defaults(module.Args()) == {}  # the Gym defaults are the Args defaults
    for env_id in ("lift", "square", "avoid-m2"):
        table = module.task_defaults(module.Args(env_id=env_id))
        assert isinstance(table, dict) and set(table) <= fields, (env_id, set(table) - fields)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("spelling", [["--num-envs=3"], ["--num-envs", "3"]])
def test_the_task_table_fills_every_field_but_the_flags_given(script, spelling):
    from cleandppo import arguments

    module = load(script)
    table = module.task_defaults(module.Args(env_id="lift", num_envs=3))  # (qsm sizes its buffer by num_envs)
    args = arguments.parse_args(module.Args, module.task_defaults, ["--env-id", "lift", *spelling])
    assert args.num_envs == 3 and table.get("num_envs", 3) != 3  # given: kept (the table would set another value)
    assert {k: getattr(args, k) for k in table if k != "num_envs"} == {
        k: v for k, v in table.items() if k != "num_envs"
    }


@pytest.mark.parametrize("script", SCRIPTS)
def test_only_runs_reads_the_command_line(script):
    module = load(script)
    source = inspect.getsource(module)
    assert "sys.argv" not in source and "tyro.cli" not in source
    assert list(inspect.signature(module.main).parameters) == ["args"]  # main takes resolved args, nothing else
    assert source.rstrip().endswith("runs.run_cli(main, arguments.parse_args(Args, task_defaults))")


@pytest.fixture(scope="session")
def avoid_run(tmp_path_factory):
    """run(script) -> the run dir of one tiny fine-tuning run of the script on avoid-m2 with --capture-video, made once
    per session. The script's ALGO is renamed for the run: the summary and the checkpoint must name what ALGO says."""
    made = {}

    def run(script):
        if script not in made:
            module, run_dir = load(script), tmp_path_factory.mktemp(f"avoid-{script}") / "run"
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(module, "ALGO", f"{script}-renamed")
                flags = [*ONE_ITERATION.split(), *SMALL[script].split(), "--capture-video", "--no-cuda"]
                run_main(module, *flags, "--run-dir", run_dir)
            made[script] = run_dir
        return made[script]

    return run


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_tiny_run_logs_the_required_tags(script, avoid_run):
    tags = scalar_tags(avoid_run(script))
    required = set(TAGS) | (set(PPO_TAGS) if script in PPO else set())
    required |= {"charts/buffer_size"} if script in REPLAY_BUFFER else set()
    assert required <= tags, sorted(required - tags)
    assert any(tag.startswith("losses/") for tag in tags), sorted(tags)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_tiny_run_writes_the_summary_and_checkpoint_under_its_algo(script, avoid_run):
    run_dir = avoid_run(script)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert set(SUMMARY_KEYS) <= set(summary), sorted(set(SUMMARY_KEYS) - set(summary))
    assert summary["algo"] == f"{script}-renamed" and summary["env_id"] == "avoid-m2" and summary["env_steps"] == 200
    assert summary["peak_memory_mb"] > 0
    assert (summary["git_commit"], summary["git_dirty"]) == git_stamp(os.path.dirname(inspect.getfile(load(script))))
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint_last.pt"), weights_only=False)
    assert checkpoint["algo"] == f"{script}-renamed"


def git_stamp(where):
    """(HEAD's full hash, tree has changes) of the git checkout holding `where`, from git itself; (None, None)
    outside one (the scratch copies of tests/mutations.py)."""
    head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        return None, None
    status = subprocess.run(["git", "-C", where, "status", "--porcelain"], capture_output=True, text=True, check=True)
    assert len(head.stdout.strip()) == 40
    return head.stdout.strip(), status.stdout != ""


def assert_video(run_dir):
    """run_dir/eval.mp4 holds a recorded episode (more than its first frame) next to summary.json."""
    frames = imageio.mimread(os.path.join(run_dir, "eval.mp4"))
    assert len(frames) > 1 and frames[0].ndim == 3, len(frames)
    assert os.path.isfile(os.path.join(run_dir, "summary.json"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_capture_video_records_an_evaluation_episode_at_the_end(script, avoid_run):
    assert_video(avoid_run(script))


@pytest.mark.parametrize("script", ["dql"])
def test_capture_video_with_eval_only(script, tmp_path):
    run_dir = tmp_path / "eval"
    run_main(
        load(script),
        "--env-id",
        "avoid-m2",
        "--eval-only",
        "--eval-episodes",
        "1",
        "--capture-video",
        "--no-cuda",
        "--run-dir",
        run_dir,
    )
    assert_video(run_dir)
