"""The env and dataset factory every cleandppo script calls: it turns --env-id and --dataset into environments,
datasets and checkpoints, whichever task family they name.

Nothing algorithmic lives here, and nothing task-specific: each task family has its module below this one
(cleandppo/gym_tasks.py, avoid.py, robomimic_tasks.py), official checkpoints are converted by official.py, and the
foundation (errors, data dir, normalization) is common.py. Scripts reach all of them through this module, so the
names they use are imported here. Read top to bottom:
  1. env ids      -- which task family an id names, and its gymnasium id
  2. action chunks -- the multi-step wrapper (execute act_steps of a horizon_steps chunk), its resumable state
  3. vector envs  -- in this process or in worker processes (workers.py), env i seeded with seed + i, episode
                     statistics
  4. datasets     -- --dataset resolved to a file and read, Minari, pre-training samples
  5. checkpoints  -- atomic save, load with clear errors, bundled checkpoint paths
  6. episodes     -- time limits and success accounting
  7. observation batches -- state arrays or pixel {state, rgb} dicts: on a device, rows, sizes, a rollout's store
  8. video        -- one evaluation episode to an mp4 (--capture-video)
  9. reward scaling -- rewards divided by the std of a running discounted return (the PPO scripts)
"""

from __future__ import annotations

import functools
import os
import sys
from collections import deque

import gymnasium as gym
import numpy as np
import torch

# avoid registers cleandppo/Avoid-v0 with gymnasium on import
from cleandppo import avoid, gym_tasks, official, robomimic_tasks, workers
from cleandppo.common import (  # noqa: F401 (the scripts' names for the foundation)
    D4RL_KEYS,
    compute_normalization,
    data_dir,
    fail,
    identity_normalization,
    normalize_action,
    normalize_obs,
    read_d4rl_hdf5,
    unnormalize_action,
    unnormalize_obs,
    write_d4rl_hdf5,
)
from cleandppo.robomimic_tasks import (  # noqa: F401 (the scripts' names for the robomimic tasks)
    IMAGE_TASKS,
    ROBOMIMIC_TASKS,
    is_image_task,
    is_robomimic,
    robomimic_env_args,
    robomimic_task,
    set_robomimic_env_args,
)


# ------------------------------------------------------------------------------------------------
# 1. Environment ids
# ------------------------------------------------------------------------------------------------
def resolve_env_id(env_id: str) -> str:
    """Return the gymnasium id for a paper or modern id (robomimic: the task, e.g. 'can', or its image task,
    'can-img'); else one-line error."""
    if is_image_task(env_id):
        return robomimic_tasks.image_task(env_id)
    if is_robomimic(env_id):
        return robomimic_task(env_id)
    if avoid.is_avoid(env_id):
        return avoid.GYM_ID
    gym_id = gym_tasks.gymnasium_id(env_id)
    if gym_id is not None:
        return gym_id
    ids = list(gym_tasks.PAPER_GYM_IDS) + gym_tasks.MODERN_GYM_IDS + list(ROBOMIMIC_TASKS) + list(IMAGE_TASKS)
    ids += list(avoid.ENV_IDS)
    fail(f"unknown --env-id {env_id!r}; known ids: {', '.join(ids)}")


def env_slug(env_id: str) -> str:
    """Lower-case name used for file names, e.g. 'Walker2D-v2' -> 'walker2d-v2', 'PickPlaceCan' -> 'can',
    'Lift-img' -> 'lift-img'."""
    if is_image_task(env_id):
        return robomimic_tasks.image_task(env_id)
    if is_robomimic(env_id):
        return robomimic_task(env_id)
    return gym_tasks.paper_id(env_id).lower()


def same_task(env_a: str, env_b: str) -> bool:
    """True when two ids name the same simulator task (Hopper-v2 and Hopper-v4 do)."""
    return resolve_env_id(env_a) == resolve_env_id(env_b)


