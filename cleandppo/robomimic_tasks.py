"""Robomimic tasks on robosuite 1.5 (paper 5.1-5.2, D.5): lift/can/square/transport from state, and the same tasks
from pixels (`lift-img`, ...: camera images plus the robots' proprioception).

What envs.py asks of this task family: the task table and its ids, the robosuite env behind `envs.make_env`, and
robomimic's hdf5 files behind `envs.load_dataset`. Read top to bottom: the task tables and ids, robomimic's
controller and env meta, importing robosuite, the OpenGL backend of the image tasks, the gymnasium envs, then the
dataset files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from cleandppo.common import compute_normalization, data_dir, download_or_fail, fail

# ------------------------------------------------------------------------------------------------
# The tasks: ids, robosuite env names and the paper's settings
# ------------------------------------------------------------------------------------------------
# robomimic's low-dim setup on robosuite 1.5 (PyPI's robomimic imports mujoco_py; not used): OSC_POSE
# deltas, 20 Hz, sparse reward, no termination, truncation at max_episode_steps; obs = the obs_keys
# concatenated. Files: robomimic's layout data/demo_<i>/{obs/<key>, actions, ...}, data.attrs["env_args"].
# task -> robosuite env and the paper's settings (paper D.5; official cfg/robomimic/finetune/<task>/*.yaml)
ROBOMIMIC_TASKS = {
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


class ImageTask(NamedTuple):
    """An image task: its cameras (their images concatenated along channels, in this order), the low-dim keys
    concatenated into its "state" observation, that state's size, and the shape of one observation's images."""

    cameras: tuple[str, ...]
    low_dim_keys: tuple[str, ...]
    state_dim: int
    image_shape: tuple[int, int, int]


IMAGE_SIZE = 96  # official camera_heights/widths (cfg/robomimic/env_meta/<task>-img.json)


def _image_task(cameras: tuple, robots: int) -> ImageTask:
    keys = tuple(f"robot{i}_{k}" for i in range(robots) for k in _ROBOT_KEYS)
    return ImageTask(cameras, keys, 9 * robots, (3 * len(cameras), IMAGE_SIZE, IMAGE_SIZE))


# the pixel tasks (paper 5.2; official cfg/robomimic/finetune/<task>/ft_ppo_*_img.yaml: image_keys, low_dim_keys and
# shape_meta; env/gym_utils/wrapper/robomimic_image.py): the robots' proprioception only, no object state
IMAGE_TASKS = {
    "lift-img": _image_task(("robot0_eye_in_hand",), 1),
    "can-img": _image_task(("robot0_eye_in_hand",), 1),
    "square-img": _image_task(("agentview",), 1),
    "transport-img": _image_task(("shouldercamera0", "shouldercamera1"), 2),
}


_robomimic_env_args = {}  # task key -> env_args honoured by make_env (set by load_dataset or set_robomimic_env_args)


def is_image_task(env_id) -> bool:
    """True for lift-img, can-img, square-img, transport-img (robomimic's env names accepted: PickPlaceCan-img), any
    case."""
    if not isinstance(env_id, str) or not env_id.lower().endswith("-img"):
        return False
    return env_id.lower()[: -len("-img")] in _ROBOMIMIC_ALIASES


def is_robomimic(env_id) -> bool:
    """True for lift, can, square, transport and robomimic's env names (Lift, PickPlaceCan, ...), any case, and for
    their image tasks (lift-img, ...)."""
    return isinstance(env_id, str) and (env_id.lower() in _ROBOMIMIC_ALIASES or is_image_task(env_id))


def robomimic_task(env_id: str) -> str:
    """The task name ('can') of a robomimic id in any spelling ('PickPlaceCan', 'CAN', 'can-img'): the simulator
    task, also of an image task."""
    name = env_id.lower()
    return _ROBOMIMIC_ALIASES[name[: -len("-img")] if is_image_task(env_id) else name]


def image_task(env_id: str) -> str:
    """The id of an image task in its canonical spelling ('PickPlaceCan-img' -> 'can-img')."""
    return f"{robomimic_task(env_id)}-img"


def _task_key(env_id: str) -> str:
    """What env meta is kept under: the image task id for an image task, else the task."""
    return image_task(env_id) if is_image_task(env_id) else robomimic_task(env_id)


def robomimic_env_args(env_id: str) -> dict:
    """The env meta make_env uses for this task: a dataset's env_args once loaded, else the default."""
    key = _task_key(env_id)
    return _robomimic_env_args.get(key) or default_robomimic_env_args(key)


def set_robomimic_env_args(env_id: str, env_args: dict | None):
    """Make later make_env calls of this task honour `env_args` (None: the default); load_dataset calls it."""
    key, task = _task_key(env_id), robomimic_task(env_id)
    if env_args is None:
        _robomimic_env_args.pop(key, None)
        return
    name = str(env_args.get("env_name", ""))
    if _ROBOMIMIC_ALIASES.get(name.lower()) != task:
        fail(
            f"env_args are for env {name!r}, not the {task} task ({ROBOMIMIC_TASKS[task]['env_name']}); "
            f"pass a {task} dataset"
        )
    _robomimic_env_args[key] = env_args


# ------------------------------------------------------------------------------------------------
# robomimic's controller and env meta
# ------------------------------------------------------------------------------------------------
# robomimic's OSC_POSE config (robosuite <= 1.4 key names, as stored in robomimic's datasets)
ROBOMIMIC_CONTROLLER = {
    "type": "OSC_POSE",
    "input_max": 1,
    "input_min": -1,
    "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
    "kp": 150,
    "damping": 1,
    "impedance_mode": "fixed",
    "kp_limits": [0, 300],
    "damping_limits": [0, 10],
    "position_limits": None,
    "orientation_limits": None,
    "uncouple_pos_ori": True,
    "control_delta": True,
    "interpolation": None,
    "ramp_ratio": 0.2,
}
# kwargs every robomimic env gets whatever a dataset's env_args say (low-dim, sparse, no renderer). seed: what
# robosuite draws when it builds the model (Lift's cube size, within [0.020, 0.022]) comes from a generator seeded
# with 0, so every env of every run, a resumed one included, has the same model; reset(seed=s) then reseeds that
# generator for the object placements
_ROBOMIMIC_FORCED = dict(
    has_renderer=False,
    use_camera_obs=False,
    use_object_obs=True,
    ignore_done=True,
    reward_shaping=False,
    hard_reset=False,
    seed=0,
)
ROBOMIMIC_URL = "http://downloads.cs.stanford.edu/downloads/rt_benchmark/{task}/{kind}/low_dim_v141.hdf5"
ROBOMIMIC_DATASET_KINDS = ("mh", "ph", "scripted", "mhsim")  # multi-human, proficient-human (downloads), made here
MADE_HERE = {"scripted": "", "mhsim": " --operators mh"}  # kinds scripts/make_robomimic_demos.py writes
_robosuite = None


def default_robomimic_env_args(env_id: str) -> dict:
    """robomimic's env meta (env_name, type 1 = robosuite, env_kwargs) for the low-dim setup of a task; for an image
    task that of the official cfg/robomimic/env_meta/<task>-img.json (its cameras, 96 x 96, an offscreen renderer)."""
    import json

    spec = ROBOMIMIC_TASKS[robomimic_task(env_id)]
    controller = json.loads(json.dumps(ROBOMIMIC_CONTROLLER))  # a deep copy
    kwargs = dict(
        robots=list(spec["robots"]),
        controller_configs=controller,
        control_freq=20,
        use_object_obs=True,
        use_camera_obs=False,
        has_renderer=False,
        has_offscreen_renderer=False,
        ignore_done=True,
        reward_shaping=False,
        camera_depths=False,
    )
    if "env_configuration" in spec:
        kwargs["env_configuration"] = spec["env_configuration"]
    if is_image_task(env_id):
        cameras = list(IMAGE_TASKS[image_task(env_id)].cameras)
        kwargs.update(has_offscreen_renderer=True, use_camera_obs=True, camera_names=cameras)
        kwargs.update(camera_heights=IMAGE_SIZE, camera_widths=IMAGE_SIZE)
    return {"env_name": spec["env_name"], "type": 1, "env_kwargs": kwargs}


def import_robosuite():
    """Import robosuite 1.5 once, quietly (its import-time warnings are about unused features)."""
    global _robosuite
    if _robosuite is not None:
        return _robosuite
    import logging

    logging.disable(logging.WARNING)
    global _mujoco_gl_before_robosuite
    _mujoco_gl_before_robosuite = os.environ.get("MUJOCO_GL")  # robosuite's import sets it to egl when unset
    try:
        import robosuite
    except ImportError as e:
        fail(
            f"robomimic tasks need robosuite 1.5 ({e.__class__.__name__}: {e}); install it with: "
            "pip install -r requirements.txt && pip install --no-deps -r requirements-robomimic.txt"
        )
    finally:
        logging.disable(logging.NOTSET)
    if not robosuite.__version__.startswith("1.5"):
        fail(
            f"robomimic tasks need robosuite 1.5, found {robosuite.__version__}: "
            "pip install --no-deps -r requirements-robomimic.txt"
        )
    import mujoco

    if tuple(int(x) for x in mujoco.__version__.split(".")[:2]) >= (3, 10):  # robosuite 1.5.2 breaks on 3.10+
        fail(f"robosuite 1.5.2 needs MuJoCo < 3.10, found {mujoco.__version__}: pip install 'mujoco>=3.2,<3.10'")
    from robosuite.utils.log_utils import ROBOSUITE_DEFAULT_LOGGER

    ROBOSUITE_DEFAULT_LOGGER.setLevel(logging.ERROR)
    _robosuite = robosuite
    return robosuite


# ------------------------------------------------------------------------------------------------
# The OpenGL backend of the image tasks: MuJoCo's EGL or OSMesa on Mesa's software renderer, headless on a CPU
# ------------------------------------------------------------------------------------------------
GL_PACKAGES = {"egl": "libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0", "osmesa": "libosmesa6"}  # Debian/Ubuntu
GL_INSTALL = f"apt-get install -y --no-install-recommends {GL_PACKAGES['egl']}"
_GL_PROBE = """
import mujoco
model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
renderer = mujoco.Renderer(model, 8, 8)
renderer.update_scene(mujoco.MjData(model))
renderer.render()
renderer.close()
print("rendered")
"""
_gl_backend = None  # chosen once per process by gl_backend()
_mujoco_gl_before_robosuite = None  # MUJOCO_GL as it was when import_robosuite imported robosuite


def probe_gl(backend: str) -> str | None:
    """None when MuJoCo renders offscreen with `backend` (egl, osmesa) in a fresh Python process; else why not."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        out = subprocess.run([sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "no image within 120 s"
    if out.returncode == 0 and out.stdout.strip().endswith("rendered"):
        return None
    lines = [line.strip() for line in out.stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit code {out.returncode}")[:160]


def _user_mujoco_gl():
    """MUJOCO_GL as the user set it (None when unset), not the egl that robosuite's import writes when unset."""
    if "robosuite" in sys.modules and _robosuite is not None:
        return _mujoco_gl_before_robosuite
    return os.environ.get("MUJOCO_GL")


IMAGE_ENV_MIB = 360  # the least an image env holds: its own OpenGL context (docs/robomimic_images.md#memory)
IMAGE_WORKER_MIB = 900  # the least one in a worker process of its own holds: that process's robosuite and GL too


def available_mib() -> float | None:
    """The memory the kernel can give without swapping (MemAvailable of /proc/meminfo), in MiB; None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_image_env_memory(env_id: str, num_envs: int, workers: bool = False):
    """Stop in one line before building `num_envs` image envs that cannot fit in the available memory even at the
    least one holds (IMAGE_ENV_MIB: Lift and Square measured 360-370 MiB, Transport 535; `workers`: each in a
    spawned process of its own, IMAGE_WORKER_MIB: Lift measured 926 MiB), rather than being killed by the kernel
    half-way."""
    available, each = available_mib(), IMAGE_WORKER_MIB if workers else IMAGE_ENV_MIB
    if available is None or num_envs * each <= available:
        return
    fits = int(available // each)
    fix = f"pass --num-envs {fits} or fewer" if fits else "free some memory"
    if workers and num_envs * IMAGE_ENV_MIB <= available:
        fix = f"pass --env-workers 1 (the envs in this process, {IMAGE_ENV_MIB} MiB each)" + (
            f" or --num-envs {fits} or fewer" if fits else ""
        )
    where = " in a worker process of its own" if workers else ""
    fail(
        f"{num_envs} {env_id} envs need at least {num_envs * each / 1024:.1f} GiB (each renders in its own OpenGL "
        f"context, {each} MiB or more{where}) and {available / 1024:.1f} GiB is available: {fix}"
    )


def gl_backend() -> str:
    """The OpenGL backend the image tasks render with, chosen once per process and printed: MUJOCO_GL as the user
    set it (egl and osmesa checked to work), else egl where it works, else osmesa. MUJOCO_GL and PYOPENGL_PLATFORM
    are set to it for robosuite (and the vector env's worker processes, which then check nothing again). No working
    backend stops in one line naming the Debian packages to install."""
    global _gl_backend
    if _gl_backend is not None:
        return _gl_backend
    inherited = os.environ.get("CLEANDPPO_GL")  # set by the process that chose it (a vector env's parent)
    if inherited and inherited == os.environ.get("MUJOCO_GL"):
        chosen, how = inherited, None
    else:
        user = _user_mujoco_gl()
        candidates = [user.lower().strip()] if user else ["egl", "osmesa"]
        reasons, chosen = {}, None
        for backend in candidates:
            if backend not in GL_PACKAGES:  # glfw, glx: the user's display, not checked here
                chosen = backend
                break
            reasons[backend] = probe_gl(backend)
            if reasons[backend] is None:
                chosen = backend
                break
        if chosen is None:
            why = "; ".join(f"{b}: {r}" for b, r in reasons.items())
            if user:
                fail(
                    f"MUJOCO_GL={user} cannot render ({why}); image tasks need Mesa's {user.upper()}: "
                    f"apt-get install -y --no-install-recommends {GL_PACKAGES[candidates[0]]} "
                    "(or unset MUJOCO_GL to try egl and osmesa)"
                )
            fail(
                f"image tasks need an OpenGL backend and none renders ({why}); install Mesa's software renderer: "
                f"{GL_INSTALL} (EGL), or {GL_PACKAGES['osmesa']} (OSMesa)"
            )
        how = "as set in MUJOCO_GL" if user else "the first of egl, osmesa that renders"
    platform = os.environ.get("PYOPENGL_PLATFORM")
    if chosen in GL_PACKAGES:
        if platform and platform.lower() != chosen:
            fail(f"PYOPENGL_PLATFORM={platform} does not match MUJOCO_GL={chosen}: unset it or set it to {chosen}")
        os.environ["PYOPENGL_PLATFORM"] = chosen
    os.environ["MUJOCO_GL"] = os.environ["CLEANDPPO_GL"] = chosen
    binding = sys.modules.get("robosuite.utils.binding_utils")
    if binding is not None:  # robosuite read MUJOCO_GL at its import: tell it too
        binding._MUJOCO_GL = chosen
    if how is not None:
        print(f"[cleandppo] rendering with MUJOCO_GL={chosen} ({how})", flush=True)
    _gl_backend = chosen
    return chosen


def _controller_configs(controller_configs, robots: list):
    """robosuite 1.5 composite controller configs from robomimic's (<= 1.4) part config: old key names
    translated, deltas in the world frame unless given (as robosuite <= 1.4). Composite configs pass as is."""
    import copy

    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

    configs = controller_configs if isinstance(controller_configs, list) else [controller_configs] * len(robots)
    out = []
    for cfg, robot in zip(configs, robots):
        cfg = copy.deepcopy(cfg)
        if "body_parts" not in cfg:
            for old, new in (("damping", "damping_ratio"), ("damping_limits", "damping_ratio_limits")):
                if old in cfg:
                    cfg.setdefault(new, cfg.pop(old))
            if "control_delta" in cfg:
                cfg.setdefault("input_type", "delta" if cfg.pop("control_delta") else "absolute")
            cfg.setdefault("input_ref_frame", "world")
            cfg = refactor_composite_controller_config(cfg, robot, ["right"])
        out.append(cfg)
    return out if len(out) > 1 else out[0]


def _robosuite_kwargs(env_id: str, render: bool) -> dict:
    """suite.make kwargs for a task from its env meta; keys robosuite 1.5 does not take are dropped."""
    import inspect

    suite = import_robosuite()
    task = robomimic_task(env_id)
    env_args = robomimic_env_args(env_id)
    kwargs = dict(env_args.get("env_kwargs", {}))
    kwargs.update(_ROBOMIMIC_FORCED, has_offscreen_renderer=render)
    robots = kwargs.get("robots") or ROBOMIMIC_TASKS[task]["robots"]
    kwargs["robots"] = robots = [robots] if isinstance(robots, str) else list(robots)
    kwargs["controller_configs"] = _controller_configs(kwargs.get("controller_configs", ROBOMIMIC_CONTROLLER), robots)
    env_cls = suite.environments.base.REGISTERED_ENVS[ROBOMIMIC_TASKS[task]["env_name"]]
    accepted = set()  # subclasses such as PickPlaceCan pass **kwargs up: collect along the MRO
    for cls in env_cls.__mro__:
        if "__init__" in vars(cls):
            accepted.update(inspect.signature(cls.__init__).parameters)
    return {k: v for k, v in kwargs.items() if k in accepted}


class RobomimicLowDimEnv(gym.Env):
    """A robosuite task as robomimic's low-dim env (gymnasium API): obs = obs_keys concatenated, actions in
    [-1, 1], sparse reward, never terminated, truncated at max_episode_steps, info["success"] after each
    step. `rs_env` is the robosuite env; reset(seed=s) reseeds robosuite's own generator in place."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, env_id: str, render_mode: str | None = None, offscreen: bool = False):
        self.task = robomimic_task(env_id)
        spec = ROBOMIMIC_TASKS[self.task]
        suite = import_robosuite()
        if render_mode not in (None, "rgb_array"):
            fail(f"render_mode {render_mode!r} is not supported for {self.task}; use rgb_array")
        self.render_mode = render_mode
        render = offscreen or render_mode is not None
        if render:
            gl_backend()
        kwargs = _robosuite_kwargs(env_id, render=render)
        try:
            self.rs_env = suite.make(spec["env_name"], **kwargs)
        except Exception as e:  # renderer set-up and bad env_args surface here
            detail = str(e).splitlines()[0] if str(e) else ""
            fail(
                f"cannot build robosuite {spec['env_name']} ({e.__class__.__name__}: {detail}); "
                f"for rendering install {GL_PACKAGES['egl']} (or set MUJOCO_GL=osmesa with {GL_PACKAGES['osmesa']}), "
                "otherwise check the dataset's env_args"
            )
        self.obs_keys, self.max_episode_steps = spec["obs_keys"], spec["max_episode_steps"]
        self.object_keys = spec.get("object_keys")
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (spec["obs_dim"],), np.float32)
        low, high = self.rs_env.action_spec
        self.action_space = gym.spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32))
        self.steps, self.obs_dict = 0, None

    def object_obs(self, obs_dict) -> np.ndarray:
        """robomimic's "object" vector (robosuite <= 1.4 order)."""
        if self.object_keys is None:
            return np.asarray(obs_dict["object-state"])
        return np.concatenate([np.ravel(obs_dict[k]) for k in self.object_keys])

    def robomimic_obs(self, obs_dict) -> dict:
        """The task's obs_keys as robomimic names them (what a robomimic hdf5 file stores)."""
        return {k: self.object_obs(obs_dict) if k == "object" else np.asarray(obs_dict[k]) for k in self.obs_keys}

    def flat_obs(self, obs_dict) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in self.robomimic_obs(obs_dict).values()])

    def observation(self):
        """What reset and step return: the obs_keys concatenated."""
        return self.flat_obs(self.obs_dict)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:  # in place: robosuite's placement samplers hold a reference to this generator
            self.rs_env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        self.obs_dict = self.rs_env.reset()
        self.steps = 0
        return self.observation(), {}

    def step(self, action):
        self.obs_dict, reward, _, _ = self.rs_env.step(np.asarray(action, np.float64))
        self.steps += 1
        info = {"success": bool(self.rs_env._check_success())}
        return self.observation(), float(reward), False, self.steps >= self.max_episode_steps, info

    def render(self):
        return self.camera_image("agentview", 256)

    def camera_image(self, camera: str, size: int) -> np.ndarray:
        """uint8 (size, size, 3) from `camera` at the current simulator state, upright (row 0 at the top), rendered
        in this env's own OpenGL context. robosuite renders in whichever context is current, and an env of the same
        process that closes leaves none (its EGL or OSMesa context's free releases the thread's), after which every
        other env's frames came out wrong: each render makes its own context current first."""
        sim = self.rs_env.sim
        sim._render_context_offscreen.gl_ctx.make_current()
        return sim.render(camera_name=camera, width=size, height=size)[::-1]

    def close(self):
        """Free the renderer in its own OpenGL context first: robosuite frees it whenever the sim is collected, in
        whichever context is current then, which deleted another env's buffers of the same ids."""
        context = getattr(self.rs_env.sim, "_render_context_offscreen", None)
        if context is not None:
            context.gl_ctx.make_current()
            context.con.free()
            context.gl_ctx.free()  # its context goes, and none is current: each render makes its own current
        self.rs_env.close()


