"""The seven diffusion baselines on a robomimic id (Lift): the paper's robomimic defaults (official
cfg/robomimic/finetune/<task>/ft_<algo>_diffusion_mlp.yaml) fill every
flag not given on the command line, success rates are logged and summarised, and the dataset's env meta travels in
the checkpoints. Skipped as a whole when robosuite is not installed.
"""

import importlib

import pytest

pytest.importorskip("robosuite")

from test_robomimic import write_robomimic_hdf5  # noqa: E402

from cleandppo import dppo, envs, robomimic_tasks  # noqa: E402
from conftest import TINY_DIFFUSION, read_checkpoint, read_summary, run_main, scalar_tags, tiny_demos  # noqa: E402

# Per script: flags that make 2 envs x 2 chunks (16 env steps, one iteration) fit, and what its robomimic table must
# set for Lift when these flags are given (official cfg/robomimic/finetune/lift/ft_*_diffusion_mlp.yaml; common:
# gamma 0.999, actor LR 1e-5, act_steps 4).
SMALL = {
    "drwr": ["--batch-size", "4"],
    "dawr": ["--batch-size", "4", "--buffer-size", "8", "--n-critic-warmup-itr", "0"],
    "dipo": ["--batch-size", "4", "--buffer-size", "8", "--n-critic-warmup-itr", "0"],
    "idql": ["--batch-size", "4", "--buffer-size", "8", "--n-critic-warmup-itr", "0"],
    "dql": ["--batch-size", "4", "--buffer-size", "8", "--n-critic-warmup-itr", "0"],
    "qsm": ["--batch-size", "4", "--buffer-size", "8", "--n-critic-warmup-itr", "0"],
    "exact_likelihood_pg": [
        "--batch-size",
        "4",
        "--hutchinson-probes",
        "1",
        "--sde-method",
        "euler",
        "--ft-denoising-steps",
        "3",
        "--n-critic-warmup-itr",
        "0",
    ],
}
TABLE = {  # entries the Lift table must print (besides gamma=0.999 and act_steps=4, checked for all)
    "drwr": ["actor_lr=1e-05", "update_epochs=16"],
    "dawr": ["actor_lr=1e-05", "critic_lr=0.001", "scale_reward_factor=1.0", "replay_ratio=64"],
    "dipo": ["actor_lr=1e-05", "critic_lr=0.001", "scale_reward_factor=1.0", "replay_ratio=16"],
    "idql": ["actor_lr=1e-05", "critic_lr=0.001", "scale_reward_factor=1.0", "num_candidates=10"],
    "dql": ["actor_lr=1e-05", "critic_lr=0.001", "scale_reward_factor=1.0"],
    "qsm": ["actor_lr=1e-05", "critic_lr=0.001", "scale_reward_factor=1.0"],
    "exact_likelihood_pg": ["actor_lr=1e-05", "critic_lr=0.001", "update_epochs=10"],
}


@pytest.fixture(scope="module")
def lift_checkpoint(tmp_path_factory):
    """A tiny diffusion checkpoint pre-trained by dppo.py on 3 random Lift demos whose env meta carries a marker."""
    tmp = tmp_path_factory.mktemp("lift")
    env_args = robomimic_tasks.default_robomimic_env_args("lift")
    env_args["env_kwargs"]["cleandppo_marker"] = 7  # carried by the checkpoints (robosuite never sees it)
    write_robomimic_hdf5(str(tmp / "lift-tiny.hdf5"), tiny_demos(lengths=(8, 9, 7)), env_args)
    run_main(
        dppo,
        "--env-id",
        "lift",
        "--dataset",
        tmp / "lift-tiny.hdf5",
        "--pretrain-only",
        "--pretrain-epochs",
        "1",
        "--eval-episodes",
        "1",
        "--run-dir",
        tmp / "pre",
        "--no-cuda",
        *TINY_DIFFUSION,
    )
    envs.set_robomimic_env_args("lift", None)
    return str(tmp / "pre" / "pretrained.pt")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_baseline_on_lift_uses_the_table_and_logs_success(name, lift_checkpoint, tmp_path, capsys, monkeypatch):
    module = importlib.import_module(f"cleandppo.{name}")
    monkeypatch.setattr(robomimic_tasks, "_robomimic_env_args", {})  # the env meta must come from the checkpoint
    run = tmp_path / "ft"
    run_main(
        module,
        "--env-id",
        "lift",
        "--checkpoint",
        lift_checkpoint,
        "--num-envs",
        "2",
        "--n-steps",
        "2",
        "--total-timesteps",
        "16",
        "--eval-episodes",
        "1",
        "--eval-freq",
        "1",
        "--run-dir",
        run,
        "--no-cuda",
        "--denoising-steps",
        "6",
        *SMALL[name],
    )
    out = capsys.readouterr().out
    table = out.split("[lift] defaults for this task: ")[1].splitlines()[0]
    for entry in ["gamma=0.999", "act_steps=4", *TABLE[name]]:
        assert entry in table.split(", "), (entry, table)
    for given in ("num_envs", "n_steps", "batch_size", "eval_episodes"):  # flags on the command line keep their value
        assert not any(entry.startswith(f"{given}=") for entry in table.split(", ")), (given, table)
    assert "iter 1/1" in out and "success" in out.split("iter 1/1")[1]
    summary = read_summary(run, algo=name, env_steps=16)
    for key in ("pretrained_eval_success_rate", "final_eval_success_rate", "best_eval_success_rate"):
        assert 0.0 <= summary[key] <= 1.0, (key, summary[key])
    assert summary["args"]["gamma"] == 0.999 and summary["args"]["num_envs"] == 2
    assert "eval/success_rate" in scalar_tags(run)
    ckpt = read_checkpoint(run)
    assert ckpt["robomimic_env_args"]["env_kwargs"]["cleandppo_marker"] == 7
