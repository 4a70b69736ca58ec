"""Tests for cleandppo/drwr.py: episodes, reward-to-go and weights against hand-worked numbers, CLI smoke + resume."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cleandppo import drwr
from conftest import (
    cli_fails,
    cli_smoke_run,
    main_fails,
    read_checkpoint,
    read_summary,
    scalar_values,
    stub_checkpoint,
    tiny_args,
)

torch.set_num_threads(1)


def test_rwr_weights_hand_computed_with_clip():
    G = np.array([0.0, 1.0, 2.0])  # mean 1, population std sqrt(2/3) = 0.816497 -> +-1 / (0.816497 + 1e-3) = +-1.223247
    z = 1 / (math.sqrt(2 / 3) + 1e-3)
    assert z == pytest.approx(1.223247, rel=1e-6)
    np.testing.assert_allclose(drwr.rwr_weights(G, 1.0, 100.0), [math.exp(-z), 1.0, math.exp(z)], rtol=1e-12)
    np.testing.assert_allclose(drwr.rwr_weights(G, 1.0, 3.0), [math.exp(-z), 1.0, 3.0], rtol=1e-12)  # 3.398 -> 3
    # paper values beta 10, w_max 100: exp(12.23) = 2.05e5 is clipped, no overflow for huge returns
    np.testing.assert_allclose(drwr.rwr_weights(G, 10.0, 100.0), [math.exp(-10 * z), 1.0, 100.0], rtol=1e-12)
    np.testing.assert_allclose(
        drwr.rwr_weights(np.array([0.0, 1e6]), 10.0, 100.0), [math.exp(-10 * 5e5 / (5e5 + 1e-3)), 100.0], rtol=1e-6
    )
    # one sample (std 0): weight exp(0) = 1
    assert drwr.rwr_weights(np.array([5.0]), 10.0, 100.0).tolist() == [1.0]


def test_reward_to_go_hand_worked():
    # G2 = 2, G1 = 0 + 0.9 * 2 = 1.8, G0 = 1 + 0.9 * 1.8 = 2.62
    np.testing.assert_allclose(drwr.discounted_returns(np.array([1.0, 0.0, 2.0]), 0.9), [2.62, 1.8, 2.0], rtol=1e-12)
    np.testing.assert_allclose(drwr.discounted_returns(np.array([1.0, 1.0, 1.0]), 1.0), [3.0, 2.0, 1.0])


def test_complete_episodes_only_inside_the_iteration():
    firsts = np.zeros((7, 3))  # N = 6 queries, 3 envs
    firsts[[0, 2, 5], 0] = 1  # env 0: episodes at queries 0-1 and 2-4; the one from 5 runs past the end
    firsts[[3], 1] = 1  # env 1: started before the iteration, ends at query 2; the next one never ends
    firsts[[0, 1, 2, 6], 2] = 1  # env 2: two one-query episodes, then queries 2-5
    assert drwr.complete_episodes(firsts) == [(0, 0, 2), (0, 2, 5), (2, 0, 1), (2, 1, 2), (2, 2, 6)]
    assert drwr.complete_episodes(np.zeros((5, 2))) == []


def test_weighted_update_moves_policy_to_high_weight_actions():
    torch.manual_seed(0)
    sched = drwr.make_schedule(6)
    net = drwr.DiffusionMLP(
        obs_dim=2, action_dim=1, horizon_steps=1, cond_steps=1, time_dim=8, mlp_dims=(32, 32, 32), activation="relu"
    )
    n = 64
    obs = torch.zeros(n, 1, 2)  # one state, two equally frequent actions: +0.5 (high return) and -0.5 (low)
    chunks = torch.where(torch.arange(n) % 2 == 0, 0.5, -0.5).view(n, 1, 1)
    returns = np.where(np.arange(n) % 2 == 0, 10.0, 0.0)
    weights = torch.as_tensor(drwr.rwr_weights(returns, 10.0, 100.0), dtype=torch.float32)
    assert weights[0].item() == 100.0 and weights[1].item() < 1e-4
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss, steps = drwr.drwr_update(
        net, opt, sched, obs, chunks, weights, SimpleNamespace(batch_size=16, update_epochs=40, max_grad_norm=None)
    )
    assert steps == 40 * 4  # 4 minibatches of 16 per epoch
    actions = drwr.sample(net, sched, torch.zeros(200, 1, 2), 6, 1, 1, "eval")
    assert (actions > 0).float().mean().item() > 0.9  # unweighted BC would give about half
    _, steps = drwr.drwr_update(
        net,
        opt,
        sched,
        obs[:5],
        chunks[:5],
        weights[:5],
        SimpleNamespace(batch_size=16, update_epochs=3, max_grad_norm=None),
    )
    assert steps == 3  # fewer samples than a batch: one minibatch of all of them per epoch


def test_no_complete_episode_skips_the_update(tiny_diffusion_checkpoint, tmp_path, capsys):
    # 1 query of 4 steps per iteration: no episode can both start and end inside it (the official code crashes)
    drwr.main(
        drwr.Args(
            checkpoint=tiny_diffusion_checkpoint,
            denoising_steps=6,
            num_envs=2,
            n_steps=1,
            batch_size=2,
            total_timesteps=16,
            eval_episodes=1,
            eval_freq=5,
            run_dir=str(tmp_path / "r"),
        )
    )
    out = capsys.readouterr().out
    assert "update skipped" in out and "iter 2/2" in out
    assert read_summary(tmp_path / "r", keys=())["env_steps"] == 16
    assert scalar_values(tmp_path / "r", "charts/update_skipped") == [1.0, 1.0]


def test_bad_inputs_fail_in_one_line(tmp_path, tiny_diffusion_checkpoint):
    cli_fails(
        "drwr.py",
        "--checkpoint",
        tiny_diffusion_checkpoint,
        "--beta",
        "-1",
        "--run-dir",
        tmp_path / "b",
        prefix="error: --beta must be > 0",
        run_dir=tmp_path / "b",
    )
    gmm = stub_checkpoint(tmp_path / "gmm.pt", "gmm")
    cases = [
        (dict(checkpoint=gmm), "holds a gmm policy"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
        (dict(num_envs=2, n_steps=10, batch_size=100), "--batch-size 100 > num_envs x n_steps = 20"),
        (dict(act_steps=5), "--act-steps 5 > --horizon-steps 4"),
        (dict(max_reward_weight=0.0), "--max-reward-weight must be > 0"),
        (dict(checkpoint=tiny_diffusion_checkpoint, horizon_steps=8, act_steps=8), "--horizon-steps 4"),
    ]
    for kwargs, text in cases:
        main_fails(drwr, drwr.Args(run_dir=str(tmp_path / "r"), **{"denoising_steps": 6, **kwargs}), text)


def test_cli_smoke_checkpoint_and_resume(tiny_diffusion_checkpoint, tmp_path):
    run = tmp_path / "run"
    _, summary = cli_smoke_run(
        "drwr",
        tiny_diffusion_checkpoint,
        run,
        640,
        keys="actor_optimizer",
        tags="losses/actor_loss losses/weight_mean charts/num_train_episodes",
    )
    assert sum(scalar_values(run, "charts/num_train_episodes")) > 0  # the update really ran

    args = tiny_args(
        drwr, checkpoint=str(run / "checkpoint_last.pt"), total_timesteps=960, run_dir=str(tmp_path / "resumed")
    )
    drwr.main(args)
    read_summary(tmp_path / "resumed", env_steps=960, pretrained_eval_return=summary["pretrained_eval_return"])
    read_checkpoint(tmp_path / "resumed", iteration=3)