class RobomimicImageEnv(RobomimicLowDimEnv):
    """An image task (official env/gym_utils/wrapper/robomimic_image.py): obs = {"state": the task's low_dim_keys
    concatenated (raw units), "rgb": uint8 (3 * cameras, 96, 96), the cameras' images upright (as robomimic stores
    them) concatenated along channels in the task's camera order}. Everything else as RobomimicLowDimEnv.

    The images are rendered after the step (robosuite's camera observables, which robomimic flips upright), only
    when `render_images` is True: a chunked env turns it off for the sub-steps whose images nobody sees; their
    "rgb" is then None."""

    def __init__(self, env_id: str, render_mode: str | None = None, cameras=None):
        super().__init__(env_id, render_mode, offscreen=True)
        spec = IMAGE_TASKS[image_task(env_id)]
        self.cameras = tuple(spec.cameras if cameras is None else cameras)
        check_cameras(self.rs_env, self.cameras, image_task(env_id))
        self.low_dim_keys, self.render_images = spec.low_dim_keys, True
        rgb_shape = (3 * len(self.cameras), IMAGE_SIZE, IMAGE_SIZE)
        self.observation_space = gym.spaces.Dict(
            state=gym.spaces.Box(-np.inf, np.inf, (spec.state_dim,), np.float32),
            rgb=gym.spaces.Box(0, 255, rgb_shape, np.uint8),
        )

    def camera_images(self) -> dict:
        """{camera: uint8 (96, 96, 3)} of the current simulator state, upright (row 0 at the top)."""
        return {c: self.camera_image(c, IMAGE_SIZE) for c in self.cameras}

    def images_of_states(self, states) -> dict:
        """{camera: uint8 (T, 96, 96, 3)} rendered at each flattened simulator state (robomimic's
        dataset_states_to_obs: set the state, forward, render); the simulator is put back as it was."""
        sim = self.rs_env.sim
        saved = sim.get_state().flatten()
        frames = {c: [] for c in self.cameras}
        for state in states:
            sim.set_state_from_flattened(np.asarray(state))
            sim.forward()
            for camera, image in self.camera_images().items():
                frames[camera].append(image)
        sim.set_state_from_flattened(saved)
        sim.forward()
        return {c: np.stack(f) if f else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8) for c, f in frames.items()}

    def observation(self):
        state = np.concatenate([np.ravel(self.obs_dict[k]) for k in self.low_dim_keys])
        if not self.render_images:
            return {"state": state, "rgb": None}
        rgb = np.concatenate([img.transpose(2, 0, 1) for img in self.camera_images().values()])
        return {"state": state, "rgb": np.ascontiguousarray(rgb)}


