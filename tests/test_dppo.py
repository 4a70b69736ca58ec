"""dppo.py against closed forms: schedule, DDPM posterior, DDIM, chain log-probs, PPO pieces, CLI."""

import math
import os
import types

import numpy as np
import pytest
import torch
import torch.nn as nn

from cleandppo import dppo
from conftest import (
    TINY_DIFFUSION,
    assert_one_line_error,
    cli_fails,
    main_fails,
    read_checkpoint,
    read_summary,
    run_main,
    run_script,
    scalar_tags,
    stub_checkpoint,
)


class ConstantEps(nn.Module):
    """A 'network' that predicts a fixed noise tensor (so each step's mean is known in closed form)."""

    def __init__(self, value):
        super().__init__()
        self.value = nn.Parameter(torch.as_tensor(value, dtype=torch.float32))

    def forward(self, x, t, obs):
        return self.value.expand_as(x)


class LinearEps(nn.Module):
    """eps = a * x + b * t: differentiable, cheap, and not constant across steps; chunks of Tp x Da."""

    def __init__(self, a=0.3, b=0.01, Tp=4, Da=2):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))
        self.horizon_steps, self.action_dim = Tp, Da

    def forward(self, x, t, obs):
        return self.a * x + self.b * t.float().view(-1, 1, 1)


# ---- schedule -----------------------------------------------------------------------------------
def test_cosine_schedule_matches_the_formula_and_reference_values():
    K, s = 20, 0.008
    f = [math.cos(((i / K) + s) / (1 + s) * math.pi / 2) ** 2 for i in range(K + 1)]
    betas = [min(1 - (f[i + 1] / f[0]) / (f[i] / f[0]), 0.999) for i in range(K)]
    np.testing.assert_allclose(dppo.cosine_beta_schedule(K).numpy(), betas, rtol=1e-5)
    reference = [
        0.008,
        0.0201,
        0.0323,
        0.0447,
        0.0575,
        0.071,
        0.0852,
        0.1005,
        0.1173,
        0.1359,
        0.157,
        0.1814,
        0.2102,
        0.2454,
        0.2897,
        0.3481,
        0.4294,
        0.551,
        0.7485,
        0.999,
    ]  # official values, K = 20
    np.testing.assert_allclose(dppo.cosine_beta_schedule(K).numpy(), reference, atol=6e-5)
    sched = dppo.make_schedule(K)
    np.testing.assert_allclose(
        sched["alpha_bar"].numpy(), np.cumprod(1 - np.array(betas)), rtol=1e-4
    )  # float32 product
    assert sched["alpha_bar"][-1] < 1e-5


def test_ddpm_step_matches_the_posterior_equations():
    K, t = 20, 7
    sched = dppo.make_schedule(K)
    beta, ab, ab_prev = (sched[k][t].item() for k in ("betas", "alpha_bar", "alpha_bar_prev"))
    x_t = torch.tensor([[[0.2, -0.4]]])
    eps = torch.tensor([[[0.5, 0.1]]])
    mean, var = dppo.step_mean_var(
        ConstantEps(eps), sched, x_t, torch.zeros(1, 1, 3), torch.tensor([t]), torch.tensor([t - 1]), ddim=False
    )
    x0 = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)  # Ho et al. eq. 15
    x0 = x0.clamp(-1, 1)
    mu = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x_t  # eq. 7
    torch.testing.assert_close(mean, mu)
    torch.testing.assert_close(var, torch.full_like(mean, (1 - ab_prev) / (1 - ab) * beta))


def test_x0_is_clamped_before_the_posterior_mean():
    sched = dppo.make_schedule(20)
    x_t = torch.full((1, 1, 1), 3.0)
    mean, _ = dppo.step_mean_var(
        ConstantEps(torch.zeros(1, 1, 1)),
        sched,
        x_t,
        torch.zeros(1, 1, 1),
        torch.tensor([0]),
        torch.tensor([-1]),
        ddim=False,
    )
    assert mean.item() == pytest.approx(1.0, rel=1e-5)  # at t = 0 the mean is the clamped x0


