"""Image tasks (lift-img, can-img, square-img, transport-img): the task table against the official configs, the
headless renderer (same state, same image; upright; only the images a chunk's history keeps are rendered), the image
reader on files written here, the demo recorder's layout, and the one-line errors.

Skipped as a whole without robosuite; the tests that render skip, in one line naming the Debian packages, where no
OpenGL backend (Mesa's EGL or OSMesa) renders. CI installs them (.ci/run), so they run there.
"""

import json
import os
import sys
import types

import h5py
import numpy as np
import pytest

pytest.importorskip("robosuite")

from cleandppo import envs, robomimic_tasks  # noqa: E402
from conftest import assert_one_line_error, tiny_demos  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import make_robomimic_demos  # noqa: E402
from make_robomimic_demos import write_robomimic_hdf5  # noqa: E402

PROPRIO = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
# official cfg/robomimic/finetune/<task>/ft_ppo_diffusion_mlp_img.yaml: image_keys, low_dim_keys, shape_meta
OFFICIAL = {
    "lift-img": (["robot0_eye_in_hand"], PROPRIO, 9, [3, 96, 96], 7),
    "can-img": (["robot0_eye_in_hand"], PROPRIO, 9, [3, 96, 96], 7),
    "square-img": (["agentview"], PROPRIO, 9, [3, 96, 96], 7),
    "transport-img": (
        ["shouldercamera0", "shouldercamera1"],
        PROPRIO + [k.replace("robot0", "robot1") for k in PROPRIO],
        18,
        [6, 96, 96],
        14,
    ),
}


@pytest.fixture(scope="module")
def gl():
    """The OpenGL backend, or a skip naming the packages to install."""
    try:
        return robomimic_tasks.gl_backend()
    except SystemExit as e:
        pytest.skip(f"no OpenGL backend renders here; {robomimic_tasks.GL_INSTALL} ({e})")


@pytest.fixture(scope="module")
def lift_img(gl):
    """One lift-img env for the rendering tests (a robosuite env takes seconds to build)."""
    env = envs.make_env("lift-img", act_steps=4, cond_steps=2)
    yield env
    env.close()


# ---- the task table ------------------------------------------------------------------------------
def test_image_task_table_is_the_official_one():
    for task, (cameras, keys, state_dim, shape, action_dim) in OFFICIAL.items():
        spec = robomimic_tasks.IMAGE_TASKS[task]
        assert list(spec.cameras) == cameras and list(spec.low_dim_keys) == keys
        assert spec.state_dim == state_dim and list(spec.image_shape) == shape
        assert envs.env_dims(task) == (state_dim, action_dim)
        kwargs = robomimic_tasks.default_robomimic_env_args(task)["env_kwargs"]  # official env_meta/<task>-img.json
        assert kwargs["camera_names"] == cameras and kwargs["camera_heights"] == kwargs["camera_widths"] == 96
    assert envs.is_image_task("PickPlaceCan-img") and envs.resolve_env_id("PickPlaceCan-IMG") == "can-img"
    assert envs.env_slug("TwoArmTransport-img") == "transport-img" and envs.max_episode_steps("square-img") == 400
    assert not envs.is_image_task("lift") and not envs.is_image_task("Hopper-v2-img")
    assert envs.is_robomimic("lift-img") and not envs.same_task("lift-img", "lift")  # no state checkpoint for it


# ---- rendering -----------------------------------------------------------------------------------
def test_same_seed_same_images_upright_and_dict_observations(lift_img):
    obs, _ = lift_img.reset(seed=3)
    assert obs["state"].shape == (2, 9) and obs["state"].dtype == np.float32
    assert obs["rgb"].shape == (2, 3, 96, 96) and obs["rgb"].dtype == np.uint8
    lift_img.step(np.random.default_rng(0).uniform(-1, 1, (4, 7)))
    again, _ = lift_img.reset(seed=3)
    np.testing.assert_array_equal(again["rgb"], obs["rgb"])
    np.testing.assert_array_equal(again["state"], obs["state"])
    # the state: the low-dim keys concatenated (identity normalization: 2 (x + 1) / (2 + 1e-6) - 1 = x to 1e-6)
    raw = np.concatenate([lift_img.unwrapped.obs_dict[k] for k in PROPRIO])
    np.testing.assert_allclose(obs["state"][-1], raw, atol=1e-5)
    # upright as robomimic stores it: the wrist camera sees the dark gripper fingers at the bottom of the image,
    # the white table above them (OpenGL's rows run bottom-up)
    image = obs["rgb"][-1].astype(float).mean(0)
    assert image[-12:].mean() < image[:12].mean() - 40, (image[-12:].mean(), image[:12].mean())