def check_cameras(rs_env, cameras, task: str):
    """Stop in one line when `cameras` names one the task's model does not have."""
    have = list(rs_env.sim.model.camera_names)
    missing = [c for c in cameras if c not in have]
    if missing:
        fail(
            f"{task} has no camera {', '.join(missing)}; its cameras are {', '.join(have)} "
            f"(official: {', '.join(IMAGE_TASKS[task].cameras)})"
        )


def make_robomimic_env(env_id: str, render_mode: str | None = None) -> RobomimicLowDimEnv:
    """One raw (unchunked, unnormalized) robomimic env; an image task's gives dict observations."""
    if is_image_task(env_id):
        return RobomimicImageEnv(env_id, render_mode)
    return RobomimicLowDimEnv(env_id, render_mode)


def robomimic_demo_fix(task: str, kind: str = "scripted") -> str:
    if task in ("lift", "can", "square", "transport"):  # the tasks scripts/make_robomimic_demos.py has a controller for
        flag = MADE_HERE.get(kind, "")
        return (
            f"make demos with: python scripts/make_robomimic_demos.py --task {task}{flag} "
            f"(then --dataset {task}-{kind if kind in MADE_HERE else 'scripted'})"
        )
    return f"download --dataset {task}-mh when online or pass a {task} robomimic low_dim hdf5 path"