def test_ddim_eta1_has_ddpm_variance_and_eta0_is_deterministic():
    sched = dppo.make_schedule(20)
    x, obs = torch.randn(3, 4, 2), torch.zeros(3, 1, 5)
    for t in (1, 5, 19):
        tt = torch.full((3,), t)
        _, var_ddim = dppo.step_mean_var(LinearEps(), sched, x, obs, tt, tt - 1, ddim=True, eta=1.0)
        _, var_ddpm = dppo.step_mean_var(LinearEps(), sched, x, obs, tt, tt - 1, ddim=False)
        torch.testing.assert_close(var_ddim, var_ddpm, rtol=1e-4, atol=1e-7)
    plan = dppo.denoising_plan(20, 5)
    assert plan == [(16, 12), (12, 8), (8, 4), (4, 0), (0, -1)]
    net = LinearEps()
    args = dppo.Args(ddim_steps=5)
    out, _ = dppo.sample(net, net, sched, obs, plan, 5, "eval", args, generator=torch.Generator().manual_seed(0))
    # eta = 0: x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev) eps, no noise (Song et al. eq. 12), from the same x_K
    x = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))
    for t, t_prev in plan:
        ab = sched["alpha_bar"][t]
        ab_prev = sched["alpha_bar"][t_prev] if t_prev >= 0 else torch.tensor(1.0)
        eps = 0.3 * x + 0.01 * t
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    train = [
        dppo.sample(net, net, sched, obs, plan, 5, "train", args, generator=torch.Generator().manual_seed(s))[0]
        for s in (0, 1)
    ]
    assert not torch.allclose(train[0], train[1])


# ---- chains and log-probs -----------------------------------------------------------------------
def test_recorded_chain_log_prob_is_the_sum_of_independent_gaussian_steps():
    K, K_ft, Tp, Da, min_std = 8, 5, 3, 2, 0.1
    sched, plan = dppo.make_schedule(K), dppo.denoising_plan(K, None)
    actor, actor_ft = LinearEps(0.2, 0.0, Tp, Da), LinearEps(0.35, 0.02, Tp, Da)
    obs = torch.zeros(4, 1, 3)
    # every chunk row counts (act_steps = Tp); the std floor min_std when sampling and in the log-prob
    args = dppo.Args(act_steps=Tp, min_sampling_denoising_std=min_std, min_logprob_denoising_std=min_std)
    _, chain = dppo.sample(actor, actor_ft, sched, obs, plan, K_ft, "train", args, torch.Generator().manual_seed(0))
    assert chain.shape == (4, K_ft + 1, Tp, Da)
    ft_t, ft_t_prev = dppo.fine_tuned_timesteps(plan, K_ft)
    assert ft_t.tolist() == [4, 3, 2, 1, 0]  # j = 0 is the noisiest fine-tuned step
    for j in range(K_ft):
        t = ft_t[j].item()
        t_b, t_prev_b = ft_t[j].expand(4), ft_t_prev[j].expand(4)
        lp = dppo.denoising_log_prob(actor_ft, sched, obs, chain[:, j], chain[:, j + 1], t_b, t_prev_b, args)
        # independent computation of the same step: DDPM posterior with x0 from eps = a x + b t
        x = chain[:, j]
        eps = 0.35 * x + 0.02 * t
        ab, ab_prev, beta = sched["alpha_bar"][t], sched["alpha_bar_prev"][t], sched["betas"][t]
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        mu = ab_prev.sqrt() * beta / (1 - ab) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x
        std = max(math.sqrt(max(beta * (1 - ab_prev) / (1 - ab), 1e-20)), min_std)
        expected = torch.distributions.Normal(mu, std).log_prob(chain[:, j + 1]).clamp(-5, 2).sum(dim=(1, 2))
        torch.testing.assert_close(lp * Tp * Da, expected, rtol=1e-5, atol=1e-5)


