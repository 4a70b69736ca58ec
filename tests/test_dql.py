"""Tests for cleandppo/dql.py: Bellman targets, double-Q minimum, the DQL actor loss, CLI smoke run and resume."""

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import dppo, dql
from conftest import run_script

torch.set_num_threads(1)
TINY = ["--denoising-steps", "6", "--num-envs", "2", "--n-steps", "8", "--batch-size", "8", "--buffer-size", "64",
        "--replay-ratio", "2", "--critic-dims", "16", "16", "16", "--eval-episodes", "1", "--eval-freq", "1",
        "--n-critic-warmup-itr", "1"]


class ConstEps(nn.Module):
    """eps_theta = c_t for every input: c0 at t = 0, c1 at t >= 1 (learnable scalars)."""

    def __init__(self, c0=0.0, c1=0.0):
        super().__init__()
        self.c0, self.c1 = nn.Parameter(torch.tensor(c0)), nn.Parameter(torch.tensor(c1))

    def forward(self, x, t, obs):
        c = torch.where(t == 0, self.c0, self.c1).view(-1, 1, 1)
        return c.expand_as(x)


class QuadraticQ(nn.Module):
    """Q1 = -|a - a*|^2, Q2 = Q1 - offset (a stand-in critic with a known maximiser)."""

    def __init__(self, a_star, offset=1.0):
        super().__init__()
        self.a_star, self.offset = a_star, offset

    def forward(self, obs, a):
        q = -((a - self.a_star) ** 2).flatten(1).sum(-1)
        return q, q - self.offset


def test_schedule_matches_reference_values():
    # dppo-facts 1.1: cosine schedule, K = 20, last beta capped at 0.999
    betas = dql.cosine_beta_schedule(20)
    assert betas[:4].tolist() == pytest.approx([0.008, 0.0201, 0.0323, 0.0447], abs=2e-4)
    assert betas[-1].item() == pytest.approx(0.999)
    # K = 1: f(1) = cos^2(pi/2) = 0 -> beta 1 clipped to 0.999, alpha_bar_0 = 0.001
    s1 = dql.make_schedule(1)
    assert s1["alpha_bar"].item() == pytest.approx(0.001, rel=1e-4)
    assert s1["coef_x0"].item() == pytest.approx(1.0) and s1["coef_xt"].item() == pytest.approx(0.0)


def test_bellman_target_with_done_masks():
    r = torch.tensor([1.0, 2.0, 3.0, -1.0])
    term = torch.tensor([0.0, 1.0, 0.0, 1.0])
    q1 = torch.tensor([10.0, 5.0, 4.0, 100.0])
    q2 = torch.tensor([8.0, 6.0, 7.0, -100.0])
    # y = r + 0.9 (1 - term) min(q1, q2): [1 + 7.2, 2 (terminal), 3 + 3.6, -1 (terminal)]
    y = dql.bellman_target(r, term, q1, q2, 0.9)
    assert y.tolist() == pytest.approx([8.2, 2.0, 6.6, -1.0])


def test_critic_loss_uses_double_q_minimum_of_the_target():
    class Fixed(nn.Module):
        def __init__(self, q1, q2):
            super().__init__()
            self.q1, self.q2 = torch.tensor(q1), torch.tensor(q2)

        def forward(self, obs, a):
            return self.q1, self.q2

    batch = dict(obs=torch.zeros(2, 1, 3), chunks=torch.zeros(2, 4, 3), next_obs=torch.zeros(2, 1, 3),
                 rewards=torch.tensor([1.0, 0.5]), terminated=torch.tensor([0.0, 0.0]))
    critic, target = Fixed([2.0, 1.0], [3.0, 0.0]), Fixed([4.0, -2.0], [2.0, 1.0])
    loss, q1, q2, y = dql.critic_loss(critic, target, batch, torch.zeros(2, 4, 3), 0.5, act_steps=4)
    # y = r + 0.5 min(target) = [1 + 1, 0.5 - 1] = [2, -0.5]
    assert y.tolist() == pytest.approx([2.0, -0.5])
    # MSE(q1, y) + MSE(q2, y) = (0 + 2.25)/2 + (1 + 0.25)/2
    assert loss.item() == pytest.approx(1.125 + 0.625)


def test_double_q_critic_is_residual_on_obs_and_executed_chunk():
    critic = dql.DoubleQCritic(obs_dim=11, cond_steps=2, action_dim=3, act_steps=4, dims=(256, 256, 256))
    assert critic.q1.inp.in_features == 11 * 2 + 3 * 4
    assert len(critic.q1.blocks) == 1 and isinstance(critic.q1.blocks[0][0], nn.Mish)  # residual, Mish
    q1, q2 = critic(torch.randn(5, 2, 11), torch.randn(5, 4, 3))
    assert q1.shape == q2.shape == (5,) and not torch.allclose(q1, q2)  # two independent nets


