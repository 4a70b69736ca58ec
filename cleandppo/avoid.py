"""Avoid: D3IL's obstacle-avoidance reaching task (paper section 6, D.8) as a planar, pure-numpy model.

The end effector of a Panda arm starts below three rows of pillars (1, 2, 3 obstacles) and has to cross
the goal line on the far side. The paper fine-tunes on `avoiding-m5`, whose reward favours the leftmost
gap of the top row (mode 5). This module replaces D3IL's MuJoCo scene with its geometry, a tracking model
of the arm fitted to D3IL's own demonstrations, and the reward exactly as D3IL's code computes it.
docs/avoid.md lists every modelling choice and where it departs from the MuJoCo original.

Read top to bottom:
  1. geometry and modes -- obstacle rows, the official data filter's mode test (modes 0-8)
  2. the task           -- batched numpy core (tracking lag, collision, reward) and the gymnasium env
  3. drawing            -- RGB frames without OpenGL
  4. demonstrations     -- a scripted multi-route demonstrator and the paper's subsets M1, M2, M3
  5. D3IL's own files   -- reader for its pickled per-episode dicts
  6. ids and datasets   -- what envs.py asks of this task: avoid-m1/m2/m3, dataset names, checkpoint checks
"""

from __future__ import annotations

import glob
import os
import pickle

import gymnasium as gym
import numpy as np

from cleandppo.common import data_dir, fail, normalize_obs, unnormalize_action

# ------------------------------------------------------------------------------------------------
# 1. Geometry and modes (D3IL avoiding_objects.py; official script/dataset/filter_d3il_avoid_data.py)
# ------------------------------------------------------------------------------------------------
LEVEL_Y = (-0.1, 0.08, 0.26)  # rows of pillars, 0.18 apart
# (x, y, radius) of the six pillars: one at row 1, two at row 2 (offset 0.075), three at row 3
OBSTACLES = np.array(
    [
        [0.5, -0.1, 0.03],
        [0.425, 0.08, 0.025],
        [0.575, 0.08, 0.025],
        [0.35, 0.26, 0.025],
        [0.5, 0.26, 0.025],
        [0.65, 0.26, 0.025],
    ]
)
ROD_RADIUS = 0.01  # the rod the arm holds (panda_rod_invisible.xml)
START_XY = np.array([0.525, -0.28])  # D3IL init_end_eff_pos; no randomisation in the original
GOAL_Y = 0.4  # avoiding-m5 rewards y > 0.4 (D3IL's unused check_success uses 0.35)
# the rewarded band of x: outside it every step costs -0.1 (D3IL reward). Not the table, which spans x = -0.09 to
# 0.89 (lab_surrounding.xml) in front of the robot's base at x = 0; nothing keeps the arm inside the band
BAND_X = (0.2, 0.8)
MAX_EPISODE_STEPS = 100  # paper D.8, no early termination
REWARD_MODE = 5  # avoiding-m5: +1 per step once the top row was crossed left of x = 0.35
# End-effector tracking of the desired position, fitted to the 96 D3IL demonstrations (docs/avoid.md):
# v <- TRACK_MOMENTUM * v + TRACK_GAIN * (desired - current); current <- current + v
TRACK_GAIN = 0.1
TRACK_MOMENTUM = 0.8
ACTION_LIMIT = 0.0125  # largest per-axis displacement in D3IL's demonstrations (not enforced by the env)

SUBSETS = {"m1": (5, 6), "m2": (5, 7), "m3": (5, 8)}  # paper Fig. 9; official d56_r12, d57_r12, d58_r12
REQUIRED_MODES = (1, 2)  # every subset passes right of the first pillar and left of the second row


def filter_modes(xy: np.ndarray) -> np.ndarray:
    """Modes 0-8 a point (..., 2) falls in, as the official data filter tests them (bool (..., 9)).

    Rows 1 and 2 count within 0.01 of the row's y; row 3 counts at every y >= 0.26. Mode 8 is the official
    `elif x > l3_top_xpos`, which after the earlier branches means x >= 0.65 (or x exactly 0.35 or 0.5).
    """
    x, y = xy[..., 0], xy[..., 1]
    m = np.zeros(xy.shape[:-1] + (9,), dtype=bool)
    row1 = np.abs(y - LEVEL_Y[0]) <= 0.01
    m[..., 0] = row1 & (x < 0.5)
    m[..., 1] = row1 & (x > 0.5)
    row2 = np.abs(y - LEVEL_Y[1]) <= 0.01
    m[..., 2] = row2 & (x < 0.425)
    m[..., 3] = row2 & (0.425 < x) & (x < 0.575)
    m[..., 4] = row2 & (x > 0.575)
    row3 = y >= LEVEL_Y[2]
    m[..., 5] = row3 & (x < 0.35)
    m[..., 6] = row3 & (0.35 < x) & (x < 0.5)
    m[..., 7] = row3 & (0.5 < x) & (x < 0.65)
    m[..., 8] = row3 & ~m[..., 6] & ~m[..., 7] & (x > 0.35)
    return m


