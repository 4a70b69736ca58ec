"""The one module every cleandppo script shares: environments, datasets, normalization.

Nothing algorithmic lives here. Read top to bottom:
  1. env ids      -- paper ids (Hopper-v2, ...) mapped to gymnasium MuJoCo environments
  2. normalization -- dataset min/max to [-1, 1] (paper D.2)
  3. action chunks -- the multi-step wrapper (execute act_steps of a horizon_steps chunk)
  4. vector envs  -- sync or async, env i seeded with seed + i, episode statistics
  5. datasets     -- D4RL-format hdf5 read/write, download, Minari, pre-training samples
  6. checkpoints  -- atomic save, load with clear errors, bundled checkpoint paths
  7. robomimic    -- lift/can/square/transport: ids and table here, robosuite env and hdf5 files in
                     cleandppo/robomimic_tasks.py
  8. avoid        -- D3IL's Avoid task: its ids, data and vector env live in cleandppo/avoid.py
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
import warnings
from collections import deque

import gymnasium as gym
import numpy as np

# section 7 (robosuite env, robomimic files) and section 8 (registers cleandppo/Avoid-v0 with gymnasium)
from cleandppo import avoid, robomimic_tasks

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


def fail(message: str):
    """Stop with one line that names the fix (no traceback for user mistakes)."""
    raise SystemExit(f"error: {message}")


# ------------------------------------------------------------------------------------------------
# 1. Environment ids
# ------------------------------------------------------------------------------------------------
# The paper used gym 0.2x MuJoCo "-v2" ids (mujoco-py). They map to gymnasium's "-v4" versions:
# same model files, observations and rewards as the v3 environments D4RL recorded with, on the
# maintained `mujoco` bindings. (v5 changes Walker2d's foot friction and other details.)
PAPER_GYM_IDS = {
    "Hopper-v2": "Hopper-v4",
    "Walker2D-v2": "Walker2d-v4",
    "HalfCheetah-v2": "HalfCheetah-v4",
}
_ALIASES = {"walker2d-v2": "Walker2D-v2", "hopper-v2": "Hopper-v2", "halfcheetah-v2": "HalfCheetah-v2"}
MODERN_GYM_IDS = [f"{name}-v{v}" for name in ("Hopper", "Walker2d", "HalfCheetah") for v in (4, 5)]
GYM_MAX_EPISODE_STEPS = 1000
_announced = set()


def resolve_env_id(env_id: str) -> str:
    """Return the gymnasium id for a paper or modern id (robomimic: the task, e.g. 'can'); else one-line error."""
    if is_robomimic(env_id):  # section 7
        return _robomimic_task(env_id)
    if avoid.is_avoid(env_id):  # section 8
        return avoid.GYM_ID
    paper = _ALIASES.get(env_id.lower(), env_id)
    if paper in PAPER_GYM_IDS:
        gym_id = PAPER_GYM_IDS[paper]
        if paper not in _announced:
            print(
                f"[cleandppo] {env_id} -> gymnasium {gym_id} (paper gym -v2 ids map to the maintained v4 environments)"
            )
            _announced.add(paper)
        return gym_id
    if env_id in MODERN_GYM_IDS:
        return env_id
    known = ", ".join(list(PAPER_GYM_IDS) + MODERN_GYM_IDS + list(ROBOMIMIC_TASKS) + list(avoid.ENV_IDS))
    fail(f"unknown --env-id {env_id!r}; known ids: {known}")


def env_slug(env_id: str) -> str:
    """Lower-case name used for file names, e.g. 'Walker2D-v2' -> 'walker2d-v2', 'PickPlaceCan' -> 'can'."""
    if is_robomimic(env_id):
        return _robomimic_task(env_id)
    paper = _ALIASES.get(env_id.lower(), env_id)
    return paper.lower()


def same_task(env_a: str, env_b: str) -> bool:
    """True when two ids name the same simulator task (Hopper-v2 and Hopper-v4 do)."""
    return resolve_env_id(env_a) == resolve_env_id(env_b)


# ------------------------------------------------------------------------------------------------
# 2. Normalization (paper D.2): x_norm = 2 (x - min) / (max - min + 1e-6) - 1, per dimension
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
# 3. Action chunks (paper 4.3; official MultiStep wrapper)
# ------------------------------------------------------------------------------------------------
class ChunkedEnv(gym.Wrapper):
    """Takes a normalized (act_steps, action_dim) chunk, executes it, returns summed reward.

    The episode ends inside the chunk as soon as the inner env terminates or truncates; the rest
    of the chunk is dropped. Observations are normalized and stacked over the last `cond_steps`
    steps (oldest first, the first observation repeated at an episode start). Info carries
    `env_steps` (sub-steps executed) and, when an episode ends, `episode_return`/`episode_length`
    in raw reward units. When the inner env reports info["success"] (robomimic tasks), the info
    also has `success` (last sub-step) and, at an episode's end, `episode_success` (True if any
    sub-step of the episode succeeded; see finished_successes).
    """

    def __init__(self, env: gym.Env, act_steps: int, cond_steps: int, normalization: dict):
        super().__init__(env)
        self.act_steps, self.cond_steps, self.norm = act_steps, cond_steps, normalization
        obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (cond_steps, obs_dim), np.float32)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (act_steps, action_dim), np.float32)
        self.history = deque(maxlen=cond_steps)
        self.episode_return, self.episode_length, self.episode_success = 0.0, 0, False

    def _stacked(self):
        return np.stack(self.history).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.history.clear()
        self.history.extend([normalize_obs(obs, self.norm)] * self.cond_steps)
        self.episode_return, self.episode_length, self.episode_success = 0.0, 0, False
        return self._stacked(), info

    def step(self, chunk):
        chunk = np.asarray(chunk, dtype=np.float64).reshape(-1, self.env.action_space.shape[0])
        if chunk.shape[0] < self.act_steps:
            raise ValueError(f"chunk has {chunk.shape[0]} actions, act_steps is {self.act_steps}")
        total_reward, terminated, truncated, info, steps = 0.0, False, False, {}, 0
        for action in chunk[: self.act_steps]:
            obs, reward, terminated, truncated, info = self.env.step(unnormalize_action(action, self.norm))
            self.history.append(normalize_obs(obs, self.norm))
            total_reward += float(reward)
            steps += 1
            self.episode_success = self.episode_success or bool(info.get("success", False))
            if terminated or truncated:
                break
        self.episode_return += total_reward
        self.episode_length += steps
        info = dict(info, env_steps=steps)
        if terminated or truncated:
            info["episode_return"], info["episode_length"] = self.episode_return, self.episode_length
            if "success" in info:
                info["episode_success"] = self.episode_success
        return self._stacked(), total_reward, terminated, truncated, info

    @property
    def run_state(self) -> dict:
        """What continuing this env needs (runs.env_state); vector envs read and assign it by name."""
        from cleandppo import runs

        return runs.env_state(self)

    @run_state.setter
    def run_state(self, state: dict):
        from cleandppo import runs

        runs.set_env_state(self, state)


def make_env(
    env_id: str,
    act_steps: int = 1,
    cond_steps: int = 1,
    normalization: dict | None = None,
    render_mode: str | None = None,
) -> ChunkedEnv:
    """One chunked, normalized env. `normalization=None` means identity (training from scratch)."""
    gym_id = resolve_env_id(env_id)
    if is_robomimic(env_id):  # section 7: robosuite task, truncated at its own max_episode_steps
        env = robomimic_tasks.make_robomimic_env(env_id, render_mode)
    else:
        limit = avoid.MAX_EPISODE_STEPS if avoid.is_avoid(env_id) else GYM_MAX_EPISODE_STEPS
        env = gym.make(gym_id, max_episode_steps=limit, render_mode=render_mode)
    if normalization is None:
        normalization = identity_normalization(env.observation_space.shape[0], env.action_space.shape[0])
    return ChunkedEnv(env, act_steps, cond_steps, normalization)


# ------------------------------------------------------------------------------------------------
# 4. Vector envs and episode statistics
# ------------------------------------------------------------------------------------------------
def make_vec_env(
    env_id: str,
    num_envs: int,
    seed: int,
    act_steps: int = 1,
    cond_steps: int = 1,
    normalization: dict | None = None,
    asynchronous: bool = False,
):
    """`num_envs` chunked envs; env i is seeded with seed + i at the first reset.

    Same-step auto-reset: when a chunk ends an episode, the returned observation is already the
    next episode's first one and the last observation is in info["final_obs"] (official
    `reset_within_step`). Call `envs.reset(seed=seed)` once; later resets seed nothing.
    """
    if num_envs < 1:
        fail(f"--num-envs must be >= 1, got {num_envs}")
    resolve_env_id(env_id)  # fail early, in this process, on an unknown id
    if avoid.is_avoid(env_id):  # section 8: one batched numpy env, same contract, 50-100x faster
        return avoid.AvoidVectorEnv(num_envs, act_steps, cond_steps, normalization or identity_normalization(4, 2))
    fns = [lambda: make_env(env_id, act_steps, cond_steps, normalization) for _ in range(num_envs)]
    vector_cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    envs = vector_cls(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.action_space.seed(seed)
    return envs


def finished_episodes(infos: dict):
    """(returns, lengths) of the episodes that ended in this vector step (raw reward units)."""
    final = infos.get("final_info")
    if not final or "episode_return" not in final:
        return [], []
    mask = final["_episode_return"]
    return list(np.asarray(final["episode_return"])[mask]), list(np.asarray(final["episode_length"])[mask])


def final_observations(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """The observation each env reached before any auto-reset (for bootstrapping at truncation)."""
    out = np.array(next_obs, copy=True)
    if "final_obs" in infos:
        for i in np.nonzero(infos["_final_obs"])[0]:
            out[i] = infos["final_obs"][i]
    return out


def run_episodes(
    act_fn,
    env_id: str,
    episodes: int,
    seed: int,
    act_steps: int,
    cond_steps: int,
    normalization: dict | None,
    asynchronous: bool = False,
) -> tuple[list, list]:
    """Run `episodes` episodes, one per env (its first only: short episodes are not over-counted), bounded by the
    time limit; return their (returns, lengths). `act_fn(obs)` maps a (n, cond_steps, obs_dim) array to a
    (n, >= act_steps, action_dim) chunk. Robomimic: an episode succeeded iff its return > 0 (success_rate)."""
    envs = make_vec_env(env_id, episodes, seed, act_steps, cond_steps, normalization, asynchronous)
    obs, _ = envs.reset(seed=seed)
    returns, lengths, done = np.zeros(episodes), np.zeros(episodes, int), np.zeros(episodes, bool)
    for _ in range(max_episode_steps(env_id) // act_steps + 1):  # the time limit ends every episode by then
        obs, reward, _, _, infos = envs.step(np.asarray(act_fn(obs))[:, :act_steps])
        if not (np.isfinite(reward).all() and np.isfinite(obs).all()):
            fail(f"an evaluation episode of {env_id} got a non-finite reward or observation; check the environment")
        final = infos.get("final_info", {})
        for i in np.nonzero(np.logical_and(final.get("_episode_return", False), ~done))[0]:
            returns[i], lengths[i], done[i] = final["episode_return"][i], final["episode_length"][i], True
        if done.all():
            break
    envs.close()
    if not done.all():  # only a broken time limit gets here
        fail(f"{int((~done).sum())} evaluation episodes of {env_id} did not end within its time limit")
    return list(returns), list(lengths)


def env_dims(env_id: str) -> tuple[int, int]:
    """(obs_dim, action_dim) of a task without keeping an env around."""
    if is_robomimic(env_id):
        spec = ROBOMIMIC_TASKS[_robomimic_task(env_id)]
        return spec["obs_dim"], spec["action_dim"]
    env = gym.make(resolve_env_id(env_id))
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return dims


# ------------------------------------------------------------------------------------------------
# 5. Datasets
# ------------------------------------------------------------------------------------------------
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{name}.hdf5"
D4RL_NAMES = {  # dataset name -> (env id, D4RL file name)
    f"{task}-{kind}-v2": (paper, f"{task}_{kind.replace('-', '_')}-v2")
    for task, paper in (("hopper", "Hopper-v2"), ("walker2d", "Walker2D-v2"), ("halfcheetah", "HalfCheetah-v2"))
    for kind in ("medium", "medium-replay", "medium-expert", "expert", "random")
}
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def data_dir() -> str:
    """Where datasets are cached: $CLEANDPPO_DATA, else ~/.cache/cleandppo/datasets."""
    return os.environ.get("CLEANDPPO_DATA", os.path.join(os.path.expanduser("~"), ".cache", "cleandppo", "datasets"))


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


def download(url: str, path: str, timeout: float = 20.0):
    """Download to `path` atomically (a partial file never takes the final name)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".part"
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    os.replace(tmp, path)