def robomimic_image_demo_fix(task: str, kind: str = "scripted") -> str:
    """How to make the image dataset of a task here: scripted demos with their cameras' images."""
    name = f"{task}-img" if kind == "scripted" else f"{task}-{kind}-img"
    flag = MADE_HERE.get(kind, "")
    return f"make it with: python scripts/make_robomimic_demos.py --task {task}{flag} --images (then --dataset {name})"


def robomimic_image_dataset_name(dataset: str):
    """(task, kind) for the image datasets made here: lift-img (scripted), can-mhsim-img, square-scripted-img;
    robomimic's own -mh-img/-ph-img names fail in one line (its image downloads are not the official 96 x 96)."""
    if not dataset.lower().endswith("-img"):
        return None
    base, _, kind = dataset[: -len("-img")].rpartition("-")
    if base.lower() in _ROBOMIMIC_ALIASES and kind.lower() in ROBOMIMIC_DATASET_KINDS:
        task, kind = _ROBOMIMIC_ALIASES[base.lower()], kind.lower()
        if kind not in MADE_HERE:
            fail(
                f"robomimic's {kind} image downloads are 84x84 agentview and wrist images, not the official 96x96 of "
                f"{task}-img: render robomimic's demo.hdf5 with robomimic/scripts/dataset_states_to_obs.py "
                f"--camera_names {' '.join(IMAGE_TASKS[task + '-img'].cameras)} --camera_height 96 --camera_width 96 "
                f"and pass that file, or {robomimic_image_demo_fix(task)}"
            )
        return task, kind
    task = dataset[: -len("-img")].lower()
    return (_ROBOMIMIC_ALIASES[task], "scripted") if task in _ROBOMIMIC_ALIASES else None


