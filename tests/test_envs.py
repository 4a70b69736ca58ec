"""The shared env/data module: id mapping, chunk semantics, normalization, datasets, checkpoints."""

import functools
import http.server
import os
import re
import threading
import types

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from cleandppo import envs
from conftest import assert_one_line_error


# ---- env ids ------------------------------------------------------------------------------------
def test_paper_ids_map_to_gymnasium_v4():
    assert envs.resolve_env_id("Hopper-v2") == "Hopper-v4"
    assert envs.resolve_env_id("Walker2D-v2") == "Walker2d-v4"
    assert envs.resolve_env_id("walker2d-v2") == "Walker2d-v4"
    assert envs.resolve_env_id("HalfCheetah-v2") == "HalfCheetah-v4"
    assert envs.resolve_env_id("Hopper-v5") == "Hopper-v5"
    assert envs.same_task("Hopper-v2", "Hopper-v4") and not envs.same_task("Hopper-v2", "Hopper-v5")
    assert envs.env_dims("Walker2D-v2") == (17, 6)


def test_unknown_env_id_is_one_line_listing_known_ids():
    with pytest.raises(SystemExit) as e:
        envs.resolve_env_id("Hoper-v2")
    msg = str(e.value)
    assert msg.startswith("error:") and "\n" not in msg and "Hopper-v2" in msg and "Walker2D-v2" in msg