# ------------------------------------------------------------------------------------------------
# 2. Action chunks (paper 4.3; official MultiStep wrapper)
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

    def _prepare(self, obs):
        """One observation as the history holds it."""
        return normalize_obs(obs, self.norm)

    def _before_substep(self, i: int):
        """Called before sub-step i of a chunk (the image tasks decide there what to render)."""

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.history.clear()
        self.history.extend([self._prepare(obs)] * self.cond_steps)
        self.episode_return, self.episode_length, self.episode_success = 0.0, 0, False
        return self._stacked(), info

    def step(self, chunk):
        chunk = np.asarray(chunk, dtype=np.float64).reshape(-1, self.env.action_space.shape[0])
        if chunk.shape[0] < self.act_steps:
            raise ValueError(f"chunk has {chunk.shape[0]} actions, act_steps is {self.act_steps}")
        total_reward, terminated, truncated, info, steps = 0.0, False, False, {}, 0
        for i, action in enumerate(chunk[: self.act_steps]):
            self._before_substep(i)
            obs, reward, terminated, truncated, info = self.env.step(unnormalize_action(action, self.norm))
            self.history.append(self._prepare(obs))
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
        """What continuing this env needs (get_run_state); vector envs read and assign it by name."""
        return get_run_state(self)

    @run_state.setter
    def run_state(self, state: dict):
        set_run_state(self, state)


class ChunkedImageEnv(ChunkedEnv):
    """ChunkedEnv for an image task (robomimic_tasks.RobomimicImageEnv): observations are {"state": float32
    (cond_steps, state_dim), normalized as a state task's, "rgb": uint8 (cond_steps, 3 * cameras, 96, 96)}, oldest
    first. Only the sub-steps whose images the returned history holds are rendered (the last cond_steps of a chunk,
    which ends early only at the time limit); the others' images would be dropped unseen."""

    def __init__(self, env: gym.Env, act_steps: int, cond_steps: int, normalization: dict):
        gym.Wrapper.__init__(self, env)
        self.act_steps, self.cond_steps, self.norm = act_steps, cond_steps, normalization
        state, rgb = env.observation_space["state"], env.observation_space["rgb"]
        self.observation_space = gym.spaces.Dict(
            state=gym.spaces.Box(-np.inf, np.inf, (cond_steps, *state.shape), np.float32),
            rgb=gym.spaces.Box(0, 255, (cond_steps, *rgb.shape), np.uint8),
        )
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (act_steps, env.action_space.shape[0]), np.float32)
        self.history = deque(maxlen=cond_steps)
        self.episode_return, self.episode_length, self.episode_success = 0.0, 0, False
        self.chunk_length = act_steps

    def _stacked(self):
        if any(h["rgb"] is None for h in self.history):  # _before_substep rendered too little: a bug, not user input
            raise RuntimeError("an observation in the history has no images")
        return {
            "state": np.stack([h["state"] for h in self.history]).astype(np.float32),
            "rgb": np.stack([h["rgb"] for h in self.history]),
        }

    def _prepare(self, obs):
        return {"state": normalize_obs(obs["state"], self.norm), "rgb": obs["rgb"]}

    def _before_substep(self, i: int):
        base = self.env.unwrapped
        if i == 0:  # the chunk's length: act_steps, or fewer where the time limit ends the episode
            self.chunk_length = min(self.act_steps, base.max_episode_steps - base.steps)
        base.render_images = i >= self.chunk_length - self.cond_steps

    def reset(self, *, seed=None, options=None):
        self.env.unwrapped.render_images = True
        return super().reset(seed=seed, options=options)


def get_run_state(env) -> dict:
    """What continuing a ChunkedEnv needs: observation history, episode return/length/success, the env's RNG,
    and the simulator: MuJoCo's integration state (qpos, qvel, activations, warm start, controls, time) and the time
    limit's step count; robosuite's sim state, step count and RNG (not its controllers' internal state); any other
    env (no MuJoCo model) its attributes, copied."""
    import copy

    base = env.env.unwrapped
    state = dict(history=list(env.history), rng=env.env.np_random.bit_generator.state)
    state["episode"] = env.episode_return, env.episode_length, env.episode_success
    if isinstance(base, robomimic_tasks.RobomimicLowDimEnv):
        state.update(steps=base.steps, rs_rng=base.rs_env.rng.bit_generator.state)
        return dict(state, sim=base.rs_env.sim.get_state())
    try:
        state["elapsed"] = env.env.get_wrapper_attr("_elapsed_steps")
    except AttributeError:  # no gymnasium TimeLimit around this env
        pass
    if not hasattr(base, "model") or not hasattr(base, "data"):
        return dict(state, attributes=copy.deepcopy(vars(base)))
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state["sim"] = np.empty(mujoco.mj_stateSize(base.model, spec))
    mujoco.mj_getState(base.model, base.data, state["sim"], spec)
    return state


