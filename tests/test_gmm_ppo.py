"""Tests for cleandppo/gmm_ppo.py: mixture math against closed forms, BC on a two-mode toy, CLI smoke run."""

import json
import math
import os

import pytest
import torch
import torch.distributions as D

from cleandppo import gmm_ppo
from conftest import main_fails, read_summary, run_main, run_script, scalar_tags, stub_checkpoint

torch.set_num_threads(1)
TINY = ["--mlp-dims", "16", "16", "16"]


def normal_pdf(x, mu, sigma):
    return math.exp(-0.5 * ((x - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def test_mixture_log_prob_matches_mixture_same_family():
    g = torch.Generator().manual_seed(0)
    B, M, Tp, Da = 7, 5, 4, 3
    means = torch.rand(B, M, Tp, Da, generator=g) * 2 - 1
    std = torch.rand(M, Da, generator=g) * 0.3 + 0.05
    logits = torch.randn(B, M, generator=g)
    actions = torch.rand(B, Tp, Da, generator=g) * 2 - 1
    # reference: official layout, the chunk flattened to one Tp*Da event, std repeated over the chunk
    scale = std[None, :, None, :].expand(B, M, Tp, Da).reshape(B, M, Tp * Da)
    ref = D.MixtureSameFamily(
        D.Categorical(logits=logits), D.Independent(D.Normal(means.reshape(B, M, Tp * Da), scale), 1)
    )
    expected = ref.log_prob(actions.reshape(B, Tp * Da))
    torch.testing.assert_close(gmm_ppo.mixture_log_prob(means, std, logits, actions), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gmm_ppo.log_prob(means, std, logits, actions), (expected / (Tp * Da)).clamp(-5, 2))
    torch.testing.assert_close(gmm_ppo.official_log_prob(means, std, logits, actions), expected.clamp(-5, 2))
    # entropy: the official approximation sum_m pi_m H(component m), averaged over the batch
    comp_entropy = D.Independent(D.Normal(means.reshape(B, M, Tp * Da), scale), 1).entropy()  # (B, M)
    expected_ent = (torch.softmax(logits, -1) * comp_entropy).sum(-1).mean()
    torch.testing.assert_close(gmm_ppo.entropy(std, logits, Tp), expected_ent)
    # the BC loss is the mean summed NLL
    torch.testing.assert_close(-expected.mean(), -gmm_ppo.mixture_log_prob(means, std, logits, actions).mean())


@pytest.mark.parametrize(
    "argv,official",
    [
        (["--env-id", "Hopper-v2"], False),
        (["--env-id", "lift"], False),
        (["--env-id", "avoid-m2"], True),  # the paper's Avoid baselines ran the official PPO_GMM
        (["--env-id", "avoid-m1", "--no-official-summed-logprob"], False),
        (["--env-id", "Hopper-v2", "--official-summed-logprob"], True),
    ],
)
def test_logprob_defaults_per_task(argv, official):
    from cleandppo import arguments

    assert arguments.parse_args(gmm_ppo.Args, gmm_ppo.task_defaults, argv).official_summed_logprob is official


def test_two_mode_hand_computed():
    # weights 0.25 / 0.75; mode 0: mean (0, 0), std (0.5, 0.5); mode 1: mean (1, -1), std (1, 2); action (0.5, 0)
    means = torch.tensor([[[[0.0, 0.0]], [[1.0, -1.0]]]])  # (B=1, M=2, Tp=1, Da=2)
    std = torch.tensor([[0.5, 0.5], [1.0, 2.0]])
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    action = torch.tensor([[[0.5, 0.0]]])
    p = 0.25 * normal_pdf(0.5, 0, 0.5) * normal_pdf(0, 0, 0.5) + 0.75 * normal_pdf(0.5, 1, 1) * normal_pdf(0, -1, 2)
    assert math.log(p) == pytest.approx(-1.94485, abs=1e-4)
    assert gmm_ppo.mixture_log_prob(means, std, logits, action).item() == pytest.approx(math.log(p), abs=1e-5)
    assert gmm_ppo.log_prob(means, std, logits, action).item() == pytest.approx(math.log(p) / 2, abs=1e-5)
    assert gmm_ppo.mode_action(means, logits).tolist() == [[[1.0, -1.0]]]  # mean of the most likely mode


def test_official_clamp_saturates_where_per_dimension_does_not():
    # a Hopper-sized chunk (Tp*Da = 12) one sigma away from a mode with sigma 0.1:
    # per dimension log N = -log 0.1 - 0.5 log 2 pi - 0.5 = 0.8836, summed 10.6 > 2
    means = torch.zeros(2, 1, 4, 3)
    std = torch.full((1, 3), 0.1)
    logits = torch.zeros(2, 1)
    actions = torch.stack([torch.full((4, 3), 0.1), torch.full((4, 3), 0.11)])
    per_dim = [-math.log(0.1) - 0.5 * math.log(2 * math.pi) - 0.5 * (x / 0.1) ** 2 for x in (0.1, 0.11)]
    torch.testing.assert_close(gmm_ppo.log_prob(means, std, logits, actions), torch.tensor(per_dim))
    assert gmm_ppo.official_log_prob(means, std, logits, actions).tolist() == [2.0, 2.0]  # both saturated
    assert gmm_ppo.official_clamp_fraction(gmm_ppo.mixture_log_prob(means, std, logits, actions)) == 1.0


def test_sampling_follows_mode_weights():
    g = torch.Generator().manual_seed(1)
    n = 4000
    means = torch.tensor([-0.8, 0.0, 0.8]).view(1, 3, 1, 1).expand(n, 3, 2, 1)
    logits = torch.log(torch.tensor([0.2, 0.3, 0.5])).expand(n, 3)
    std = torch.full((3, 1), 0.01)
    chunks = gmm_ppo.sample_action(means, std, logits, generator=g)
    assert chunks.shape == (n, 2, 1)
    mode = (chunks[:, 0, 0, None] - torch.tensor([-0.8, 0.0, 0.8])).abs().argmin(-1)
    freq = torch.bincount(mode, minlength=3).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.2, 0.3, 0.5]), atol=0.03, rtol=0)
    # the Gaussian part: spread around the chosen mean with that mode's std, independent over the chunk
    resid = chunks[:, :, 0] - torch.tensor([-0.8, 0.0, 0.8])[mode][:, None]
    assert resid.std().item() == pytest.approx(0.01, rel=0.1)