def episode_modes(desired_xy: np.ndarray) -> np.ndarray:
    """Modes an episode passed (bool (9,)), from its desired positions (T, 2), as the official filter."""
    return filter_modes(desired_xy).any(axis=0)


def in_subset(desired_xy: np.ndarray, subset: str) -> bool:
    """Official filter: some desired mode, every required mode, no avoided mode (none for M1-M3)."""
    modes = episode_modes(desired_xy)
    return bool(any(modes[k] for k in SUBSETS[subset]) and all(modes[k] for k in REQUIRED_MODES))


# ------------------------------------------------------------------------------------------------
# 2. The task: a batched core (arrays over envs) and a gymnasium env around it
# ------------------------------------------------------------------------------------------------
def new_state(n: int, start_xy: np.ndarray) -> dict:
    """State of n envs at reset: desired = current = start, at rest, nothing crossed, no collision."""
    start = np.broadcast_to(start_xy, (n, 2)).astype(np.float64)
    return {
        "desired": start.copy(),
        "current": start.copy(),
        "velocity": np.zeros((n, 2)),
        "collided": np.zeros(n, dtype=bool),
        "row_passed": np.zeros((n, 3), dtype=bool),
        "modes": np.zeros((n, 9), dtype=bool),
        "t": np.zeros(n, dtype=np.int64),
    }


def collides(xy: np.ndarray) -> np.ndarray:
    """True where the rod (radius 0.01) at xy (n, 2) overlaps a pillar."""
    dx = xy[:, None, 0] - OBSTACLES[None, :, 0]
    dy = xy[:, None, 1] - OBSTACLES[None, :, 1]
    return (dx**2 + dy**2 < (OBSTACLES[None, :, 2] + ROD_RADIUS) ** 2).any(axis=1)


def update_env_modes(state: dict):
    """D3IL's env-side mode test (ObstacleAvoidanceEnv.check_mode), on the current position after a move:
    each row is decided once, the first time the arm is within 0.03 of rows 1-2 or at y >= 0.26 for row 3."""
    x, y = state["current"][:, 0], state["current"][:, 1]
    passed, modes = state["row_passed"], state["modes"]
    hit1 = ~passed[:, 0] & (np.abs(y - LEVEL_Y[0]) <= 0.03)
    modes[:, 0] |= hit1 & (x < 0.5)
    modes[:, 1] |= hit1 & (x > 0.5)
    passed[:, 0] |= hit1
    hit2 = ~passed[:, 1] & (np.abs(y - LEVEL_Y[1]) <= 0.03)
    modes[:, 2] |= hit2 & (x < 0.425)
    modes[:, 3] |= hit2 & (0.425 < x) & (x < 0.575)
    modes[:, 4] |= hit2 & (x > 0.575)
    passed[:, 1] |= hit2
    hit3 = ~passed[:, 2] & (y >= LEVEL_Y[2])
    modes[:, 5] |= hit3 & (x < 0.35)
    modes[:, 6] |= hit3 & (0.35 < x) & (x < 0.5)
    modes[:, 7] |= hit3 & (0.5 < x) & (x < 0.65)
    modes[:, 8] |= hit3 & ~((0.35 < x) & (x < 0.65)) & (x > 0.35)
    passed[:, 2] |= hit3


