"""The Avoid task (cleandppo/avoid.py) against hand-computed cases, its data, and the three PPO scripts on it."""

import os
import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from cleandppo import arguments, avoid, dppo, envs, gaussian_ppo, gmm_ppo, runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modes_of(*xy):
    return [set(np.nonzero(row)[0]) for row in avoid.filter_modes(np.array(xy, dtype=float))]


def test_filter_modes_each_row():
    # row 1 (y = -0.1, band 0.01): left / right of the pillar at x = 0.5
    assert modes_of((0.45, -0.105), (0.56, -0.092)) == [{0}, {1}]
    # row 2 (y = 0.08): left of 0.425, between, right of 0.575
    assert modes_of((0.40, 0.08), (0.50, 0.085), (0.60, 0.075)) == [{2}, {3}, {4}]
    # row 3 counts at every y >= 0.26: < 0.35, 0.35-0.5, 0.5-0.65, >= 0.65
    assert modes_of((0.30, 0.30), (0.40, 0.26), (0.55, 0.45), (0.70, 0.27)) == [{5}, {6}, {7}, {8}]
    # outside the bands nothing counts; the official `elif x > 0.35` makes x == 0.5 a mode-8 point
    assert modes_of((0.45, -0.08), (0.40, 0.095), (0.5, 0.3)) == [set(), set(), {8}]


def test_env_modes_first_crossing_only():
    state = avoid.new_state(1, avoid.START_XY)
    state["current"] = np.array([[0.55, -0.125]])  # within 0.03 of row 1, right of the pillar
    avoid.update_env_modes(state)
    state["current"] = np.array([[0.45, -0.1]])  # row 1 again, now left: already decided, ignored
    avoid.update_env_modes(state)
    state["current"] = np.array([[0.30, 0.26]])  # row 3 reached left of 0.35
    avoid.update_env_modes(state)
    state["current"] = np.array([[0.55, 0.40]])  # later positions above row 3 do not count
    avoid.update_env_modes(state)
    assert set(np.nonzero(state["modes"][0])[0]) == {1, 5}


def test_collision_radius():
    x, y, r = avoid.OBSTACLES[0]  # row-1 pillar, radius 0.03, rod radius 0.01
    inside = np.array([[x + r + avoid.ROD_RADIUS - 1e-4, y]])
    outside = np.array([[x + r + avoid.ROD_RADIUS + 1e-4, y]])
    assert avoid.collides(inside)[0] and not avoid.collides(outside)[0]
    x, y, r = avoid.OBSTACLES[4]  # row-3 middle pillar, radius 0.025
    assert avoid.collides(np.array([[x, y + 0.034]]))[0] and not avoid.collides(np.array([[x, y + 0.036]]))[0]


def test_reward_goal_mode5_collision_and_table():
    state = avoid.new_state(1, avoid.START_XY)
    _, r = avoid.step_batch(state, np.zeros((1, 2)))
    assert r[0] == 0.0
    # beyond the goal line without mode 5: +1
    state = avoid.new_state(1, np.array([0.55, 0.45]))
    _, r = avoid.step_batch(state, np.zeros((1, 2)))
    assert r[0] == 1.0
    # mode 5 passed and beyond the goal line: 2 (the official success threshold)
    state["modes"][0, 5] = True
    _, r = avoid.step_batch(state, np.zeros((1, 2)))
    assert r[0] == 2.0
    # outside the table: -0.1 while outside only
    state = avoid.new_state(1, np.array([0.85, 0.45]))
    _, r = avoid.step_batch(state, np.zeros((1, 2)))
    assert r[0] == pytest.approx(-0.1)
    state["current"], state["velocity"], state["desired"] = (
        np.array([[0.6, 0.45]]),
        np.zeros((1, 2)),
        np.array([[0.6, 0.45]]),
    )
    _, r = avoid.step_batch(state, np.zeros((1, 2)))
    assert r[0] == 1.0
    # a collision is penalised for the rest of the episode, also once the arm is clear again
    state = avoid.new_state(1, avoid.OBSTACLES[0, :2])
    _, r = avoid.step_batch(state, np.zeros((1, 2)))
    state["current"] = state["desired"] = np.array([[0.55, 0.45]])
    state["modes"][0, 5] = True
    _, r2 = avoid.step_batch(state, np.zeros((1, 2)))
    assert r[0] == pytest.approx(-0.1) and r2[0] == pytest.approx(-0.1)


