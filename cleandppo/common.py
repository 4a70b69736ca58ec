"""The foundation every other cleandppo module stands on: one-line errors, where data lives, normalization.

It imports no other module of the project. The layers above it, each importing only the ones below:
  common.py                               -- this file
  gym_tasks.py, avoid.py, robomimic_tasks.py -- one module per task family: ids, the simulator, its data files
  workers.py                              -- worker processes that step a vector env's envs (--env-workers), threads
  vit.py                                  -- the ViT encoder and random shifts of the pixel policies (torch only)
  official.py                             -- the official DPPO code's checkpoints and train.npz, converted
  envs.py                                 -- the env and dataset factory the scripts call (dispatches on --env-id)
  arguments.py                            -- the command line: tyro parsing, per-task defaults, flag ranges
  console.py                              -- what a run prints as it goes: progress bars and lines
  runs.py                                 -- run plumbing: run dirs, resume, logging
  pretraining.py                          -- the behaviour-cloning loop of dppo.py, gaussian_ppo.py, gmm_ppo.py
  dppo.py, gaussian_ppo.py, ...           -- the algorithm scripts; no module imports them
(tests/test_layers.py checks this order.)
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

import numpy as np


def fail(message: str):
    """Stop with one line that names the fix (no traceback for user mistakes)."""
    raise SystemExit(f"error: {message}")


# ------------------------------------------------------------------------------------------------
# Where datasets live, and downloads that never leave half a file
# ------------------------------------------------------------------------------------------------
def data_dir() -> str:
    """Where datasets are cached: $CLEANDPPO_DATA, else ~/.cache/cleandppo/datasets."""
    return os.environ.get("CLEANDPPO_DATA", os.path.join(os.path.expanduser("~"), ".cache", "cleandppo", "datasets"))


def download(url: str, path: str, timeout: float = 20.0):
    """Download to `path` atomically (a partial file never takes the final name)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    os.replace(tmp, path)


def download_or_fail(name: str, url: str, path: str, fix: str) -> str:
    """Download `url` to `path`; offline (or any download error) stop with one line naming `fix`."""
    print(f"[cleandppo] downloading {name} from {url}")
    try:
        download(url, path)
    except (urllib.error.URLError, OSError, ValueError) as e:
        fail(f"{name} is not in {data_dir()} and could not be downloaded ({e.__class__.__name__}); {fix}")
    return path


# ------------------------------------------------------------------------------------------------
# Normalization (paper D.2): x_norm = 2 (x - min) / (max - min + 1e-6) - 1, per dimension
# ------------------------------------------------------------------------------------------------
def compute_normalization(observations: np.ndarray, actions: np.ndarray) -> dict:
    """Per-dimension min/max over the whole dataset, stored in every checkpoint."""
    return {
        "obs_min": observations.min(0).astype(np.float32),
        "obs_max": observations.max(0).astype(np.float32),
        "action_min": actions.min(0).astype(np.float32),
        "action_max": actions.max(0).astype(np.float32),
    }


def identity_normalization(obs_dim: int, action_dim: int) -> dict:
    """Normalization that leaves values (almost) unchanged; used for training from scratch."""
    lo = lambda d: -np.ones(d, np.float32)  # noqa: E731
    hi = lambda d: np.ones(d, np.float32)  # noqa: E731
    return {"obs_min": lo(obs_dim), "obs_max": hi(obs_dim), "action_min": lo(action_dim), "action_max": hi(action_dim)}


def normalize_obs(obs, norm: dict):
    return 2.0 * (obs - norm["obs_min"]) / (norm["obs_max"] - norm["obs_min"] + 1e-6) - 1.0


def unnormalize_obs(obs_norm, norm: dict):
    return (obs_norm + 1.0) / 2.0 * (norm["obs_max"] - norm["obs_min"] + 1e-6) + norm["obs_min"]


def normalize_action(action, norm: dict):
    return 2.0 * (action - norm["action_min"]) / (norm["action_max"] - norm["action_min"] + 1e-6) - 1.0


def unnormalize_action(action_norm, norm: dict):
    # the official inverse omits the 1e-6 of the forward map; the difference is below 1e-6 relative
    return (action_norm + 1.0) / 2.0 * (norm["action_max"] - norm["action_min"]) + norm["action_min"]


# ------------------------------------------------------------------------------------------------
# D4RL's hdf5 layout: every dataset file this project writes (Gym, Avoid) uses it
# ------------------------------------------------------------------------------------------------
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def write_d4rl_hdf5(path: str, data: dict, attrs: dict | None = None):
    """Write a D4RL-format file (observations, actions, rewards, terminals, timeouts, next_observations)."""
    import h5py

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value, compression="gzip")
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    os.replace(tmp, path)


def read_d4rl_hdf5(path: str) -> dict:
    """Read the D4RL keys from an hdf5 file; one-line error when the file is broken or incomplete."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in D4RL_KEYS if k not in f]
            if missing:
                fail(
                    f"{path} is not a D4RL-format dataset (missing {missing}); regenerate it or pass another --dataset"
                )
            data = {k: f[k][()] for k in D4RL_KEYS}
            data["attrs"] = dict(f.attrs)
    except OSError as e:
        fail(
            f"cannot read dataset {path} ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
            "delete it and regenerate it"
        )
    return data