def test_replay_buffer_is_fifo_in_transitions():
    buf = dql.ReplayBuffer(5, (1, 2), (4, 3))
    for k in range(3):  # 3 vector steps of 2 envs = 6 transitions into 5 slots
        obs = np.array([[[2 * k] * 2], [[2 * k + 1] * 2]], np.float32)  # (2 envs, To = 1, Do = 2)
        buf.add(obs, np.zeros((2, 4, 3)), np.array([2 * k, 2 * k + 1]), obs + 100, np.array([0, 1]))
    assert buf.size == 5 and buf.pos == 1
    assert sorted(buf.rewards.tolist()) == [1, 2, 3, 4, 5]  # transition 0 was overwritten
    assert buf.obs[0, 0, 0] == 5 and buf.next_obs[0, 0, 0] == 105 and buf.terminated[0] == 1
    batch = buf.sample(16, "cpu")  # with replacement: more samples than stored transitions is fine
    assert batch["chunks"].shape == (16, 4, 3) and batch["obs"].shape == (16, 1, 2)
    torch.testing.assert_close(batch["next_obs"], batch["obs"] + 100)


def test_soft_update():
    target, source = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    nn.init.constant_(target.weight, 1.0)
    nn.init.constant_(source.weight, 3.0)
    dql.soft_update(target, source, 0.005)
    assert target.weight.item() == pytest.approx(0.995 * 1.0 + 0.005 * 3.0)


def test_normalized_q_loss_closed_form_and_detached_denominator():
    w = torch.tensor(1.0, requires_grad=True)
    q_a, q_b = w * torch.tensor([1.0, 3.0]), w * torch.tensor([-2.0, 2.0])
    loss = dql.normalized_q_loss(q_a, q_b)
    assert loss.item() == pytest.approx(-2.0 / 2.0)
    loss.backward()
    assert w.grad.item() == pytest.approx(-2.0 / 2.0)  # d/dw of -2w / |2|: the denominator is a constant


def test_chain_gradient_single_step_closed_form():
    # K = 1: x_out = clamp((x - sqrt(1 - ab) c) / sqrt(ab)) with ab = 0.001; no noise at t = 0 in eval
    sched = dql.make_schedule(1)
    net = ConstEps(c0=0.2)
    out = dql.sample(net, sched, torch.zeros(7, 1, 2), 1, 4, 3, "eval", clip=1e6, grad=True)
    out.sum().backward()
    assert net.c0.grad.item() == pytest.approx(-math.sqrt(0.999 / 0.001) * 7 * 4 * 3, rel=1e-4)
    # without grad=True the sampler keeps no graph (rollouts, Bellman-target actions)
    assert not dql.sample(net, sched, torch.zeros(2, 1, 2), 1, 4, 3, "eval").requires_grad


def test_chain_gradient_reaches_the_first_denoising_step():
    sched = dql.make_schedule(2)
    net = ConstEps(c0=0.0, c1=0.1)  # c1 is only used at t = 1, the first executed step
    out = dql.sample(net, sched, torch.zeros(4, 1, 2), 2, 4, 3, "train", 0.1, 3.0, clip=1e6, grad=True)
    out.sum().backward()
    # d out / d c1 = coef_x0(0) / sqrt(ab_0) * d x_1 / d c1, with x_1 = coef_x0(1) x0_hat(1) + coef_xt(1) x_2
    # and d x0_hat(1) / d c1 = -sqrt(1/ab_1 - 1)
    d_x1 = sched["coef_x0"][1] * -(1 / sched["alpha_bar"][1] - 1).sqrt()
    expected = sched["coef_x0"][0] / sched["alpha_bar"][0].sqrt() * d_x1 * 4 * 4 * 3
    assert net.c1.grad.item() == pytest.approx(expected.item(), rel=1e-4)


def test_bc_term_is_computed_on_buffer_actions():
    torch.manual_seed(0)
    sched = dql.make_schedule(6)

    class EchoEps(nn.Module):  # eps_theta(x_t) = x_t: the loss grows with |a_0|
        def forward(self, x, t, obs):
            return x

    obs, critic = torch.zeros(64, 1, 2), QuadraticQ(torch.zeros(2))
    far = torch.full((64, 1, 2), 50.0)  # generated actions stay within ~[-1.3, 1.3], buffer ones do not
    _, bc_far, _ = dql.dql_actor_loss(EchoEps(), critic, sched, obs, far, 6, 1, 1.0, True)
    _, bc_near, _ = dql.dql_actor_loss(EchoEps(), critic, sched, obs, torch.zeros(64, 1, 2), 6, 1, 1.0, True)
    assert bc_far.item() > 100 and bc_near.item() < 2