def resolve_robomimic_image_dataset(dataset: str) -> str:
    """Path of an image dataset name (robomimic_image_dataset_name) in data_dir(); missing, one line naming the
    command that makes it."""
    task, kind = robomimic_image_dataset_name(dataset)
    name = f"{task}-img" if kind == "scripted" else f"{task}-{kind}-img"
    path = os.path.join(data_dir(), f"{name}.hdf5")
    if not os.path.isfile(path):
        fail(f"{name} is not in {data_dir()}; {robomimic_image_demo_fix(task, kind)}")
    return path


def robomimic_dataset_name(dataset: str):
    """(task, kind) for names like lift-mh, can-ph, square-scripted, lift-mhsim, PickPlaceCan-mh; else None."""
    base, _, kind = dataset.rpartition("-")
    if kind.lower() in ROBOMIMIC_DATASET_KINDS and base.lower() in _ROBOMIMIC_ALIASES:
        return _ROBOMIMIC_ALIASES[base.lower()], kind.lower()
    return None


def resolve_robomimic_dataset(dataset: str) -> str:
    """Path of a robomimic dataset name: cached in data_dir(), else downloaded (mh/ph; address pattern
    $CLEANDPPO_ROBOMIMIC_URL); a missing -scripted/-mhsim file and a failed download fail naming robomimic_demo_fix."""
    task, kind = robomimic_dataset_name(dataset)
    path = os.path.join(data_dir(), f"{task}-{kind}.hdf5")
    if os.path.isfile(path):
        return path
    if kind in MADE_HERE:
        fail(f"{task}-{kind} is not in {data_dir()}; {robomimic_demo_fix(task, kind)}")
    url = os.environ.get("CLEANDPPO_ROBOMIMIC_URL", ROBOMIMIC_URL).format(task=task, kind=kind)
    return download_or_fail(f"{task}-{kind}", url, path, robomimic_demo_fix(task))


