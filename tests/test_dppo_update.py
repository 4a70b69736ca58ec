"""dppo.ppo_update against the update as first written (a straightforward loop over minibatches of (env step, denoising
step) pairs, the critic run on every pair, each logged number read on its own), written out here with its own
denoising log-prob: the weights of both networks after one call and the logged stats agree within 1e-6.

The update has been made faster (the policy loss back-propagated in chunks of pairs, the critic once per env-step
sample of a minibatch, one read-back of the logged numbers per minibatch); this test holds its arithmetic to the plain
form. It runs eight minibatches over two epochs with SGD with momentum, so that every minibatch's loss, gradient and
step must agree, not only the first (SGD: a step in proportion to the gradient, which Adam's first, normalised steps
would hide); in one pass per minibatch and in chunks of 3 pairs.
"""

import copy
import math

import pytest
import torch

from cleandppo import dppo, workers

torch.set_num_threads(1)

K, K_FT, TP, DA, OBS_DIM, SAMPLES, ACT_STEPS = 6, 3, 3, 2, 3, 12, 2


def reference_log_prob(net, sched, obs, x_in, x_out, t, args):
    """log pi(x_out | x_in, s) of the DDPM step at t (paper eqs. 3.3, 4.3), per sample: x0 predicted from the noise and
    clamped, the posterior mean and std (std floored at min_logprob_denoising_std), the Normal log-density per element
    clamped to [-5, 2], averaged over the first act_steps rows and the action dims."""
    eps = net(x_in, t, obs)
    beta, ab = sched["betas"][t].view(-1, 1, 1), sched["alpha_bar"][t].view(-1, 1, 1)
    ab_prev = torch.where(t > 0, sched["alpha_bar"][(t - 1).clamp(min=0)], torch.ones(())).view(-1, 1, 1)
    x0 = ((x_in - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-args.denoised_clip_value, args.denoised_clip_value)
    mean = beta * ab_prev.sqrt() / (1 - ab) * x0 + (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab) * x_in
    std = (beta * (1 - ab_prev) / (1 - ab)).sqrt().clamp(min=args.min_logprob_denoising_std)
    density = torch.distributions.Normal(mean, std).log_prob(x_out).clamp(-5.0, 2.0)
    return density[:, : args.act_steps].mean(dim=(1, 2))


def reference_update(net, critic, actor_opt, critic_opt, sched, batch, args, update_actor, generator):
    """The PPO update over the pairs (paper 4.2, eq. 4.5; D.4), plain: per minibatch of pairs (i, j) = (env-step sample,
    fine-tuned step, j = 0 the noisiest, DDPM timestep K' - 1 - j), advantages normalised over the minibatch's pairs and
    then discounted by gamma_denoising^(K' - 1 - j), clip ratio of step j exponential from clip_ploss_coef_base to
    clip_ploss_coef, value loss of the critic on every pair; each logged number read on its own.
    Returns (stats, minibatches run)."""
    n_ft = batch["chains"].shape[1] - 1
    pairs = len(batch["obs"]) * n_ft
    mb = min(args.batch_size, pairs)
    u = [j / (n_ft - 1) for j in range(n_ft)]
    base, top, rate = args.clip_ploss_coef_base, args.clip_ploss_coef, args.clip_ploss_coef_rate
    clips = torch.tensor([base + (top - base) * (math.exp(rate * x) - 1) / (math.exp(rate) - 1) for x in u])
    discounts = torch.tensor([args.gamma_denoising ** (n_ft - 1 - j) for j in range(n_ft)])
    stats, clipfracs, steps = {}, [], 0
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(pairs, generator=generator)
        for start in range(0, pairs - mb + 1, mb):
            flat = perm[start : start + mb]
            i, j = flat // n_ft, flat % n_ft
            obs, chains = batch["obs"][i], batch["chains"]
            new_logp = reference_log_prob(net, sched, obs, chains[i, j], chains[i, j + 1], n_ft - 1 - j, args)
            old_logp = batch["logprobs"][i, j]
            adv = batch["advantages"][i]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8) * discounts[j]
            ratio = (new_logp - old_logp).exp()
            eps = clips[j]
            pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps)).mean()
            v_loss = 0.5 * ((critic(obs) - batch["returns"][i]) ** 2).mean()
            actor_opt.zero_grad()
            critic_opt.zero_grad()
            (pg_loss + args.vf_coef * v_loss).backward()
            if args.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), args.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(critic.parameters(), args.max_grad_norm)
            if update_actor:
                actor_opt.step()
            critic_opt.step()
            steps += 1
            with torch.no_grad():
                approx_kl = ((ratio - 1) - (new_logp - old_logp)).mean().item()
                clipfracs.append(((ratio - 1).abs() > eps).float().mean().item())
            stats = dict(policy_loss=pg_loss.item(), value_loss=v_loss.item(), approx_kl=approx_kl)
            stats["ratio"] = ratio.mean().item()
            if args.target_kl is not None and approx_kl > args.target_kl:
                stats["clipfrac"] = sum(clipfracs) / len(clipfracs)
                return stats, steps
    stats["clipfrac"] = sum(clipfracs) / len(clipfracs)
    return stats, steps


