"""Tests for cleandppo/exact_likelihood_pg.py.

The likelihood is checked against closed forms: for Gaussian data N(mu, S) the exact noise predictor
is eps*(x, t) = sqrt(1 - ab) (ab S + (1 - ab) I)^-1 (x - sqrt(ab) mu), and the probability-flow ODE
with it must return the log-density of the Gaussian marginal N(sqrt(ab) mu, ab S + (1 - ab) I).
Tolerances, per dimension (nats), measured in the docs page's table and stated here:
  RK4, step 0.01: 2e-3 (the floor is the DDPM prior truncation: ab(1) = 6e-6, not 0);
  Euler, step 0.001: 2e-2 (Euler is first order: about 0.35 nats/dim off at the official step 0.05).
"""

import copy
import math
import os

import pytest
import torch

from cleandppo import exact_likelihood_pg as el
from conftest import cli_fails, main_fails, read_checkpoint, read_summary, run_script, scalar_tags, stub_checkpoint

torch.set_num_threads(1)
K = 20


@pytest.fixture(scope="module")
def sde():
    return el.VPSDE(el.make_schedule(K)["betas"])


def gaussian_eps(sde, mu, cov):
    """The exact eps predictor of data N(mu, cov) under the VP marginal at time t (float64)."""
    eye = torch.eye(len(mu), dtype=torch.float64)

    def eps_fn(x, t):
        ab = sde.alpha_bar(t)
        c = ab * cov + (1 - ab) * eye
        return math.sqrt(1 - ab) * torch.linalg.solve(c, (x - math.sqrt(ab) * mu).T).T

    return eps_fn


def gaussian_marginal_logp(sde, mu, cov, x, t):
    ab = sde.alpha_bar(t)
    c = ab * cov + (1 - ab) * torch.eye(len(mu), dtype=torch.float64)
    return torch.distributions.MultivariateNormal(math.sqrt(ab) * mu, c).log_prob(x)


def test_vp_sde_reproduces_the_ddpm_schedule(sde):
    # hand values for K = 20 (the official cosine schedule, model/diffusion/sampling.py):
    # beta_0 = 0.008 -> beta(t) = -20 ln(1 - 0.008) = 0.1606 on [0, 1/20);
    # the last beta is capped at 0.999 -> -20 ln(0.001) = 138.155 on [19/20, 1]
    assert sde.rates[0] == pytest.approx(-20 * math.log(1 - 0.008), rel=2e-3)
    assert sde.rates[-1] == pytest.approx(-20 * math.log(0.001), rel=1e-4)
    assert sde.alpha_bar(0.0) == 1.0
    ab_discrete = torch.cumprod(1 - el.make_schedule(K)["betas"].double(), 0)
    for k in range(K):  # the network's step k was trained at noise level ab_k = ab((k+1)/K)
        assert sde.alpha_bar((k + 1) / K) == pytest.approx(ab_discrete[k].item(), rel=1e-6)
    # log ab is linear in between: beta(t) = -d log ab / dt
    t, dt = 7.3 / K, 1e-6
    assert -(math.log(sde.alpha_bar(t + dt)) - math.log(sde.alpha_bar(t - dt))) / (2 * dt) == pytest.approx(
        sde.rates[7]
    )
    # position between training levels: t = (k+1)/K -> (k, 0); halfway -> w = 0.5; clamped at both ends
    assert sde.step_interp(4 / K) == (3, 0.0)
    k, w = sde.step_interp(4.5 / K)
    assert k == 3 and w == pytest.approx(0.5)
    assert sde.step_interp(0.01) == (0, 0.0) and sde.step_interp(1.0) == (K - 1, 0.0)


def test_exact_divergence_of_a_linear_predictor(sde):
    # eps(x) = M x: drift = -beta/2 (x - M x / sigma), divergence = -beta/2 (D - tr(M) / sigma) exactly
    g = torch.Generator().manual_seed(0)
    D, t, beta = 5, 0.4, 3.0
    M = torch.randn(D, D, generator=g, dtype=torch.float64)
    x = torch.randn(3, D, generator=g, dtype=torch.float64)
    sigma = math.sqrt(1 - sde.alpha_bar(t))
    drift, div = el.drift_and_divergence(lambda y, s: y @ M.T, sde, x, t, beta)
    torch.testing.assert_close(drift, -0.5 * beta * (x - x @ M.T / sigma))
    torch.testing.assert_close(div, torch.full((3,), -0.5 * beta * (D - M.trace().item() / sigma), dtype=torch.float64))
    # Rademacher probes are exact on a diagonal Jacobian (v_i^2 = 1)
    diag = torch.diag(torch.tensor([0.5, -1.0, 2.0, 0.1, 3.0], dtype=torch.float64))
    probes = el.rademacher((3, 4, D), generator=g).double()
    _, div_h = el.drift_and_divergence(lambda y, s: y @ diag, sde, x, t, beta, probes)
    torch.testing.assert_close(div_h, torch.full((3,), -0.5 * beta * (D - 4.6 / sigma), dtype=torch.float64))