def is_robomimic_hdf5(path: str) -> bool:
    """True when an hdf5 file has robomimic's layout (a `data` group holding demo_* groups)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "data" in f and isinstance(f["data"], h5py.Group) and any(k.startswith("demo_") for k in f["data"])
    except OSError:
        return False


def _demo_order(names) -> list:
    """demo_* group names in numeric order (demo_2 before demo_10)."""

    def key(name):
        suffix = name.split("_", 1)[1]
        return (0, int(suffix), "") if suffix.isdigit() else (1, 0, suffix)

    return sorted((n for n in names if n.startswith("demo_")), key=key)


def read_robomimic_hdf5(path: str, obs_keys=None) -> dict:
    """Read a robomimic-format file: dict(env_args, demos=[{name, obs: {key: array}, actions, rewards, dones}]),
    demos in numeric order; with `obs_keys` only those are read and a demo lacking one fails in one line."""
    import json

    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                fail(f"{path} is not a robomimic-format dataset (no 'data' group); pass a robomimic low_dim file")
            group = f["data"]
            raw = group.attrs.get("env_args")
            env_args = json.loads(raw) if raw is not None else None
            demos = []
            for name in _demo_order(group.keys()):
                demo = group[name]
                obs_group = demo["obs"] if "obs" in demo else {}
                keys = list(obs_keys) if obs_keys is not None else list(obs_group.keys())
                missing = [k for k in keys if k not in obs_group]
                if missing or "actions" not in demo:
                    have = sorted(obs_group.keys()) if obs_keys is not None else []
                    lacks = f"obs keys {missing}" if missing else "actions"
                    fail(
                        f"{path}:data/{name} lacks {lacks} (has {have}); "
                        f"it needs {keys}: use a robomimic low_dim file (not demo.hdf5, which holds only sim states), "
                        "e.g. --dataset lift-mh, or make one with scripts/make_robomimic_demos.py --task lift"
                    )
                actions = demo["actions"][()]
                n = len(actions)
                demos.append(
                    {
                        "name": name,  # low-dim keys as (n, d); camera images (<camera>_image) as stored
                        "obs": {
                            k: np.asarray(obs_group[k][()]) if k.endswith("_image") else obs_group[k][()].reshape(n, -1)
                            for k in keys
                        },
                        "actions": actions,
                        "rewards": demo["rewards"][()] if "rewards" in demo else np.zeros(n),
                        "dones": demo["dones"][()] if "dones" in demo else (np.arange(n) == n - 1).astype(int),
                    }
                )
    except OSError as e:
        fail(
            f"cannot read dataset {path} ({e.__class__.__name__}: {str(e).splitlines()[0]}); "
            "delete it and regenerate it"
        )
    if not demos:
        fail(f"{path} has no data/demo_* groups; pass a robomimic low_dim file")
    return {"env_args": env_args, "demos": demos}


def file_cameras(path: str) -> dict:
    """{camera: (shape, dtype)} of the <camera>_image observations of a robomimic file's first demo ({}: none)."""
    import h5py

    with h5py.File(path, "r") as f:
        names = _demo_order(f["data"].keys())
        obs = f["data"][names[0]]["obs"] if names and "obs" in f["data"][names[0]] else {}
        return {k[: -len("_image")]: (obs[k].shape[1:], obs[k].dtype) for k in obs if k.endswith("_image")}