def fixed_batch(args):
    """Networks, schedule and a batch of SAMPLES x K' pairs; the old log-probs offset from the current ones so that
    the ratios spread over [0.9, 1.1] (clipped above and below by the clip schedule 0.02 .. 0.08)."""
    torch.manual_seed(0)
    net = dppo.DiffusionMLP(OBS_DIM, DA, TP, 1, time_dim=8, mlp_dims=(32, 32, 32), activation="relu")
    critic = dppo.Critic(OBS_DIM, 1, (16, 16, 16))
    sched = dppo.make_schedule(K)
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(SAMPLES, 1, OBS_DIM, generator=g)
    chains = torch.randn(SAMPLES, K_FT + 1, TP, DA, generator=g) * 0.6
    with torch.no_grad():
        current = torch.stack(
            [
                reference_log_prob(
                    net, sched, obs, chains[:, j], chains[:, j + 1], torch.full((SAMPLES,), K_FT - 1 - j), args
                )
                for j in range(K_FT)
            ],
            1,
        )
    offsets = torch.log(torch.linspace(0.9, 1.1, SAMPLES * K_FT)).view(SAMPLES, K_FT)
    batch = dict(obs=obs, chains=chains, logprobs=current - offsets)
    batch |= dict(advantages=torch.randn(SAMPLES, generator=g) + 0.3, returns=torch.randn(SAMPLES, generator=g))
    return net, critic, sched, batch


def sgd(module):
    return torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)


@pytest.mark.parametrize("chunk", [None, 3], ids=["one-pass", "chunks-of-3"])
@pytest.mark.parametrize(
    "target_kl, max_grad_norm, update_actor",
    [(None, None, True), (None, 0.05, True), (3e-3, None, True), (None, None, False)],
    ids=["plain", "grad-clip", "kl-stop", "warm-up"],
)
def test_update_matches_the_plain_update_within_1e_6(target_kl, max_grad_norm, update_actor, chunk):
    args = dppo.Args(
        update_chunk_size=chunk,  # chunks of 3 pairs: a minibatch of 8 back-propagated in passes of 3, 3 and 2
        batch_size=8,  # 36 pairs: 4 minibatches per epoch, 4 pairs left over
        update_epochs=2,
        act_steps=ACT_STEPS,
        clip_ploss_coef=0.08,
        clip_ploss_coef_base=0.02,
        clip_ploss_coef_rate=2.0,
        gamma_denoising=0.8,
        vf_coef=0.6,
        target_kl=target_kl,
        max_grad_norm=max_grad_norm,
    )
    net, critic, sched, batch = fixed_batch(args)
    net_ref, critic_ref, net_start = copy.deepcopy(net), copy.deepcopy(critic), copy.deepcopy(net)

    opts = sgd(net), sgd(critic)
    stats = dppo.ppo_update(net, net, critic, *opts, sched, batch, args, update_actor, torch.Generator().manual_seed(7))
    opts = sgd(net_ref), sgd(critic_ref)
    expected, steps = reference_update(
        net_ref, critic_ref, *opts, sched, batch, args, update_actor, torch.Generator().manual_seed(7)
    )

    assert set(stats) == set(expected)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert 0 < expected["clipfrac"] < 1  # the clip binds for some pairs, not all
    assert steps == (3 if target_kl else 8)  # the KL stop: after the third of eight minibatches
    for got, ref in ((net, net_ref), (critic, critic_ref)):
        for (name, p), p_ref in zip(got.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p, p_ref, rtol=0, atol=1e-6, msg=name)
    moved = [not torch.equal(p, p0) for p, p0 in zip(net.parameters(), net_start.parameters(), strict=True)]
    assert any(moved) == update_actor


def test_the_policy_loss_runs_in_chunks_of_update_chunk_size(monkeypatch):
    """Minibatches of 8 pairs with --update-chunk-size 3: the log-probs of passes of 3, 3 and 2 pairs in each of the
    epoch's 4 minibatches (36 pairs); without the flag, on one CPU thread, chunks of 5000 (here the whole minibatch)."""
    sizes, real = [], dppo.denoising_log_prob

    def spy(actor_ft, sched, obs, x_in, *rest, **kw):
        sizes.append(len(x_in))
        return real(actor_ft, sched, obs, x_in, *rest, **kw)

    monkeypatch.setattr(dppo, "denoising_log_prob", spy)
    for chunk, expected in ((3, [3, 3, 2] * 4), (None, [8] * 4)):
        args = dppo.Args(batch_size=8, update_epochs=1, act_steps=ACT_STEPS, target_kl=None, update_chunk_size=chunk)
        net, critic, sched, batch = fixed_batch(args)
        sizes.clear()
        dppo.ppo_update(net, net, critic, sgd(net), sgd(critic), sched, batch, args)
        assert sizes == expected, chunk


def test_chunk_defaults_follow_the_thread_count():
    """A chunk flag's default: the small chunk on one CPU thread, the other value on more threads or a GPU; a given
    flag wins."""
    cpu, before = torch.device("cpu"), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert workers.chunk_size(None, cpu, 5, 9) == 5 and workers.chunk_size(7, cpu, 5, 9) == 7
        assert workers.chunk_size(None, torch.device("cuda"), 5, 9) == 9
        torch.set_num_threads(2)
        assert workers.chunk_size(None, cpu, 5, 9) == 9 and workers.chunk_size(7, cpu, 5, 9) == 7
    finally:
        torch.set_num_threads(before)