def step_batch(state: dict, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Advance n envs by one action (n, 2): (observation before the move (n, 4), reward (n,)).

    Order of D3IL's step (gym_env_wrapper.py): the observation and the reward are read *before* the
    physics runs, then the arm moves toward desired + action, then the modes are updated. So the reward
    of step t scores the position reached after step t - 1, and the returned observation is one step old.
    avoiding-m5 reward: -0.1 from the first collision to the end of the episode; else -0.1 while outside
    the band 0.2 <= x <= 0.8; else +1 once mode 5 was passed, plus +1 while beyond the goal line.
    """
    current = state["current"]
    obs = np.concatenate([state["desired"], current], axis=1).astype(np.float32)
    state["collided"] |= collides(current)
    outside = (current[:, 0] < BAND_X[0]) | (current[:, 0] > BAND_X[1])
    reward = state["modes"][:, REWARD_MODE].astype(np.float64) + (current[:, 1] > GOAL_Y)
    reward = np.where(state["collided"] | outside, -0.1, reward)
    state["desired"] = state["desired"] + actions
    state["velocity"] = TRACK_MOMENTUM * state["velocity"] + TRACK_GAIN * (state["desired"] - current)
    state["current"] = current + state["velocity"]
    update_env_modes(state)
    state["t"] += 1
    return obs, reward


class AvoidEnv(gym.Env):
    """gymnasium view of one Avoid env: obs (desired xy, current xy), action = displacement of desired xy.

    `init_noise` > 0 draws the start uniformly within +- init_noise of D3IL's fixed start (paper Fig. 12,
    wider initial states); `action_noise` > 0 adds uniform noise in +- action_noise (metres) to every
    executed displacement (robustness under imperfect control). info: `modes` (9 env-side flags),
    `collided`, `success` (beyond the goal line through mode 5: reward 2, official success threshold).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 28}

    def __init__(self, render_mode: str | None = None, init_noise: float = 0.0, action_noise: float = 0.0):
        self.render_mode = render_mode
        self.init_noise = init_noise
        self.action_noise = action_noise
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        self.action_space = gym.spaces.Box(-0.01, 0.01, (2,), np.float32)  # D3IL's box (its demos reach 0.0125)
        self.state = new_state(1, START_XY)
        self.trail = []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        start = START_XY + self.np_random.uniform(-self.init_noise, self.init_noise, 2) if self.init_noise else START_XY
        self.state = new_state(1, start)
        self.trail = [self.state["current"][0].copy()]
        return np.concatenate([self.state["desired"][0], self.state["current"][0]]).astype(np.float32), {}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(1, 2)
        if self.action_noise:
            action = action + self.np_random.uniform(-self.action_noise, self.action_noise, (1, 2))
        obs, reward = step_batch(self.state, action)
        self.trail.append(self.state["current"][0].copy())
        info = {"modes": self.state["modes"][0].copy(), "collided": bool(self.state["collided"][0])}
        info["success"] = bool(reward[0] >= 2.0)
        return obs[0], float(reward[0]), False, False, info

    def get_state(self) -> dict:
        """Everything that continues this episode exactly (for checkpoints)."""
        return {
            "state": {k: v.copy() for k, v in self.state.items()},
            "trail": list(self.trail),
            "rng": self.np_random.bit_generator.state,
        }

    def set_state(self, saved: dict):
        self.state = {k: v.copy() for k, v in saved["state"].items()}
        self.trail = list(saved["trail"])
        self.np_random.bit_generator.state = saved["rng"]

    def render(self):
        return draw_frame(np.array(self.trail), self.state["desired"][0])


GYM_ID = "cleandppo/Avoid-v0"
gym.register(id=GYM_ID, entry_point=AvoidEnv, max_episode_steps=MAX_EPISODE_STEPS)