def test_chain_log_probs_give_each_pair_its_own_observation_and_denoising_step():
    """chain_log_probs batches all (sample, fine-tuned step) pairs: entry (i, j) must be the log-prob of step j of
    chain i under observation i, at step j's (t, t_prev), as one pair alone gives it; `rows` counts chunk rows."""
    K, K_ft, Tp, Da, n = 6, 3, 2, 2, 5
    torch.manual_seed(0)
    net = dppo.DiffusionMLP(3, Da, Tp, 1, time_dim=8, mlp_dims=(16, 16, 16), activation="relu")
    sched, plan = dppo.make_schedule(K), dppo.denoising_plan(K, None)
    obs = torch.randn(n, 1, 3)
    chains = torch.randn(n, K_ft + 1, Tp, Da)
    args = dppo.Args(act_steps=1)
    ft_steps = plan[K - K_ft :]  # the last K' steps of the chain, noisiest first
    for rows in (None, Tp):
        batched = dppo.chain_log_probs(net, sched, obs, chains, args, rows)
        assert batched.shape == (n, K_ft)
        for i in range(n):
            for j, (t, t_prev) in enumerate(ft_steps):
                one = dppo.denoising_log_prob(
                    net,
                    sched,
                    obs[i : i + 1],
                    chains[i : i + 1, j],
                    chains[i : i + 1, j + 1],
                    torch.tensor([t]),
                    torch.tensor([t_prev]),
                    args,
                    rows,
                )
                torch.testing.assert_close(batched[i, j], one[0], rtol=1e-5, atol=1e-6)


def test_only_the_first_act_steps_count_in_the_log_prob():
    sched = dppo.make_schedule(6)
    x_in, obs = torch.randn(2, 4, 1), torch.zeros(2, 1, 1)
    x_out = x_in.clone()
    x_out[:, 2:] += 5.0  # far-off rows beyond act_steps = 2 must not matter
    t = torch.tensor([3, 3])
    args = dppo.Args(act_steps=2, min_logprob_denoising_std=0.1)
    a = dppo.denoising_log_prob(LinearEps(), sched, obs, x_in, x_out, t, t - 1, args)
    b = dppo.denoising_log_prob(LinearEps(), sched, obs, x_in, x_in, t, t - 1, args)
    torch.testing.assert_close(a, b)


def test_clip_schedule_and_denoising_discount():
    eps = dppo.clip_schedule(10, 0.01, 0.001, 3.0)
    reference = [0.001, 0.00119, 0.00145, 0.00181, 0.00232, 0.00303, 0.00401, 0.00539, 0.00732, 0.01]  # official
    np.testing.assert_allclose(eps.numpy(), reference, atol=6e-6)
    assert dppo.clip_schedule(1, 0.01, 0.001, 3.0).tolist() == pytest.approx([0.01])  # no division by zero
    assert torch.allclose(dppo.clip_schedule(5, 0.01, 0.01, 3.0), torch.full((5,), 0.01))
    w = dppo.denoising_discount(10, 0.99)
    assert w[-1] == 1.0 and w[0].item() == pytest.approx(0.99**9) and w[3].item() == pytest.approx(0.99**6)


def _update_setup(K=6, K_ft=3, Tp=2, Da=2, n=24, seed=0):
    torch.manual_seed(seed)
    net = dppo.DiffusionMLP(3, Da, Tp, 1, time_dim=8, mlp_dims=(16, 16, 16), activation="relu")
    critic = dppo.Critic(3, 1, (16, 16, 16))
    sched, plan = dppo.make_schedule(K), dppo.denoising_plan(K, None)
    ft_t, ft_t_prev = dppo.fine_tuned_timesteps(plan, K_ft)
    t, t_prev = ft_t[:, None].expand(K_ft, n), ft_t_prev[:, None].expand(K_ft, n)  # per sample
    obs = torch.randn(n, 1, 3, generator=torch.Generator().manual_seed(1))
    args = dppo.Args(act_steps=Tp)
    _, chains = dppo.sample(net, net, sched, obs, plan, K_ft, "train", args, torch.Generator().manual_seed(2))
    with torch.no_grad():
        logp = [
            dppo.denoising_log_prob(net, sched, obs, chains[:, j], chains[:, j + 1], t[j], t_prev[j], args)
            for j in range(K_ft)
        ]
        logp = torch.stack(logp, 1)
    g = torch.Generator().manual_seed(3)
    batch = dict(
        obs=obs,
        chains=chains,
        logprobs=logp,
        advantages=torch.randn(n, generator=g),
        returns=torch.randn(n, generator=g),
    )
    opts = (torch.optim.AdamW(net.parameters(), lr=1e-3), torch.optim.AdamW(critic.parameters(), lr=1e-3))
    return net, critic, opts, sched, batch