def set_run_state(env, state: dict):
    """Put a ChunkedEnv back in the state get_run_state recorded."""
    base = env.env.unwrapped
    env.history = deque(state["history"], maxlen=env.cond_steps)
    env.episode_return, env.episode_length, env.episode_success = state["episode"]
    env.env.np_random.bit_generator.state = state["rng"]
    if isinstance(base, robomimic_tasks.RobomimicLowDimEnv):
        base.steps, base.rs_env.rng.bit_generator.state = state["steps"], state["rs_rng"]
        base.rs_env.sim.set_state(state["sim"])
        return
    if "elapsed" in state:
        env.env.set_wrapper_attr("_elapsed_steps", state["elapsed"])
    if "attributes" in state:
        vars(base).update(state["attributes"])
        return
    import mujoco

    mujoco.mj_setState(base.model, base.data, state["sim"], mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(base.model, base.data)


def make_env(
    env_id: str,
    act_steps: int = 1,
    cond_steps: int = 1,
    normalization: dict | None = None,
    render_mode: str | None = None,
) -> ChunkedEnv:
    """One chunked, normalized env. `normalization=None` means identity (training from scratch)."""
    gym_id = resolve_env_id(env_id)
    if is_robomimic(env_id):  # robosuite task, truncated at its own max_episode_steps
        env = robomimic_tasks.make_robomimic_env(env_id, render_mode)
    else:
        limit = avoid.MAX_EPISODE_STEPS if avoid.is_avoid(env_id) else gym_tasks.GYM_MAX_EPISODE_STEPS
        env = gym.make(gym_id, max_episode_steps=limit, render_mode=render_mode)
    if normalization is None:
        normalization = identity_normalization(*env_dims(env_id))
    if is_image_task(env_id):
        return ChunkedImageEnv(env, act_steps, cond_steps, normalization)
    return ChunkedEnv(env, act_steps, cond_steps, normalization)


# ------------------------------------------------------------------------------------------------
# 3. Vector envs and episode statistics
# ------------------------------------------------------------------------------------------------
def make_vec_env(
    env_id: str,
    num_envs: int,
    seed: int,
    act_steps: int = 1,
    cond_steps: int = 1,
    normalization: dict | None = None,
    env_workers: int = 1,
    stopped=None,
    rollout_parts: int = 1,
):
    """`num_envs` chunked envs; env i is seeded with seed + i at the first reset. `env_workers` > 1: stepped by that
    many worker processes, at most one per env (workers.WorkerVectorEnv; the same numbers as in this process;
    `stopped()` says what a run stopped by a dead worker keeps; the rollouts send each worker's envs in
    `rollout_parts` parts, workers.rollout_step), else in this process (gymnasium's SyncVectorEnv).
    Image tasks: dict observations (ChunkedImageEnv), batched per key; with workers, one spawned process per env
    (gymnasium's AsyncVectorEnv: a forked worker hangs in the OpenGL state it inherits).

    Same-step auto-reset: when a chunk ends an episode, the returned observation is already the
    next episode's first one and the last observation is in info["final_obs"] (official
    `reset_within_step`). Call `envs.reset(seed=seed)` once; later resets seed nothing.
    """
    if num_envs < 1:
        fail(f"--num-envs must be >= 1, got {num_envs}")
    resolve_env_id(env_id)  # fail early, in this process, on an unknown id
    env_workers = min(env_workers, num_envs)  # one env in one worker process only waits longer
    if is_image_task(env_id):  # choose the OpenGL backend here: worker processes inherit the choice
        robomimic_tasks.check_image_env_memory(env_id, num_envs, workers=env_workers > 1)
        robomimic_tasks.gl_backend()
    if avoid.is_avoid(env_id):  # one batched numpy env, same contract, 50-100x faster
        return avoid.AvoidVectorEnv(num_envs, act_steps, cond_steps, normalization or identity_normalization(4, 2))
    fns = [lambda: make_env(env_id, act_steps, cond_steps, normalization) for _ in range(num_envs)]
    autoreset = gym.vector.AutoresetMode.SAME_STEP
    if env_workers > 1 and is_image_task(env_id):  # a forked worker hangs in the OpenGL state of the parent's env
        make = functools.partial(_make_image_env, env_id, robomimic_env_args(env_id), act_steps, cond_steps)
        fns = [functools.partial(make, normalization) for _ in range(num_envs)]  # spawned: no module state inherited
        envs = gym.vector.AsyncVectorEnv(fns, autoreset_mode=autoreset, context="spawn")
    elif env_workers > 1:
        envs = workers.WorkerVectorEnv(fns, env_workers, env_id, stopped, rollout_parts)
    else:
        envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=autoreset)
    envs.action_space.seed(seed)
    return envs


