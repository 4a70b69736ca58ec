"""Reliability of every script's run plumbing (issue #12): exact resume after a kill, no hang on a NaN reward,
no silent overwrite of a run dir, Ctrl-C at any point, one line for every bad flag.

Every run here is tiny (2 envs, a few steps, 16-32 wide networks) and in-process."""

import dataclasses
import importlib
import os

import gymnasium as gym
import numpy as np
import pytest
import torch

from cleandppo import envs, runs
from conftest import TINY_DIFFUSION, assert_one_line_error, cli_fails, event_accumulator, main_fails, run_main

torch.set_num_threads(1)
SCRIPTS = ("dppo", "gaussian_ppo", "gmm_ppo", "dawr", "drwr", "dipo", "idql", "dql", "qsm", "exact_likelihood_pg")
TIMING_TAGS = ("charts/SPS", "time/rollout_s", "time/update_s", "charts/peak_memory_mb")
DPPO_TINY = [*TINY_DIFFUSION, "--num-envs", "2", "--n-steps", "4", "--batch-size", "8", "--eval-episodes", "1",
             "--eval-freq", "2", "--critic-dims", "16", "16", "16"]


class Killed(BaseException):
    """What kill -9 does to a run: it stops wherever it is, and nothing in the script catches it."""


def kill_at_vector_step(monkeypatch, calls):
    """Make the `calls`-th training vector step raise Killed (every rollout reads envs.finished_episodes once per
    vector step; evaluation does not), after the envs have stepped and before the step is stored."""
    finished, count = envs.finished_episodes, [0]

    def counting(infos):
        count[0] += 1
        if count[0] == calls:
            raise Killed()
        return finished(infos)

    monkeypatch.setattr(envs, "finished_episodes", counting)


def curves(run_dir):
    """Every TensorBoard scalar of a run but the timing ones: {tag: [(step, value), ...]}."""
    acc = event_accumulator(run_dir)
    tags = [t for t in acc.Tags()["scalars"] if t not in TIMING_TAGS and not t.startswith("time/")]
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags}


def assert_kill_and_resume_is_exact(module, flags, kill_call, tmp_path, monkeypatch):
    """A run killed inside its third iteration and resumed from its checkpoint_last.pt with the same flags logs
    bit-identical scalars (every tag but timing) to the uninterrupted run, in the same run dir."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_main(module, *flags, "--run-dir", whole)
    with monkeypatch.context() as patch:
        kill_at_vector_step(patch, kill_call)
        with pytest.raises(Killed):
            run_main(module, *flags, "--run-dir", killed)
    assert torch.load(killed / "checkpoint_last.pt", weights_only=False)["iteration"] == 2
    resume_flags = [f for f in flags]
    resume_flags[resume_flags.index("--checkpoint") + 1] = killed / "checkpoint_last.pt"
    run_main(module, *resume_flags)  # no --run-dir: a resume continues in the checkpoint's own dir
    expected, got = curves(whole), curves(killed)
    assert set(expected) == set(got) and len(expected) >= 5, (sorted(expected), sorted(got))
    for tag in expected:
        assert got[tag] == expected[tag], tag


# ---- item 4: a run killed at any point and resumed gives the uninterrupted run's scalars ------------------------
def test_dppo_kill_and_resume_is_bit_identical(tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    from cleandppo import dppo

    flags = ["--checkpoint", tiny_diffusion_checkpoint, *DPPO_TINY, "--total-timesteps", "160"]
    # 4 vector steps per iteration: the kill lands in the middle of iteration 3
    assert_kill_and_resume_is_exact(dppo, flags, 2 * 4 + 2, tmp_path, monkeypatch)


def pretrained(module, tiny_dataset, run_dir, *flags):
    """A tiny checkpoint pre-trained by `module` for one epoch on the tiny dataset."""
    run_main(module, "--dataset", tiny_dataset, "--pretrain-only", "--pretrain-epochs", "1", "--eval-episodes", "1",
             "--run-dir", run_dir, *flags)
    return run_dir / "pretrained.pt"


def test_gaussian_ppo_kill_and_resume_is_bit_identical(tiny_dataset, tmp_path, monkeypatch):
    from cleandppo import gaussian_ppo

    tiny = ["--mlp-dims", "16", "16", "16", "--critic-dims", "16", "16", "16"]
    ckpt = pretrained(gaussian_ppo, tiny_dataset, tmp_path / "pre", *tiny)
    flags = ["--checkpoint", ckpt, *tiny, "--num-envs", "2", "--n-steps", "4", "--batch-size", "4",
             "--eval-episodes", "1", "--eval-freq", "2", "--total-timesteps", "160"]
    assert_kill_and_resume_is_exact(gaussian_ppo, flags, 2 * 4 + 3, tmp_path, monkeypatch)


def test_gmm_ppo_kill_and_resume_is_bit_identical(tiny_dataset, tmp_path, monkeypatch):
    from cleandppo import gmm_ppo

    tiny = ["--mlp-dims", "16", "16", "16", "--critic-dims", "16", "16", "16"]
    ckpt = pretrained(gmm_ppo, tiny_dataset, tmp_path / "pre", *tiny)
    flags = ["--checkpoint", ckpt, *tiny, "--num-envs", "2", "--n-steps", "4", "--batch-size", "8",
             "--eval-episodes", "1", "--eval-freq", "2", "--total-timesteps", "160"]
    assert_kill_and_resume_is_exact(gmm_ppo, flags, 2 * 4 + 3, tmp_path, monkeypatch)


BASE = ["--denoising-steps", "6", "--num-envs", "2", "--batch-size", "8", "--eval-episodes", "1", "--eval-freq", "2",
        "--critic-dims", "16", "16", "16"]
OFF_POLICY = [*BASE, "--buffer-size", "64", "--n-steps", "4"]
FAMILIES = {  # script -> (n_steps, flags): weighted regression, off-policy, exact-likelihood PPO
    "dawr": (8, [*OFF_POLICY[:-2], "--n-steps", "8", "--replay-ratio", "2", "--critic-replay-ratio", "1"]),
    "drwr": (40, [*BASE[:-4], "--n-steps", "40", "--update-epochs", "1"]),
    "dipo": (4, [*OFF_POLICY, "--replay-ratio", "2", "--action-gradient-steps", "2"]),
    "idql": (4, [*OFF_POLICY, "--replay-ratio", "2", "--num-candidates", "3"]),
    "dql": (4, [*OFF_POLICY, "--replay-ratio", "2"]),
    "qsm": (4, [*OFF_POLICY, "--replay-ratio", "2"]),
    "exact_likelihood_pg": (4, [*BASE, "--n-steps", "4", "--ft-denoising-steps", "3", "--grad-chunk-size", "8",
                                "--sde-step-size", "0.17", "--sde-method", "euler", "--hutchinson-probes", "1"]),
}


@pytest.mark.parametrize("script", sorted(FAMILIES))
def test_baseline_kill_and_resume_is_bit_identical(script, tiny_diffusion_checkpoint, tmp_path, monkeypatch):
    """Off-policy scripts resume with their replay buffer (checkpoint_last.pt holds it), DAWR with its buffer of
    recent iterations, DRWR and exact-likelihood PG with the envs mid-episode: every scalar matches."""
    module = importlib.import_module(f"cleandppo.{script}")
    n_steps, flags = FAMILIES[script]
    total = 5 * 2 * n_steps * 4
    flags = ["--checkpoint", tiny_diffusion_checkpoint, *flags, "--total-timesteps", str(total)]
    assert_kill_and_resume_is_exact(module, flags, 2 * n_steps + 2, tmp_path, monkeypatch)