def test_ppo_ratio_is_one_on_the_first_minibatch():
    net, critic, (aopt, copt), sched, batch = _update_setup()
    args = dppo.Args(batch_size=72, update_epochs=1, act_steps=2)  # one minibatch of all 24 x 3 pairs
    stats = dppo.ppo_update(net, net, critic, aopt, copt, sched, batch, args)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6) and stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["clipfrac"] == 0.0


def test_resume_from_a_checkpoint_gives_the_same_next_update(tmp_path):
    from cleandppo import envs

    args = dppo.Args(batch_size=12, update_epochs=2, act_steps=2)
    net, critic, (aopt, copt), sched, batch = _update_setup()
    dppo.ppo_update(net, net, critic, aopt, copt, sched, batch, args, generator=torch.Generator().manual_seed(4))
    envs.save_checkpoint(
        dict(
            model_ft=net.state_dict(),
            critic=critic.state_dict(),
            actor_optimizer=aopt.state_dict(),
            critic_optimizer=copt.state_dict(),
        ),
        str(tmp_path / "c.pt"),
    )
    dppo.ppo_update(net, net, critic, aopt, copt, sched, batch, args, generator=torch.Generator().manual_seed(5))
    ckpt = torch.load(str(tmp_path / "c.pt"), weights_only=False)
    net2, critic2, (aopt2, copt2), *_ = _update_setup(seed=123)  # different init, overwritten by the checkpoint
    net2.load_state_dict(ckpt["model_ft"])
    critic2.load_state_dict(ckpt["critic"])
    aopt2.load_state_dict(ckpt["actor_optimizer"])
    copt2.load_state_dict(ckpt["critic_optimizer"])
    dppo.ppo_update(net2, net2, critic2, aopt2, copt2, sched, batch, args, generator=torch.Generator().manual_seed(5))
    for a, b in zip(
        list(net.parameters()) + list(critic.parameters()),
        list(net2.parameters()) + list(critic2.parameters()),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- learning a two-mode distribution -------------------------------------------------------------
def test_pretrained_diffusion_samples_both_modes_of_a_1d_toy():
    torch.manual_seed(0)
    K = 10
    net = dppo.DiffusionMLP(1, 1, 1, 1, time_dim=8, mlp_dims=(64, 64, 64), activation="relu")
    sched, opt = dppo.make_schedule(K), torch.optim.Adam(net.parameters(), lr=3e-3)
    obs = torch.zeros(256, 1, 1)
    for _ in range(800):
        x0 = (torch.randint(0, 2, (256, 1, 1)) * 2 - 1).float() * 0.6 + 0.05 * torch.randn(256, 1, 1)  # modes +-0.6
        loss = dppo.denoising_loss(net, sched, x0, obs, K)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        plan = dppo.denoising_plan(K, None)
        samples, _ = dppo.sample(net, net, sched, torch.zeros(2000, 1, 1), plan, 0, "eval", dppo.Args())
    samples = samples.flatten()
    near_pos, near_neg = ((samples - 0.6).abs() < 0.2).float().mean(), ((samples + 0.6).abs() < 0.2).float().mean()
    assert near_pos > 0.3 and near_neg > 0.3 and near_pos + near_neg > 0.85


# ---- pre-training: the saved weights are the EMA of the trained ones -----------------------------------
def test_pretraining_saves_the_ema_of_the_weights(tiny_dataset, tmp_path, monkeypatch):
    """Every ema_freq gradient steps: the EMA copy follows the weights before ema_start_epoch, afterwards
    ema <- decay ema + (1 - decay) weights. The optimiser is wrapped to record the weights after every step."""
    trajectory = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, **kw):
            params = list(params)
            super().__init__(params, **kw)
            self.watched = params
            trajectory.append([p.detach().clone() for p in params])  # the initial weights

        def step(self, *a, **k):
            out = super().step(*a, **k)
            trajectory.append([p.detach().clone() for p in self.watched])
            return out

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    epochs, freq, start, decay = 4, 2, 2, 0.6
    run_main(
        dppo,
        "--dataset",
        tiny_dataset,
        "--pretrain-only",
        "--pretrain-epochs",
        epochs,
        "--pretrain-batch-size",
        "64",
        "--ema-freq",
        freq,
        "--ema-start-epoch",
        start,
        "--ema-decay",
        decay,
        "--run-dir",
        tmp_path / "pre",
        "--eval-episodes",
        "1",
        *TINY_DIFFUSION,
    )
    steps = len(trajectory) - 1
    per_epoch = steps // epochs
    assert steps == per_epoch * epochs and per_epoch >= 3
    ema = trajectory[0]
    for step in range(1, steps + 1):
        if step % freq == 0:
            weights = trajectory[step]
            ema = (
                weights
                if (step - 1) // per_epoch < start
                else [decay * e + (1 - decay) * w for e, w in zip(ema, weights, strict=True)]
            )
    ckpt = torch.load(str(tmp_path / "pre" / "pretrained.pt"), weights_only=False)
    net = dppo.build_network(ckpt["model_kwargs"])
    net.load_state_dict(ckpt["model"])
    for p, e in zip(net.parameters(), ema, strict=True):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)
    assert not all(
        torch.equal(p, w) for p, w in zip(net.parameters(), trajectory[-1], strict=True)
    )  # not the last weights


