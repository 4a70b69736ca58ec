"""Runs of dppo.py and gaussian_ppo.py from pixels (paper 5.2: lift-img with the wrist camera): pre-training on a
small image dataset, then fine-tuning from the checkpoint it wrote, each run a few seconds (episodes shortened to two
chunks, a tiny ViT). In-process runs of `<script>.py <flags>` (conftest.run_main parses the flags as the command line
does). Skipped without robosuite; where no OpenGL backend renders, skipped in one line naming the Debian packages
(test_pixels_env.gl)."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("robosuite")

from test_pixel_policies import found_shift  # noqa: E402
from test_pixels_env import _image_demos, gl, write_robomimic_hdf5  # noqa: E402, F401 (gl: a fixture)

from cleandppo import arguments, dppo, envs, gaussian_ppo, robomimic_tasks  # noqa: E402
from conftest import assert_one_line_error, read_checkpoint, read_summary, run_main  # noqa: E402

TINY_VIT = ["--vit-dim", "16", "--spatial-emb", "8", "--mlp-dims", "32", "32", "32"]
TINY_RUN = ["--num-envs", "1", "--n-steps", "4", "--total-timesteps", "16", "--eval-episodes", "1", "--no-cuda"]
TINY_RUN += ["--critic-dims", "16", "16", "16", "--update-epochs", "1"]
FLAGS = {  # per script: K, minibatches of a few samples, two of them per optimizer step
    dppo: ["--denoising-steps", "10", "--batch-size", "5", "--grad-accumulate", "2", "--logprob-batch-size", "3"],
    gaussian_ppo: ["--batch-size", "2", "--grad-accumulate", "2"],
}


@pytest.fixture
def short_lift(monkeypatch, request):
    """lift's episodes end after 8 steps (two chunks); the env meta registry starts empty and is restored after.
    Skipped where nothing renders (test_pixels_env.gl)."""
    request.getfixturevalue("gl")
    monkeypatch.setitem(robomimic_tasks.ROBOMIMIC_TASKS["lift"], "max_episode_steps", 8)
    monkeypatch.setattr(robomimic_tasks, "_robomimic_env_args", {})


def image_dataset(path):
    """A lift-img dataset in robomimic's image.hdf5 layout: two demos of 6 and 7 steps, patterned images."""
    write_robomimic_hdf5(str(path), _image_demos("lift-img", lengths=(6, 7)), envs.robomimic_env_args("lift-img"))
    return str(path)


def spy(module, monkeypatch, name, where=None):
    """Record every return value of `module.name` (or of the method `name` of class `where`) in a list."""
    owner = where or module
    original, seen = getattr(owner, name), []

    def recording(*a, **k):
        out = original(*a, **k)
        seen.append(out)
        return out

    monkeypatch.setattr(owner, name, recording)
    return seen


def spy_inputs(owner, name, monkeypatch, position):
    """Record argument `position` of every call of `owner.name`."""
    original, seen = getattr(owner, name), []

    def recording(*a, **k):
        seen.append(a[position])
        return original(*a, **k)

    monkeypatch.setattr(owner, name, recording)
    return seen


def assert_shifted_copies(before, after):
    """`after` holds the images of `before` (uint8), each moved by at most 4 pixels, not all by zero; the state as is."""
    assert before["rgb"].dtype == after["rgb"].dtype == torch.uint8 and before["rgb"].shape[-3:] == (3, 96, 96)
    images = zip(before["rgb"].flatten(0, 1), after["rgb"].flatten(0, 1), strict=True)
    shifts = [found_shift(a, b, 4) for a, b in images]
    assert any(s != (0, 0) for s in shifts), shifts
    assert torch.equal(torch.as_tensor(before["state"]), after["state"])