def test_hutchinson_is_unbiased_for_the_trace(sde):
    # v^T A v = tr A + sum_{i != j} A_ij v_i v_j; its variance for Rademacher v is sum_{i<j} (A_ij + A_ji)^2
    g = torch.Generator().manual_seed(1)
    D, t, beta, n = 6, 0.3, 2.0, 20000
    M = torch.randn(D, D, generator=g, dtype=torch.float64)
    x = torch.randn(1, D, generator=g, dtype=torch.float64).expand(n, D)
    probes = el.rademacher((n, 1, D), generator=g).double()
    _, exact = el.drift_and_divergence(lambda y, s: y @ M.T, sde, x[:1], t, beta)
    _, est = el.drift_and_divergence(lambda y, s: y @ M.T, sde, x, t, beta, probes)
    sigma = math.sqrt(1 - sde.alpha_bar(t))
    A = 0.5 * beta * M / sigma  # the Jacobian of the drift, minus its diagonal constant
    var = sum((A[i, j] + A[j, i]) ** 2 for i in range(D) for j in range(i + 1, D)).item()
    assert est.var().item() == pytest.approx(var, rel=0.05)
    assert abs(est.mean().item() - exact.item()) < 4 * math.sqrt(var / n)


@pytest.mark.parametrize("s", [0.1, 0.3])
def test_isotropic_gaussian_exact_likelihood(sde, s):
    g = torch.Generator().manual_seed(2)
    D = 12  # a Hopper chunk: Tp 4 x Da 3
    mu = (torch.rand(D, generator=g, dtype=torch.float64) > 0.5).double() * 0.6 - 0.3
    cov = s**2 * torch.eye(D, dtype=torch.float64)
    x = mu + s * torch.randn(32, D, generator=g, dtype=torch.float64)
    eps_fn = gaussian_eps(sde, mu, cov)
    # the default lower end t_min = 1/K: the density of the first DDPM noise level
    ref = gaussian_marginal_logp(sde, mu, cov, x, 1 / K)
    rk4 = el.pf_ode_log_likelihood(eps_fn, sde, x, 1 / K, 0.01, "rk4")
    assert ((rk4 - ref) / D).abs().max().item() < 2e-3
    euler = el.pf_ode_log_likelihood(eps_fn, sde, x, 1 / K, 0.001, "euler")
    assert ((euler - ref) / D).abs().max().item() < 2e-2
    if s == 0.3:  # near t = 0 the marginal is the data density itself: log N(x; mu, s^2 I)
        data = torch.distributions.Normal(mu, s).log_prob(x).sum(-1)
        near0 = el.pf_ode_log_likelihood(eps_fn, sde, x, 1e-4, 0.01, "rk4")
        assert ((near0 - data) / D).abs().max().item() < 2e-3


