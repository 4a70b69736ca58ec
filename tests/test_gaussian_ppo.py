"""gaussian_ppo.py: log-prob/entropy closed forms, GAE by hand, resume, CLI smoke run, bad input."""

import math
import os

import numpy as np
import pytest
import torch

from cleandppo import envs
from cleandppo import gaussian_ppo as gp
from conftest import cli_fails, main_fails, read_summary, run_main, run_script, scalar_tags

TINY_GAUSSIAN = ["--mlp-dims", "16", "16", "16", "--critic-dims", "16", "16", "16"]


def test_log_prob_and_entropy_match_the_normal_closed_form():
    torch.manual_seed(0)
    mean, std = torch.randn(5, 4, 3) * 0.3, torch.tensor([0.1, 0.15, 0.2])
    actions = mean + std * torch.randn(5, 4, 3)
    expected = torch.distributions.Normal(mean, std).log_prob(actions).mean(dim=(-2, -1))
    assert torch.all(expected < 2) and torch.all(expected > -5)  # inside the clamp
    torch.testing.assert_close(gp.log_prob(mean, std, actions), expected)
    torch.testing.assert_close(gp.entropy(std), torch.distributions.Normal(0, std).entropy().mean())
    # per-dimension log-density at the mean with std 0.01 is log(1/(0.01 sqrt(2 pi))) = 3.69 -> clamped to 2
    tiny = torch.full((3,), 0.01)
    assert gp.log_prob(mean, tiny, mean).eq(2.0).all()


def test_sampled_actions_stay_within_the_clip():
    mean, std = torch.zeros(20000, 1, 1), torch.tensor([0.2])
    a = gp.sample_action(mean, std, randn_clip_value=1.5, generator=torch.Generator().manual_seed(0))
    assert a.abs().max() <= 0.3 + 1e-6 and a.std() > 0.1


def test_gae_matches_a_hand_worked_example():
    # one env, three steps, episode ends after step 1 (done), gamma 0.9, lambda 0.8
    rewards = np.array([[1.0], [2.0], [3.0]])
    values = np.array([[0.5], [1.0], [1.5]])
    next_values = np.array([[1.0], [9.0], [2.0]])  # V(s1), V(after done: ignored), V(s3)
    dones = np.array([[0.0], [1.0], [0.0]])
    adv, ret = gp.compute_gae(rewards, values, next_values, dones, gamma=0.9, gae_lambda=0.8)
    d2 = 3.0 + 0.9 * 2.0 - 1.5  # 3.3
    d1 = 2.0 - 1.0  # 1.0, no bootstrap after done
    d0 = 1.0 + 0.9 * 1.0 - 0.5  # 1.4
    expected = np.array([[d0 + 0.9 * 0.8 * d1], [d1], [d2]])  # the recursion stops at the done
    np.testing.assert_allclose(adv, expected)
    np.testing.assert_allclose(ret, expected + values)


def test_running_reward_scaler_divides_by_the_std_of_discounted_returns():
    scaler = envs.RunningRewardScaler(num_envs=1, gamma=0.5)
    rewards, firsts = np.array([[1.0], [1.0], [1.0]]), np.array([[1.0], [0.0], [0.0]])
    out = scaler(rewards, firsts)
    returns = np.array([1.0, 1.5, 1.75])  # R = r + 0.5 R
    # merge prior (count 1e-4, mean 0, var 1) with the batch by the parallel-variance formula
    c0, n = 1e-4, 3
    mean = returns.mean() * n / (c0 + n)
    var = (1.0 * c0 + returns.var() * n + returns.mean() ** 2 * c0 * n / (c0 + n)) / (c0 + n - 1)  # official: M2/(n-1)
    assert scaler.mean == pytest.approx(mean) and scaler.var == pytest.approx(var)
    np.testing.assert_allclose(out, rewards / math.sqrt(var + 1e-8))


def _tiny_setup(seed=0):
    torch.manual_seed(seed)
    policy = gp.GaussianPolicy(obs_dim=5, action_dim=2, horizon_steps=3, cond_steps=1, mlp_dims=(16, 16, 16))
    critic = gp.Critic(5, 1, (16, 16, 16))
    return (
        policy,
        critic,
        torch.optim.AdamW(policy.parameters(), lr=1e-3),
        torch.optim.AdamW(critic.parameters(), lr=1e-3),
    )


def _tiny_batch(policy):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(64, 1, 5, generator=g)
    with torch.no_grad():
        mean, std = policy(obs)
        actions = gp.sample_action(mean, std, 3.0, generator=g)
        logp = gp.log_prob(mean, std, actions)
    return dict(
        obs=obs,
        actions=actions,
        logprobs=logp,
        advantages=torch.randn(64, generator=g),
        returns=torch.randn(64, generator=g),
    )