def test_tracking_lag_and_stale_observation():
    g, m = avoid.TRACK_GAIN, avoid.TRACK_MOMENTUM
    state = avoid.new_state(1, np.array([0.5, -0.28]))
    a = np.array([[0.01, 0.004]])
    obs1, _ = avoid.step_batch(state, a)
    # the returned observation is the state before the move (D3IL reads it before the physics runs)
    np.testing.assert_allclose(obs1, [[0.5, -0.28, 0.5, -0.28]], atol=1e-7)
    # v1 = g (d1 - c0); c1 = c0 + v1, with d1 = d0 + a
    v1 = g * a[0]
    np.testing.assert_allclose(state["current"][0], [0.5 + v1[0], -0.28 + v1[1]], atol=1e-12)
    obs2, _ = avoid.step_batch(state, a)
    np.testing.assert_allclose(obs2[0, 2:], [0.5 + v1[0], -0.28 + v1[1]], atol=1e-6)
    v2 = m * v1 + g * (2 * a[0] - v1)
    np.testing.assert_allclose(state["current"][0], [0.5 + v1[0] + v2[0], -0.28 + v1[1] + v2[1]], atol=1e-12)


def test_gym_env_seeding_and_episode_length():
    env = gym.make(avoid.GYM_ID, max_episode_steps=envs.max_episode_steps("avoid-m2"), init_noise=0.05)
    starts = [env.reset(seed=s)[0][2:] for s in (3, 3, 4)]
    np.testing.assert_array_equal(starts[0], starts[1])
    assert not np.allclose(starts[0], starts[2])
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.01]))
        assert not terminated
        steps += 1
    assert steps == 100 and set(info) >= {"modes", "collided", "success"}
    frame = env.render() if env.render_mode else env.unwrapped.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    x, y, _ = avoid.OBSTACLES[0]  # the first pillar is drawn red at its pixel
    row = int((avoid.VIEW_Y[1] - y) * 400)
    col = int((x - avoid.VIEW_X[0]) * 400)
    assert tuple(frame[row, col]) == (200, 40, 40)


def test_frame_draws_nothing_outside_the_window():
    """Past the goal line the arm leaves the drawn window (y > VIEW_Y[1]: a negative pixel row). What lies outside is
    not drawn and what lies partly inside is cut at the edge; a negative slice end would paint a full-height bar."""
    px, top = 400, avoid.VIEW_Y[1]
    inside = np.array([0.5, 0.0])  # the one trail point in the window: a 3 x 3 grey square
    far = np.array([0.5, top + 0.1])  # 40 px above the top edge: its trail square and end marker fall outside
    desired = np.array([0.3, top + 2.5 / px])  # pixel row -2: rows 0-3 of its 11 px vertical stroke show, 4 pixels
    frame = avoid.draw_frame(np.array([inside, far]), desired, px_per_m=px)
    assert frame.shape == (int((top - avoid.VIEW_Y[0]) * px), int((avoid.VIEW_X[1] - avoid.VIEW_X[0]) * px), 3)

    def pixels(rgb):
        return (frame == rgb).all(-1)

    grey = pixels((60, 60, 60))
    row, col = int((top - inside[1]) * px), int((inside[0] - avoid.VIEW_X[0]) * px)
    assert grey.sum() == 9 and grey[row - 1 : row + 2, col - 1 : col + 2].all()
    assert pixels((30, 90, 200)).sum() == 0  # the end marker, 40 px outside
    black = pixels((0, 0, 0))
    col = int((desired[0] - avoid.VIEW_X[0]) * px)
    assert black.sum() == 4 and black[:4, col].all()


def test_env_state_round_trip():
    env = avoid.AvoidEnv(action_noise=0.002)
    env.reset(seed=0)
    for _ in range(7):
        env.step(np.array([0.003, 0.01]))
    saved = env.get_state()
    a = [env.step(np.array([0.0, 0.01]))[0] for _ in range(5)]
    env.set_state(saved)
    b = [env.step(np.array([0.0, 0.01]))[0] for _ in range(5)]
    np.testing.assert_array_equal(np.array(a), np.array(b))