def resolve_dataset(dataset: str) -> str:
    """A path for --dataset: an existing file, or a D4RL name found in the cache or downloaded.

    Offline and not cached, this fails in one line naming the command that makes the data here.
    """
    if os.path.isfile(dataset):
        return dataset
    if robomimic_tasks._robomimic_dataset_name(dataset):  # section 7: lift-mh, can-ph, square-scripted, ...
        return robomimic_tasks.resolve_robomimic_dataset(dataset)
    if dataset.lower().startswith("avoid"):  # section 8: avoid-m1, avoid-d3il-m2, ...
        return avoid.resolve_dataset(dataset)
    if dataset not in D4RL_NAMES:
        if dataset.endswith((".hdf5", ".h5")):
            fail(f"dataset file {dataset} does not exist")
        fail(
            f"unknown --dataset {dataset!r}: give an hdf5 path, a Minari id (e.g. mujoco/hopper/medium-v0), "
            f"a robomimic name <lift|can|square|transport>-<mh|ph|scripted|mhsim> or one of {sorted(D4RL_NAMES)}"
        )
    path = os.path.join(data_dir(), f"{dataset}.hdf5")
    if os.path.isfile(path):
        return path
    url = os.environ.get("CLEANDPPO_D4RL_URL", D4RL_URL).format(name=D4RL_NAMES[dataset][1])
    return download_or_fail(
        dataset, url, path, f"make it locally with: bash scripts/make_dataset.sh {D4RL_NAMES[dataset][0]}"
    )


