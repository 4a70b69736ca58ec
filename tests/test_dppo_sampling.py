"""dppo.py's sampler and denoising log-prob, the hot paths of a DPPO iteration, against computations written here.

What this file pins, each against plain formulas (paper sections 3-4 and D.1; Ho et al. 2020 eq. 7 and 15 for the
DDPM posterior, Song et al. 2021 eq. 12 for DDIM; the official `p_mean_var`, `forward` and `get_logprobs` in
model/diffusion/diffusion_vpg.py, the log-prob clamp in model/diffusion/diffusion_ppo.py):
  - which network runs each denoising step: the frozen `actor` for the first K - K' executed steps, `actor_ft` for the
    last K', exactly at the boundary, for DDPM and DDIM plans and every K' from 0 to the number of steps;
  - the mean and the std of every step of `sample` in each mode (DDPM/DDIM x 'train'/'eval'): the sampled chain is
    recovered step by step from the inputs the networks saw, and (x_out - mean) / std must be a standard normal
    clipped at randn_clip_value (checked by its range, its clipped fraction and its moments on 8k elements a step);
  - `denoising_log_prob` and `chain_log_probs` on hand-built chains whose outputs lie u standard deviations from the
    step's mean: the log-prob is the mean over the executed rows of clamp(-u^2/2 - log(std) - log(2 pi)/2, -5, 2),
    with the x0 clamp at denoised_clip_value and the std floor min_logprob_denoising_std, each checked to bind.
Pinned elsewhere (not repeated): the schedule constants (test_shared_copies.py::test_cosine_schedule_and_posterior_
constants, every entry of make_schedule); one DDPM step (test_shared_copies.py::test_ddpm_step_mean_and_variance,
test_dppo.py::test_ddpm_step_matches_the_posterior_equations); the x0 clamp at t = 0 (test_dppo.py::
test_x0_is_clamped_before_the_posterior_mean); DDIM eval with eta 0 over a whole chain and its plan for K = 20, S = 5
(test_dppo.py::test_ddim_eta1_has_ddpm_variance_and_eta0_is_deterministic); the official DDIM x0 form
(test_official.py); the rows of the log-prob (test_dppo.py::test_only_the_first_act_steps_count_in_the_log_prob);
chain_log_probs' pairing of samples, observations and steps (test_dppo.py::test_chain_log_probs_give_each_pair_its_
own_observation_and_denoising_step); that evaluation runs the fine-tuned network (test_dppo.py).
"""

import math

import pytest
import torch
import torch.nn as nn

from cleandppo import dppo

torch.set_num_threads(1)
Tp, Da, OBS_DIM = 4, 2, 3


class RecordingEps(nn.Module):
    """eps = scale x + shift + t_coef t + obs_coef sum(obs): each network its own; it records (t, x_t) of each call
    that runs one denoising step for its whole batch (the sampler's calls)."""

    def __init__(self, scale, shift, t_coef=0.05, obs_coef=0.1):
        super().__init__()
        self.scale, self.shift, self.t_coef, self.obs_coef, self.calls = scale, shift, t_coef, obs_coef, []
        self.horizon_steps, self.action_dim = Tp, Da

    def eps(self, x, t, obs):
        """The prediction in float64, for the expected values."""
        return self.scale * x + self.shift + self.t_coef * t + self.obs_coef * obs.flatten(1).sum(1).view(-1, 1, 1)

    def forward(self, x, t, obs):
        if (t == t[0]).all():  # a sampler call: one denoising step for the whole batch
            self.calls.append((int(t[0]), x.detach().clone()))
        obs_term = self.obs_coef * obs.flatten(1).sum(1).view(-1, 1, 1)
        return self.scale * x + self.shift + self.t_coef * t.float().view(-1, 1, 1) + obs_term


def schedule_values(sched, t, t_prev):
    """(alpha_bar_t, alpha_bar_{t_prev}, beta_t) in float64 from the schedule's alpha_bar and betas; alpha_bar_{-1} = 1
    (beta_t: the DDPM step's, t_prev = t - 1)."""
    ab = sched["alpha_bar"].double()
    return ab[t].item(), ab[t_prev].item() if t_prev >= 0 else 1.0, sched["betas"].double()[t].item()