def test_demonstrations_hold_exactly_the_subset_modes():
    demos = avoid.make_demos(2, seed=5)
    assert len(demos) == 2 * len(avoid.ROUTES)
    for name, wanted in avoid.SUBSETS.items():
        chosen = avoid.subset(demos, name)
        assert chosen, name
        top = set()
        for ep in chosen:
            modes = avoid.episode_modes(ep["observations"][:, :2])
            assert modes[1] and modes[2] and not modes[0]
            top |= {k for k in (5, 6, 7, 8) if modes[k]}
            assert ep["rewards"].sum() > 0 and (ep["rewards"] >= 0).all()  # no collision, goal reached
        assert top == set(wanted), (name, top)
    with pytest.raises(ValueError):
        avoid.subset(demos, "m4")


def test_read_d3il_pickles(tmp_path):
    # the layout of D3IL's data/avoiding/data/*.pkl: {"robot": {"des_c_pos": (T, 3), "c_pos": (T, 3), ...}}
    des = np.stack([np.full(6, 0.525), np.linspace(-0.28, -0.23, 6), np.full(6, 0.12)], axis=1)
    cur = des - np.array([0.0, 0.002, 0.0])
    with open(tmp_path / "env_000_00.pkl", "wb") as f:
        pickle.dump({"robot": {"des_c_pos": des, "c_pos": cur}}, f)
    (ep,) = avoid.read_d3il_episodes(str(tmp_path))
    np.testing.assert_allclose(ep["observations"], np.concatenate([des[:-1, :2], cur[:-1, :2]], 1), atol=1e-7)
    np.testing.assert_allclose(ep["actions"], np.diff(des[:, :2], axis=0), atol=1e-7)
    assert ep["rewards"].shape == (5,) and (ep["rewards"] == 0).all()


def test_env_ids_and_datasets(tmp_path, monkeypatch):
    assert envs.resolve_env_id("avoid-m2") == avoid.GYM_ID and envs.env_slug("AVOID-M1") == "avoid-m1"
    assert envs.env_dims("avoid-m3") == (4, 2) and envs.max_episode_steps("avoid") == 100
    with pytest.raises(SystemExit, match="avoid-m1, avoid-m2, avoid-m3"):
        envs.resolve_env_id("avoid-m4")
    with pytest.raises(SystemExit, match="one bundled pre-trained policy per data subset"):
        envs.bundled_checkpoint("avoid", "diffusion")
    monkeypatch.setenv("CLEANDPPO_DATA", str(tmp_path))
    with pytest.raises(SystemExit, match="make it .* with: python scripts/make_avoid_data.py$"):
        envs.load_dataset("avoid-m2", "avoid-m2")
    with pytest.raises(SystemExit, match="--d3il-dir"):
        envs.load_dataset("avoid-d3il-m2", "avoid-m2")
    with pytest.raises(SystemExit, match="unknown Avoid dataset 'avoid-m9'"):
        envs.load_dataset("avoid-m9", "avoid-m2")
    # the file make_avoid_data.py writes is read back with its episodes and the subset's normalization
    episodes = avoid.subset(avoid.make_demos(1, seed=2), "m2")
    envs.write_d4rl_hdf5(str(tmp_path / "avoid-m2.hdf5"), avoid.to_d4rl(episodes), attrs={"env_id": "avoid"})
    data = envs.load_dataset("avoid-m2", "avoid-m2")
    assert len(data["episodes"]) == len(episodes) == 2
    all_obs = np.concatenate([ep["observations"] for ep in episodes])
    np.testing.assert_allclose(data["normalization"]["obs_max"], all_obs.max(0), rtol=1e-6)


# D.8: from iteration 5 the limits ramp linearly to [0.1, 0.2] in 5 iterations, 1/5 of them at iteration 5,
# all of them from iteration 9 on; hand-computed (low, high) of each iteration, None: no noise yet.
NOISE_BOUNDS = {4: None, 5: (0.02, 0.04), 7: (0.06, 0.12), 10: (0.1, 0.2), 30: (0.1, 0.2)}