def download_or_fail(name: str, url: str, path: str, fix: str) -> str:
    """Download `url` to `path`; offline (or any download error) stop with one line naming `fix`."""
    print(f"[cleandppo] downloading {name} from {url}")
    try:
        download(url, path)
    except (urllib.error.URLError, OSError, ValueError) as e:
        fail(f"{name} is not in {data_dir()} and could not be downloaded ({e.__class__.__name__}); {fix}")
    return path


def split_episodes(data: dict) -> list[dict]:
    """Split flat D4RL arrays into episodes at terminals | timeouts (a tail with no end is dropped).

    As the official conversion, episodes whose reward sum is not positive are skipped.
    """
    ends = np.nonzero(np.logical_or(data["terminals"], data["timeouts"]))[0]
    episodes, start = [], 0
    for end in ends:
        sl = slice(start, end + 1)
        if data["rewards"][sl].sum() > 0:
            episodes.append({k: data[k][sl] for k in ("observations", "actions", "rewards", "terminals")})
        start = end + 1
    return episodes


def load_minari(dataset_id: str) -> dict:
    """Flatten a Minari dataset into the D4RL layout (requires the optional `minari` package)."""
    try:
        import minari
    except ImportError:
        fail(f"{dataset_id} looks like a Minari id but `minari` is not installed: pip install 'minari[hf]>=0.5,<0.6'")
    try:
        ds = minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # minari raises several types for a missing dataset; downloads need its [hf] extra
        fail(f"cannot load Minari dataset {dataset_id} ({type(e).__name__}); check the id, pip install 'minari[hf]'")
    keys = {k: [] for k in D4RL_KEYS}
    for ep in ds.iterate_episodes():
        n = len(ep.actions)
        keys["observations"].append(np.asarray(ep.observations)[:n])  # minari stores n + 1 observations
        keys["actions"].append(np.asarray(ep.actions))
        keys["rewards"].append(np.asarray(ep.rewards))
        term, trunc = np.asarray(ep.terminations, bool), np.asarray(ep.truncations, bool)
        trunc = trunc.copy()
        trunc[-1] = trunc[-1] or not term[-1]  # every Minari episode ends at its last step
        keys["terminals"].append(term)
        keys["timeouts"].append(trunc)
    return {k: np.concatenate(v) for k, v in keys.items()}


