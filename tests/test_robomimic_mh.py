"""MH-like robomimic demonstrations (scripts/make_robomimic_demos.py --operators mh, --dataset <task>-mhsim) and the
weak bundled Lift and Can checkpoints pre-trained on them (cleandppo/pretrained/{lift,can}-mhsim-*-mlp.pt,
docs/checkpoints.md).

Skipped as a whole when robosuite is not installed (see docs/robomimic.md for the install line).
"""

import json
import os
import sys

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("robosuite")

from cleandppo import (  # noqa: E402
    dawr,
    dipo,
    dppo,
    dql,
    drwr,
    envs,
    exact_likelihood_pg,
    gaussian_ppo,
    gmm_ppo,
    idql,
    qsm,
    robomimic_tasks,  # noqa: E402
)
from conftest import assert_one_line_error, read_summary, run_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_robomimic_demos as demos_script  # noqa: E402

PRETRAINED = os.path.join(ROOT, "cleandppo", "pretrained")
DIFFUSION_SCRIPTS = [dppo, drwr, dawr, dipo, idql, dql, qsm, exact_likelihood_pg]


# ---- the MH-like generator -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mh_file(tmp_path_factory):
    """Six Lift demos, one per MH operator (the operator with the fewest demos takes the next turn)."""
    path = str(tmp_path_factory.mktemp("mh") / "lift-mhsim.hdf5")
    demos_script.main(
        ["--task", "lift", "--operators", "mh", "--num-demos", "6", "--max-attempts", "12", "--out", path]
    )
    return path


