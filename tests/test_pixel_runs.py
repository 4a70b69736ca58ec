"""Runs of dppo.py and gaussian_ppo.py from pixels (paper 5.2: lift-img with the wrist camera), each a few seconds:
episodes shortened to two chunks, a tiny ViT. In-process runs of `<script>.py <flags>` (conftest.run_main parses the
flags as the command line does). Skipped without robosuite, and without an OpenGL backend that renders (the skip
names the Debian packages to install)."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("robosuite")

from test_pixel_policies import found_shift  # noqa: E402

from cleandppo import arguments, dppo, envs, gaussian_ppo, robomimic_tasks  # noqa: E402
from conftest import assert_one_line_error, read_checkpoint, read_summary, run_main  # noqa: E402

TINY_VIT = ["--vit-dim", "16", "--spatial-emb", "8", "--mlp-dims", "32", "32", "32"]
TINY_RUN = ["--num-envs", "1", "--n-steps", "4", "--total-timesteps", "16", "--eval-episodes", "1", "--no-cuda"]
TINY_RUN += ["--critic-dims", "16", "16", "16", "--update-epochs", "1"]


@pytest.fixture(scope="module")
def renders():
    """Skip unless MuJoCo renders offscreen here (EGL or OSMesa)."""
    if all(robomimic_tasks.probe_gl(backend) is not None for backend in ("egl", "osmesa")):
        pytest.skip(f"no OpenGL backend renders: apt-get install {robomimic_tasks.GL_PACKAGES['egl']} (or libosmesa6)")


@pytest.fixture
def short_lift(monkeypatch, renders):
    """lift's episodes end after 8 steps (two chunks); the env meta registry starts empty."""
    monkeypatch.setitem(robomimic_tasks.ROBOMIMIC_TASKS["lift"], "max_episode_steps", 8)
    monkeypatch.setattr(robomimic_tasks, "_robomimic_env_args", {})


def pixel_checkpoint(module, path, *flags):
    """A freshly initialised lift-img policy of `module` (tiny ViT and MLP) saved as a pre-trained checkpoint."""
    args = arguments.parse_args(module.Args, module.task_defaults, ["--env-id", "lift-img", *TINY_VIT, *flags])
    norm = envs.identity_normalization(9, 7)
    if module is dppo:
        kw = dppo.model_kwargs_from(args, 9, 7, (3, 96, 96))
        ckpt = dppo.make_checkpoint(dppo.build_policy_network(kw), kw, norm, args, 0, 0)
    else:
        kw = gaussian_ppo.model_kwargs_from(args, 9, 7, args.fixed_std, image_shape=(3, 96, 96))
        ckpt = gaussian_ppo.make_checkpoint(gaussian_ppo.GaussianPolicy(**kw), kw, norm, args, 0, 0)
    envs.save_checkpoint(ckpt, str(path))
    return str(path)


def spy_on_updates(module, monkeypatch):
    """Record each iteration's rollout observations as stored (the first RolloutObs.flat of an iteration) and the
    observations ppo_update receives."""
    seen = dict(stored=[], updated=[])
    flat, update = module.RolloutObs.flat, module.ppo_update

    def recording_flat(self, device):
        out = flat(self, device)
        seen["stored"].append(out)
        return out

    def recording_update(*a, **k):
        batch = a[6] if module is dppo else a[4]
        seen["updated"].append(batch["obs"])
        return update(*a, **k)

    monkeypatch.setattr(module.RolloutObs, "flat", recording_flat)
    monkeypatch.setattr(module, "ppo_update", recording_update)
    return seen


def assert_shifted_copies(stored, updated):
    """The update saw the stored images (uint8), each moved by at most 4 pixels, not all by zero; the state as is."""
    assert stored["rgb"].dtype == updated["rgb"].dtype == torch.uint8 and stored["rgb"].shape[1:] == (1, 3, 96, 96)
    shifts = [found_shift(a[0], b[0], 4) for a, b in zip(stored["rgb"], updated["rgb"], strict=True)]
    assert any(s != (0, 0) for s in shifts), shifts
    assert torch.equal(stored["state"], updated["state"])


@pytest.mark.parametrize("module", [dppo, gaussian_ppo], ids=["dppo", "gaussian_ppo"])
def test_fine_tuning_from_pixels_updates_on_shifted_uint8_images(module, tmp_path, short_lift, monkeypatch):
    path = pixel_checkpoint(module, tmp_path / "pre.pt", *(["--denoising-steps", "10"] if module is dppo else []))
    seen = spy_on_updates(module, monkeypatch)
    flags = ["--denoising-steps", "10", "--batch-size", "5", "--grad-accumulate", "2", "--logprob-batch-size", "3"]
    flags = flags if module is dppo else ["--batch-size", "2", "--grad-accumulate", "2"]
    run_main(module, "--env-id", "lift-img", "--checkpoint", path, "--run-dir", tmp_path / "ft", *TINY_RUN, *flags)
    summary = read_summary(tmp_path / "ft", keys=("pretrained_eval_success_rate", "final_eval_success_rate"))
    assert summary["env_steps"] == 16 and summary["args"]["grad_accumulate"] == 2
    last = read_checkpoint(tmp_path / "ft", keys=("critic", "obs"))
    assert any(k.startswith("encoder.") for k in last["critic"])  # the ViT critic
    assert last["obs"]["rgb"].dtype == np.uint8  # the next rollout's first observation, kept for a resume
    assert len(seen["updated"]) == 1
    assert_shifted_copies(seen["stored"][0], seen["updated"][0])


# ---- a checkpoint of the other kind: one line naming the fix ------------------------------------------------------
def test_a_state_checkpoint_for_a_pixel_task_and_the_reverse_are_one_line(tmp_path, short_lift):
    pixels = pixel_checkpoint(dppo, tmp_path / "pixels.pt", "--denoising-steps", "10")
    args = arguments.parse_args(dppo.Args, dppo.task_defaults, ["--env-id", "lift", "--mlp-dims", "8", "8", "8"])
    kw = dppo.model_kwargs_from(args, 19, 7)
    state = dppo.make_checkpoint(dppo.build_network(kw), kw, envs.identity_normalization(19, 7), args, 0, 0)
    envs.save_checkpoint(state, str(tmp_path / "state.pt"))
    for env_id, path, needle in (("lift-img", tmp_path / "state.pt", "--env-id lift"), ("lift", pixels, "lift-img")):
        with pytest.raises(SystemExit) as e:
            run_main(dppo, "--env-id", env_id, "--checkpoint", path, "--eval-only", "--run-dir", tmp_path / "r")
        assert_one_line_error(str(e.value), needle)
        assert not os.path.exists(tmp_path / "r")