def expected_step(pred, x, t, t_prev, ddim, eta, clip):
    """(mean, natural std, x0) of x_{t_prev} given x_t (float64), written from the papers, not from dppo.py; `pred`:
    the noise prediction and the schedule (predictor).
    DDPM (Ho et al. eq. 15, 7): x0 = (x - sqrt(1 - ab) eps)/sqrt(ab) clamped; mean = sqrt(ab_prev) beta/(1 - ab) x0 +
    sqrt(1 - beta)(1 - ab_prev)/(1 - ab) x; var = beta (1 - ab_prev)/(1 - ab), floored at 1e-20 (official
    ddpm_logvar_clipped). DDIM (Song et al. eq. 12, official p_mean_var): the same clamped x0, eps recomputed from it,
    sigma = eta sqrt((1 - ab_prev)/(1 - ab)) sqrt(1 - ab/ab_prev) floored at 1e-10, mean = sqrt(ab_prev) x0 +
    sqrt(1 - ab_prev - sigma^2) eps."""
    ab, ab_prev, beta = pred["schedule"](t, t_prev)
    e = pred["fn"](x, t)
    x0 = ((x - math.sqrt(1 - ab) * e) / math.sqrt(ab)).clamp(-clip, clip)
    if not ddim:
        mean = math.sqrt(ab_prev) * beta / (1 - ab) * x0 + math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab) * x
        return mean, math.sqrt(max(beta * (1 - ab_prev) / (1 - ab), 1e-20)), x0
    e = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    sigma = max(eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)), 1e-10)
    mean = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * e
    return mean, sigma, x0


def predictor(net, sched, obs):
    """What expected_step needs of a network and a schedule, in float64."""
    obs64 = obs.double()
    return dict(fn=lambda x, t: net.eps(x, t, obs64), schedule=lambda t, tp: schedule_values(sched, t, tp))