def test_mh_file_has_every_operator_and_robomimic_masks(mh_file):
    with h5py.File(mh_file, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
        operators = [f["data"][n].attrs["operator"] for n in names]
        proficiency = [f["data"][n].attrs["proficiency"] for n in names]
        masks = {k: sorted(x.decode() for x in f["mask"][k][()]) for k in f["mask"]}
        info = json.loads(f["data"].attrs["cleandppo_generator"])
    assert sorted(operators) == sorted(demos_script.MH_OPERATORS)  # every operator exactly once
    assert [p for p in proficiency] == [o.split("_")[0] for o in operators]
    for level in ("better", "okay", "worse"):
        expected = sorted(n for n, p in zip(names, proficiency, strict=True) if p == level)
        assert masks[level] == expected and len(expected) == 2
    for name, op in zip(names, operators, strict=True):
        assert masks[op] == [name]
    assert set(info["operators"]) == set(demos_script.MH_OPERATORS)


def test_an_mh_operator_that_never_succeeds_stops_the_run_naming_max_steps(tmp_path):
    """The operator with the fewest demos takes the next turn, so one that cannot succeed within --max-steps would
    take every turn until --max-attempts: after 20 failures in a row it stops the run, naming a longer --max-steps."""
    out = str(tmp_path / "can.hdf5")
    with pytest.raises(SystemExit) as e:
        demos_script.main(["--task", "can", "--operators", "mh", "--num-demos", "10", "--max-steps", "5", "--out", out])
    assert_one_line_error(str(e.value), "better_operator_1 succeeded in none of its 20 attempts", "--max-steps 10")
    assert not os.path.exists(out)


def test_mh_file_holds_only_successful_demos(mh_file):
    """Each demo ends at its first success: reward and done 1 on the last step only."""
    with h5py.File(mh_file, "r") as f:
        for name in f["data"]:
            rewards, dones = f["data"][name]["rewards"][()], f["data"][name]["dones"][()]
            assert rewards[-1] == 1 and dones[-1] == 1, name
            assert not rewards[:-1].any() and not dones[:-1].any(), name
        info = json.loads(f["data"].attrs["cleandppo_generator"])
    assert info["successes"] == 6 and info["attempts"] >= 6


def test_mh_operators_differ_in_proficiency():
    """Worse operators are slower, noisier, hesitate more and misjudge grasps more than better ones."""
    rng = np.random.default_rng(0)
    better = [demos_script.sample_mh_habits(rng, "better_operator_1") for _ in range(20)]
    worse = [demos_script.sample_mh_habits(rng, "worse_operator_1") for _ in range(20)]
    assert max(h["speed"] for h in worse) < min(h["speed"] for h in better)
    for key in ("wobble", "pause_p", "pause_max", "miss_p", "overshoot_p", "noise"):
        assert min(h[key] for h in worse) >= max(h[key] for h in better), key


@pytest.mark.parametrize("task", ["lift", "can"])  # Can: about 7 s
def test_a_missed_grasp_is_followed_by_a_regrasp_and_success(task):
    """An operator who always misjudges the first grasp opens, backs off, regrasps and still solves the task."""
    env = robomimic_tasks.make_robomimic_env(task)
    rng = np.random.default_rng(0)
    habits = demos_script.sample_mh_habits(rng, "okay_operator_1")
    habits.update(miss_p=1.0, pause_p=0.0, stall_p=0.0, overshoot_p=0.0, detour_p=0.0)
    demo, steps = demos_script.record_attempt(env, 3, rng, 300, habits)
    env.close()
    assert demo is not None and demo["attrs"]["regrasps"] >= 1, steps
    assert demo["rewards"][-1] == 1


def test_mhsim_dataset_name_resolves_in_the_data_dir(mh_file, monkeypatch, tmp_path):
    monkeypatch.setenv("CLEANDPPO_DATA", os.path.dirname(mh_file))
    assert robomimic_tasks.robomimic_dataset_name("lift-mhsim") == ("lift", "mhsim")
    assert envs.resolve_dataset("lift-mhsim") == mh_file
    data = envs.load_dataset("lift-mhsim", "lift")
    assert data["observations"].shape[1] == 19 and len(data["episodes"]) == 6
    monkeypatch.setenv("CLEANDPPO_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        envs.resolve_dataset("can-mhsim")
    assert_one_line_error(
        str(e.value), "can-mhsim", "make_robomimic_demos.py --task can --operators mh", "--dataset can-mhsim"
    )


def test_a_filter_key_keeps_only_the_demos_of_its_masks(mh_file, monkeypatch):
    """`--dataset <file or name>:better,okay` (robomimic's filter keys): the demos of mask/better and mask/okay, in
    file order, and nothing else; a key the file lacks, or a filter on a D4RL file, fails in one line."""
    with h5py.File(mh_file, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
        kept = [n for n in names if f["data"][n].attrs["proficiency"] in ("better", "okay")]
        expected = [f["data"][n]["actions"][()].astype(np.float32) for n in kept]
    monkeypatch.setenv("CLEANDPPO_DATA", os.path.dirname(mh_file))
    for dataset in (f"{mh_file}:better,okay", "lift-mhsim:okay,better"):
        data = envs.load_dataset(dataset, "lift")
        assert len(data["episodes"]) == 4
        for episode, actions in zip(data["episodes"], expected, strict=True):
            np.testing.assert_array_equal(episode["actions"], actions)
        np.testing.assert_array_equal(data["normalization"]["action_max"], np.concatenate(expected).max(0))
    with pytest.raises(SystemExit) as e:
        envs.load_dataset("lift-mhsim:best", "lift")
    assert_one_line_error(str(e.value), "no filter key ['best']", "better_operator_1", "worse")
    d4rl = os.path.join(os.path.dirname(mh_file), "hopper.hdf5")
    envs.write_d4rl_hdf5(d4rl, {k: np.zeros((2, 1), np.float32) for k in envs.D4RL_KEYS})
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(f"{d4rl}:better")
    assert_one_line_error(str(e.value), "not a robomimic file", "drop ':better'")


# ---- the weak bundled Lift and Can checkpoints ---------------------------------------------------------
WEAK = {"lift": "Lift", "can": "PickPlaceCan"}  # task: robosuite env name in the checkpoint's env meta


def fake_run_episodes(seen):
    """Stands in for envs.run_episodes: one policy query on the normalized obs midpoint, success counted 1."""

    def run_episodes(act_fn, env_id, episodes, seed, act_steps, cond_steps, normalization, env_workers=1, stopped=None):
        obs_dim = envs.env_dims(env_id)[0]
        chunk = np.asarray(act_fn(np.zeros((episodes, cond_steps, obs_dim), np.float32)))
        seen.append((chunk, normalization))
        return [1.0] * episodes, [300] * episodes

    return run_episodes


@pytest.mark.parametrize("task", sorted(WEAK))
@pytest.mark.parametrize(
    "module, policy",
    [(m, "diffusion") for m in DIFFUSION_SCRIPTS] + [(gaussian_ppo, "gaussian"), (gmm_ppo, "gmm")],
    ids=lambda x: x.__name__.split(".")[-1] if hasattr(x, "__name__") else x,
)
def test_weak_checkpoint_loads_and_acts_in_every_script(module, policy, task, tmp_path, monkeypatch):
    path = os.path.join(PRETRAINED, f"{task}-mhsim-{policy}-mlp.pt")
    seen = []
    monkeypatch.setattr(envs, "run_episodes", fake_run_episodes(seen))
    run = str(tmp_path / "run")
    run_main(
        module,
        "--env-id",
        task,
        "--eval-only",
        "--eval-episodes",
        "2",
        "--checkpoint",
        path,
        "--run-dir",
        run,
        "--no-cuda",
    )
    assert len(seen) == 1
    chunk, normalization = seen[0]
    assert chunk.shape[0] == 2 and chunk.shape[1] >= 4 and chunk.shape[2] == 7
    assert np.isfinite(chunk).all() and np.abs(chunk).max() <= 1.0 + 1e-6
    expected = torch.load(path, map_location="cpu", weights_only=False)[
        "normalization"
    ]  # this file's data, not <task>-scripted's
    for key in ("obs_min", "obs_max", "action_min", "action_max"):
        np.testing.assert_array_equal(np.asarray(normalization[key]), np.asarray(expected[key]))
    assert read_summary(run)["final_eval_success_rate"] == 1.0


@pytest.mark.parametrize("task", sorted(WEAK))
def test_weak_checkpoints_record_their_data(task):
    for policy in ("diffusion", "gaussian", "gmm"):
        ckpt = torch.load(
            os.path.join(PRETRAINED, f"{task}-mhsim-{policy}-mlp.pt"), map_location="cpu", weights_only=False
        )
        assert ckpt["policy"] == policy and ckpt["env_id"] == task
        assert ckpt["dataset"] == (
            "can-mhsim:better,okay" if (task, policy) == ("can", "diffusion") else f"{task}-mhsim"
        )
        assert ckpt["robomimic_env_args"]["env_name"] == WEAK[task]