def test_a_chunk_renders_the_images_its_history_keeps(lift_img):
    """A chunk of 4 with a history of 2 gives the images that 4 single steps give (rendering skipped for the first
    two sub-steps only), and a chunk the time limit cuts short after one sub-step has that sub-step's image."""
    chunk = np.random.default_rng(1).uniform(-1, 1, (4, 7))
    lift_img.reset(seed=5)
    chunked, *_ = lift_img.step(chunk)
    single = envs.ChunkedImageEnv(lift_img.env, 1, 2, lift_img.norm)  # the same simulator, one action at a time
    single.reset(seed=5)
    for action in chunk:
        one, *_ = single.step(action[None])
    np.testing.assert_array_equal(chunked["rgb"], one["rgb"])
    np.testing.assert_array_equal(chunked["state"], one["state"])
    lift_img.env.unwrapped.steps = envs.max_episode_steps("lift-img") - 1  # one sub-step left in the episode
    last, _, _, truncated, info = lift_img.step(chunk)
    assert truncated and info["env_steps"] == 1 and last["rgb"].shape == (2, 3, 96, 96)
    np.testing.assert_array_equal(last["rgb"][0], chunked["rgb"][-1])  # the history: the last chunk's last image


def test_an_env_renders_the_same_after_other_image_envs_of_its_process_close(lift_img):
    """A fine-tuning run keeps its training envs while each evaluation opens and closes envs of its own. Closing an
    env used to free its renderer in whichever OpenGL context was current, another env's, whose frames then came
    out wrong: every later iteration's rollout saw broken images. Both halves of the fix are needed here."""
    before, _ = lift_img.reset(seed=3)
    others = envs.make_vec_env("lift-img", 2, 100, 4, 2, lift_img.norm)
    others.reset(seed=100)
    others.step(np.zeros((2, 4, 7)))
    during, _ = lift_img.reset(seed=3)  # rendered while the others are open, its context the current one
    others.close()
    after, _ = lift_img.reset(seed=3)
    np.testing.assert_array_equal(during["rgb"], before["rgb"])
    np.testing.assert_array_equal(after["rgb"], before["rgb"])
    last_closed = envs.make_env("lift-img", act_steps=4, cond_steps=2)  # one made after the closes renders too
    np.testing.assert_array_equal(last_closed.reset(seed=3)[0]["rgb"], before["rgb"])
    last_closed.close()


def test_vector_env_batches_dict_observations_and_final_observations(gl):
    vec = envs.make_vec_env("transport-img", 2, 0, act_steps=8, cond_steps=1)
    obs, _ = vec.reset(seed=0)
    assert obs["state"].shape == (2, 1, 18) and obs["rgb"].shape == (2, 1, 6, 96, 96) and obs["rgb"].dtype == np.uint8
    for i, env in enumerate(vec.envs):  # shouldercamera0's RGB, then shouldercamera1's
        images = env.unwrapped.camera_images()
        np.testing.assert_array_equal(obs["rgb"][i, 0, :3], images["shouldercamera0"].transpose(2, 0, 1))
        np.testing.assert_array_equal(obs["rgb"][i, 0, 3:], images["shouldercamera1"].transpose(2, 0, 1))
        assert not np.array_equal(images["shouldercamera0"], images["shouldercamera1"])
    vec.envs[1].unwrapped.steps = envs.max_episode_steps("transport") - 8  # env 1 ends its episode in this chunk
    obs, _, _, truncated, infos = vec.step(np.zeros((2, 8, 14)))
    final = envs.final_observations(obs, infos)
    assert list(truncated) == [False, True]
    np.testing.assert_array_equal(final["rgb"][0], obs["rgb"][0])  # env 0 went on: its observation is its last
    assert not np.array_equal(final["rgb"][1], obs["rgb"][1])  # env 1 was reset: the final one is the episode's last
    np.testing.assert_array_equal(final["rgb"][1], infos["final_obs"][1]["rgb"])
    vec.close()