@pytest.mark.parametrize("iteration", sorted(NOISE_BOUNDS))
@pytest.mark.parametrize("mode", ["literal", "symmetric"])
def test_action_noise_schedule(iteration, mode):
    np.random.seed(0)
    actions = np.full((5000, 4, 2), 0.5)
    noise = avoid.add_action_noise(actions, iteration, (0.1, 0.2), mode) - actions
    assert (actions == 0.5).all()  # the sampled chunk itself is left as it was
    bounds = NOISE_BOUNDS[iteration]
    if bounds is None:
        assert (noise == 0).all()
        return
    low, high = bounds
    size = np.abs(noise)
    tol = 1e-3 * (high - low)  # 40000 draws come this close to both limits
    assert low - 1e-12 <= size.min() < low + tol and high - tol < size.max() <= high + 1e-12
    positive = np.mean(noise > 0)
    if mode == "literal":  # U[low, high] as D.8 reads: never negative
        assert positive == 1.0
    else:  # a random sign per entry
        assert 0.48 < positive < 0.52


def test_action_noise_mode_choices(monkeypatch, capsys):
    with pytest.raises(SystemExit, match="unknown action noise mode 'both'; use one of literal, symmetric"):
        avoid.add_action_noise(np.zeros((1, 2)), 9, (0.1, 0.2), "both")
    monkeypatch.setenv("COLUMNS", "200")  # tyro's message on one line
    for script in (dppo, gaussian_ppo, gmm_ppo):
        with pytest.raises(SystemExit):
            arguments.parse_args(
                script.Args, script.task_defaults, ["--env-id", "avoid-m2", "--train-action-noise-mode", "both"]
            )
        err = capsys.readouterr().err
        assert "invalid choice 'both' for argument '--train-action-noise-mode'" in err
        assert "('literal', 'symmetric')" in err
        args = arguments.parse_args(script.Args, script.task_defaults, ["--env-id", "avoid-m2"])
        assert args.train_action_noise_mode == "literal"  # the paper's reading is the default


@pytest.mark.parametrize("script", ["dppo", "gaussian_ppo", "gmm_ppo"])
def test_scripts_pass_the_noise_mode(tmp_path, monkeypatch, script):
    """--train-action-noise and --train-action-noise-mode reach avoid.add_action_noise at every env step."""
    import importlib

    module = importlib.import_module(f"cleandppo.{script}")
    seen, add = [], avoid.add_action_noise
    monkeypatch.setattr(avoid, "add_action_noise", lambda *a, **kw: seen.append(a[1:] + (kw,)) or add(*a, **kw))
    extra = ["--ft-denoising-steps", "2", "--batch-size", "6"] if script == "dppo" else ["--batch-size", "3"]
    flags = ["--train-action-noise", "0.1", "0.2", "--train-action-noise-mode", "symmetric", "--eval-freq", "9"]
    argv = ["--env-id", "avoid-m2", *SHORT_RUN, *extra, *flags, "--run-dir", str(tmp_path / "run")]
    module.main(arguments.parse_args(module.Args, module.task_defaults, argv=argv))
    assert seen == [(0, (0.1, 0.2), "symmetric", {})] * 3  # iteration 0, three env steps


