"""Shared test fixtures: a tiny D4RL-format Hopper dataset and tiny pre-trained checkpoints.

Everything runs on CPU with one thread and tiny budgets; session-scoped so the suite pays once.
"""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from cleandppo import envs

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DIFFUSION = ["--mlp-dims", "32", "32", "32", "--time-dim", "8", "--denoising-steps", "6", "--ft-denoising-steps", "3"]


def run_script(script, *flags, timeout=300, check=True):
    """Run `python cleandppo/<script> flags...` in a subprocess; return the CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "cleandppo", script), *map(str, flags)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def record_random_hopper(path, episodes=3, seed=0, max_steps=200):
    """Write a D4RL-format file of random-action Hopper episodes (time-outs at `max_steps`)."""
    env = gym.make(envs.resolve_env_id("Hopper-v2"))
    rng = np.random.default_rng(seed)
    keys = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        for t in range(max_steps):
            action = rng.uniform(-0.3, 0.3, 3).astype(np.float32)
            next_obs, reward, term, trunc, _ = env.step(action)
            timeout = t == max_steps - 1 and not term
            for k, v in zip(keys, (obs, action, reward, term, timeout, next_obs)):
                keys[k].append(v)
            obs = next_obs
            if term or timeout:
                break
    data = {k: np.asarray(v, np.float32 if k not in ("terminals", "timeouts") else bool) for k, v in keys.items()}
    envs.write_d4rl_hdf5(path, data, attrs={"env_id": "Hopper-v2"})
    return data


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "tiny-hopper.hdf5")
    record_random_hopper(path)
    return path


@pytest.fixture(scope="session")
def tiny_diffusion_checkpoint(tiny_dataset, tmp_path_factory):
    """A diffusion checkpoint pre-trained by dppo.py for 2 epochs on the tiny dataset (K = 6)."""
    run = tmp_path_factory.mktemp("dppo_pre")
    run_script("dppo.py", "--dataset", tiny_dataset, "--pretrain-only", "--pretrain-epochs", "2", "--run-dir", run,
               "--eval-episodes", "1", *TINY_DIFFUSION)
    return str(run / "pretrained.pt")