def load_dataset(dataset: str, env_id: str | None = None) -> dict:
    """Load --dataset (hdf5 path, D4RL name, Minari id or robomimic file/name) into flat arrays plus `episodes`.

    Returns dict(observations, actions, rewards, terminals, timeouts, episodes, normalization).
    Normalization stats come from the whole raw dataset (official conversion), or from the demos that a robomimic
    file's filter keys keep (`can-mhsim:better,okay`).
    """
    if ":" in dataset:  # a robomimic file or name with filter keys (its mask/<key> demo lists): can-mhsim:better,okay
        name, _, filter_key = dataset.rpartition(":")
        path = resolve_dataset(name)
        if not robomimic_tasks.is_robomimic_hdf5(path):
            fail(f"{name} is not a robomimic file, so it has no filter keys; drop ':{filter_key}' from --dataset")
        return robomimic_tasks.load_robomimic_dataset(path, env_id, filter_key)
    if dataset.endswith(".npz"):  # the official processed train.npz (cleandppo/official.py)
        from cleandppo import official

        return official.load_npz_dataset(dataset, env_id)
    if "/" in dataset and not dataset.endswith((".hdf5", ".h5")) and not os.path.exists(dataset):
        data = load_minari(dataset)
    elif os.path.isdir(dataset):  # section 8: D3IL's per-episode pickles, filtered to the subset of --env-id
        data = avoid.load_d3il_directory(dataset, env_id)
    else:
        path = resolve_dataset(dataset)
        if robomimic_tasks.is_robomimic_hdf5(path):  # section 7
            return robomimic_tasks.load_robomimic_dataset(path, env_id)
        data = read_d4rl_hdf5(path)
        stored_env = data["attrs"].get("env_id")
        if env_id is not None and stored_env and not same_task(str(stored_env), env_id):
            fail(f"dataset {path} was recorded on {stored_env}, not {env_id}; pass a dataset of {env_id}")
    if env_id is not None:
        obs_dim, action_dim = env_dims(env_id)
        if data["observations"].shape[1] != obs_dim or data["actions"].shape[1] != action_dim:
            fail(
                f"dataset {dataset} has obs/action dims {data['observations'].shape[1]}/{data['actions'].shape[1]}, "
                f"{env_id} needs {obs_dim}/{action_dim}; pass a dataset of {env_id}"
            )
    data["episodes"] = split_episodes(data)
    if not data["episodes"]:
        fail(f"dataset {dataset} has no complete episode with positive return")
    data["normalization"] = compute_normalization(data["observations"], data["actions"])
    return data