def test_actor_update_moves_samples_up_a_quadratic_q():
    torch.manual_seed(0)
    K, Da, n = 6, 2, 128
    sched, a_star = dql.make_schedule(K), torch.tensor([0.5, -0.3])
    actor = dql.DiffusionMLP(2, Da, 1, 1, time_dim=8, mlp_dims=(32, 32, 32))
    obs = torch.zeros(n, 1, 2)
    data = lambda: torch.tensor([-0.4, 0.4]) + 0.05 * torch.randn(n, 1, Da)  # noqa: E731
    opt = torch.optim.Adam(actor.parameters(), lr=3e-3)
    for _ in range(150):  # behaviour cloning around (-0.4, 0.4)
        loss = dql.pretrain_loss(actor, sched, data(), obs, K)
        opt.zero_grad()
        loss.backward()
        opt.step()
    critic = QuadraticQ(a_star)

    def measure():
        x = dql.sample(actor, sched, torch.zeros(512, 1, 2), K, 1, Da, "eval")
        return x.mean((0, 1)), critic(None, x)[0].mean().item()

    mean0, q0 = measure()
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    for i in range(25):
        loss, _, _ = dql.dql_actor_loss(actor, critic, sched, obs, data(), K, 1, 1.0, i % 2 == 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    mean1, q1 = measure()
    assert q1 > q0 + 0.5, (q0, q1)
    assert (mean1 - a_star).norm() < 0.5 * (mean0 - a_star).norm(), (mean0, mean1)


def test_networks_keep_dppo_state_dict_keys():
    for backbone in ("mlp", "unet"):
        kw = dict(obs_dim=11, action_dim=3, horizon_steps=4, cond_steps=1, denoising_steps=6, backbone=backbone,
                  time_dim=8, mlp_dims=(16, 16, 16), activation="relu", unet_dim=8, unet_dim_mults=(1, 2),
                  unet_kernel_size=5, unet_n_groups=4, unet_step_embed_dim=8)
        ours, theirs = dql.build_network(kw).state_dict(), dppo.build_network(kw).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, tiny_diffusion_checkpoint):
    ck = tiny_diffusion_checkpoint
    cases = [
        (dict(buffer_size=4, batch_size=8), "--buffer-size 4 is smaller than --batch-size 8"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
        (dict(replay_ratio=0.0), "--replay-ratio must be > 0"),
        (dict(buffer_size=-1), "--buffer-size must be >= 1"),
        (dict(act_steps=5), "--act-steps 5 > --horizon-steps 4"),
        (dict(denoising_steps=20), "pass --denoising-steps 6"),
    ]
    for i, (kw, expected) in enumerate(cases):
        run_dir = tmp_path / f"r{i}"
        with pytest.raises(SystemExit) as e:
            dql.main(dql.Args(**{"checkpoint": ck, "denoising_steps": 6, "run_dir": str(run_dir), **kw}))
        msg = str(e.value)
        assert msg.startswith("error:") and expected in msg and "\n" not in msg, msg
        assert not run_dir.exists()
    # a Gaussian checkpoint, through the CLI: non-zero exit, one "error:" line on stderr, no traceback
    gauss = tmp_path / "gauss.pt"
    torch.save(dict(algo="gaussian_ppo", policy="gaussian", backbone="mlp", model={}, env_id="Hopper-v2"), gauss)
    proc = run_script("dql.py", "--checkpoint", gauss, "--run-dir", tmp_path / "g", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:") and "diffusion" in lines[0]
    assert not (tmp_path / "g").exists()


def test_cli_smoke_run_and_resume(tiny_diffusion_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    proc = run_script("dql.py", "--checkpoint", tiny_diffusion_checkpoint, "--total-timesteps", "128", "--run-dir", run,
                      *TINY)
    assert "iter 2/2" in proc.stdout and "steps 128" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    for key in ("algo", "env_id", "seed", "env_steps", "wall_time_s", "pretrained_eval_return", "final_eval_return",
                "best_eval_return", "args"):
        assert key in summary
    assert summary["algo"] == "dql" and summary["env_steps"] == 128
    ckpt = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert (ckpt["algo"], ckpt["policy"], ckpt["iteration"], ckpt["env_steps"]) == ("dql", "diffusion", 2, 128)
    assert {"model", "model_kwargs", "normalization", "critic", "target_critic", "actor_optimizer", "critic_optimizer",
            "torch_rng", "numpy_rng"} <= set(ckpt)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set(EventAccumulator(str(run)).Reload().Tags()["scalars"])
    assert {"charts/episodic_return", "charts/episodic_length", "eval/episodic_return", "charts/SPS",
            "charts/learning_rate", "losses/q_loss", "losses/actor_loss", "losses/bc_loss", "values/q1_mean",
            "values/target_q_mean", "time/rollout_s", "time/update_s"} <= tags

    # resume from the run's own checkpoint: continues at iteration 3 with its critic
    args = dql.Args(checkpoint=str(run / "checkpoint_last.pt"), total_timesteps=192, run_dir=str(tmp_path / "resume"),
                    denoising_steps=6, num_envs=2, n_steps=8, batch_size=8, buffer_size=64, replay_ratio=2.0,
                    eval_episodes=1, eval_freq=1, n_critic_warmup_itr=1)
    dql.main(args)
    out = capsys.readouterr().out
    assert "resuming" in out and "iter 3/3" in out and "iter 1/" not in out
    assert json.loads((tmp_path / "resume" / "summary.json").read_text())["env_steps"] == 192
    assert os.path.isfile(tmp_path / "resume" / "checkpoint_3.pt")