def check_image_file(path: str, env_id: str | None, task: str) -> bool:
    """Whether the file is read as image data: an image task needs its cameras' uint8 96 x 96 RGB images, a state
    task takes no image file (each mismatch one line naming the fix); env_id None: whatever the file holds."""
    have = file_cameras(path)
    image = is_image_task(env_id) if env_id is not None else bool(have)
    if not image:
        if have:
            fail(
                f"{path} holds camera images ({', '.join(have)}): an image dataset; pass --env-id {task}-img, or a "
                f"low_dim dataset (e.g. --dataset {task}-scripted) for the state task {task}"
            )
        return False
    spec = IMAGE_TASKS[f"{task}-img"]
    if not have:
        fail(
            f"{path} holds no camera images (a low_dim dataset); {task}-img needs {', '.join(spec.cameras)} images: "
            f"pass an image dataset, or {robomimic_image_demo_fix(task)}"
        )
    missing = [c for c in spec.cameras if c not in have]
    if missing:
        fail(
            f"{path} has images of {', '.join(have)} but not {', '.join(missing)}, which {task}-img sees (official "
            f"image_keys); render them with robomimic's dataset_states_to_obs.py --camera_names "
            f"{' '.join(spec.cameras)} --camera_height 96 --camera_width 96, or {robomimic_image_demo_fix(task)}"
        )
    for camera in spec.cameras:
        shape, dtype = have[camera]
        if tuple(shape) != (IMAGE_SIZE, IMAGE_SIZE, 3) or dtype != np.uint8:
            fail(
                f"{path}: {camera}_image frames are {dtype} {tuple(shape)}, the image tasks need uint8 "
                f"({IMAGE_SIZE}, {IMAGE_SIZE}, 3) (official 96x96 RGB): render with --camera_height 96 "
                f"--camera_width 96, or {robomimic_image_demo_fix(task)}"
            )
    return True