# ---- evaluation uses the fine-tuned network ---------------------------------------------------------
def test_evaluation_runs_the_fine_tuned_network_for_the_fine_tuned_steps(monkeypatch, tmp_path):
    kw = dict(
        obs_dim=3,
        action_dim=1,
        horizon_steps=2,
        cond_steps=1,
        denoising_steps=6,
        backbone="mlp",
        time_dim=8,
        mlp_dims=(8, 8, 8),
        activation="relu",
    )
    base = dppo.build_network(kw)
    tuned = dppo.build_network(kw)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p))
    ckpt = dict(model_kwargs=kw, model=base.state_dict(), model_ft=tuned.state_dict(), ft_denoising_steps=3)
    actor, actor_ft, eval_ft = dppo.build_actors(ckpt, 3, torch.device("cpu"))
    assert eval_ft == 3
    for p, q in zip(actor_ft.parameters(), tuned.parameters(), strict=True):
        assert torch.equal(p, q)
    captured = {}

    def fake_run_episodes(act_fn, *a, **k):
        captured["act"] = act_fn
        return [0.0], [1]

    monkeypatch.setattr(dppo.envs, "run_episodes", fake_run_episodes)
    args = dppo.Args(denoising_steps=6, act_steps=2, horizon_steps=2)
    sched, plan = dppo.make_schedule(6), dppo.denoising_plan(6, None)
    dppo.runs.Evaluations(types.SimpleNamespace(add_scalar=lambda *a: None), False).run(
        0, dppo.eval_act(actor, actor_ft, sched, plan, eval_ft, args, torch.device("cpu")), args, None
    )
    obs = np.zeros((4, 1, 3), np.float32)
    torch.manual_seed(0)
    used = captured["act"](obs)
    torch.manual_seed(0)
    expected, _ = dppo.sample(actor, actor_ft, sched, torch.as_tensor(obs), plan, 3, "eval", args)
    torch.manual_seed(0)
    frozen_only, _ = dppo.sample(actor, actor, sched, torch.as_tensor(obs), plan, 0, "eval", args)
    np.testing.assert_allclose(used, expected.numpy())
    assert not np.allclose(used, frozen_only.numpy())  # it would fail if evaluation used the frozen copy
    # a pre-trained checkpoint (no model_ft) evaluates with the frozen copy everywhere
    assert dppo.build_actors(dict(model_kwargs=kw, model=base.state_dict()), 3, torch.device("cpu"))[2] == 0