def _make_image_env(env_id, env_args, act_steps, cond_steps, normalization):
    """make_env in a spawned worker, with the env meta of the parent (a dataset's env_args)."""
    set_robomimic_env_args(env_id, env_args)
    return make_env(env_id, act_steps, cond_steps, normalization)


def finished_episodes(infos: dict):
    """(returns, lengths) of the episodes that ended in this vector step (raw reward units)."""
    final = infos.get("final_info")
    if not final or "episode_return" not in final:
        return [], []
    mask = final["_episode_return"]
    return list(np.asarray(final["episode_return"])[mask]), list(np.asarray(final["episode_length"])[mask])


def final_observations(next_obs, infos: dict):
    """The observation each env reached before any auto-reset (for bootstrapping at truncation); per key for the
    image tasks' dict observations."""
    if isinstance(next_obs, dict):
        out = {k: np.array(v, copy=True) for k, v in next_obs.items()}
        for i in np.nonzero(infos.get("_final_obs", []))[0]:
            for k in out:
                out[k][i] = infos["final_obs"][i][k]
        return out
    out = np.array(next_obs, copy=True)
    if "final_obs" in infos:
        for i in np.nonzero(infos["_final_obs"])[0]:
            out[i] = infos["final_obs"][i]
    return out


IMAGE_EVAL_ENVS = 10  # the most envs an image task's evaluation steps at once (run_episodes)


def eval_envs_at_once(env_id: str, episodes: int) -> int:
    """How many of an evaluation's `episodes` run_episodes steps at once (the rest follow in further rounds)."""
    return min(episodes, IMAGE_EVAL_ENVS) if is_image_task(env_id) else episodes