def test_an_image_evaluation_runs_in_rounds_each_episode_seeded_as_all_at_once(gl, monkeypatch):
    """At most IMAGE_EVAL_ENVS image envs at once (each holds its own OpenGL context); episode i's env is still seeded
    with seed + i: its first observation is that of a lone env reset with seed + i."""
    monkeypatch.setattr(envs, "IMAGE_EVAL_ENVS", 2)
    monkeypatch.setitem(robomimic_tasks.ROBOMIMIC_TASKS["lift"], "max_episode_steps", 8)  # episodes of two chunks
    monkeypatch.setattr(robomimic_tasks, "_robomimic_env_args", {})
    make, sizes, first = envs.make_vec_env, [], []

    def counted(env_id, n, *args):
        sizes.append(n)
        return make(env_id, n, *args)

    def act(obs):
        if len(first) < sum(sizes):  # a round's first query: its envs' reset observations
            first.extend(obs["state"][:, -1].copy())
        return np.zeros((len(obs["state"]), 4, 7))

    monkeypatch.setattr(envs, "make_vec_env", counted)
    returns, lengths = envs.run_episodes(act, "lift-img", 3, 100, 4, 1, None)
    assert sizes == [2, 1] and list(lengths) == [8, 8, 8] and list(returns) == [0.0, 0.0, 0.0]
    assert len(first) == 3 and not np.array_equal(first[0], first[1])
    for i, state in enumerate(first):
        alone = make("lift-img", 1, 100 + i, 4, 1, None)
        obs, _ = alone.reset(seed=100 + i)
        alone.close()
        np.testing.assert_array_equal(state, obs["state"][0, -1])


def test_image_envs_that_cannot_fit_in_memory_are_one_line(monkeypatch):
    def error(*call):
        return str(pytest.raises(SystemExit, *call).value)

    def no_env_built():
        raise AssertionError("make_vec_env went on to build the envs")

    monkeypatch.setattr(robomimic_tasks, "gl_backend", no_env_built)
    monkeypatch.setattr(robomimic_tasks, "available_mib", lambda: 1800.0)  # 5 envs of 360 MiB fit, 6 do not
    robomimic_tasks.check_image_env_memory("lift-img", 5)
    assert_one_line_error(error(robomimic_tasks.check_image_env_memory, "lift-img", 6), "--num-envs 5")
    message = error(envs.make_vec_env, "lift-img", 50, 0)  # before any env is built
    assert_one_line_error(message, "50 lift-img envs need at least 17.6 GiB", "1.8 GiB is available", "5 or fewer")
    # each env in a spawned worker process of its own holds 900 MiB or more (Lift measured 926): 2 fit in 1.8 GiB
    message = error(envs.make_vec_env, "lift-img", 5, 0, 4, 2, None, 5)
    assert_one_line_error(message, "5 lift-img envs need at least 4.4 GiB", "worker process", "--env-workers 1")
    assert "--num-envs 2 or fewer" in message
    message = error(envs.make_vec_env, "lift-img", 6, 0, 4, 2, None, 3)  # 3 workers: its envs would not fit either
    assert "--num-envs 2 or fewer" in message and "--env-workers" not in message
    robomimic_tasks.check_image_env_memory("lift-img", 2, workers=True)
    monkeypatch.setattr(robomimic_tasks, "available_mib", lambda: 800.0)  # not one worker, but 2 envs in this process
    message = error(robomimic_tasks.check_image_env_memory, "lift-img", 2, True)
    assert_one_line_error(message, "--env-workers 1")
    assert "--num-envs" not in message
    monkeypatch.setattr(robomimic_tasks, "available_mib", lambda: 100.0)
    assert_one_line_error(error(envs.make_vec_env, "can-img", 1, 0), "free some memory")
    monkeypatch.setattr(robomimic_tasks, "available_mib", lambda: None)  # no /proc/meminfo: no check
    robomimic_tasks.check_image_env_memory("lift-img", 10_000)