def load_robomimic_dataset(path: str, env_id: str | None = None, filter_key: str | None = None) -> dict:
    """load_dataset for robomimic files (official process_robomimic_dataset): obs_keys stacked, every demo
    kept (no terminals, a timeout at each end); the file's env_args must name the task and are registered.
    `filter_key`: comma-separated names of the file's mask/<key> demo lists (robomimic's filter keys, e.g. the
    MH operator groups `better,okay`); only the demos they list are kept.

    Image files (robomimic's image.hdf5 layout: obs/<camera>_image, uint8 (T, 96, 96, 3)) for an image task: the
    observations are its low_dim_keys stacked, and each episode also has "rgb", uint8 (T, 3 * cameras, 96, 96), the
    cameras in the task's order (official image_keys); the normalization covers observations and actions only (the
    official code gives the images to the network in [0, 255])."""
    import json

    import h5py

    with h5py.File(path, "r") as f:
        raw = f["data"].attrs.get("env_args")
        masks = {key: {n.decode() for n in f["mask"][key][()]} for key in f["mask"]} if "mask" in f else {}
    keep = None
    if filter_key is not None:
        keys = filter_key.split(",")
        unknown = [key for key in keys if key not in masks]
        if unknown:
            fail(f"{path} has no filter key {unknown} (mask/<key>); use one of {sorted(masks) or 'none: drop it'}")
        keep = set().union(*(masks[key] for key in keys))
    env_args = json.loads(raw) if raw is not None else None
    stored = str(env_args.get("env_name", "")) if env_args else ""
    stored_task = _ROBOMIMIC_ALIASES.get(stored.lower())
    if env_id is not None and not is_robomimic(env_id):
        fail(
            f"{path} holds robomimic demonstrations{f' of {stored}' if stored else ''}; pass --env-id "
            f"{stored_task or 'lift|can|square|transport'} or a dataset of {env_id}"
        )
    task = robomimic_task(env_id) if env_id is not None else stored_task
    if task is None:
        fail(f"{path} has no env_args naming a robomimic task; pass --env-id lift|can|square|transport")
    if stored and stored_task != task:
        fail(
            f"dataset {path} holds {stored} demonstrations ({stored_task or 'not a robomimic task'}), not {task}; "
            f"pass a {task} dataset, e.g. --dataset {task}-mh or --dataset {task}-scripted"
        )
    spec = ROBOMIMIC_TASKS[task]
    image = check_image_file(path, env_id, task)
    key = f"{task}-img" if image else task
    obs_keys, obs_dim, cameras = list(spec["obs_keys"]), spec["obs_dim"], ()
    if image:
        obs_keys, obs_dim, cameras = (
            list(IMAGE_TASKS[key].low_dim_keys),
            IMAGE_TASKS[key].state_dim,
            IMAGE_TASKS[key].cameras,
        )
    demos = read_robomimic_hdf5(path, obs_keys + [f"{c}_image" for c in cameras])["demos"]
    demos = [demo for demo in demos if keep is None or demo["name"] in keep]
    episodes = []
    for demo in demos:
        obs = np.concatenate([demo["obs"][k] for k in obs_keys], axis=1)
        if obs.shape[1] != obs_dim or demo["actions"].shape[1] != spec["action_dim"]:
            fail(
                f"{path}:data/{demo['name']} has obs/action dims {obs.shape[1]}/{demo['actions'].shape[1]}, "
                f"{key} needs "
                f"{obs_dim}/{spec['action_dim']}; pass a dataset of {key}"
            )
        n = len(obs)
        episodes.append(
            {
                "observations": obs.astype(np.float32),
                "actions": demo["actions"].astype(np.float32),
                "rewards": np.asarray(demo["rewards"], np.float32),
                "terminals": np.zeros(n, bool),
            }
        )
        if image:  # (T, H, W, 3) per camera -> (T, 3 * cameras, H, W), cameras in the task's order
            rgb = np.concatenate([demo["obs"].pop(f"{c}_image").transpose(0, 3, 1, 2) for c in cameras], axis=1)
            episodes[-1]["rgb"] = np.ascontiguousarray(rgb)
    if env_args:
        set_robomimic_env_args(key, env_args)
    data = {k: np.concatenate([ep[k] for ep in episodes]) for k in ("observations", "actions", "rewards", "terminals")}
    data["timeouts"] = np.concatenate([np.arange(len(ep["actions"])) == len(ep["actions"]) - 1 for ep in episodes])
    data["episodes"] = episodes
    data["env_args"] = env_args or default_robomimic_env_args(key)
    data["attrs"] = {"env_id": key}
    data["normalization"] = compute_normalization(data["observations"], data["actions"])
    return data