# ---- from scratch (paper B.2) -------------------------------------------------------------------------
def test_one_tiny_iteration_from_scratch(tmp_path):
    """--from-scratch: a fresh network on identity normalization, no checkpoint or dataset; the preset's single-action
    chunks and all denoising steps fine-tuned, sizes made tiny."""
    run = tmp_path / "scratch"
    tiny = ["--mlp-dims", "16", "16", "16", "--critic-dims", "8", "8", "8", "--denoising-steps", "4"]
    flags = ["--ft-denoising-steps", "4", "--num-envs", "2", "--n-steps", "3", "--batch-size", "12"]
    run_main(dppo, "--from-scratch", *tiny, *flags, "--total-timesteps", "6", "--eval-episodes", "1", "--run-dir", run)
    summary = read_summary(run, algo="dppo", env_steps=6)
    assert (
        summary["args"]["from_scratch"] and summary["args"]["n_steps"] == 3 and summary["args"]["gamma_denoising"] == 1
    )
    ckpt = read_checkpoint(run, {"model_ft", "critic"}, iteration=1, ft_denoising_steps=4)
    assert ckpt["model_kwargs"]["horizon_steps"] == 1 and ckpt["model_kwargs"]["denoising_steps"] == 4
    assert ckpt["normalization"]["obs_max"].tolist() == [1.0] * 11  # identity normalization


# ---- command line -------------------------------------------------------------------------------
def test_cli_finetune_smoke_run(tiny_diffusion_checkpoint, tmp_path, capsys, monkeypatch):
    """Two iterations from the command line; --capture-video where MuJoCo has no GL backend (no MUJOCO_GL, no
    display): one stderr line naming the fix, no video, and the run still ends with its summary."""
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    run = tmp_path / "ft"
    proc = run_script(
        "dppo.py",
        "--capture-video",
        "--checkpoint",
        tiny_diffusion_checkpoint,
        "--run-dir",
        run,
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "8",
        "--total-timesteps",
        "64",
        "--eval-episodes",
        "1",
        "--eval-freq",
        "1",
        "--save-freq",
        "1",
        *TINY_DIFFUSION,
    )
    assert "iter 2/2" in proc.stdout and "SPS" in proc.stdout and "left" in proc.stdout
    read_summary(run, algo="dppo", env_steps=64)
    gl = [line for line in proc.stderr.splitlines() if line.startswith("--capture-video:")]
    assert len(gl) == 1 and "Hopper-v2 cannot render" in gl[0] and "MUJOCO_GL=osmesa" in gl[0], proc.stderr
    assert not os.path.exists(run / "eval.mp4")
    assert {
        "eval/episodic_return",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/approx_kl",
        "losses/clipfrac",
        "charts/SPS",
        "charts/learning_rate",
        "time/rollout_s",
        "time/update_s",
    } <= scalar_tags(run)
    read_checkpoint(run, {"model_ft", "critic"}, ft_denoising_steps=3, iteration=2)
    # the fine-tuned checkpoint evaluates with its fine-tuned network (in-process, the same flags)
    capsys.readouterr()
    run_main(
        dppo,
        "--checkpoint",
        run / "checkpoint_last.pt",
        "--eval-only",
        "--eval-episodes",
        "1",
        "--run-dir",
        tmp_path / "ev",
        *TINY_DIFFUSION,
    )
    assert "[eval] return" in capsys.readouterr().out
    read_summary(tmp_path / "ev", env_steps=64)  # at the env steps the checkpoint was trained for


