"""The Gym MuJoCo locomotion tasks (paper 5.1, D.2): Hopper, Walker2D and HalfCheetah, their ids and D4RL data.

The paper used gym 0.2x MuJoCo "-v2" ids (mujoco-py). They map to gymnasium's "-v4" versions: same model files,
observations and rewards as the v3 environments D4RL recorded with, on the maintained `mujoco` bindings. (v5 changes
Walker2d's foot friction and other details.) envs.py makes the environments; this module says which ones.
"""

from __future__ import annotations

import os
import sys
import warnings

from cleandppo.common import data_dir, download_or_fail

# gymnasium warns on every v4 make that v5 exists; we pick v4 on purpose (see README), so the
# warning says nothing new. Other warnings stay visible.
warnings.filterwarnings("ignore", message=r".*is out of date\. You should consider upgrading.*")


def _mujoco_warning(message: str):
    # HalfCheetah-v4's model file uses `settotalmass`, which MuJoCo 3 flags at every compile (once per
    # env made): harmless, and it floods the log. Every other MuJoCo warning is still printed.
    if "settotalmass" not in message:
        print(f"MuJoCo warning: {message}", file=sys.stderr)


try:
    import mujoco

    mujoco.set_mju_user_warning(_mujoco_warning)
except (ImportError, AttributeError):
    pass

PAPER_GYM_IDS = {
    "Hopper-v2": "Hopper-v4",
    "Walker2D-v2": "Walker2d-v4",
    "HalfCheetah-v2": "HalfCheetah-v4",
}
PAPER_ID_ALIASES = {"walker2d-v2": "Walker2D-v2", "hopper-v2": "Hopper-v2", "halfcheetah-v2": "HalfCheetah-v2"}
MODERN_GYM_IDS = [f"{name}-v{v}" for name in ("Hopper", "Walker2d", "HalfCheetah") for v in (4, 5)]
GYM_MAX_EPISODE_STEPS = 1000
_announced = set()


def paper_id(env_id: str) -> str:
    """The paper's spelling of a Gym id in any case ('hopper-v2' -> 'Hopper-v2'); other ids unchanged."""
    return PAPER_ID_ALIASES.get(env_id.lower(), env_id)


def gymnasium_id(env_id: str) -> str | None:
    """The gymnasium id of a paper (-v2) or modern (-v4/-v5) Gym id, announced once per paper id; None otherwise."""
    paper = paper_id(env_id)
    if paper in PAPER_GYM_IDS:
        gym_id = PAPER_GYM_IDS[paper]
        if paper not in _announced:
            print(
                f"[cleandppo] {env_id} -> gymnasium {gym_id} (paper gym -v2 ids map to the maintained v4 environments)"
            )
            _announced.add(paper)
        return gym_id
    return env_id if env_id in MODERN_GYM_IDS else None


# ------------------------------------------------------------------------------------------------
# D4RL datasets (paper D.2): fetched by name into the data dir, or made here by scripts/make_dataset.sh
# ------------------------------------------------------------------------------------------------
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{name}.hdf5"
D4RL_NAMES = {  # dataset name -> (env id, D4RL file name)
    f"{task}-{kind}-v2": (paper, f"{task}_{kind.replace('-', '_')}-v2")
    for task, paper in (("hopper", "Hopper-v2"), ("walker2d", "Walker2D-v2"), ("halfcheetah", "HalfCheetah-v2"))
    for kind in ("medium", "medium-replay", "medium-expert", "expert", "random")
}


def resolve_d4rl_dataset(dataset: str) -> str:
    """Path of a D4RL name (hopper-medium-v2, ...): cached in data_dir(), else downloaded (address pattern
    $CLEANDPPO_D4RL_URL); offline, one line naming the command that makes the data here."""
    path = os.path.join(data_dir(), f"{dataset}.hdf5")
    if os.path.isfile(path):
        return path
    url = os.environ.get("CLEANDPPO_D4RL_URL", D4RL_URL).format(name=D4RL_NAMES[dataset][1])
    return download_or_fail(
        dataset, url, path, f"make it locally with: bash scripts/make_dataset.sh {D4RL_NAMES[dataset][0]}"
    )