def test_full_covariance_gaussian_exact_and_hutchinson(sde):
    g = torch.Generator().manual_seed(3)
    D = 6
    A = torch.randn(D, D, generator=g, dtype=torch.float64) * 0.15
    cov = A @ A.T + 0.01 * torch.eye(D, dtype=torch.float64)
    mu = torch.rand(D, generator=g, dtype=torch.float64) * 0.4 - 0.2
    x = mu + torch.randn(4, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    eps_fn = gaussian_eps(sde, mu, cov)
    exact = el.pf_ode_log_likelihood(eps_fn, sde, x, 1 / K, 0.05, "rk4")
    ref = gaussian_marginal_logp(sde, mu, cov, x, 1 / K)
    assert ((exact - ref) / D).abs().max().item() < 2e-3
    # Hutchinson (one probe per row) on copies of the first point: unbiased for the same ODE solve
    n = 400
    probes = el.rademacher((n, 1, D), generator=g).double()
    hutch = el.pf_ode_log_likelihood(eps_fn, sde, x[:1].expand(n, D), 1 / K, 0.05, "rk4", probes)
    assert abs(hutch.mean().item() - exact[0].item()) < 4 * hutch.std().item() / math.sqrt(n)
    assert hutch.std().item() > 1e-3  # the estimate is really random for a full covariance


class StepConstant(torch.nn.Module):
    """A stand-in network that outputs value + k at step k (ignores x and obs); chunks of 2 steps x 1 action dim."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.horizon_steps, self.action_dim = 2, 1

    def forward(self, x, t, obs):
        return torch.zeros_like(x) + self.value + t.float().view(-1, 1, 1)


def test_policy_eps_interpolates_between_levels_and_splits_networks():
    sde6 = el.VPSDE(el.make_schedule(6)["betas"])
    frozen, ft = StepConstant(100.0), StepConstant(0.0)
    obs = torch.zeros(2, 1, 3)
    eps_fn = el.policy_eps_fn(frozen, ft, 3, sde6, obs)  # steps 0, 1, 2 fine-tuned
    x = torch.zeros(2, 2)
    assert eps_fn(x, 1 / 6)[0, 0].item() == 0.0  # step 0, fine-tuned net
    assert eps_fn(x, 3 / 6)[0, 0].item() == 2.0  # step 2, fine-tuned
    assert eps_fn(x, 4 / 6)[0, 0].item() == 103.0  # step 3, frozen
    assert eps_fn(x, 2.5 / 6)[0, 0].item() == pytest.approx(1.5)  # halfway between steps 1 and 2
    assert eps_fn(x, 3.25 / 6)[0, 0].item() == pytest.approx(0.75 * 2 + 0.25 * 103)  # across the split
    assert eps_fn(torch.zeros(6, 2), 0.5 / 6).shape == (6, 2)  # replicas of the batch tile obs
    # with the x0 clamp (as the sampler): x0 = (x - sigma eps) / sqrt(ab); eps = (x - sqrt(ab) clamp(x0)) / sigma
    clipped = el.policy_eps_fn(frozen, StepConstant(0.0), 6, sde6, obs, clip=1.0)  # eps = 0 at step 0
    ab = sde6.alpha_bar(1 / 6)
    out = clipped(torch.tensor([[0.5, 2.0], [-3.0, 0.0]]), 1 / 6)
    expected = [[0.0, (2.0 - math.sqrt(ab)) / math.sqrt(1 - ab)], [(-3.0 + math.sqrt(ab)) / math.sqrt(1 - ab), 0.0]]
    torch.testing.assert_close(out, torch.tensor(expected))


@pytest.fixture
def float64_default():
    torch.set_default_dtype(torch.float64)  # the time embedding follows the default dtype
    yield
    torch.set_default_dtype(torch.float32)


def test_gradient_goes_through_the_ode_and_the_divergence(float64_default):
    torch.manual_seed(0)
    kw = dict(
        obs_dim=3,
        action_dim=2,
        horizon_steps=2,
        cond_steps=1,
        denoising_steps=6,
        backbone="mlp",
        time_dim=4,
        mlp_dims=(8, 8, 8),
        activation="mish",
    )
    actor = el.build_network(kw).requires_grad_(False)
    actor_ft = copy.deepcopy(actor).requires_grad_(True)
    sde6 = el.VPSDE(el.make_schedule(6)["betas"])
    args = el.Args(denoising_steps=6, ft_denoising_steps=3)
    obs, chunk = torch.randn(2, 1, 3, dtype=torch.float64), torch.rand(2, 2, 2, dtype=torch.float64) - 0.5
    logp = el.action_log_likelihood(actor, actor_ft, sde6, obs, chunk, args, create_graph=True).sum()
    logp.backward()
    assert all(p.grad is None for p in actor.parameters())
    p = actor_ft.mlp.out.bias
    for i in range(2):  # autograd against central finite differences of the whole ODE solve
        with torch.no_grad():
            p[i] += 1e-5
            up = el.action_log_likelihood(actor, actor_ft, sde6, obs, chunk, args).sum()
            p[i] -= 2e-5
            down = el.action_log_likelihood(actor, actor_ft, sde6, obs, chunk, args).sum()
            p[i] += 1e-5
        assert p.grad[i].item() == pytest.approx(((up - down) / 2e-5).item(), rel=1e-4, abs=1e-7)
    w = actor_ft.mlp.inp.weight  # the output bias only moves x; this weight also changes the Jacobian trace
    with torch.no_grad():
        w[0, 0] += 1e-5
        up = el.action_log_likelihood(actor, actor_ft, sde6, obs, chunk, args).sum()
        w[0, 0] -= 2e-5
        down = el.action_log_likelihood(actor, actor_ft, sde6, obs, chunk, args).sum()
        w[0, 0] += 1e-5
    assert w.grad[0, 0].item() == pytest.approx(((up - down) / 2e-5).item(), rel=1e-4, abs=1e-7)
    assert abs(w.grad[0, 0].item()) > 1e-4  # a gradient that is there, not a zero matched by a zero


def test_cli_smoke_resume_and_bad_inputs(tiny_diffusion_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # --capture-video below: no GL backend, one line, the run goes on
    monkeypatch.delenv("DISPLAY", raising=False)
    run = tmp_path / "run"
    common = [
        "--denoising-steps",
        "6",
        "--ft-denoising-steps",
        "3",
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "8",
        "--grad-chunk-size",
        "3",
        "--eval-episodes",
        "1",
        "--eval-freq",
        "1",
        "--critic-dims",
        "16",
        "16",
        "16",
        "--sde-step-size",
        "0.17",
        "--run-dir",
        run,
    ]  # one ODE step per DDPM step
    proc = run_script(
        "exact_likelihood_pg.py",
        "--checkpoint",
        tiny_diffusion_checkpoint,
        "--total-timesteps",
        "32",
        "--hutchinson-probes",
        "2",
        "--sde-method",
        "euler",
        "--capture-video",
        *common,
    )
    assert "iter 1/1" in proc.stdout and "divergence Hutchinson, 2 Rademacher probes" in proc.stdout
    read_summary(run, algo="exact_likelihood_pg", env_steps=32)
    assert "--capture-video: Hopper-v2 cannot render" in proc.stderr and not os.path.exists(run / "eval.mp4")
    read_checkpoint(
        run,
        {"model", "model_ft", "critic", "actor_optimizer", "critic_optimizer", "rng"},
        algo="exact_likelihood_pg",
        policy="diffusion",
        iteration=1,
        ft_denoising_steps=3,
    )
    assert os.path.isfile(run / "checkpoint_1.pt")

    # resume from our own checkpoint (in-process; the defaults: exact divergence, RK4): continues at iteration 2
    el.main(
        el.Args(
            checkpoint=str(run / "checkpoint_last.pt"),
            total_timesteps=64,
            denoising_steps=6,
            ft_denoising_steps=3,
            num_envs=2,
            n_steps=4,
            batch_size=8,
            grad_chunk_size=3,
            eval_episodes=1,
            eval_freq=1,
            critic_dims=(16, 16, 16),
            sde_step_size=0.17,
            run_dir=str(run),
        )
    )
    out = capsys.readouterr().out
    assert (
        "iter 2/2" in out
        and "evaluating the pre-trained" not in out
        and "PF-ODE rk4" in out
        and "divergence exact" in out
    )
    read_summary(run, env_steps=64)
    assert {
        "eval/episodic_return",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/approx_kl",
        "losses/clipfrac",
        "values/logprob_mean",
        "values/value_mean",
        "charts/SPS",
        "charts/learning_rate",
        "charts/peak_memory_mb",
        "time/rollout_s",
        "time/update_s",
    } <= scalar_tags(run)

    # bad input: a non-diffusion checkpoint -> one line naming the fix, nothing written
    gauss = stub_checkpoint(tmp_path / "gaussian.pt", "gaussian")
    cli_fails(
        "exact_likelihood_pg.py",
        "--checkpoint",
        gauss,
        "--run-dir",
        tmp_path / "bad",
        needles=["gaussian", "diffusion"],
        run_dir=tmp_path / "bad",
    )


@pytest.mark.parametrize(
    "flags,message",
    [
        (dict(batch_size=5000, num_envs=2, n_steps=4), "--batch-size 5000 > the 8 samples"),
        (dict(act_steps=5), "--act-steps 5 > --horizon-steps 4"),
        (dict(hutchinson_probes=-1), "--hutchinson-probes must be >= 0"),
        (dict(sde_eps=0.0), "--sde-eps must be in (0, 1)"),
        (dict(batch_size=0), "--batch-size must be >= 1"),
    ],
)
def test_bad_arguments_fail_in_one_line(flags, message, tmp_path):
    main_fails(el, el.Args(run_dir=str(tmp_path / "r"), **flags), prefix="error: " + message)