# ---- the image reader ----------------------------------------------------------------------------
def _image_demos(task: str, lengths=(4, 3), size=96, cameras=None, seed=0):
    """Random low-dim obs and actions plus camera images whose pixel values encode (camera, step, row, column,
    channel), so the reader's layout can be checked against a formula."""
    spec = robomimic_tasks.IMAGE_TASKS[task]
    rng = np.random.default_rng(seed)
    action_dim = envs.env_dims(task)[1]
    demos = []
    for n in lengths:
        obs = {k: rng.normal(size=(n, 2 if "gripper" in k else 4 if "quat" in k else 3)) for k in spec.low_dim_keys}
        for c, camera in enumerate(spec.cameras if cameras is None else cameras):
            t, h, w, ch = np.meshgrid(np.arange(n), np.arange(size), np.arange(size), np.arange(3), indexing="ij")
            obs[f"{camera}_image"] = ((100 * c + 7 * t + 3 * h + 5 * w + 11 * ch) % 256).astype(np.uint8)
        actions = rng.uniform(-1, 1, (n, action_dim))
        demos.append(dict(obs=obs, actions=actions, rewards=np.eye(1, n, n - 1)[0], dones=np.eye(1, n, n - 1)[0]))
    return demos


def test_reader_gives_cameras_in_official_order_channels_first(tmp_path):
    path = str(tmp_path / "transport-image.hdf5")
    demos = _image_demos("transport-img")
    write_robomimic_hdf5(path, demos, robomimic_tasks.default_robomimic_env_args("transport-img"))
    try:
        data = envs.load_dataset(path, "transport-img")
    finally:
        envs.set_robomimic_env_args("transport-img", None)
    assert data["attrs"]["env_id"] == "transport-img" and len(data["episodes"]) == 2
    rgb = data["episodes"][1]["rgb"]
    assert rgb.shape == (3, 6, 96, 96) and rgb.dtype == np.uint8
    t, ch, h, w = np.meshgrid(np.arange(3), np.arange(6), np.arange(96), np.arange(96), indexing="ij")
    camera, colour = ch // 3, ch % 3  # shouldercamera0's RGB, then shouldercamera1's
    np.testing.assert_array_equal(rgb, (100 * camera + 7 * t + 3 * h + 5 * w + 11 * colour) % 256)
    # the state: robot0's then robot1's eef_pos, eef_quat, gripper_qpos (no object); min/max over the file
    state = np.concatenate([demos[1]["obs"][k] for k in OFFICIAL["transport-img"][1]], 1)
    np.testing.assert_allclose(data["episodes"][1]["observations"], state, rtol=1e-6)
    all_states = np.concatenate([np.concatenate([d["obs"][k] for k in OFFICIAL["transport-img"][1]], 1) for d in demos])
    np.testing.assert_allclose(data["normalization"]["obs_min"], all_states.min(0), rtol=1e-6)
    np.testing.assert_allclose(
        data["normalization"]["action_max"], np.concatenate([d["actions"] for d in demos]).max(0)
    )
    assert set(data["normalization"]) == {"obs_min", "obs_max", "action_min", "action_max"}  # images: not normalized