def make_pretraining_samples(episodes: list[dict], norm: dict, cond_steps: int, horizon_steps: int):
    """Normalized arrays plus index tables for (cond_steps observations, horizon_steps actions) samples.

    Official StitchedSequenceDataset: a sample may start at step s of an episode when
    s + horizon_steps <= episode length (no padding at the end); observation history before the
    episode start repeats the episode's first observation (padding at the front).
    Returns (obs (T, Do), actions (T, Da), starts (S,), episode_first (S,)) as numpy arrays.
    """
    obs = np.concatenate([normalize_obs(ep["observations"], norm) for ep in episodes]).astype(np.float32)
    actions = np.concatenate([normalize_action(ep["actions"], norm) for ep in episodes]).astype(np.float32)
    starts, firsts, offset = [], [], 0
    for ep in episodes:
        n = len(ep["actions"])
        valid = np.arange(offset, offset + n - horizon_steps + 1)
        starts.append(valid)
        firsts.append(np.full(len(valid), offset))
        offset += n
    starts, firsts = np.concatenate(starts), np.concatenate(firsts)
    if len(starts) == 0:
        fail(f"no episode is at least horizon_steps={horizon_steps} long")
    return obs, actions, starts, firsts


def gather_samples(obs, actions, starts, firsts, idx, cond_steps: int, horizon_steps: int):
    """Batch `idx` of pre-training samples: obs (B, cond_steps, Do) oldest first, actions (B, Tp, Da)."""
    s, f = starts[idx], firsts[idx]
    obs_idx = np.maximum(s[:, None] + np.arange(-cond_steps + 1, 1)[None, :], f[:, None])
    act_idx = s[:, None] + np.arange(horizon_steps)[None, :]
    return obs[obs_idx], actions[act_idx]


# ------------------------------------------------------------------------------------------------
# 6. Checkpoints
# ------------------------------------------------------------------------------------------------
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def bundled_checkpoint(env_id: str, policy: str, backbone: str = "mlp") -> str:
    """Path of the bundled pre-trained checkpoint, e.g. pretrained/hopper-v2-diffusion-mlp.pt."""
    avoid.check_bundled(env_id)
    return os.path.join(PRETRAINED_DIR, f"{env_slug(env_id)}-{policy}-{backbone}.pt")