def cli(script, *args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "cleandppo", f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


SHORT_RUN = ["--num-envs", "2", "--n-steps", "3", "--total-timesteps", "24", "--eval-episodes", "2", "--no-cuda"]


@pytest.mark.parametrize("script,policy", [("dppo", "diffusion"), ("gaussian_ppo", "gaussian"), ("gmm_ppo", "gmm")])
def test_bundled_checkpoint_fine_tunes_on_avoid(tmp_path, script, policy):
    """One short fine-tuning iteration from the bundled M2 checkpoint, with the Avoid defaults otherwise; with
    --capture-video the last policy's evaluation episode is recorded (Avoid draws with numpy: no GL needed)."""
    import imageio

    extra = ["--ft-denoising-steps", "2", "--batch-size", "6"] if script == "dppo" else ["--batch-size", "3"]
    out = cli(script, "--env-id", "avoid-m2", *SHORT_RUN, *extra, "--capture-video", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "[avoid-m2] defaults for this task" in out.stdout and "iter 1/1" in out.stdout
    assert os.path.isfile(tmp_path / "run" / "summary.json")
    frames = imageio.mimread(tmp_path / "run" / "eval.mp4")
    assert len(frames) > 1 and frames[0].ndim == 3 and f"[video] {tmp_path / 'run' / 'eval.mp4'}" in out.stdout


@pytest.mark.parametrize("script", ["dppo", "gaussian_ppo", "gmm_ppo"])
def test_avoid_bad_input_is_one_line(tmp_path, script):
    """A checkpoint of another subset, an unknown subset, a Ta the checkpoint cannot execute: one line, no run dir."""
    import importlib

    module = importlib.import_module(f"cleandppo.{script}")
    policy = {"dppo": "diffusion", "gaussian_ppo": "gaussian", "gmm_ppo": "gmm"}[script]
    other = os.path.join(envs.PRETRAINED_DIR, f"avoid-m1-{policy}-mlp.pt")
    cases = [
        (["--env-id", "avoid-m2", "--checkpoint", other], "pass --env-id avoid-m1 or a checkpoint of avoid-m2"),
        (["--env-id", "avoid-m7"], "unknown Avoid subset in --env-id 'avoid-m7'"),
        (["--env-id", "avoid-m2", "--act-steps", "8"], "--act-steps"),
    ]
    for argv, message in cases:
        argv = [*argv, "--run-dir", str(tmp_path / "run")]
        with pytest.raises(SystemExit) as stop:
            module.main(arguments.parse_args(module.Args, module.task_defaults, argv=argv))
        assert str(stop.value).startswith("error: ") and message in str(stop.value) and "\n" not in str(stop.value)
        assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("act_steps,cond_steps", [(4, 1), (16, 2)])
def test_vector_env_equals_sync_vector_env_of_chunked_envs(act_steps, cond_steps):
    """make_vec_env's batched AvoidVectorEnv against gymnasium's SyncVectorEnv of ChunkedEnv(AvoidEnv), over two
    episodes (Ta = 16 ends each episode inside a chunk)."""
    norm = {
        "obs_min": np.array([0.2, -0.3, 0.2, -0.3], np.float32),
        "obs_max": np.array([0.8, 0.5, 0.8, 0.5], np.float32),
        "action_min": np.array([-0.0125, 0.0], np.float32),
        "action_max": np.array([0.0125, 0.0125], np.float32),
    }
    E = 3
    fast = envs.make_vec_env("avoid-m2", E, 0, act_steps, cond_steps, norm)
    assert isinstance(fast, avoid.AvoidVectorEnv)

    def one():
        return envs.ChunkedEnv(gym.make(avoid.GYM_ID, max_episode_steps=100), act_steps, cond_steps, norm)

    ref = gym.vector.SyncVectorEnv([one] * E, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    obs_a, _ = fast.reset(seed=0)
    obs_b, _ = ref.reset(seed=0)
    np.testing.assert_allclose(obs_a, obs_b, atol=1e-6)
    rng = np.random.default_rng(1)
    # env 0 succeeds along a demonstration through mode 5, then leaves the table: success is any sub-step's
    demo = None
    while demo is None:
        demo = avoid.demonstrate((1, 2, 5), rng)
    plan = envs.normalize_action(np.concatenate([demo["actions"], np.tile([[-0.0125, 0.0]], (120, 1))]), norm)
    ends, t = 0, 0  # t: sub-steps into the current episode
    for _ in range(2 * -(-100 // act_steps)):
        chunk = rng.uniform(-0.9, 1.0, (E, act_steps, 2))
        chunk[0] = plan[t : t + act_steps]
        out_a, out_b = fast.step(chunk), ref.step(chunk)
        for x, y in zip(out_a[:4], out_b[:4], strict=True):
            np.testing.assert_allclose(x, y, atol=1e-6)
        info_a, info_b = out_a[4], out_b[4]
        assert set(info_a) == set(info_b)
        for key in set(info_a) - {"final_info", "final_obs"}:
            np.testing.assert_array_equal(info_a[key], info_b[key])
        assert envs.finished_episodes(info_a)[1] == envs.finished_episodes(info_b)[1]
        np.testing.assert_allclose(envs.finished_episodes(info_a)[0], envs.finished_episodes(info_b)[0], atol=1e-9)
        assert envs.finished_successes(info_a) == envs.finished_successes(info_b)
        np.testing.assert_allclose(
            envs.final_observations(out_a[0], info_a), envs.final_observations(out_b[0], info_b), atol=1e-6
        )
        t = 0 if out_a[3].any() else t + act_steps
        ends += bool(out_a[3].any())
        if out_a[3].any():
            assert envs.finished_successes(info_a)[0] and not info_a["final_info"]["success"][0]
    assert ends == 2


def test_d3il_directory_as_dataset(tmp_path):
    """--dataset <dir of D3IL pickles> with --env-id avoid-m2 keeps only the M2 episodes (official filter)."""
    rng = np.random.default_rng(3)
    for i, route in enumerate([(1, 2, 5), (1, 2, 7), (1, 2, 6), (0, 3, 7)]):
        demo = None
        while demo is None:
            demo = avoid.demonstrate(route, rng)
        desired = np.concatenate([demo["observations"][:, :2], demo["observations"][-1:, :2] + demo["actions"][-1:]])
        current = np.concatenate([demo["observations"][:, 2:], demo["observations"][-1:, 2:]])
        z = np.full((len(desired), 1), 0.12)
        with open(tmp_path / f"env_{i:03d}_00.pkl", "wb") as f:
            pickle.dump({"robot": {"des_c_pos": np.hstack([desired, z]), "c_pos": np.hstack([current, z])}}, f)
    data = envs.load_dataset(str(tmp_path), "avoid-m2")
    assert len(data["episodes"]) == 2  # routes through modes 5 and 7
    everything = envs.load_dataset(str(tmp_path), "avoid")
    assert len(everything["episodes"]) == 4
    with pytest.raises(SystemExit, match="pass --env-id avoid-m1"):
        envs.load_dataset(str(tmp_path), "Hopper-v2")


def test_a_restored_avoid_vector_env_continues_bit_identically():
    """runs.vec_env_state / restore_vec_env on the batched Avoid env, mid-episode and across a time-out."""

    norm = envs.identity_normalization(4, 2)
    rng = np.random.default_rng(0)  # upward drift: pillars are hit (negative rewards) before the restore
    actions = np.stack([rng.uniform(-0.004, 0.004, (90, 3, 2)), rng.uniform(0.006, 0.012, (90, 3, 2))], axis=-1)
    original = envs.make_vec_env("avoid-m2", 3, 0, 2, 3, norm)  # 2 actions per chunk: the 3-step history carries over
    original.reset(seed=0)
    for chunk in actions[:35]:
        original.step(chunk)
    assert (original.episode_return < 0).any()
    restored = envs.make_vec_env("avoid-m2", 3, 0, 2, 3, norm)
    restored.reset(seed=0)
    runs.restore_vec_env(restored, runs.vec_env_state(original))
    for chunk in actions[35:]:
        a, b = original.step(chunk), restored.step(chunk)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        assert envs.finished_episodes(a[4]) == envs.finished_episodes(b[4])


def test_dppo_on_avoid_kill_and_resume_is_bit_identical(tmp_path, monkeypatch):
    """A DPPO run on Avoid killed inside its third iteration (mid-episode) and resumed logs the uninterrupted run's
    scalars bit for bit (tests/test_runs.py's check, on the built-in task)."""
    from test_runs import assert_kill_and_resume_is_exact

    from cleandppo import dppo

    flags = [
        "--env-id",
        "avoid-m2",
        "--checkpoint",
        os.path.join(envs.PRETRAINED_DIR, "avoid-m2-diffusion-mlp.pt"),
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--ft-denoising-steps",
        "2",
        "--batch-size",
        "8",
        "--update-epochs",
        "2",
        "--eval-episodes",
        "2",
        "--eval-freq",
        "2",
        "--total-timesteps",
        "128",
        "--no-cuda",
    ]
    assert_kill_and_resume_is_exact(dppo, flags, 2 * 4 + 2, tmp_path, monkeypatch)


def test_study_rollout_success_is_a_step_with_reward_2(monkeypatch):
    """experiments/avoid/avoid_study.rollout counts an episode a success as the env does (a step with reward 2: mode 5
    passed, beyond the goal line, in the rewarded x band, no collision). Two scripted episodes go left, then
    straight up past the goal line, crossing row 3 left of x = 0.35 (mode 5): one at x = 0.1, outside the band the
    whole way up (never rewarded), one at x = 0.3, inside it. Returns are checked against avoid.replay_reward."""
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "avoid")
    )
    import avoid_study

    left = np.array([-0.425, -0.225]) / 20  # per step, for 20 steps: desired x 0.525 -> 0.1 and -> 0.3
    steps = []

    def act(obs):  # actions in metres: the normalization below maps [-1, 1] onto itself
        chunk = np.zeros((2, 4, 2))
        for k in range(4):
            t = len(steps)
            steps.append(t)
            chunk[:, k] = np.stack([left, np.zeros(2)], 1) if t < 20 else [0.0, 0.02]
        return chunk

    ones = np.ones(4)
    norm = dict(obs_min=-ones, obs_max=ones, action_min=-ones[:2], action_max=ones[:2])
    fake = {"normalization": norm, "model_kwargs": {"horizon_steps": 4, "cond_steps": 1}}
    monkeypatch.setattr(avoid_study, "load_sampler", lambda path, mode: (act, fake))
    out = avoid_study.rollout("scripted", 2, 0)
    paths = out["paths"]
    assert paths[0, 30:, 0].max() < avoid.BAND_X[0] < paths[1, 30:, 0].min()  # outside / inside the band
    assert (paths[:, -1, 1] > avoid.GOAL_Y).all() and (paths[:, :, 1].min(1) < 0.26).all()
    rewards = np.stack([avoid.replay_reward(p[:-1]) for p in paths])
    np.testing.assert_allclose(out["returns"], rewards.sum(1), atol=1e-4)
    assert list(out["success"]) == [False, True] == list((rewards >= 2).any(1))


def _avoid_study():
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "avoid")
    )
    import avoid_study

    return avoid_study


def test_study_exploration_numbers_against_hand_counts():
    """Fig. 9's numbers on paths whose cells and distances can be counted by hand: a demonstration along x = 0.5
    from y = 0 to y = 0.1; a sample 2 cm beside it (inside a 3 cm tube) and one 10 cm away (outside), both running
    on to y = 0.3, past the demonstration's end, where they are cut. 1 cm cells: each sample crosses 11 cells in y
    (0 .. 0.1 and the one it is cut in: y 0.1-0.11), in one column each."""
    study = _avoid_study()
    y = np.linspace(0.0, 0.3, 61)  # 0.005 per step: the cut falls at y = 0.105, in the cell 0.10-0.11
    near = np.stack([np.full_like(y, 0.525), y], 1)
    far = np.stack([np.full_like(y, 0.605), y], 1)
    demo = np.stack([np.full(21, 0.505), np.linspace(0, 0.1, 21)], 1)
    one = study.exploration_numbers(near[None], [demo], radius=0.03, cell=0.01)
    assert one["coverage"] == pytest.approx(11 * 1e-4) and one["in_tube"] == 1.0 and one["tube_share"] == 1.0
    both = study.exploration_numbers(np.stack([near, far]), [demo], radius=0.03, cell=0.01)
    assert both["coverage"] == pytest.approx(22 * 1e-4)
    assert both["in_tube"] == 0.5 and both["tube_share"] == 0.5
    # a diagonal segment crossing a cell corner region: the cells it passes through, sampled finely
    diag = np.array([[[0.001, 0.001], [0.029, 0.019]]])
    assert study.visited_cells(diag, 0.01) == {(0, 0), (1, 0), (1, 1), (2, 1)}


def test_study_bootstrap_interval_brackets_the_mean():
    """The 95 % percentile bootstrap of a mean over seeds: around the sample mean, inside the values' range, narrower
    than that range for five spread values; a single seed (or equal values) gives the value itself."""
    study = _avoid_study()
    values = [10.0, 12.0, 14.0, 30.0, 11.0]
    lo, hi = study.bootstrap_interval(values)
    assert min(values) < lo < np.mean(values) < hi < max(values)
    assert study.bootstrap_interval([3.0]) == (3.0, 3.0) and study.bootstrap_interval([2.0, 2.0]) == (2.0, 2.0)