def test_resume_from_a_checkpoint_gives_the_same_next_update(tmp_path):
    args = gp.Args(batch_size=16, update_epochs=2)
    policy, critic, actor_opt, critic_opt = _tiny_setup()
    batch = _tiny_batch(policy)
    gp.ppo_update(policy, critic, actor_opt, critic_opt, batch, args, generator=torch.Generator().manual_seed(2))
    kwargs = dict(obs_dim=5, action_dim=2, horizon_steps=3, cond_steps=1, mlp_dims=(16, 16, 16))
    ckpt = gp.make_checkpoint(
        policy,
        kwargs,
        envs.identity_normalization(5, 2),
        args,
        1,
        100,
        critic=critic.state_dict(),
        actor_optimizer=actor_opt.state_dict(),
        critic_optimizer=critic_opt.state_dict(),
    )
    envs.save_checkpoint(ckpt, str(tmp_path / "c.pt"))
    # the run that keeps going
    gp.ppo_update(policy, critic, actor_opt, critic_opt, batch, args, generator=torch.Generator().manual_seed(3))
    # the run restored from disk
    loaded = torch.load(str(tmp_path / "c.pt"), weights_only=False)
    policy2, critic2, actor_opt2, critic_opt2 = _tiny_setup(seed=99)
    policy2.load_state_dict(loaded["model"])
    critic2.load_state_dict(loaded["critic"])
    actor_opt2.load_state_dict(loaded["actor_optimizer"])
    critic_opt2.load_state_dict(loaded["critic_optimizer"])
    gp.ppo_update(policy2, critic2, actor_opt2, critic_opt2, batch, args, generator=torch.Generator().manual_seed(3))
    for a, b in zip(
        list(policy.parameters()) + list(critic.parameters()),
        list(policy2.parameters()) + list(critic2.parameters()),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_first_minibatch_ratio_is_one():
    args = gp.Args(batch_size=64, update_epochs=1)
    policy, critic, actor_opt, critic_opt = _tiny_setup()
    stats = gp.ppo_update(policy, critic, actor_opt, critic_opt, _tiny_batch(policy), args)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6) and stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)


def test_pretrain_only_wall_time_counts_the_pretraining(tiny_dataset, tmp_path, monkeypatch):
    """--pretrain-only's summary.json: wall_time_s covers the pre-training, not only the closing evaluation (the
    pre-training is made to last at least 0.5 s)."""
    import json
    import time

    pretrain = gp.pretrain

    def slow_pretrain(*a, **k):
        time.sleep(0.5)
        return pretrain(*a, **k)

    monkeypatch.setattr(gp, "pretrain", slow_pretrain)
    flags = ["--dataset", tiny_dataset, "--pretrain-only", "--pretrain-epochs", "1", "--eval-episodes", "1"]
    run_main(gp, *flags, "--run-dir", tmp_path / "pre", *TINY_GAUSSIAN)
    assert json.load(open(tmp_path / "pre" / "summary.json"))["wall_time_s"] >= 0.5


def test_cli_pretrain_then_finetune(tiny_dataset, tmp_path, capsys):
    pre = tmp_path / "pre"  # pre-training in-process (tyro parses the same flags), fine-tuning through the CLI
    run_main(
        gp,
        "--dataset",
        tiny_dataset,
        "--pretrain-only",
        "--pretrain-epochs",
        "2",
        "--run-dir",
        pre,
        "--eval-episodes",
        "1",
        *TINY_GAUSSIAN,
    )
    ckpt = torch.load(str(pre / "pretrained.pt"), weights_only=False)
    assert ckpt["policy"] == "gaussian" and ckpt["model_kwargs"]["horizon_steps"] == 4 and ckpt["env_id"] == "Hopper-v2"
    assert set(ckpt["normalization"]) == {"obs_min", "obs_max", "action_min", "action_max"}
    ft = tmp_path / "ft"
    proc = run_script(
        "gaussian_ppo.py",
        "--checkpoint",
        pre / "pretrained.pt",
        "--run-dir",
        ft,
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "4",
        "--total-timesteps",
        "64",
        "--eval-episodes",
        "1",
        "--eval-freq",
        "1",
        "--save-freq",
        "1",
        *TINY_GAUSSIAN,
    )
    assert "iter 2/2" in proc.stdout
    read_summary(ft, algo="gaussian_ppo", env_steps=64)
    assert {
        "eval/episodic_return",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/approx_kl",
        "losses/clipfrac",
        "charts/SPS",
        "time/rollout_s",
        "time/update_s",
    } <= scalar_tags(ft)
    assert (ft / "checkpoint_1.pt").exists() and (ft / "checkpoint_last.pt").exists()
    # resume from the last checkpoint (in-process): it continues at iteration 2 of 3
    capsys.readouterr()
    run_main(
        gp,
        "--checkpoint",
        ft / "checkpoint_last.pt",
        "--run-dir",
        tmp_path / "resumed",
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "4",
        "--total-timesteps",
        "96",
        "--eval-episodes",
        "1",
        "--eval-freq",
        "5",
        *TINY_GAUSSIAN,
    )
    out = capsys.readouterr().out
    assert "iter 3/3" in out and "iter 1/3" not in out
    # --eval-only of the fine-tuned checkpoint reports it at the env steps it was trained for
    run_main(
        gp,
        "--checkpoint",
        ft / "checkpoint_last.pt",
        "--eval-only",
        "--eval-episodes",
        "1",
        "--run-dir",
        tmp_path / "ev",
        *TINY_GAUSSIAN,
    )
    read_summary(tmp_path / "ev", env_steps=64)