# ---- action chunks ------------------------------------------------------------------------------
class CountingEnv(gym.Env):
    """obs = [step]; reward = step index (0, 1, 2, ...); terminates after `horizon` steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def __init__(self, horizon=6):
        self.horizon, self.t, self.actions = horizon, 0, []

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.actions.append(float(action[0]))
        reward, self.t = float(self.t), self.t + 1
        return np.array([self.t], np.float32), reward, self.t >= self.horizon, False, {}


def test_chunk_sums_rewards_and_ends_inside_a_chunk():
    norm = {
        "obs_min": np.array([-1.0]),
        "obs_max": np.array([1.0]),
        "action_min": np.array([-2.0]),
        "action_max": np.array([2.0]),
    }
    env = envs.ChunkedEnv(CountingEnv(horizon=6), act_steps=4, cond_steps=2, normalization=norm)
    obs, _ = env.reset()
    assert obs.shape == (2, 1) and obs[0, 0] == obs[1, 0]  # history padded with the first observation
    obs, reward, term, trunc, info = env.step(np.full((4, 1), 0.5))
    assert reward == 0 + 1 + 2 + 3 and not term and info["env_steps"] == 4
    assert env.env.actions == [1.0] * 4  # 0.5 in [-1, 1] un-normalizes to 1.0 in [-2, 2]
    obs, reward, term, trunc, info = env.step(np.zeros((4, 1)))
    assert term and reward == 4 + 5 and info["env_steps"] == 2  # ends after 2 of the 4 actions
    assert info["episode_return"] == 15 and info["episode_length"] == 6
    assert len(env.env.actions) == 6  # the rest of the chunk was dropped


def test_vector_env_same_step_reset_reports_final_obs_and_episode():
    vec = envs.make_vec_env("Hopper-v2", 2, seed=3, act_steps=4)
    obs, _ = vec.reset(seed=3)
    assert obs.shape == (2, 1, 11)
    for _ in range(200):  # large random actions make the hopper fall quickly
        next_obs, reward, term, trunc, infos = vec.step(np.random.uniform(-1, 1, (2, 4, 3)))
        returns, lengths = envs.finished_episodes(infos)
        if returns:
            done = np.nonzero(term | trunc)[0]
            final = envs.final_observations(next_obs, infos)
            assert len(returns) == len(done)
            assert all(not np.allclose(final[i], next_obs[i]) for i in done)  # next_obs is already the reset one
            assert all(1 <= n <= 1000 for n in lengths)
            break
    else:
        pytest.fail("no episode ended in 200 chunks")
    vec.close()


def test_vector_env_seeding_is_reproducible():
    firsts = [envs.make_vec_env("Hopper-v2", 2, seed=7).reset(seed=7)[0] for _ in range(2)]
    np.testing.assert_array_equal(firsts[0], firsts[1])
    assert not np.allclose(firsts[0][0], firsts[0][1])  # env i gets seed + i


def test_bad_vector_env_flags():
    with pytest.raises(SystemExit, match="num-envs"):
        envs.make_vec_env("Hopper-v2", 0, seed=0)


# ---- normalization ------------------------------------------------------------------------------
def test_normalization_maps_min_max_to_unit_interval_and_round_trips():
    rng = np.random.default_rng(0)
    obs, act = rng.normal(3, 2, (500, 4)), rng.uniform(-0.4, 0.7, (500, 2))
    norm = envs.compute_normalization(obs, act)
    o, a = envs.normalize_obs(obs, norm), envs.normalize_action(act, norm)
    assert np.allclose(o.min(0), -1, atol=1e-5) and np.allclose(o.max(0), 1, atol=1e-5)
    assert np.allclose(a.min(0), -1, atol=1e-5) and np.allclose(a.max(0), 1, atol=1e-5)
    np.testing.assert_allclose(envs.unnormalize_action(a, norm), act, atol=1e-5)
    np.testing.assert_allclose(envs.unnormalize_obs(o, norm), obs, atol=1e-5)


# ---- datasets -----------------------------------------------------------------------------------
def write_two_episode_file(path):
    """Episode A: 5 steps ending in a terminal; episode B: 3 steps ending in a time-out; 2-step tail."""
    n = 10
    data = {
        "observations": np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        "actions": np.arange(n, dtype=np.float32).reshape(n, 1) / 10,
        "rewards": np.ones(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }
    data["terminals"][4] = True
    data["timeouts"][7] = True
    envs.write_d4rl_hdf5(path, data)
    return data


def test_reader_splits_episodes_and_pads_like_the_official_dataset(tmp_path):
    path = str(tmp_path / "d.hdf5")
    raw = write_two_episode_file(path)
    data = envs.read_d4rl_hdf5(path)
    episodes = envs.split_episodes(data)
    assert [len(ep["actions"]) for ep in episodes] == [5, 3]  # the unfinished tail is dropped
    norm = {
        "obs_min": np.array([0.0, 1.0]),
        "obs_max": np.array([18.0, 19.0]),
        "action_min": np.array([0.0]),
        "action_max": np.array([0.9]),
    }
    obs, actions, starts, firsts = envs.make_pretraining_samples(episodes, norm, cond_steps=2, horizon_steps=2)
    # valid starts: s + Tp <= episode length -> 4 in A, 2 in B; no sample starts at an episode's last step
    assert list(starts) == [0, 1, 2, 3, 5, 6]
    o, a = envs.gather_samples(obs, actions, starts, firsts, np.array([0, 1, 4]), cond_steps=2, horizon_steps=2)
    expect_obs = envs.normalize_obs(raw["observations"], norm)
    np.testing.assert_allclose(o[0], expect_obs[[0, 0]], atol=1e-6)  # history before the start repeats step 0
    np.testing.assert_allclose(o[1], expect_obs[[0, 1]], atol=1e-6)
    np.testing.assert_allclose(o[2], expect_obs[[5, 5]], atol=1e-6)  # episode B's first step, padded
    np.testing.assert_allclose(a[2], envs.normalize_action(raw["actions"][[5, 6]], norm), atol=1e-6)


def test_corrupt_or_incomplete_dataset_is_one_line(tmp_path):
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(SystemExit) as e:
        envs.read_d4rl_hdf5(str(bad))
    assert "regenerate" in str(e.value) and "\n" not in str(e.value)
    partial = str(tmp_path / "partial.hdf5")
    with h5py.File(partial, "w") as f:
        f["observations"] = np.zeros((3, 11))
    with pytest.raises(SystemExit, match="missing"):
        envs.read_d4rl_hdf5(partial)
    with pytest.raises(SystemExit, match="does not exist"):
        envs.resolve_dataset(str(tmp_path / "nope.hdf5"))


def test_dataset_of_another_env_is_refused(tmp_path):
    path = str(tmp_path / "w.hdf5")
    write_two_episode_file(path)
    with h5py.File(path, "a") as f:
        f.attrs["env_id"] = "Walker2D-v2"
    with pytest.raises(SystemExit, match="recorded on Walker2D-v2"):
        envs.load_dataset(path, "Hopper-v2")


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; yields (url template, served dir)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{{name}}.hdf5", served
    server.shutdown()
    server.server_close()


def test_d4rl_name_downloads_over_loopback_then_uses_the_cache(tmp_path, loopback_server, monkeypatch):
    url, served = loopback_server
    write_two_episode_file(str(served / "hopper_medium-v2.hdf5"))
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLEANDPPO_DATA", str(cache))
    monkeypatch.setenv("CLEANDPPO_D4RL_URL", url)
    path = envs.resolve_dataset("hopper-medium-v2")
    assert path == str(cache / "hopper-medium-v2.hdf5")
    assert (cache / "hopper-medium-v2.hdf5").read_bytes() == (served / "hopper_medium-v2.hdf5").read_bytes()
    (served / "hopper_medium-v2.hdf5").unlink()  # the second call must not need the server
    assert envs.resolve_dataset("hopper-medium-v2") == path


def test_offline_missing_dataset_names_the_generation_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEANDPPO_DATA", str(tmp_path))
    monkeypatch.setenv("CLEANDPPO_D4RL_URL", "http://127.0.0.1:9/{name}.hdf5")  # discard port: refused
    with pytest.raises(SystemExit) as e:
        envs.resolve_dataset("walker2d-medium-v2")
    msg = str(e.value)
    assert "scripts/make_dataset.sh Walker2D-v2" in msg and "\n" not in msg
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_minari_dataset_recorded_with_datacollector(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    pytest.importorskip("jax")  # DataCollector needs minari[create]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = minari.DataCollector(gym.make("Hopper-v4", max_episode_steps=40))
    lengths = []
    for ep in range(3):
        env.reset(seed=ep)
        n = 0
        while True:
            _, _, term, trunc, _ = env.step(env.action_space.sample() * 0.1)
            n += 1
            if term or trunc:
                break
        lengths.append(n)
    env.create_dataset(dataset_id="cleandppo/hopper/tiny-v0", algorithm_name="random")
    data = envs.load_dataset("cleandppo/hopper/tiny-v0", "Hopper-v2")
    assert data["observations"].shape == (sum(lengths), 11) and data["actions"].shape == (sum(lengths), 3)
    assert [len(ep["actions"]) for ep in data["episodes"]] == [n for n in lengths]


# ---- checkpoints --------------------------------------------------------------------------------
def test_checkpoint_checks_policy_env_and_backbone(tmp_path):
    path = str(tmp_path / "c.pt")
    envs.save_checkpoint(
        {"policy": "gaussian", "model": {}, "env_id": "Hopper-v2", "backbone": "mlp", "algo": "x"}, path
    )
    assert not os.path.exists(path + ".tmp")
    assert envs.load_checkpoint(path, "gaussian", "Hopper-v4")["policy"] == "gaussian"
    with pytest.raises(SystemExit, match="holds a gaussian policy"):
        envs.load_checkpoint(path, "diffusion", "Hopper-v2")
    with pytest.raises(SystemExit, match="trained on Hopper-v2"):
        envs.load_checkpoint(path, "gaussian", "Walker2D-v2")
    with pytest.raises(SystemExit, match="backbone"):
        envs.load_checkpoint(path, "gaussian", "Hopper-v2", "transformer")
    with pytest.raises(SystemExit, match="does not exist"):
        envs.load_checkpoint(str(tmp_path / "none.pt"), "gaussian", "Hopper-v2")
    torch.save([1, 2], str(tmp_path / "list.pt"))
    with pytest.raises(SystemExit, match="not a cleandppo checkpoint"):
        envs.load_checkpoint(str(tmp_path / "list.pt"), "gaussian", "Hopper-v2")


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(denoising_steps=20), "pass --denoising-steps 6"),
        (dict(backbone="unet"), "pass --backbone mlp"),
        (dict(horizon_steps=8), "predicts chunks of 4 from 1 observation(s)"),  # the chunk length must match
        (dict(cond_steps=2), "predicts chunks of 4 from 1 observation(s)"),
        (dict(act_steps=2), "an MLP policy executes its whole chunk: pass --act-steps 4"),
        (dict(cond_mlp_dims=(8,)), "has cond_mlp_dims (), not (8,)"),
    ],
)
def test_load_diffusion_checkpoint_names_the_flag_that_disagrees(tiny_diffusion_checkpoint, flags, message):
    # the tiny checkpoint: K = 6, MLP, chunks of 4 actions from 1 observation, no observation encoder
    fields = dict(env_id="Hopper-v2", denoising_steps=6, backbone="mlp", horizon_steps=4, act_steps=4, cond_steps=1)
    args = types.SimpleNamespace(**dict(fields, **flags))
    with pytest.raises(SystemExit, match=re.escape(message)):
        envs.load_diffusion_checkpoint(tiny_diffusion_checkpoint, args)


def test_load_diffusion_checkpoint_can_leave_the_chunk_length_to_the_checkpoint(tiny_diffusion_checkpoint):
    # dppo.py fine-tunes with the checkpoint's chunk length whatever --horizon-steps says (same_horizon=False)
    args = types.SimpleNamespace(env_id="Hopper-v2", denoising_steps=6, horizon_steps=8, act_steps=4, cond_steps=1)
    ckpt = envs.load_diffusion_checkpoint(tiny_diffusion_checkpoint, args, same_horizon=False)
    assert ckpt["model_kwargs"]["horizon_steps"] == 4


def test_load_diffusion_checkpoint_keeps_the_fine_tuned_steps_of_a_model_ft_it_continues(
    tiny_diffusion_checkpoint, tmp_path
):
    # a DPPO-fine-tuned checkpoint (model_ft, K' = 3): dppo.py goes on with model_ft, so --ft-denoising-steps must be 3;
    # a script that starts from the base 'model' (continues_ft=False) may use any K'
    ckpt = torch.load(tiny_diffusion_checkpoint, weights_only=False)
    tuned = str(tmp_path / "tuned.pt")
    envs.save_checkpoint(dict(ckpt, model_ft=ckpt["model"], ft_denoising_steps=3), tuned)
    fields = dict(env_id="Hopper-v2", denoising_steps=6, horizon_steps=4, act_steps=4, cond_steps=1)
    args = types.SimpleNamespace(**fields, ft_denoising_steps=5)
    with pytest.raises(SystemExit) as e:
        envs.load_diffusion_checkpoint(tuned, args, continues_ft=True)
    assert_one_line_error(str(e.value), "fine-tuned 3 denoising steps", "pass --ft-denoising-steps 3")
    assert envs.load_diffusion_checkpoint(tuned, args)["ft_denoising_steps"] == 3  # starts from 'model': no check
    args.ft_denoising_steps = 3
    assert envs.load_diffusion_checkpoint(tuned, args, continues_ft=True)["model_ft"] is not None