class AvoidVectorEnv:
    """All envs in one numpy state: what envs.make_vec_env returns for Avoid ids, 50-100 times faster than a
    SyncVectorEnv of AvoidEnvs (numpy calls on one-env arrays cost as much as on fifty).

    Same contract as envs.make_vec_env's SyncVectorEnv of ChunkedEnv(AvoidEnv) (tests/test_avoid.py checks
    them equal): normalized (E, act_steps, 2) chunks in, normalized (E, cond_steps, 4) observation histories
    out, summed chunk rewards, same-step reset at the 100-step time limit with `final_obs` and `final_info`
    (episode_return, episode_length, episode_success), `env_steps` per chunk. Episodes never terminate early
    and all envs start together, so every env reaches the time limit at the same sub-step.
    """

    def __init__(self, num_envs: int, act_steps: int, cond_steps: int, normalization: dict):
        self.num_envs, self.act_steps, self.cond_steps, self.norm = num_envs, act_steps, cond_steps, normalization
        self.state = new_state(num_envs, START_XY)
        self.history = []
        self.episode_return = np.zeros(num_envs)
        self.episode_success = np.zeros(num_envs, dtype=bool)

    def _first_obs(self):
        self.state = new_state(self.num_envs, START_XY)
        obs = np.concatenate([self.state["desired"], self.state["current"]], axis=1)
        self.history = [normalize_obs(obs, self.norm)] * self.cond_steps
        self.episode_return[:] = 0.0
        self.episode_success[:] = False
        return self._stacked()

    def _stacked(self):
        return np.stack(self.history[-self.cond_steps :], axis=1).astype(np.float32)

    def reset(self, seed=None, options=None):
        return self._first_obs(), {}

    def step(self, chunk):
        chunk = np.asarray(chunk, dtype=np.float64).reshape(self.num_envs, -1, 2)
        total, steps = np.zeros(self.num_envs), 0
        for k in range(self.act_steps):
            obs, reward = step_batch(self.state, unnormalize_action(chunk[:, k], self.norm))
            self.history = self.history[-self.cond_steps :] + [normalize_obs(obs, self.norm)]
            total += reward
            self.episode_success |= reward >= 2.0
            steps += 1
            if self.state["t"][0] >= MAX_EPISODE_STEPS:
                break
        self.episode_return += total
        ones = np.ones(self.num_envs, dtype=bool)
        info = {
            "modes": self.state["modes"].copy(),
            "_modes": ones,
            "collided": self.state["collided"].copy(),
            "_collided": ones,
            "success": reward >= 2.0,
            "_success": ones,
            "env_steps": np.full(self.num_envs, steps),
            "_env_steps": ones,
        }
        truncated = np.full(self.num_envs, self.state["t"][0] >= MAX_EPISODE_STEPS)
        if truncated[0]:
            final = dict(
                info,
                episode_return=self.episode_return.copy(),
                _episode_return=ones,
                episode_length=self.state["t"].copy(),
                _episode_length=ones,
                episode_success=self.episode_success.copy(),
                _episode_success=ones,
            )
            info = dict(final_obs=self._stacked(), _final_obs=ones, final_info=final, _final_info=ones)
            return self._first_obs(), total, np.zeros(self.num_envs, dtype=bool), truncated, info
        return self._stacked(), total, np.zeros(self.num_envs, dtype=bool), truncated, info

    def get_state(self) -> dict:
        """Everything that continues the episodes exactly (for checkpoints)."""
        return {
            "state": {k: v.copy() for k, v in self.state.items()},
            "history": [h.copy() for h in self.history],
            "episode_return": self.episode_return.copy(),
            "episode_success": self.episode_success.copy(),
        }

    def set_state(self, saved: dict):
        self.state = {k: v.copy() for k, v in saved["state"].items()}
        self.history = [h.copy() for h in saved["history"]]
        self.episode_return = saved["episode_return"].copy()
        self.episode_success = saved["episode_success"].copy()

    def close(self):
        pass


# ------------------------------------------------------------------------------------------------
# 3. Drawing without OpenGL: numpy RGB frames (video) and matplotlib axes (trajectory figures)
# ------------------------------------------------------------------------------------------------
VIEW_X, VIEW_Y = (0.15, 0.85), (-0.32, 0.48)  # world window drawn in frames and figures


def draw_frame(trail: np.ndarray, desired: np.ndarray, px_per_m: int = 400) -> np.ndarray:
    """RGB uint8 frame: rewarded x band, pillars, goal line, the arm's path so far, desired point (cross)."""
    w, h = int((VIEW_X[1] - VIEW_X[0]) * px_per_m), int((VIEW_Y[1] - VIEW_Y[0]) * px_per_m)
    img = np.full((h, w, 3), 235, np.uint8)
    xs = VIEW_X[0] + (np.arange(w) + 0.5) / px_per_m
    ys = VIEW_Y[1] - (np.arange(h) + 0.5) / px_per_m  # row 0 is the top (far side of the table)
    gx, gy = np.meshgrid(xs, ys)
    img[(gx >= BAND_X[0]) & (gx <= BAND_X[1])] = 255
    img[np.abs(gy - GOAL_Y) < 1.5 / px_per_m] = (40, 160, 60)
    for x, y, r in OBSTACLES:
        img[(gx - x) ** 2 + (gy - y) ** 2 < r**2] = (200, 40, 40)

    def box(p, rows: tuple, cols: tuple, rgb):  # paint rows/cols (offsets, end excluded) around point p, clipped
        r, c = int((VIEW_Y[1] - p[1]) * px_per_m), int((p[0] - VIEW_X[0]) * px_per_m)
        r0, r1 = np.clip((r + rows[0], r + rows[1]), 0, h)  # a point beyond the goal line has r < 0: a negative end
        c0, c1 = np.clip((c + cols[0], c + cols[1]), 0, w)  # would index from the far edge (a full-height bar)
        img[r0:r1, c0:c1] = rgb

    for p in trail:
        box(p, (-1, 2), (-1, 2), (60, 60, 60))
    box(trail[-1], (-4, 5), (-4, 5), (30, 90, 200))
    box(desired, (-5, 6), (0, 1), (0, 0, 0))
    box(desired, (0, 1), (-5, 6), (0, 0, 0))
    return img