def test_bad_input_is_one_line_on_stderr(tmp_path):
    cli_fails(
        "gaussian_ppo.py",
        "--run-dir",
        tmp_path / "r",
        "--env-id",
        "Hoper-v2",
        needles=["unknown --env-id"],
        run_dir=tmp_path / "r",
    )


@pytest.mark.parametrize(
    "flags, expected",
    [
        (dict(num_envs=0), "--num-envs must be >= 1"),
        (dict(act_steps=5), "--act-steps 5 > --horizon-steps 4"),
        (dict(checkpoint="/nonexistent/ckpt.pt"), "does not exist"),
        (dict(std_min=0.3, std_max=0.2), "--std-min <= --std-max"),
    ],
)
def test_bad_input(flags, expected, tmp_path):
    main_fails(gp, gp.Args(run_dir=str(tmp_path / "r"), **flags), expected, writes_nothing="checkpoint" not in flags)


def test_diffusion_checkpoint_is_refused(tiny_diffusion_checkpoint, tmp_path):
    args = gp.Args(checkpoint=tiny_diffusion_checkpoint, run_dir=str(tmp_path / "r"))
    main_fails(gp, args, "holds a diffusion policy")


def test_transformer_backbone_predicts_a_chunk_and_fits_a_target():
    torch.manual_seed(0)
    policy = gp.GaussianPolicy(
        obs_dim=5,
        action_dim=2,
        horizon_steps=3,
        cond_steps=2,
        backbone="transformer",
        transformer_dim=16,
        transformer_heads=2,
        transformer_layers=2,
    )
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in policy.modules())  # paper D.6: no dropout
    obs = torch.randn(8, 2, 5)
    mean, std = policy(obs)
    assert mean.shape == (8, 3, 2) and std.shape == (2,) and mean.abs().max() < 1  # tanh mean
    assert not torch.allclose(mean[:, 0], mean[:, 1])  # each chunk step has its own learned query token
    target = torch.tanh(obs[:, -1, :2])[:, None].expand(8, 3, 2)  # a chunk that depends on the observation
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = ((policy(obs)[0] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


class _Writer:
    def add_scalar(self, *a):
        pass


def record_adamw_steps(monkeypatch):
    """(learning rates, live weights, initial weights) of every AdamW step from now on: lists filled as steps run."""
    lrs, live, init = [], [], []
    step = torch.optim.AdamW.step

    def record(self, *a, **kw):
        params = self.param_groups[0]["params"]
        if not init:
            init.extend(p.detach().clone() for p in params)
        out = step(self, *a, **kw)
        lrs.append(self.param_groups[0]["lr"])
        live.append([p.detach().clone() for p in params])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    return lrs, live, init


@pytest.mark.parametrize("script", ["gaussian_ppo", "gmm_ppo"])
@pytest.mark.parametrize("recipe,ema_start", [(False, 0), (True, 0), (True, 1)])
def test_pretraining_cosine_lr_and_ema(tiny_dataset, tmp_path, monkeypatch, script, recipe, ema_start):
    """--pretrain-min-lr: LR 1e-4 in the warm-up epoch, 1e-3 in epoch 1, then cosine to the min LR (3 epochs: epoch 2
    at the midpoint 5.5e-4); --ema-decay d (0.8): the saved weights are e_k = d e_(k-1) + (1 - d) w_k over the live
    weights w_k after every step (ema_freq 1, from epoch 0), e_0 the initial weights, recomputed here by hand; with
    --ema-start-epoch 1 the EMA copies the live weights through epoch 0 and decays from there. Without them: a
    constant LR and the live weights saved."""
    import importlib

    module = importlib.import_module(f"cleandppo.{script}")
    flags = dict(pretrain_epochs=3, pretrain_lr=1e-3, pretrain_batch_size=128, mlp_dims=(16, 16, 16))
    if recipe:
        flags |= dict(pretrain_min_lr=1e-4, ema_decay=0.8, ema_freq=1, ema_start_epoch=ema_start)
    args = module.Args(env_id="Hopper-v2", dataset=tiny_dataset, **flags)
    lrs, live, init = record_adamw_steps(monkeypatch)
    ckpt = module.pretrain(args, envs.load_dataset(tiny_dataset), str(tmp_path), _Writer(), torch.device("cpu"))
    per_epoch = len(lrs) // 3
    assert len(lrs) == 3 * per_epoch > 3
    expected_lrs = [1e-4, 1e-3, 5.5e-4] if recipe else [1e-3] * 3
    for e, lr in enumerate(expected_lrs):
        assert lrs[e * per_epoch : (e + 1) * per_epoch] == pytest.approx([lr] * per_epoch, rel=1e-9)
    expected = live[-1]
    if recipe:
        copied = ema_start * per_epoch  # steps in the epochs before --ema-start-epoch: the EMA is the live weights
        expected = live[copied - 1] if copied else init
        for w in live[copied:]:
            expected = [0.8 * e + 0.2 * x for e, x in zip(expected, w, strict=True)]
        assert not torch.allclose(expected[0], live[-1][0])  # the EMA is not the last live weights
    policy_cls = gp.GaussianPolicy if script == "gaussian_ppo" else module.GMMPolicy
    saved = policy_cls(**ckpt["model_kwargs"])
    saved.load_state_dict(ckpt["model"])
    trained = [p for name, p in saved.named_parameters() if name != "logvar"]
    assert len(trained) == len(expected)
    for p, e in zip(trained, expected, strict=True):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("script", ["gaussian_ppo", "gmm_ppo"])
def test_avoid_pretraining_recipe_defaults(script):
    """Official cfg/d3il/pretrain/avoid_m*/pre_{gaussian,gmm}_mlp.yaml: cosine 1e-4 -> 1e-5 and EMA 0.995 on Avoid;
    none on Gym (constant LR, live weights)."""
    import importlib

    from cleandppo import arguments

    module = importlib.import_module(f"cleandppo.{script}")
    avoid_args = arguments.parse_args(module.Args, module.task_defaults, ["--env-id", "avoid-m2"])
    assert (avoid_args.pretrain_lr, avoid_args.pretrain_min_lr, avoid_args.ema_decay) == (1e-4, 1e-5, 0.995)
    gym_args = arguments.parse_args(module.Args, module.task_defaults, ["--env-id", "Hopper-v2"])
    assert (gym_args.pretrain_min_lr, gym_args.ema_decay) == (None, None)


@pytest.mark.parametrize("script", ["dppo", "gaussian_ppo", "gmm_ppo"])
def test_pretraining_snapshots_every_save_freq_epochs(tiny_dataset, tmp_path, monkeypatch, script):
    """--pretrain-save-freq 2 over 4 epochs: pretrained_2.pt holds the EMA weights (decay 0.8 every step from epoch 0,
    recomputed here by hand from the live weights) as they stood after epoch 2, with the epochs and gradient steps
    done; pretrained.pt those of the end, which gets no snapshot of its own."""
    import importlib

    module = importlib.import_module(f"cleandppo.{script}")
    flags = dict(pretrain_epochs=4, pretrain_batch_size=256, mlp_dims=(16, 16, 16), pretrain_save_freq=2)
    flags |= dict(ema_decay=0.8, ema_freq=1, ema_start_epoch=0)
    args = module.Args(env_id="Hopper-v2", dataset=tiny_dataset, **flags)
    _, live, init = record_adamw_steps(monkeypatch)
    module.pretrain(args, envs.load_dataset(tiny_dataset), str(tmp_path), _Writer(), torch.device("cpu"))
    per_epoch = len(live) // 4
    assert len(live) == 4 * per_epoch > 4
    assert sorted(os.listdir(tmp_path)) == ["pretrained.pt", "pretrained_2.pt"]
    for epochs in (2, 4):
        expected = init
        for w in live[: epochs * per_epoch]:
            expected = [0.8 * e + 0.2 * x for e, x in zip(expected, w, strict=True)]
        name = "pretrained.pt" if epochs == 4 else f"pretrained_{epochs}.pt"
        ckpt = torch.load(tmp_path / name, weights_only=False)
        assert (ckpt["pretrain_epochs"], ckpt["pretrain_gradient_steps"]) == (epochs, epochs * per_epoch)
        kw = ckpt["model_kwargs"]
        if script == "dppo":
            net = module.build_policy_network(kw)
        else:
            net = gp.GaussianPolicy(**kw) if script == "gaussian_ppo" else module.GMMPolicy(**kw)
        net.load_state_dict(ckpt["model"])
        saved = [p for name, p in net.named_parameters() if name != "logvar"]
        assert len(saved) == len(expected)
        for p, e in zip(saved, expected, strict=True):
            torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("script", ["dppo", "gaussian_ppo", "gmm_ppo"])
def test_a_killed_pretraining_rerun_into_its_dir_continues_exactly(tiny_dataset, tmp_path, monkeypatch, script):
    """A pre-training killed in its 3rd of 4 epochs (its state written after every epoch here) and rerun with the same
    command into its run dir continues from the state of epoch 2: its pretrained.pt equals that of a run never
    killed, weight for weight (cosine LR, EMA, AdamW's moments and the RNGs all carried over), and the state file is
    gone. A rerun with another setting stops in one line naming it (the evaluation's episodes may change). Rerun
    once more (as if killed in the closing evaluation, before summary.json), it trains nothing and gives the same
    pretrained.pt; once fine-tuning has written a checkpoint, the rerun is refused and names that checkpoint."""
    import importlib
    import shutil

    from cleandppo import pretraining, runs

    module = importlib.import_module(f"cleandppo.{script}")
    monkeypatch.setattr(pretraining, "STATE_EVERY_S", 0.0)
    flags = dict(pretrain_epochs=4, pretrain_batch_size=256, mlp_dims=(16, 16, 16), pretrain_min_lr=1e-4, seed=3)
    flags |= dict(ema_decay=0.8, ema_freq=1, ema_start_epoch=1)

    def pretrain(run_dir, **changed):
        args = module.Args(env_id="Hopper-v2", dataset=tiny_dataset, run_dir=str(run_dir), **(flags | changed))
        runs.seed_everything(args)  # as every start does
        run_dir, writer, _, data = runs.open_run_dir(args, module.ALGO, None, None, load_data=True)
        try:
            return module.pretrain(args, data, run_dir, writer, torch.device("cpu"))
        finally:
            writer.close()
            runs.release_run_lock()

    whole = pretrain(tmp_path / "whole")
    per_epoch = whole["pretrain_gradient_steps"] // 4
    gather, calls = envs.gather_samples, []

    def killed_in_epoch_3(*a):
        calls.append(1)
        if len(calls) == 2 * per_epoch + 1:
            raise KeyboardInterrupt
        return gather(*a)

    monkeypatch.setattr(envs, "gather_samples", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "cut")
    monkeypatch.setattr(envs, "gather_samples", gather)
    state = tmp_path / "cut" / runs.PRETRAIN_STATE
    assert torch.load(state, weights_only=False)["pretrain_epochs"] == 2
    (tmp_path / "other").mkdir()
    shutil.copy(state, tmp_path / "other" / runs.PRETRAIN_STATE)
    with pytest.raises(SystemExit, match="interrupted with --pretrain-lr"):
        pretrain(tmp_path / "other", pretrain_lr=5e-4)
    continued = pretrain(tmp_path / "cut", eval_episodes=3)  # how it is evaluated may change, not how it trains
    assert continued["pretrain_gradient_steps"] == whole["pretrain_gradient_steps"] == 4 * per_epoch > 4
    assert not state.exists()
    saved = torch.load(tmp_path / "cut" / "pretrained.pt", weights_only=False)
    for name, weight in whole["model"].items():
        assert torch.equal(saved["model"][name], weight), name
    monkeypatch.setattr(envs, "gather_samples", None)  # no training left: a minibatch would fail
    again = pretrain(tmp_path / "cut")  # killed in the closing evaluation (no summary.json), rerun: nothing to train
    assert again["pretrain_epochs"] == 4 and all(torch.equal(again["model"][n], w) for n, w in whole["model"].items())
    (tmp_path / "cut" / "checkpoint_last.pt").write_bytes(b"")  # fine-tuning had begun: that is resumed, not this
    with pytest.raises(SystemExit, match="already holds a run; resume it with --checkpoint"):
        pretrain(tmp_path / "cut")