def run_episodes(
    act_fn,
    env_id: str,
    episodes: int,
    seed: int,
    act_steps: int,
    cond_steps: int,
    normalization: dict | None,
    env_workers: int = 1,
    stopped=None,
) -> tuple[list, list]:
    """Run `episodes` episodes, one per env (its first only: short episodes are not over-counted), bounded by the
    time limit; return their (returns, lengths). Episode i's env is seeded with seed + i. `act_fn(obs)` maps a
    (n, cond_steps, obs_dim) array to a (n, >= act_steps, action_dim) chunk. Robomimic: an episode succeeded iff its
    return > 0 (success_rate). `env_workers`, `stopped`: as make_vec_env.

    The image tasks run their episodes in rounds of at most IMAGE_EVAL_ENVS envs: each of their envs renders in its
    own OpenGL context and holds 360 MiB or more (docs/robomimic_images.md#memory): 50 at once took 19.9 GiB."""
    at_once = eval_envs_at_once(env_id, episodes)
    returns, lengths = [0.0] * episodes, [0] * episodes
    for start in range(0, episodes, at_once):
        n = min(at_once, episodes - start)
        envs = make_vec_env(env_id, n, seed + start, act_steps, cond_steps, normalization, env_workers, stopped)
        obs, _ = envs.reset(seed=seed + start)
        done = np.zeros(n, bool)
        for _ in range(max_episode_steps(env_id) // act_steps + 1):  # the time limit ends every episode by then
            obs, reward, _, _, infos = envs.step(np.asarray(act_fn(obs))[:, :act_steps])
            state = obs["state"] if isinstance(obs, dict) else obs
            if not (np.isfinite(reward).all() and np.isfinite(state).all()):
                fail(f"an evaluation episode of {env_id} got a non-finite reward or observation; check the environment")
            final = infos.get("final_info", {})
            for i in np.nonzero(np.logical_and(final.get("_episode_return", False), ~done))[0]:
                returns[start + i], lengths[start + i] = float(final["episode_return"][i]), final["episode_length"][i]
                done[i] = True
            if done.all():
                break
        envs.close()
        if not done.all():  # only a broken time limit gets here
            fail(f"{int((~done).sum())} evaluation episodes of {env_id} did not end within its time limit")
    return returns, lengths


def env_dims(env_id: str) -> tuple[int, int]:
    """(obs_dim, action_dim) of a task without keeping an env around; an image task's obs_dim is its state's."""
    if is_image_task(env_id):
        return IMAGE_TASKS[robomimic_tasks.image_task(env_id)].state_dim, ROBOMIMIC_TASKS[robomimic_task(env_id)][
            "action_dim"
        ]
    if is_robomimic(env_id):
        spec = ROBOMIMIC_TASKS[robomimic_task(env_id)]
        return spec["obs_dim"], spec["action_dim"]
    env = gym.make(resolve_env_id(env_id))
    dims = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    return dims


# ------------------------------------------------------------------------------------------------
# 4. Datasets
# ------------------------------------------------------------------------------------------------
def resolve_dataset(dataset: str) -> str:
    """A path for --dataset: an existing file, or a D4RL name found in the cache or downloaded.

    Offline and not cached, this fails in one line naming the command that makes the data here.
    """
    if os.path.isfile(dataset):
        return dataset
    if robomimic_tasks.robomimic_dataset_name(dataset):  # lift-mh, can-ph, square-scripted, ...
        return robomimic_tasks.resolve_robomimic_dataset(dataset)
    if robomimic_tasks.robomimic_image_dataset_name(dataset):  # lift-img, can-mhsim-img, ...
        return robomimic_tasks.resolve_robomimic_image_dataset(dataset)
    if dataset.lower().startswith("avoid"):  # avoid-m1, avoid-d3il-m2, ...
        return avoid.resolve_dataset(dataset)
    if dataset not in gym_tasks.D4RL_NAMES:
        if dataset.endswith((".hdf5", ".h5")):
            fail(f"dataset file {dataset} does not exist")
        fail(
            f"unknown --dataset {dataset!r}: give an hdf5 path, a Minari id (e.g. mujoco/hopper/medium-v0), "
            "a robomimic name <lift|can|square|transport>-<mh|ph|scripted|mhsim> "
            f"or one of {sorted(gym_tasks.D4RL_NAMES)}"
        )
    return gym_tasks.resolve_d4rl_dataset(dataset)


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
        return official.load_npz_dataset(dataset, env_id, env_dims(env_id) if env_id is not None else None)
    if "/" in dataset and not dataset.endswith((".hdf5", ".h5")) and not os.path.exists(dataset):
        data = load_minari(dataset)
    elif os.path.isdir(dataset):  # D3IL's per-episode pickles, filtered to the subset of --env-id
        data = avoid.load_d3il_directory(dataset, env_id)
    else:
        path = resolve_dataset(dataset)
        if robomimic_tasks.is_robomimic_hdf5(path):
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
    Returns (obs (T, Do), actions (T, Da), starts (S,), episode_first (S,)) as numpy arrays. Image episodes (an
    "rgb" entry): obs is {"state": (T, Do), "rgb": uint8 (T, C, 96, 96), as stored}, and gather_samples batches both.
    """
    obs = np.concatenate([normalize_obs(ep["observations"], norm) for ep in episodes]).astype(np.float32)
    if episodes and "rgb" in episodes[0]:
        obs = {"state": obs, "rgb": np.concatenate([ep["rgb"] for ep in episodes])}
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
    """Batch `idx` of pre-training samples: obs (B, cond_steps, Do) oldest first, actions (B, Tp, Da); image
    samples: obs {"state": (B, cond_steps, Do), "rgb": uint8 (B, cond_steps, C, 96, 96)}."""
    s, f = starts[idx], firsts[idx]
    obs_idx = np.maximum(s[:, None] + np.arange(-cond_steps + 1, 1)[None, :], f[:, None])
    act_idx = s[:, None] + np.arange(horizon_steps)[None, :]
    if isinstance(obs, dict):
        return {k: v[obs_idx] for k, v in obs.items()}, actions[act_idx]
    return obs[obs_idx], actions[act_idx]


# ------------------------------------------------------------------------------------------------
# 5. Checkpoints
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
    """Older cleandppo checkpoints in today's layout: the Gaussian/GMM std was once learned as log sigma (`log_std`),
    now as log sigma^2 (`logvar`, the parametrisation of the official `Gaussian_MLP` and `GMM_MLP`)."""
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

    if not os.path.isfile(path):
        if is_robomimic(env_id) and os.path.dirname(os.path.abspath(path)) == os.path.abspath(PRETRAINED_DIR):
            task, script = env_slug(env_id), {"diffusion": "dppo", "gaussian": "gaussian_ppo", "gmm": "gmm_ppo"}[policy]
            encoder = (
                " --cond-mlp-dims 512 64" if (task, policy) == ("square", "diffusion") else ""
            )  # official Square MLP
            demos, dataset = f"--task {task}", f"{task}-scripted"
            if is_image_task(env_id):
                demos, dataset = f"--task {robomimic_task(env_id)} --images", task
            fail(
                f"no bundled {policy} checkpoint for {task} ({path}); make one with: "
                f"python scripts/make_robomimic_demos.py {demos} && "
                f"python cleandppo/{script}.py --env-id {task} --dataset {dataset} --pretrain-only"
                f"{encoder} (then pass --checkpoint <run-dir>/pretrained.pt)"
            )
        fail(f"checkpoint {path} does not exist; pre-train one with --pretrain-only --dataset ... or pass --checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        fail(f"cannot read checkpoint {path} ({e.__class__.__name__}); pass a file written by a cleandppo script")
    if official.is_official_checkpoint(ckpt):
        ckpt = official.convert_checkpoint(ckpt, path, policy, env_id, env_dims(env_id), hints)
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
# 6. Episodes: time limits and success
# ------------------------------------------------------------------------------------------------
def max_episode_steps(env_id: str) -> int:
    """Episode length limit: 300/300/400/800 for lift/can/square/transport, 100 for avoid, 1000 for the Gym tasks."""
    if is_robomimic(env_id):
        return ROBOMIMIC_TASKS[robomimic_task(env_id)]["max_episode_steps"]
    if avoid.is_avoid(env_id):
        return avoid.MAX_EPISODE_STEPS
    resolve_env_id(env_id)
    return gym_tasks.GYM_MAX_EPISODE_STEPS


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


# ------------------------------------------------------------------------------------------------
# 7. Observation batches: a state observation is an array; a pixel one (robomimic -img tasks) a dict
#    {"state": float, "rgb": uint8} whose entries are batched alike
# ------------------------------------------------------------------------------------------------
def obs_tensor(obs, device):
    """An observation batch on `device`: the array as a tensor, or each entry of a pixel observation (rgb stays uint8:
    the networks convert it)."""
    if isinstance(obs, dict):
        return {key: torch.as_tensor(value, device=device) for key, value in obs.items()}
    return torch.as_tensor(obs, device=device)


def take_rows(obs, rows):
    """Rows `rows` (an index, a slice, an index array) of an observation batch, or of each entry of a pixel one."""
    if isinstance(obs, dict):
        return {key: value[rows] for key, value in obs.items()}
    return obs[rows]


def obs_dims(obs):
    """(obs_dim, image_shape) of single observations (T, ...): a state observation's size and None, or a pixel
    observation's proprioception size and the (C, H, W) of its images."""
    if isinstance(obs, dict):
        return obs["state"].shape[-1], tuple(obs["rgb"].shape[-3:])
    return obs.shape[-1], None


class RolloutObs:
    """A rollout's observations, n_steps vector steps of (E, ...): float32 arrays, and for pixel observations one per
    entry, with rgb kept uint8 (27 KB per 96 x 96 camera image, a quarter of float32). buf[n] = obs stores step n."""

    def __init__(self, obs, n_steps):
        def zeros(value):
            return np.zeros((n_steps, *value.shape), np.uint8 if value.dtype == np.uint8 else np.float32)

        self.data = {key: zeros(value) for key, value in obs.items()} if isinstance(obs, dict) else zeros(obs)

    def __setitem__(self, n, obs):
        if isinstance(obs, dict):
            for key, value in obs.items():
                self.data[key][n] = value
        else:
            self.data[n] = obs

    def flat(self, device):
        """(n_steps x E, ...) tensors on `device`, step-major."""
        flatten = lambda x: torch.as_tensor(x.reshape(-1, *x.shape[2:]), device=device)  # noqa: E731
        return (
            {key: flatten(value) for key, value in self.data.items()}
            if isinstance(self.data, dict)
            else flatten(self.data)
        )


# ------------------------------------------------------------------------------------------------
# 8. Video: one evaluation episode rendered to an mp4 (--capture-video)
# ------------------------------------------------------------------------------------------------
GL_FIX = (
    "no OpenGL backend works here; install one and select it, e.g. apt-get install libosmesa6 and "
    "MUJOCO_GL=osmesa (CPU), or apt-get install libegl1 and MUJOCO_GL=egl (GPU)"
)


def capture_video(
    run_dir: str, env_id: str, act_fn, act_steps: int, cond_steps: int, normalization, seed: int, name: str = "eval.mp4"
) -> str | None:
    """Run one evaluation episode of `act_fn` (as envs.run_episodes takes it) and write it to run_dir/name as an mp4
    (imageio-ffmpeg, no system ffmpeg needed); return the path. MuJoCo tasks render through OpenGL: where no
    backend works this prints one line naming the fix and returns None, and the run goes on. Avoid draws with
    numpy and records everywhere."""
    import warnings

    import imageio

    try:
        with warnings.catch_warnings():  # GLFW warns before it fails; the one line below says what to do
            warnings.simplefilter("ignore")
            env = make_env(env_id, act_steps, cond_steps, normalization, render_mode="rgb_array")
            obs, _ = env.reset(seed=seed)
            frames = [env.render()]
    except Exception as e:  # mujoco.FatalError, GLFW/EGL/OSMesa errors: which one depends on MUJOCO_GL
        detail = str(e).splitlines()[0][:100] if str(e) else ""
        print(
            f"--capture-video: {env_id} cannot render ({e.__class__.__name__}: {detail}); {GL_FIX}; no video written",
            file=sys.stderr,
            flush=True,
        )
        return None
    for _ in range(max_episode_steps(env_id) // act_steps + 1):  # the time limit ends the episode by then
        obs, _, term, trunc, _ = env.step(np.asarray(act_fn(obs[None]))[0, :act_steps])
        frames.append(env.render())
        if term or trunc:
            break
    env.close()
    fps = env.metadata.get("render_fps", 30) / act_steps  # one frame per executed chunk
    path = os.path.join(run_dir, name)
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    print(f"[video] {path} ({len(frames)} frames)", flush=True)
    return path


# ------------------------------------------------------------------------------------------------
# 9. Reward scaling of the PPO scripts (the official code's, applied to a rollout's rewards)
# ------------------------------------------------------------------------------------------------
class RunningRewardScaler:
    """Divide rewards by the std of a running discounted return (official util/reward_scaling.py).
    R <- r + 0.99 (1 - first) R per env; running variance M2/(n - 1) of all R (count init 1e-4, mean 0, var 1);
    scaled reward = r / sqrt(var + 1e-8), clipped to +-10. No mean subtraction."""

    def __init__(self, num_envs, gamma=0.99):
        self.gamma, self.ret = gamma, np.zeros(num_envs)
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def __call__(self, rewards, firsts):
        """rewards, firsts: (N, E); firsts[n] marks that step n starts a new episode."""
        returns = np.zeros_like(rewards)
        for n in range(len(rewards)):
            self.ret = rewards[n] + self.gamma * (1 - firsts[n]) * self.ret
            returns[n] = self.ret
        batch_mean, batch_var, batch_count = returns.mean(), returns.var(), returns.size
        delta, total = batch_mean - self.mean, self.count + batch_count
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.mean, self.var, self.count = self.mean + delta * batch_count / total, m2 / (total - 1), total
        return np.clip(rewards / np.sqrt(self.var + 1e-8), -10, 10)

    def state_dict(self):
        return {"ret": self.ret, "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, d):
        self.ret, self.mean, self.var, self.count = d["ret"], d["mean"], d["var"], d["count"]