def save_checkpoint(ckpt: dict, path: str):
    """torch.save to a temporary name, then rename: a crash never leaves half a checkpoint. A write that fails (a
    full disk, a quota) removes the temporary file and stops in one line (write_failed); the file that was at
    `path` stays as it was."""
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:  # through a Python file: a failed write is an OSError with its errno
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        fail(write_failed(path, e))


def write_failed(path: str, error: OSError) -> str:
    """One line for a file of a run (or a run dir's file) that could not be written: the cause, the free space, and
    what to do, naming the checkpoint to resume from when the dir holds one."""
    import errno
    import shutil

    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    cause = error.strerror or str(error) or error.__class__.__name__
    try:
        cause += f", {shutil.disk_usage(folder).free / 2**20:.0f} MB free there"
    except OSError:
        pass
    fix = "free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
    last = os.path.join(folder, "checkpoint_last.pt")
    then = f"resume with --checkpoint {last}" if os.path.isfile(last) else "start the run again"
    return f"cannot write {path} ({cause}); the run stopped: {fix}, then {then}"


def upgrade_checkpoint(ckpt):
    """Older cleandppo checkpoints in today's layout: the Gaussian/GMM std was learned as log sigma (`log_std`) before
    issue #16, as log sigma^2 (`logvar`, the official parametrisation) since."""
    for key in ("model", "model_ft"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict) and "log_std" in ckpt[key]:
            ckpt[key] = {
                ("logvar" if k == "log_std" else k): (2 * v if k == "log_std" else v) for k, v in ckpt[key].items()
            }
    return ckpt