def test_pretraining_samples_carry_the_images_of_their_observations(tmp_path):
    path = str(tmp_path / "lift-image.hdf5")
    write_robomimic_hdf5(
        path, _image_demos("lift-img", lengths=(5, 6)), robomimic_tasks.default_robomimic_env_args("lift-img")
    )
    try:
        data = envs.load_dataset(path, "lift-img")
    finally:
        envs.set_robomimic_env_args("lift-img", None)
    obs, actions, starts, firsts = envs.make_pretraining_samples(data["episodes"], data["normalization"], 2, 4)
    batch, chunk = envs.gather_samples(obs, actions, starts, firsts, np.arange(len(starts)), 2, 4)
    assert batch["rgb"].shape == (len(starts), 2, 3, 96, 96) and batch["rgb"].dtype == np.uint8
    # sample i starts at step s of its episode: images of steps s - 1 and s (the first repeated at the start)
    episode_steps = [(e, s) for e, n in enumerate((5, 6)) for s in range(n - 4 + 1)]
    for i, (e, s) in enumerate(episode_steps):
        for j, step in enumerate((max(s - 1, 0), s)):
            np.testing.assert_array_equal(batch["rgb"][i, j], data["episodes"][e]["rgb"][step])
        np.testing.assert_allclose(
            batch["state"][i, 1], envs.normalize_obs(data["episodes"][e]["observations"][s], data["normalization"])
        )


def test_official_image_train_npz_gives_per_episode_images(tmp_path):
    """The official <task>-img train.npz (states and actions normalized, `images` (N, C, 96, 96) in [0, 255])."""
    rng = np.random.default_rng(0)
    states, actions = rng.normal(size=(10, 9)), rng.uniform(-1, 1, (10, 7))
    lo, hi, alo, ahi = states.min(0), states.max(0), actions.min(0), actions.max(0)
    np.savez(tmp_path / "normalization.npz", obs_min=lo, obs_max=hi, action_min=alo, action_max=ahi)
    images = rng.integers(0, 256, (10, 3, 96, 96)).astype(np.uint8)
    normalized = 2 * (states - lo) / (hi - lo + 1e-6) - 1, 2 * (actions - alo) / (ahi - alo + 1e-6) - 1
    kw = dict(states=normalized[0], actions=normalized[1], traj_lengths=np.array([6, 4]))
    np.savez(tmp_path / "train.npz", images=images.astype(np.float32), **kw)  # [0, 255] floats: accepted
    data = envs.load_dataset(str(tmp_path / "train.npz"), "lift-img")
    np.testing.assert_array_equal(data["episodes"][1]["rgb"], images[6:])
    assert data["episodes"][1]["rgb"].dtype == np.uint8
    np.testing.assert_allclose(data["episodes"][1]["observations"], states[6:], atol=1e-5)
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(str(tmp_path / "train.npz"), "lift")
    assert_one_line_error(str(e.value), "holds images", "--env-id <task>-img")
    np.savez(tmp_path / "train.npz", **kw)
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(str(tmp_path / "train.npz"), "lift-img")
    assert_one_line_error(str(e.value), "holds no images", "lift-img")


# ---- the demo recorder ---------------------------------------------------------------------------
def test_recorder_writes_robomimic_image_layout(gl, tmp_path, monkeypatch):
    built = []

    class Recorded(robomimic_tasks.RobomimicImageEnv):  # keeps the recorder's env to check frame 0 against
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            built.append(self)

        def close(self):  # closed below, after the check
            pass

    monkeypatch.setattr(make_robomimic_demos.robomimic_tasks, "RobomimicImageEnv", Recorded)
    out = str(tmp_path / "lift-img.hdf5")
    make_robomimic_demos.main(["--task", "lift", "--images", "--num-demos", "1", "--max-attempts", "3", "--out", out])
    with h5py.File(out, "r") as f:
        attempts = json.loads(f["data"].attrs["cleandppo_generator"])["attempts"]
    raw = robomimic_tasks.read_robomimic_hdf5(out)
    demo = raw["demos"][0]
    frames = demo["obs"]["robot0_eye_in_hand_image"]
    assert frames.dtype == np.uint8 and frames.shape == (len(demo["actions"]), 96, 96, 3)
    assert raw["env_args"]["env_kwargs"]["camera_names"] == ["robot0_eye_in_hand"]
    assert not np.array_equal(frames[0], frames[-1])  # the gripper moved
    env = built[0]
    env.render_images = True
    env.reset(seed=attempts - 1)  # the seed of the attempt that succeeded: frame 0 is its first observation's image
    np.testing.assert_array_equal(frames[0], env.observation()["rgb"].transpose(1, 2, 0))
    robomimic_tasks.RobomimicImageEnv.close(env)
    try:
        data = envs.load_dataset(out, "lift-img")
    finally:
        envs.set_robomimic_env_args("lift-img", None)
    np.testing.assert_array_equal(data["episodes"][0]["rgb"][0], frames[0].transpose(2, 0, 1))