def test_bad_flags_are_one_line_on_stderr(tmp_path):
    cli_fails(
        "dppo.py",
        "--run-dir",
        tmp_path / "r",
        "--ft-denoising-steps",
        "30",
        needles=["--ft-denoising-steps 30 > --denoising-steps 20"],
        run_dir=tmp_path / "r",
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        (dict(ddim_steps=7), "--ddim-steps 7 must divide --denoising-steps 20"),
        (dict(ddim_steps=5, ft_denoising_steps=6), "--ft-denoising-steps 6 > --ddim-steps 5"),
        (dict(act_steps=8), "--act-steps 8 > --horizon-steps 4"),
        (dict(env_id="Hopper-v9"), "unknown --env-id"),
        (dict(num_envs=0), "--num-envs must be >= 1"),
    ],
)
def test_bad_flags(flags, expected, tmp_path):
    main_fails(dppo, dppo.Args(run_dir=str(tmp_path / "r"), **flags), expected)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (dict(env_id="Walker2D-v2"), "trained on Hopper-v2"),
        (dict(horizon_steps=8, act_steps=8), "predicts chunks of 4"),
        (dict(act_steps=2), "an MLP policy executes its whole chunk"),
        (dict(denoising_steps=20), "pass --denoising-steps 6"),
        (dict(backbone="unet"), "has backbone mlp"),
    ],
)
def test_mismatched_checkpoint(tiny_diffusion_checkpoint, flags, expected, tmp_path):
    base = dict(
        checkpoint=tiny_diffusion_checkpoint,
        run_dir=str(tmp_path / "r"),
        denoising_steps=6,
        ft_denoising_steps=3,
        mlp_dims=(32, 32, 32),
        time_dim=8,
    )
    main_fails(dppo, dppo.Args(**{**base, **flags}), expected)


def test_gaussian_checkpoint_is_refused(tmp_path):
    path = stub_checkpoint(tmp_path / "g.pt", "gaussian")
    main_fails(dppo, dppo.Args(checkpoint=path, run_dir=str(tmp_path / "r")), "holds a gaussian policy")


def test_ctrl_c_keeps_the_last_finished_iteration_then_resumes_in_place(tiny_diffusion_checkpoint, tmp_path):
    """SIGINT during training drops the unfinished iteration (checkpoint_last.pt holds the last finished one, its env
    steps match its iteration) and ends in one line (exit 130); passing that checkpoint back resumes in the same dir."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    run = tmp_path / "run"
    flags = [
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "8",
        "--eval-episodes",
        "1",
        "--eval-freq",
        "1000",
        *TINY_DIFFUSION,
    ]
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, "cleandppo", "dppo.py"),
            "--checkpoint",
            tiny_diffusion_checkpoint,
            "--run-dir",
            str(run),
            "--total-timesteps",
            "100000",
            *flags,
        ],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        # a shell that starts the tests in the background makes them ignore SIGINT, and Python keeps an ignored
        # SIGINT ignored: give the child the default disposition so Ctrl-C reaches it as KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stdout:  # wait until the second iteration has finished
        if line.startswith("iter 2/"):
            break
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert_one_line_error(err.strip(), f"resume with --checkpoint {run / 'checkpoint_last.pt'}", prefix="interrupted:")
    ckpt = torch.load(str(run / "checkpoint_last.pt"), weights_only=False)
    assert ckpt["iteration"] >= 1 and ckpt["env_steps"] == ckpt["iteration"] * 2 * 4 * 4
    done = ckpt["iteration"]
    total = (done + 1) * 2 * 4 * 4
    proc = run_script("dppo.py", "--checkpoint", run / "checkpoint_last.pt", "--total-timesteps", total, *flags)
    assert f"iter {done + 1}/{done + 1}" in proc.stdout and "iter 1/" not in proc.stdout
    read_summary(run, env_steps=total)