def draw_scene(ax, title: str | None = None):
    """Pillars, goal line and the rewarded x band's edges on a matplotlib axis, in metres (as the official plots)."""
    import matplotlib.patches as patches

    for x, y, r in OBSTACLES:
        ax.add_patch(patches.Circle((x, y), r, color="black"))
    ax.axhline(GOAL_Y, color=(31 / 255, 119 / 255, 180 / 255))
    ax.set_xlim(*VIEW_X)
    ax.set_ylim(*VIEW_Y)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


# ------------------------------------------------------------------------------------------------
# 4. Scripted demonstrations (stand-in for D3IL's human data) and the paper's subsets
# ------------------------------------------------------------------------------------------------
# A route is (row-1 side, row-2 gap, row-3 gap) = one of modes (0|1, 2|3|4, 5|6|7|8): 24 routes, as in
# D3IL's data. The demonstrator steers the desired position through one x inside each chosen gap.
GAP_X = {0: (0.40, 0.44), 1: (0.56, 0.60), 2: (0.33, 0.37), 3: (0.48, 0.52), 4: (0.63, 0.67),
         5: (0.26, 0.30), 6: (0.41, 0.44), 7: (0.56, 0.59), 8: (0.71, 0.75)}  # fmt: skip
ROUTES = [(a, b, c) for a in (0, 1) for b in (2, 3, 4) for c in (5, 6, 7, 8)]


def demonstrate(route: tuple, rng: np.random.Generator, max_steps: int = 150) -> dict | None:
    """One scripted demonstration along `route`, or None if it collided or left the rewarded x band.

    The desired position heads for the next waypoint (the gap's x at each row, then straight on to the goal)
    at an operator speed drawn per demo, each axis clipped to 0.0125 per step as in D3IL's data, with a
    slowly varying wobble. Recorded like D3IL: obs_t = (desired_t, current_t), action_t = desired_{t+1} -
    desired_t; the demo ends at the first step whose reward sees the arm beyond the goal line.
    """
    waypoints = [(rng.uniform(*GAP_X[mode]), y) for mode, y in zip(route, LEVEL_Y)]
    waypoints.append((waypoints[-1][0] + rng.uniform(-0.01, 0.01), GOAL_Y + 0.08))
    speed = rng.uniform(0.009, 0.0125)
    wobble = np.zeros(2)
    state = new_state(1, START_XY)
    obs, actions, rewards = [], [], []
    k = 0
    for _ in range(max_steps):
        desired = state["desired"][0]
        if k < len(waypoints) - 1 and desired[1] >= waypoints[k][1] - 0.02:
            k += 1
        target = np.array(waypoints[k])
        direction = target - desired
        direction[1] = max(direction[1], 0.03)  # always make progress toward the goal
        step = speed * direction / np.linalg.norm(direction)
        wobble = 0.9 * wobble + rng.normal(0.0, 0.0006, 2)
        action = np.clip(step + wobble, [-ACTION_LIMIT, 0.0], [ACTION_LIMIT, ACTION_LIMIT])
        o, r = step_batch(state, action[None])
        obs.append(o[0])
        actions.append(action)
        rewards.append(r[0])
        if state["collided"][0] or r[0] < 0:
            return None
        if o[0, 3] > GOAL_Y:  # this step's reward saw the arm beyond the goal line
            break
    else:
        return None
    return {
        "observations": np.array(obs, np.float32),
        "actions": np.array(actions, np.float32),
        "rewards": np.array(rewards, np.float32),
        "route": np.array(route),
    }