@pytest.mark.parametrize("module", [dppo, gaussian_ppo], ids=["dppo", "gaussian_ppo"])
def test_pre_training_then_fine_tuning_from_pixels_on_shifted_uint8_images(module, tmp_path, short_lift, monkeypatch):
    # pre-training: every batch's images random-shifted before the loss
    with monkeypatch.context() as m:
        gathered = spy(envs, m, "take_rows")
        if module is dppo:  # the observations the denoising loss sees
            seen = spy_inputs(dppo, "denoising_loss", m, 3)
        else:  # those the policy sees (the first calls: the pre-training batches)
            seen = spy_inputs(gaussian_ppo.GaussianPolicy, "forward", m, 1)
        flags = ["--dataset", image_dataset(tmp_path / "lift-image.hdf5"), "--pretrain-only", "--pretrain-epochs", "2"]
        flags += ["--pretrain-batch-size", "4", "--eval-episodes", "1", "--no-cuda", *TINY_VIT, *FLAGS[module][:2]]
        run_main(module, "--env-id", "lift-img", "--run-dir", tmp_path / "pre", *flags)
    assert len(gathered) == 2 * 2  # two epochs of two batches (3 + 4 samples of Tp = 4 in batches of 4)
    assert len(seen) >= len(gathered)
    for before, after in zip(gathered, seen[: len(gathered)], strict=True):
        assert_shifted_copies({k: torch.as_tensor(v) for k, v in before.items()}, after)
    pre = read_checkpoint(tmp_path / "pre", name="pretrained.pt")
    assert pre["model_kwargs"]["vision"]["image_shape"] == (3, 96, 96) and pre["model_kwargs"]["obs_dim"] == 9

    # fine-tuning from it: the update reads the stored (uint8) rollout images, shifted once
    stored = spy(envs, monkeypatch, "flat", envs.RolloutObs)
    updated = spy_inputs(module, "ppo_update", monkeypatch, 6 if module is dppo else 4)
    path = tmp_path / "pre" / "pretrained.pt"
    run_main(
        module, "--env-id", "lift-img", "--checkpoint", path, "--run-dir", tmp_path / "ft", *TINY_RUN, *FLAGS[module]
    )
    summary = read_summary(tmp_path / "ft", keys=("pretrained_eval_success_rate", "final_eval_success_rate"))
    assert summary["env_steps"] == 16 and summary["args"]["grad_accumulate"] == 2
    last = read_checkpoint(tmp_path / "ft", keys=("critic", "obs"))
    assert any(k.startswith("encoder.") for k in last["critic"])  # the ViT critic
    assert last["obs"]["rgb"].dtype == np.uint8  # the next rollout's first observation, kept for a resume
    assert len(updated) == 1
    assert_shifted_copies(stored[0], updated[0]["obs"])


# ---- a checkpoint of the other kind: one line naming the fix ------------------------------------------------------
def test_a_state_checkpoint_for_a_pixel_task_and_the_reverse_are_one_line(tmp_path, short_lift):
    for env_id, obs_dim, image_shape in (("lift-img", 9, (3, 96, 96)), ("lift", 19, None)):
        args = arguments.parse_args(dppo.Args, dppo.task_defaults, ["--env-id", env_id, *TINY_VIT])
        kw = dppo.model_kwargs_from(args, obs_dim, 7, image_shape)
        norm = envs.identity_normalization(obs_dim, 7)
        ckpt = dppo.make_checkpoint(dppo.build_policy_network(kw), kw, norm, args, 0, 0)
        envs.save_checkpoint(ckpt, str(tmp_path / ("pixels.pt" if image_shape else "state.pt")))
    pixels = tmp_path / "pixels.pt"
    for env_id, path, needle in (("lift-img", tmp_path / "state.pt", "--env-id lift"), ("lift", pixels, "lift-img")):
        with pytest.raises(SystemExit) as e:
            run_main(dppo, "--env-id", env_id, "--checkpoint", path, "--eval-only", "--run-dir", tmp_path / "r")
        assert_one_line_error(str(e.value), needle)
        assert not os.path.exists(tmp_path / "r")