def test_bc_on_two_mode_toy_puts_weight_on_both_modes():
    torch.manual_seed(0)
    n, Tp, Da = 512, 2, 2
    obs = torch.randn(n, 1, 3) * 0.1  # the observation carries no information about the mode
    sign = torch.where(torch.rand(n) < 0.5, 1.0, -1.0)
    actions = sign[:, None, None] * torch.full((n, Tp, Da), 0.5) + 0.05 * torch.randn(n, Tp, Da)
    policy = gmm_ppo.GMMPolicy(3, Da, Tp, 1, num_modes=5, mlp_dims=(32, 32, 32), init_std=0.1)
    policy.logvar.requires_grad_(False)  # fixed std, as in pre-training
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, n, (128,))
        loss = gmm_ppo.bc_loss(policy, obs[idx], actions[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        means, std, logits = policy(obs[:64])
        weights = torch.softmax(logits, -1)  # (64, M)
        centre = means.mean(dim=(-2, -1))  # (64, M) mean of each mode's chunk
        w_plus = (weights * (centre > 0.3)).sum(-1).mean().item()
        w_minus = (weights * (centre < -0.3)).sum(-1).mean().item()
        samples = gmm_ppo.sample_action(means, std, logits).mean(dim=(-2, -1))
    assert w_plus > 0.3 and w_minus > 0.3, (w_plus, w_minus)
    assert w_plus + w_minus > 0.9  # little weight left between the modes
    assert (samples > 0).float().mean().item() == pytest.approx(0.5, abs=0.2)
    assert torch.allclose(std, torch.tensor(0.1))  # std did not move in pre-training


def test_bad_inputs_fail_in_one_line(tmp_path):
    main_fails(
        gmm_ppo, gmm_ppo.Args(num_modes=0, run_dir=str(tmp_path / "r0")), prefix="error: --num-modes must be >= 1"
    )
    for policy in ("diffusion", "gaussian"):
        path = stub_checkpoint(tmp_path / f"{policy}.pt", policy, algo="x")
        main_fails(
            gmm_ppo,
            gmm_ppo.Args(checkpoint=path, eval_only=True, run_dir=str(tmp_path / policy)),
            f"holds a {policy} policy",
            "gmm",
            writes_nothing=False,
        )


def test_cli_pretrain_finetune_and_clamp_report(tiny_dataset, tmp_path):
    pre, ft = tmp_path / "pre", tmp_path / "ft"  # pre-training in-process (tyro parses the same flags), fine-tuning
    run_main(
        gmm_ppo,
        "--dataset",
        tiny_dataset,
        "--pretrain-only",
        "--pretrain-epochs",
        "1",  # through the CLI
        "--pretrain-batch-size",
        "32",
        "--eval-episodes",
        "1",
        "--run-dir",
        pre,
        *TINY,
    )
    ckpt = torch.load(pre / "pretrained.pt", weights_only=False)
    assert (ckpt["policy"], ckpt["algo"], ckpt["backbone"]) == ("gmm", "gmm_ppo", "mlp")
    assert ckpt["model_kwargs"]["num_modes"] == 5 and ckpt["model"]["logvar"].shape == (5, 3)
    assert set(ckpt["normalization"]) == {"obs_min", "obs_max", "action_min", "action_max"}

    proc = run_script(
        "gmm_ppo.py",
        "--checkpoint",
        pre / "pretrained.pt",
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "8",
        "--total-timesteps",
        "32",
        "--eval-episodes",
        "1",
        "--eval-freq",
        "1",
        "--run-dir",
        ft,
    )
    assert "iter 1/1" in proc.stdout
    read_summary(ft, algo="gmm_ppo", env_steps=32)
    ev = tmp_path / "ev"  # --eval-only of the fine-tuned checkpoint reports it at the env steps it was trained for
    gmm_ppo.main(
        gmm_ppo.Args(checkpoint=str(ft / "checkpoint_last.pt"), eval_only=True, eval_episodes=1, run_dir=str(ev))
    )
    read_summary(ev, env_steps=32)
    assert os.path.isfile(ft / "checkpoint_last.pt") and os.path.isfile(ft / "checkpoint_1.pt")
    tags = scalar_tags(ft)
    assert {"charts/episodic_return", "eval/episodic_return"} & tags
    assert {
        "losses/policy_loss",
        "losses/value_loss",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/entropy",
        "charts/SPS",
        "charts/official_clamp_saturated",
    } <= tags

    # the documented clamp report, in-process on the same checkpoint
    gmm_ppo.main(
        gmm_ppo.Args(
            checkpoint=str(pre / "pretrained.pt"),
            report_official_clamp=True,
            num_envs=2,
            n_steps=3,
            run_dir=str(tmp_path / "clamp"),
        )
    )
    report = json.loads((tmp_path / "clamp" / "official_clamp.json").read_text())
    assert report["samples"] == 6 and report["chunk_dims"] == 12
    frac = report["official_saturated_fraction"]
    assert frac * 6 == pytest.approx(round(frac * 6))  # a count of the 6 samples
    assert (frac == 1.0) == (report["summed_logprob_min"] > 2.0)  # all saturated iff even the least likely is above 2
    assert report["per_dim_logprob_mean"] * 12 == pytest.approx(report["summed_logprob_mean"], rel=1e-5)


@pytest.mark.parametrize("official", [True, False])
def test_the_stored_old_log_prob_is_the_density_the_update_compares_against(tmp_path, monkeypatch, official):
    """The rollout's old log-prob of every chunk (gmm_ppo.main) is the summed mixture log-density clamped to [-5, 2]
    (official, the Avoid default) or that density / (Tp*Da) clamped (per dimension), computed here with
    torch.distributions from the policy as it was before the update."""
    seen = []
    real_update = gmm_ppo.ppo_update

    def recording_update(policy, critic, actor_opt, critic_opt, batch, args, **kw):
        with torch.no_grad():
            means, std, logits = policy(batch["obs"])
        B, M, Tp, Da = means.shape
        scale = std[None, :, None, :].expand(B, M, Tp, Da).reshape(B, M, Tp * Da)
        mixture = D.MixtureSameFamily(
            D.Categorical(logits=logits), D.Independent(D.Normal(means.reshape(B, M, Tp * Da), scale), 1)
        )
        density = mixture.log_prob(batch["actions"].reshape(B, Tp * Da))
        seen.append((batch["logprobs"], (density if official else density / (Tp * Da)).clamp(-5.0, 2.0)))
        return real_update(policy, critic, actor_opt, critic_opt, batch, args, **kw)

    monkeypatch.setattr(gmm_ppo, "ppo_update", recording_update)
    flags = "--env-id avoid-m2 --num-envs 2 --n-steps 8 --batch-size 16 --total-timesteps 64 --eval-episodes 1"
    flags = [*flags.split(), "--run-dir", str(tmp_path / "run"), "--no-cuda"]
    run_main(gmm_ppo, *flags, *([] if official else ["--no-official-summed-logprob"]))
    assert seen
    for stored, expected in seen:
        torch.testing.assert_close(stored, expected, rtol=1e-5, atol=1e-5)