def make_demos(demos_per_route: int, seed: int) -> list[dict]:
    """`demos_per_route` successful demonstrations of each of the 24 routes (failed attempts redrawn)."""
    rng = np.random.default_rng(seed)
    out = []
    for route in ROUTES:
        made = 0
        while made < demos_per_route:
            demo = demonstrate(route, rng)
            if demo is not None:
                out.append(demo)
                made += 1
    return out


def to_d4rl(episodes: list[dict]) -> dict:
    """Flat D4RL-layout arrays (terminals all False, timeouts at each episode's last step)."""
    data = {k: np.concatenate([ep[k] for ep in episodes]) for k in ("observations", "actions", "rewards")}
    lengths = [len(ep["actions"]) for ep in episodes]
    data["terminals"] = np.zeros(sum(lengths), dtype=bool)
    data["timeouts"] = np.zeros(sum(lengths), dtype=bool)
    data["timeouts"][np.cumsum(lengths) - 1] = True
    if all("route" in ep for ep in episodes):  # scripted demos: the route each one took
        data["episode_routes"] = np.array([ep["route"] for ep in episodes])
    return data


def subset(episodes: list[dict], name: str) -> list[dict]:
    """Episodes of subset m1/m2/m3 by the official filter (tested on the desired positions, obs[:, :2])."""
    if name not in SUBSETS:
        raise ValueError(f"unknown Avoid subset {name!r}; use one of {sorted(SUBSETS)}")
    return [ep for ep in episodes if in_subset(ep["observations"][:, :2], name)]


# ------------------------------------------------------------------------------------------------
# 5. D3IL's own demonstrations: data/avoiding/data/*.pkl, one pickled dict per episode
# ------------------------------------------------------------------------------------------------
def read_d3il_episodes(directory: str) -> list[dict]:
    """Episodes from D3IL's pickles as the official Avoiding_Dataset reads them: obs = (des_c_pos xy, c_pos xy)
    of every recorded step but the last, action = the next desired xy minus this one. No rewards are stored;
    we replay each episode's actual positions through the avoiding-m5 reward to fill them."""
    files = sorted(glob.glob(os.path.join(directory, "*.pkl")))
    episodes = []
    for path in files:
        with open(path, "rb") as f:
            robot = pickle.load(f)["robot"]
        desired = np.asarray(robot["des_c_pos"])[:, :2]
        current = np.asarray(robot["c_pos"])[:, :2]
        obs = np.concatenate([desired, current], axis=1)[:-1].astype(np.float32)
        actions = (desired[1:] - desired[:-1]).astype(np.float32)
        episodes.append(
            {
                "observations": obs,
                "actions": actions,
                "rewards": replay_reward(current[:-1]),
                "file": os.path.basename(path),
            }
        )
    return episodes


def replay_reward(current: np.ndarray) -> np.ndarray:
    """avoiding-m5 reward along recorded positions (T, 2): reward t scores position t (see step_batch)."""
    state = new_state(1, current[0])
    rewards = np.zeros(len(current), np.float32)
    for t, xy in enumerate(current):
        state["current"] = xy[None].astype(np.float64)
        if t > 0:  # the env updates the modes after each move, before the next reward
            update_env_modes(state)
        state["collided"] |= collides(state["current"])
        outside = (xy[0] < BAND_X[0]) | (xy[0] > BAND_X[1])
        r = float(state["modes"][0, REWARD_MODE]) + float(xy[1] > GOAL_Y)
        rewards[t] = -0.1 if (state["collided"][0] or outside) else r
    return rewards


NOISE_MODES = ("literal", "symmetric")


def add_action_noise(
    actions: np.ndarray, iteration: int, limits, mode: str = "literal", start_itr: int = 5, ramp_itrs: int = 5
) -> np.ndarray:
    """Executed (normalized) actions plus the fine-tuning noise of paper D.8 (Fig. 10 left): from iteration
    `start_itr` on, the limits [low, high] ramp linearly from limits / ramp_itrs to `limits` over `ramp_itrs`
    iterations; unchanged before. `literal`: noise uniform in [low, high] as D.8 says (always positive);
    `symmetric`: magnitude uniform in [low, high] with a random sign per entry."""
    if mode not in NOISE_MODES:
        fail(f"unknown action noise mode {mode!r}; use one of {', '.join(NOISE_MODES)}")
    low, high = limits
    if high <= 0 or iteration < start_itr:
        return actions
    frac = min(1.0, (iteration - start_itr + 1) / ramp_itrs)
    noise = np.random.uniform(low * frac, high * frac, actions.shape)
    if mode == "symmetric":
        noise = noise * np.random.choice([-1.0, 1.0], actions.shape)
    return actions + noise