# ---- bad input, one line each --------------------------------------------------------------------
def test_no_gl_backend_names_the_packages(monkeypatch):
    monkeypatch.setattr(robomimic_tasks, "_gl_backend", None)
    monkeypatch.setattr(robomimic_tasks, "probe_gl", lambda backend: f"lib{backend} not found")
    monkeypatch.setattr(robomimic_tasks, "_mujoco_gl_before_robosuite", None)
    monkeypatch.delenv("CLEANDPPO_GL", raising=False)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    with pytest.raises(SystemExit) as e:
        robomimic_tasks.gl_backend()
    assert_one_line_error(str(e.value), "libegl1 libegl-mesa0 libgl1-mesa-dri", "libosmesa6", "apt-get install")
    monkeypatch.setenv("MUJOCO_GL", "osmesa")  # as the user set it (before robosuite's import, if it was imported)
    if robomimic_tasks._robosuite is not None:
        monkeypatch.setattr(robomimic_tasks, "_mujoco_gl_before_robosuite", "osmesa")
    with pytest.raises(SystemExit) as e:
        robomimic_tasks.gl_backend()
    assert_one_line_error(str(e.value), "MUJOCO_GL=osmesa", "libosmesa6")


def test_a_camera_the_task_does_not_have_is_one_line():
    rs_env = types.SimpleNamespace(sim=types.SimpleNamespace(model=types.SimpleNamespace(camera_names=("agentview",))))
    robomimic_tasks.check_cameras(rs_env, ["agentview"], "square-img")
    with pytest.raises(SystemExit) as e:
        robomimic_tasks.check_cameras(rs_env, ["agentview", "shouldercamera0"], "square-img")
    assert_one_line_error(str(e.value), "no camera shouldercamera0", "agentview")


def test_state_data_for_an_image_task_and_the_reverse_are_one_line(tmp_path):
    low_dim = str(tmp_path / "low_dim.hdf5")
    write_robomimic_hdf5(low_dim, tiny_demos(), robomimic_tasks.default_robomimic_env_args("lift"))
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(low_dim, "lift-img")
    assert_one_line_error(str(e.value), "no camera images", "make_robomimic_demos.py --task lift --images")
    image = str(tmp_path / "image.hdf5")
    write_robomimic_hdf5(image, _image_demos("lift-img"), robomimic_tasks.default_robomimic_env_args("lift-img"))
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(image, "lift")
    assert_one_line_error(str(e.value), "--env-id lift-img", "robot0_eye_in_hand")
    other = str(tmp_path / "agentview.hdf5")  # robomimic's image.hdf5: agentview and wrist at 84 x 84
    write_robomimic_hdf5(other, _image_demos("lift-img", size=84), robomimic_tasks.default_robomimic_env_args("lift"))
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(other, "lift-img")
    assert_one_line_error(str(e.value), "(84, 84, 3)", "--camera_height 96")
    square = str(tmp_path / "square.hdf5")
    write_robomimic_hdf5(
        square, _image_demos("square-img", cameras=["frontview"]), robomimic_tasks.default_robomimic_env_args("square")
    )
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(square, "square-img")
    assert_one_line_error(str(e.value), "frontview", "not agentview", "--camera_names agentview")


def test_image_dataset_names_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANDPPO_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        envs.load_dataset("can-img", "can-img")
    assert_one_line_error(str(e.value), "make_robomimic_demos.py --task can --images", "--dataset can-img")
    with pytest.raises(SystemExit) as e:
        envs.resolve_dataset("can-mhsim-img")
    assert_one_line_error(str(e.value), "--task can --operators mh --images", "--dataset can-mhsim-img")
    with pytest.raises(SystemExit) as e:
        envs.resolve_dataset("can-mh-img")
    assert_one_line_error(str(e.value), "84x84", "dataset_states_to_obs.py --camera_names robot0_eye_in_hand")