def load_checkpoint(
    path: str, policy: str, env_id: str, backbone: str | None = None, hints: dict | None = None
) -> dict:
    """Load and check a checkpoint: it must exist, hold a `policy` policy, and match env and backbone.
    An official DPPO checkpoint is converted (cleandppo/official.py; `hints`: the script's flags, for what its
    tensors do not show)."""
    import torch

    from cleandppo import official

    if not os.path.isfile(path):
        if is_robomimic(env_id) and os.path.dirname(os.path.abspath(path)) == os.path.abspath(PRETRAINED_DIR):
            task, script = env_slug(env_id), {"diffusion": "dppo", "gaussian": "gaussian_ppo", "gmm": "gmm_ppo"}[policy]
            encoder = (
                " --cond-mlp-dims 512 64" if (task, policy) == ("square", "diffusion") else ""
            )  # official Square MLP
            fail(
                f"no bundled {policy} checkpoint for {task} ({path}); make one with: "
                f"python scripts/make_robomimic_demos.py --task {task} && "
                f"python cleandppo/{script}.py --env-id {task} --dataset {task}-scripted --pretrain-only"
                f"{encoder} (then pass --checkpoint <run-dir>/pretrained.pt)"
            )
        fail(f"checkpoint {path} does not exist; pre-train one with --pretrain-only --dataset ... or pass --checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        fail(f"cannot read checkpoint {path} ({e.__class__.__name__}); pass a file written by a cleandppo script")
    if official.is_official_checkpoint(ckpt):
        ckpt = official.convert_checkpoint(ckpt, path, policy, env_id, hints)
    ckpt = upgrade_checkpoint(ckpt)
    if not isinstance(ckpt, dict) or "policy" not in ckpt or "model" not in ckpt:
        fail(f"{path} is not a cleandppo checkpoint (no 'policy'/'model' entries)")
    if ckpt["policy"] != policy:
        fail(f"{path} holds a {ckpt['policy']} policy, this script needs a {policy} one; pass a {policy} checkpoint")
    if not same_task(ckpt["env_id"], env_id):
        fail(
            f"{path} was trained on {ckpt['env_id']}, not {env_id}; "
            f"pass --env-id {ckpt['env_id']} or a checkpoint of {env_id}"
        )
    avoid.check_subset(path, ckpt["env_id"], env_id)
    if backbone is not None and ckpt.get("backbone") != backbone:
        fail(f"{path} has backbone {ckpt.get('backbone')}, not {backbone}; pass --backbone {ckpt.get('backbone')}")
    if policy == "diffusion" and ckpt.get("backbone") == "mlp":
        check_cond_mlp(path, ckpt)
    return ckpt


def load_diffusion_checkpoint(path: str, args, same_horizon: bool = True, continues_ft: bool = False) -> dict:
    """Load a diffusion checkpoint for a script and check its flags against it, each mismatch one line naming the flag
    to pass: denoising steps K, backbone and --cond-mlp-dims (where the script has them), chunk and observation
    lengths (the chunk length too when `same_horizon`), that an MLP policy executes its whole chunk, and K' when the
    script goes on with the checkpoint's fine-tuned network (`continues_ft`). On robomimic it restores the env meta
    the checkpoint stores (set_robomimic_env_args)."""
    ckpt = load_checkpoint(path, "diffusion", args.env_id, hints=vars(args))
    kw = ckpt["model_kwargs"]
    h, c = kw["horizon_steps"], kw["cond_steps"]
    if kw["denoising_steps"] != args.denoising_steps:
        fail(
            f"{path} was pre-trained with {kw['denoising_steps']} denoising steps; "
            f"pass --denoising-steps {kw['denoising_steps']}"
        )
    if getattr(args, "backbone", kw["backbone"]) != kw["backbone"]:
        fail(f"{path} has backbone {kw['backbone']}; pass --backbone {kw['backbone']}")
    if args.act_steps > h or c != args.cond_steps or (same_horizon and h != args.horizon_steps):
        fail(
            f"{path} predicts chunks of {h} from {c} observation(s); pass --act-steps <= {h} --horizon-steps {h} "
            f"--cond-steps {c}"
        )
    if kw["backbone"] == "mlp" and args.act_steps != h:
        fail(f"an MLP policy executes its whole chunk: pass --act-steps {h} (the UNet may execute fewer)")
    wanted, has = tuple(getattr(args, "cond_mlp_dims", ())), tuple(kw.get("cond_mlp_dims") or ())
    if wanted and wanted != has:
        flag = f"--cond-mlp-dims {' '.join(map(str, has))}" if has else "--cond-mlp-dims with no value (no encoder)"
        fail(
            f"{path} has cond_mlp_dims {has}, not {wanted} (the flag or the task's default); fine-tuning keeps the "
            f"checkpoint's network: pass {flag}"
        )
    if is_robomimic(args.env_id) and ckpt.get("robomimic_env_args"):  # the env meta the policy was made in
        set_robomimic_env_args(args.env_id, ckpt["robomimic_env_args"])
    tuned = ckpt.get("ft_denoising_steps")  # a fine-tuned network (model_ft) continues with the K' it was tuned for
    if continues_ft and ckpt.get("model_ft") is not None and tuned != args.ft_denoising_steps:
        fail(f"{path} fine-tuned {tuned} denoising steps; pass --ft-denoising-steps {tuned}")
    return ckpt


def check_cond_mlp(path: str, ckpt: dict):
    """A diffusion MLP's observation encoder: its weights' widths must be the `cond_mlp_dims` its config says."""
    has = tuple(
        int(v.shape[0]) for k, v in ckpt["model"].items() if k.startswith("cond_mlp.") and k.endswith(".weight")
    )
    says = tuple(ckpt.get("model_kwargs", {}).get("cond_mlp_dims") or ())
    if has != says:
        weights = f"a cond_mlp of widths {has}" if has else "no cond_mlp"
        fail(
            f"{path}: its weights have {weights} but its model_kwargs say cond_mlp_dims {says}; "
            f"set ckpt['model_kwargs']['cond_mlp_dims'] = {has} and re-save it, "
            "or pre-train again (dppo.py --cond-mlp-dims)"
        )


# ------------------------------------------------------------------------------------------------
# 7. Robomimic tasks (robosuite 1.5, state input; paper 5.1-5.2, D.5)
# ------------------------------------------------------------------------------------------------
# robomimic's low-dim setup on robosuite 1.5 (PyPI's robomimic imports mujoco_py; not used): OSC_POSE
# deltas, 20 Hz, sparse reward, no termination, truncation at max_episode_steps; obs = the obs_keys
# concatenated. Files: robomimic's layout data/demo_<i>/{obs/<key>, actions, ...}, data.attrs["env_args"].
# The robosuite env and the file readers are in cleandppo/robomimic_tasks.py; the table and id checks stay here.
ROBOMIMIC_TASKS = {  # task -> robosuite env and the paper's settings (dppo-facts 4.2)
    "lift": dict(env_name="Lift", robots=["Panda"], obs_dim=19, action_dim=7, max_episode_steps=300, act_steps=4),
    "can": dict(
        env_name="PickPlaceCan", robots=["Panda"], obs_dim=23, action_dim=7, max_episode_steps=300, act_steps=4
    ),
    "square": dict(
        env_name="NutAssemblySquare", robots=["Panda"], obs_dim=23, action_dim=7, max_episode_steps=400, act_steps=4
    ),
    "transport": dict(
        env_name="TwoArmTransport",
        robots=["Panda", "Panda"],
        env_configuration="single-arm-opposed",
        obs_dim=59,
        action_dim=14,
        max_episode_steps=800,
        act_steps=8,
    ),
}
_ROBOT_KEYS = ("eef_pos", "eef_quat", "gripper_qpos")
for _spec in ROBOMIMIC_TASKS.values():
    _spec["obs_keys"] = [f"robot{i}_{k}" for i in range(len(_spec["robots"])) for k in _ROBOT_KEYS] + ["object"]
# robomimic's "object" = robosuite's "object-state". robosuite 1.5 reordered it for Can and Square
# (relative pose first); these lists restore the robosuite <= 1.4 order robomimic's datasets hold.
for _task, _obj in (("can", "Can"), ("square", "SquareNut")):
    ROBOMIMIC_TASKS[_task]["object_keys"] = [
        f"{_obj}_{k}" for k in ("pos", "quat", "to_robot0_eef_pos", "to_robot0_eef_quat")
    ]
_ROBOMIMIC_ALIASES = {name.lower(): task for task, spec in ROBOMIMIC_TASKS.items() for name in (task, spec["env_name"])}


_robomimic_env_args = {}  # task -> env_args honoured by make_env (set by load_dataset or set_robomimic_env_args)


def is_robomimic(env_id) -> bool:
    """True for lift, can, square, transport and robomimic's env names (Lift, PickPlaceCan, ...), any case."""
    return isinstance(env_id, str) and env_id.lower() in _ROBOMIMIC_ALIASES


def _robomimic_task(env_id: str) -> str:
    return _ROBOMIMIC_ALIASES[env_id.lower()]


def max_episode_steps(env_id: str) -> int:
    """Episode length limit: 300/300/400/800 for lift/can/square/transport, 100 for avoid, 1000 for the Gym tasks."""
    if is_robomimic(env_id):
        return ROBOMIMIC_TASKS[_robomimic_task(env_id)]["max_episode_steps"]
    if avoid.is_avoid(env_id):
        return avoid.MAX_EPISODE_STEPS
    resolve_env_id(env_id)
    return GYM_MAX_EPISODE_STEPS


def robomimic_env_args(env_id: str) -> dict:
    """The env meta make_env uses for this task: a dataset's env_args once loaded, else the default."""
    task = _robomimic_task(env_id)
    return _robomimic_env_args.get(task) or robomimic_tasks.default_robomimic_env_args(task)


def set_robomimic_env_args(env_id: str, env_args: dict | None):
    """Make later make_env calls of this task honour `env_args` (None: the default); load_dataset calls it."""
    task = _robomimic_task(env_id)
    if env_args is None:
        _robomimic_env_args.pop(task, None)
        return
    name = str(env_args.get("env_name", ""))
    if _ROBOMIMIC_ALIASES.get(name.lower()) != task:
        fail(
            f"env_args are for env {name!r}, not the {task} task ({ROBOMIMIC_TASKS[task]['env_name']}); "
            f"pass a {task} dataset"
        )
    _robomimic_env_args[task] = env_args


def finished_successes(infos: dict) -> list:
    """Success flags of the episodes that ended in this vector step (finished_episodes order; robomimic only)."""
    final = infos.get("final_info")
    if not final or "episode_success" not in final:
        return []
    return [bool(s) for s in np.asarray(final["episode_success"])[final["_episode_success"]]]


def success_rate(returns) -> float:
    """Fraction of robomimic episodes that reached the goal (return > 0 under the sparse 0/1 reward)."""
    returns = np.asarray(returns, dtype=float)
    return float(np.mean(returns > 0)) if len(returns) else float("nan")