# ------------------------------------------------------------------------------------------------
# 6. Ids and datasets (envs.py dispatches here): one simulator, three pre-training subsets
# ------------------------------------------------------------------------------------------------
# `avoid-m1/-m2/-m3` name the task together with the data subset its pre-trained policy was cloned from
# (M1: modes 5|6, M2: 5|7, M3: 5|8); all three run the same avoiding-m5 task. `avoid` is the task alone.
ENV_IDS = {"avoid": None, "avoid-m1": "m1", "avoid-m2": "m2", "avoid-m3": "m3"}
DATA_COMMAND = "python scripts/make_avoid_data.py"


def is_avoid(env_id) -> bool:
    """True for avoid, avoid-m1, avoid-m2, avoid-m3 (any case); avoid-<other> is a one-line error."""
    if not isinstance(env_id, str) or not env_id.lower().startswith("avoid"):
        return False
    if env_id.lower() not in ENV_IDS:
        fail(f"unknown Avoid subset in --env-id {env_id!r}; use one of {', '.join(ENV_IDS)}")
    return True


def check_bundled(env_id: str):
    """`avoid` alone has no bundled policy: one line naming the three that exist."""
    if is_avoid(env_id) and ENV_IDS[env_id.lower()] is None:
        fail(
            "--env-id avoid has one bundled pre-trained policy per data subset: pass --env-id avoid-m1, avoid-m2 "
            "or avoid-m3 (or --checkpoint)"
        )


def check_subset(path: str, checkpoint_env: str, env_id: str):
    """A checkpoint cloned from another subset than --env-id names: one line."""
    wanted = ENV_IDS.get(env_id.lower()) if is_avoid(env_id) else None
    if wanted and ENV_IDS.get(checkpoint_env.lower()) != wanted:
        fail(
            f"{path} was pre-trained on Avoid subset {checkpoint_env}, not {env_id}; pass --env-id {checkpoint_env} "
            f"or a checkpoint of {env_id}"
        )


def resolve_dataset(dataset: str) -> str:
    """Path of avoid-m1/m2/m3 (scripted demos) or avoid-d3il-m1/m2/m3 (D3IL's demos, filtered) in the data dir."""
    name = dataset.lower()
    scripted = [f"avoid-{s}" for s in SUBSETS] + ["avoid-all"]
    d3il = [f"avoid-d3il-{s}" for s in SUBSETS] + ["avoid-d3il-all"]
    if name not in scripted + d3il:
        fail(f"unknown Avoid dataset {dataset!r}; use one of {', '.join(scripted + d3il)} or an hdf5 path")
    path = os.path.join(data_dir(), f"{name}.hdf5")
    if os.path.isfile(path):
        return path
    if name in d3il:
        fail(
            f"{name} is not in {data_dir()}; convert D3IL's data/avoiding/data/*.pkl with: "
            f"{DATA_COMMAND} --d3il-dir <that directory>"
        )
    fail(f"{name} is not in {data_dir()}; make it (a few seconds) with: {DATA_COMMAND}")


def load_d3il_directory(directory: str, env_id: str | None) -> dict:
    """D3IL's data/avoiding/data/*.pkl as flat D4RL-layout arrays, cut to the subset of `env_id` (avoid-m1/m2/m3)
    by the official filter; `--env-id avoid` keeps every episode."""
    if env_id is None or not is_avoid(env_id):
        fail(
            f"--dataset {directory} is a directory: only D3IL Avoid pickles are read from one; "
            "pass --env-id avoid-m1|m2|m3"
        )
    episodes = read_d3il_episodes(directory)
    if not episodes:
        fail(f"no *.pkl episode in {directory}; pass D3IL's data/avoiding/data directory")
    name = ENV_IDS[env_id.lower()]
    if name is not None:
        episodes = subset(episodes, name)
    print(f"[d3il] {len(episodes)} episodes of {directory}" + (f" in subset {name.upper()}" if name else ""))
    return to_d4rl(episodes)