# ---- 1. which network runs which step -------------------------------------------------------------------------------
@pytest.mark.parametrize("K, ddim_steps", [(6, None), (12, 4)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_frozen_network_runs_the_first_steps_and_the_fine_tuned_one_the_last_k_prime(K, ddim_steps, mode):
    """Noise clipped to 0 (randn_clip_value = 0) makes every step x_out = mean: the chain is then a function of
    x_K and of which network ran each step. The frozen network predicts eps = 0.4 + 0.05 t, the fine-tuned one
    eps = -0.3 + 0.05 t (plus the same observation term), different enough that the wrong one at any step moves
    x_out by > 1e-3 (checked). For each K' the calls must be: frozen at exactly the first n - K' timesteps of the
    plan, fine-tuned at the last K', once each; the chain holds the input of the first fine-tuned step then the
    outputs of the K' fine-tuned steps; each recorded step maps its input to the next one by its own network."""
    sched, plan = dppo.make_schedule(K), dppo.denoising_plan(K, ddim_steps)
    n, ddim = len(plan), ddim_steps is not None
    eta = 0.0 if (ddim and mode == "eval") else 1.0
    clip = 1e3  # no x0 saturation: at the noisiest step both networks' x0 would clamp to the same value
    args = dppo.Args(ddim_steps=ddim_steps, randn_clip_value=0.0, denoised_clip_value=clip)
    obs = torch.randn(16, 1, OBS_DIM, generator=torch.Generator().manual_seed(0))
    for ft_steps in sorted({0, 1, 2, n - 1, n}):
        actor, actor_ft = RecordingEps(0.0, 0.4), RecordingEps(0.0, -0.3)
        out, chain = dppo.sample(actor, actor_ft, sched, obs, plan, ft_steps, mode, args, torch.Generator())
        ts = [t for t, _ in plan]
        assert [t for t, _ in actor.calls] == ts[: n - ft_steps]
        assert [t for t, _ in actor_ft.calls] == ts[n - ft_steps :]
        inputs = [x for _, x in actor.calls + actor_ft.calls]  # inputs in execution order
        assert chain.shape == (16, ft_steps + 1 if ft_steps else 0, Tp, Da)
        if ft_steps:
            torch.testing.assert_close(chain, torch.stack([*inputs[n - ft_steps :], out], 1), rtol=0, atol=0)
        outputs = inputs[1:] + [out]
        for i, (t, t_prev) in enumerate(plan):
            right, wrong = (actor_ft, actor) if i >= n - ft_steps else (actor, actor_ft)
            x = inputs[i].double()
            mean, _, _ = expected_step(predictor(right, sched, obs), x, t, t_prev, ddim, eta, clip)
            other, _, _ = expected_step(predictor(wrong, sched, obs), x, t, t_prev, ddim, eta, clip)
            assert (mean - other).abs().max() > 1e-3  # the step tells the two networks apart
            torch.testing.assert_close(outputs[i].double(), mean, rtol=1e-4, atol=1e-5)


# ---- 2. per-step mean and std of each mode ---------------------------------------------------------------------------
def clipped_normal_moments(c):
    """(P(|z| >= c), std) of a standard normal clipped to [-c, c] (values beyond set to +-c)."""
    tail = math.erfc(c / math.sqrt(2))  # P(|z| > c)
    pdf = math.exp(-(c**2) / 2) / math.sqrt(2 * math.pi)
    return tail, math.sqrt((1 - tail) - 2 * c * pdf + c**2 * tail)


def check_clipped_standard_normal(z, c, where):
    """z: one step's standardised noise, all elements. Range, clipped fraction, mean and std of N(0, 1) clipped at c."""
    z = z.flatten()
    tail, sd = clipped_normal_moments(c)
    n = z.numel()
    assert z.abs().max() <= c + 1e-3, f"{where}: noise beyond the clip {c}: {z.abs().max():.3f}"
    frac = (z.abs() > c - 1e-3).double().mean().item()
    assert abs(frac - tail) < 5 * math.sqrt(tail * (1 - tail) / n) + 1e-3, f"{where}: clipped fraction {frac:.4f}"
    assert abs(z.mean().item()) < 5 * sd / math.sqrt(n), f"{where}: mean {z.mean():.4f}"
    assert abs(z.std().item() / sd - 1) < 0.06, f"{where}: std {z.std():.4f}, expected {sd:.4f}"


def mode_std(natural, t, ddim, mode, args):
    """The std the sampler must use (paper 4.3, D.1; official VPGDiffusion.forward): 'train' floors it at
    min_sampling_denoising_std (DDIM eta 1); 'eval' keeps the DDPM std floored at 1e-3 but none at the last step
    (t = 0), and none at all under DDIM (eta 0)."""
    if mode == "train":
        return max(natural, args.min_sampling_denoising_std)
    if ddim:
        return 0.0
    return max(natural, 1e-3) if t > 0 else 0.0


def run_and_check_modes(sched, plan, ddim_steps, mode, args, nets=None, B=1000):
    """Sample B chains, then check every step's mean and std against expected_step / mode_std. Returns, per step,
    whether its std floor bound and the fraction of x0 elements the clamp changed."""
    ddim = ddim_steps is not None
    eta = 0.0 if (ddim and mode == "eval") else 1.0
    n, ft_steps = len(plan), len(plan) // 2
    actor, actor_ft = nets or (RecordingEps(0.3, 0.2), RecordingEps(-0.2, -0.1))
    obs = torch.randn(B, 1, OBS_DIM, generator=torch.Generator().manual_seed(1)) * 0.3
    out, chain = dppo.sample(actor, actor_ft, sched, obs, plan, ft_steps, mode, args, torch.Generator().manual_seed(2))
    inputs = [x for _, x in actor.calls + actor_ft.calls]
    assert [t for t, _ in actor.calls + actor_ft.calls] == [t for t, _ in plan]
    torch.testing.assert_close(chain, torch.stack([*inputs[n - ft_steps :], out], 1), rtol=0, atol=0)
    outputs, report = inputs[1:] + [out], []
    for i, (t, t_prev) in enumerate(plan):
        net = actor_ft if i >= n - ft_steps else actor
        x = inputs[i].double()
        mean, natural, x0_raw = expected_step(
            predictor(net, sched, obs), x, t, t_prev, ddim, eta, math.inf
        )  # unclamped x0, to count how often the clamp binds
        mean, natural, _ = expected_step(predictor(net, sched, obs), x, t, t_prev, ddim, eta, args.denoised_clip_value)
        std = mode_std(natural, t, ddim, mode, args)
        where = f"{mode} {'DDIM' if ddim else 'DDPM'} step {i} (t = {t}, std {std:.4g})"
        if std == 0.0:
            torch.testing.assert_close(outputs[i].double(), mean, rtol=1e-5, atol=1e-5, msg=where)
        else:
            check_clipped_standard_normal((outputs[i].double() - mean) / std, args.randn_clip_value, where)
        report.append((std > natural, (x0_raw.abs() > args.denoised_clip_value).double().mean().item()))
    return report


@pytest.mark.parametrize("ddim_steps", [None, 5])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_each_step_samples_its_mode_mean_and_std_with_clipped_noise(ddim_steps, mode):
    """K = 20 (DDIM: 5 steps of 4), non-default clips so that each one binds: x0 at 0.8, the noise at 2 std, the
    training std floor at 0.15 (it binds at the cleanest steps only). The checks cover: train vs eval std, the
    missing noise of eval's last DDPM step and of eval DDIM, DDIM's eta (1 in training: sigma and the mean's
    sqrt(1 - ab_prev - sigma^2) factor; 0 in evaluation), the noise clip and the x0 clamp."""
    K = 20
    args = dppo.Args(
        ddim_steps=ddim_steps, denoised_clip_value=0.8, randn_clip_value=2.0, min_sampling_denoising_std=0.15
    )
    report = run_and_check_modes(dppo.make_schedule(K), dppo.denoising_plan(K, ddim_steps), ddim_steps, mode, args)
    floored, x0_clamped = zip(*report, strict=True)
    if mode == "train":
        assert any(floored) and not all(floored)  # the std floor binds at some steps, not at all
    assert 0.1 < sum(x0_clamped) / len(x0_clamped) < 0.9  # the x0 clamp changes some elements, not all


def test_eval_ddpm_floors_the_std_at_1e_3_before_the_last_step(monkeypatch):
    """The eval floor 1e-3 (official `std.clip(min=1e-3)` when deterministic) binds only where the posterior std is
    below it, which no cosine schedule of up to 1000 steps has before t = 0: a schedule of tiny first betas does.
    The networks predict eps = 0 there: with alpha_bar within 1e-6 of 1, a float32 sqrt(1/ab - 1) eps would be off
    by more than the 1e-3 std this test measures."""
    betas = torch.tensor([1e-7, 2e-7, 0.05, 0.3, 0.6])
    monkeypatch.setattr(dppo, "cosine_beta_schedule", lambda K: betas.clone())
    sched = dppo.make_schedule(5)
    ab = torch.cumprod(1 - betas.double(), 0)
    assert math.sqrt(betas[1] * (1 - ab[0]) / (1 - ab[1])) < 1e-3  # t = 1: posterior std below the floor
    args = dppo.Args(randn_clip_value=2.0)
    nets = RecordingEps(0.0, 0.0, 0.0, 0.0), RecordingEps(0.0, 0.0, 0.0, 0.0)
    report = run_and_check_modes(sched, dppo.denoising_plan(5, None), None, "eval", args, nets)
    assert report[-2][0]  # the floor bound at t = 1


# ---- 3. the denoising log-prob ---------------------------------------------------------------------------------------
LOG_2PI = math.log(2 * math.pi)


def build_chain(net, sched, obs, x_first, ft_plan, ddim, args, u):
    """A hand-built chain: x_{j+1} = mean_j + std_j * u[:, j], with mean_j and the log-prob's std_j (natural std, eta 1,
    floored at min_logprob_denoising_std) written here. Returns the chain, the expected log-probs (B, K') and, per step,
    whether the std floor bound, the fraction of x0 elements clamped and whether the density was clamped below and
    above (executed rows)."""
    xs, logps, info = [x_first.double()], [], []
    for j, (t, t_prev) in enumerate(ft_plan):
        pred = predictor(net, sched, obs)
        mean, natural, _ = expected_step(pred, xs[-1], t, t_prev, ddim, 1.0, args.denoised_clip_value)
        _, _, x0_raw = expected_step(pred, xs[-1], t, t_prev, ddim, 1.0, math.inf)
        std = max(natural, args.min_logprob_denoising_std)
        xs.append(mean + std * u[:, j])
        elementwise = -(u[:, j] ** 2) / 2 - math.log(std) - LOG_2PI / 2  # Gaussian log-density at mean + std u
        executed = elementwise[:, : args.act_steps]
        logps.append(executed.clamp(-5.0, 2.0).mean(dim=(1, 2)))  # official clamp, then the executed rows' mean
        x0_clamped = (x0_raw[:, : args.act_steps].abs() > args.denoised_clip_value).double().mean().item()
        below, above = (executed < -5).any().item(), (executed > 2).any().item()
        info.append((natural < args.min_logprob_denoising_std, x0_clamped, below, above))
    return torch.stack(xs, 1).float(), torch.stack(logps, 1), info


@pytest.mark.parametrize("K, ddim_steps, K_ft", [(10, None, 10), (10, None, 4), (20, 5, 5)])
def test_denoising_log_prob_is_the_clamped_gaussian_density_of_each_step(K, ddim_steps, K_ft):
    """The log-prob of a step (paper eq. 4.3): Normal(mean, max(std, min_logprob_denoising_std)) at x_out, per
    element, clamped to [-5, 2], averaged over the first act_steps rows (official get_logprobs + PPODiffusion.loss).
    Offsets u from -4.5 to 4.5 std put elements under both clamp edges (the upper one where the floor 0.04 gives a
    peak density of 2.30); non-default x0 clip 0.6 and std floor 0.04, each checked to bind somewhere and not
    everywhere. chain_log_probs of the whole chain and denoising_log_prob of each step must give the same values."""
    B = 12
    args = dppo.Args(ddim_steps=ddim_steps, act_steps=3, denoised_clip_value=0.6, min_logprob_denoising_std=0.04)
    sched, plan = dppo.make_schedule(K), dppo.denoising_plan(K, ddim_steps)
    ft_plan = plan[len(plan) - K_ft :]
    net = RecordingEps(0.3, 0.2)
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(B, 1, OBS_DIM, generator=g) * 0.3
    u = torch.linspace(-4.5, 4.5, B * K_ft * Tp * Da, dtype=torch.float64)
    u = u[torch.randperm(u.numel(), generator=g)].view(B, K_ft, Tp, Da)
    x_first = torch.randn(B, Tp, Da, generator=g) * 1.5
    chains, expected, info = build_chain(net, sched, obs, x_first, ft_plan, ddim_steps is not None, args, u)
    floored, x0_clamped, below, above = zip(*info, strict=True)
    assert any(floored) and not all(floored) and any(below) and any(above)
    assert 0.1 < sum(x0_clamped) / K_ft < 0.9  # the x0 clamp changes some of the executed elements, not all

    got = dppo.chain_log_probs(net, sched, obs, chains, args)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=2e-4)
    for j, (t, t_prev) in enumerate(ft_plan):
        t_b, t_prev_b = torch.full((B,), t), torch.full((B,), t_prev)
        one = dppo.denoising_log_prob(net, sched, obs, chains[:, j], chains[:, j + 1], t_b, t_prev_b, args)
        torch.testing.assert_close(one.double(), expected[:, j], rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("K, S", [(20, None), (20, 5), (20, 20), (20, 1), (100, 10), (12, 4)])
def test_denoising_plan_is_the_official_timestep_grid(K, S):
    """DDPM: t = K-1, ..., 0. DDIM (official DiffusionModel, 'uniform'): ddim_t = arange(S) * (K // S), flipped; each
    step's predecessor is the next grid point, -1 after the last (its alpha_bar_prev is 1)."""
    grid = list(range(K - 1, -1, -1)) if S is None else [k * (K // S) for k in range(S)][::-1]
    assert dppo.denoising_plan(K, S) == list(zip(grid, grid[1:] + [-1], strict=True))
