"""Break one algorithm line at a time in a scratch copy of the repository and check that its guarding test fails.

    python tests/mutations.py            # every mutation below (about 15 minutes on 2 busy cores)
    python tests/mutations.py gae ppo    # only those whose name contains one of the words
    python tests/mutations.py --check    # only list the entries whose text no longer occurs once (seconds)

Each entry of MUTATIONS is a line `name | script in cleandppo/ | the tests that must fail (a file, optionally with
pytest's -k)`, then one or more pairs of lines `- text as it is` / `+ broken text` (a backslash-n stands for a line
break; `+` alone deletes the text). Each text must occur exactly once in the script; when a script is edited and a
text no longer matches, the runner says STALE (update the entry). Not collected by pytest (no test_ prefix).
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MUTATIONS = r"""
# PPO losses
ppo clip on the wrong side (gaussian) | gaussian_ppo.py | tests/test_ppo_updates.py
- torch.max(-adv * ratio, -adv * ratio.clamp
+ torch.min(-adv * ratio, -adv * ratio.clamp
ppo clip on the wrong side (gmm) | gmm_ppo.py | tests/test_ppo_updates.py
- torch.max(-adv * ratio, -adv * ratio.clamp
+ torch.min(-adv * ratio, -adv * ratio.clamp
ppo clip on the wrong side (dppo) | dppo.py | tests/test_ppo_updates.py
- pg_sum = torch.max(-adv * ratio,
+ pg_sum = torch.min(-adv * ratio,
ppo clip on the wrong side (exact likelihood) | exact_likelihood_pg.py | tests/test_ppo_updates.py
- pg_loss = torch.max(-adv * ratio,
+ pg_loss = torch.min(-adv * ratio,
ppo advantage sign flipped (gaussian) | gaussian_ppo.py | tests/test_ppo_updates.py
- pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp
+ pg_loss = torch.max(adv * ratio, adv * ratio.clamp
ppo no advantage normalisation (gmm) | gmm_ppo.py | tests/test_ppo_updates.py
- adv = (adv - adv.mean()) / (adv.std() + 1e-8)
+ adv = adv
ppo no advantage normalisation (exact likelihood) | exact_likelihood_pg.py | tests/test_ppo_updates.py
- adv_mb = (adv_mb - adv_mb.mean()) / (adv_mb.std() + 1e-8)
+ adv_mb = adv_mb
ppo entropy bonus sign (gaussian) | gaussian_ppo.py | tests/test_ppo_updates.py
- loss = pg_loss - args.ent_coef * ent
+ loss = pg_loss + args.ent_coef * ent
ppo value loss without vf_coef (gmm) | gmm_ppo.py | tests/test_ppo_updates.py
- + args.vf_coef * v_loss
+ + v_loss
dppo no denoising discount | dppo.py | tests/test_ppo_updates.py
- pair_adv = pair_adv * discounts[pair_j]
+ pair_adv = pair_adv
dppo one clip ratio for every denoising step | dppo.py | tests/test_ppo_updates.py
- clip_ratio = clips[j]
+ clip_ratio = clips[-1]
dppo clip schedule runs the wrong way | dppo.py | tests/test_ppo_updates.py
- torch.arange(ft_steps, dtype=torch.float64) / (ft_steps - 1)
+ torch.arange(ft_steps - 1, -1, -1, dtype=torch.float64) / (ft_steps - 1)
dppo discount applied before normalisation | dppo.py | tests/test_ppo_updates.py
- pair_adv = (pair_adv - pair_adv.mean()) / (pair_adv.std() + 1e-8)\n            pair_adv = pair_adv * discounts[pair_j]
+ pair_adv = pair_adv * discounts[pair_j]\n            pair_adv = (pair_adv - pair_adv.mean()) / (pair_adv.std() + 1e-8)
dppo log-prob at the wrong denoising step | dppo.py | tests/test_ppo_updates.py
- obs, x_in, x_out, ft_t[j], ft_t_prev[j], args)
+ obs, x_in, x_out, ft_t[K_ft - 1 - j], ft_t_prev[K_ft - 1 - j], args)
dppo old log-probs at the wrong denoising steps | dppo.py | tests/test_dppo.py -k "chain_log_probs or recorded"
- t, t_prev = ft_t.repeat(B).to(chains.device), ft_t_prev.repeat(B).to(chains.device)
+ t, t_prev = ft_t.flip(0).repeat(B).to(chains.device), ft_t_prev.flip(0).repeat(B).to(chains.device)
dppo old log-probs with another sample's observation | dppo.py | tests/test_dppo.py -k chain_log_probs
- torch.arange(B, device=chains.device).repeat_interleave(K_ft))
+ torch.arange(B, device=chains.device).repeat(K_ft))
dppo actor stepped during critic warm-up | dppo.py | tests/test_ppo_updates.py
-             if update_actor:\n                actor_opt.step()
+             if True:\n                actor_opt.step()
exact likelihood: pieces averaged instead of summed | exact_likelihood_pg.py | tests/test_ppo_updates.py
- torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)).sum() / mb
+ torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)).mean()
exact likelihood: new log-likelihood not clamped | exact_likelihood_pg.py | tests/test_ppo_updates.py
- ).clamp(lo, hi)
+ )

dppo update: critic values matched to other pairs | dppo.py | tests/test_dppo_update.py
- critic(envs.take_rows(batch["obs"], samples))[pair_sample]
+ critic(envs.take_rows(batch["obs"], samples))[pair_sample.flip(0)]
dppo update: logged policy loss and KL swapped | dppo.py | tests/test_dppo_update.py
- policy_loss, approx_kl, mean_ratio, clipfrac, value_loss = logged
+ approx_kl, policy_loss, mean_ratio, clipfrac, value_loss = logged
dppo update: clip fraction from another logged number | dppo.py | tests/test_dppo_update.py
- clipfracs.append(clipfrac)
+ clipfracs.append(mean_ratio)
dppo update: a chunk's policy loss as the minibatch mean | dppo.py | tests/test_dppo_update.py
- (pg_sum / mb).backward()
+ (pg_sum / len(i)).backward()
ppo update: logged KL and ratio swapped (gaussian) | gaussian_ppo.py | tests/test_ppo_updates.py
- "entropy", "approx_kl", "ratio", "std"), logged)
+ "entropy", "ratio", "approx_kl", "std"), logged)
ppo update: clip fraction from another logged number (gmm) | gmm_ppo.py | tests/test_ppo_updates.py
- clipfracs.append(logged[-1])
+ clipfracs.append(logged[-2])
dppo update: --update-chunk-size ignored | dppo.py | tests/test_dppo_update.py
- chunk = workers.chunk_size(args.update_chunk_size, device, 5000, mb)
+ chunk = mb
dppo chunk defaults: the small chunk at any thread count | workers.py | tests/test_dppo_update.py
- torch.get_num_threads() == 1 else otherwise
+ torch.get_num_threads() >= 1 else otherwise
# dppo sampler and denoising log-prob (the hot paths of an iteration)
dppo sampler: frozen network one step into the fine-tuned part | dppo.py | tests/test_dppo_sampling.py
- net = actor_ft if i >= n - ft_steps else actor
+ net = actor_ft if i > n - ft_steps else actor
dppo sampler: fine-tuned network one step early | dppo.py | tests/test_dppo_sampling.py
- net = actor_ft if i >= n - ft_steps else actor
+ net = actor_ft if i >= n - ft_steps - 1 else actor
dppo sampler: networks swapped | dppo.py | tests/test_dppo_sampling.py
- net = actor_ft if i >= n - ft_steps else actor
+ net = actor if i >= n - ft_steps else actor_ft
dppo sampler: chain records the step means | dppo.py | tests/test_dppo_sampling.py
- if i >= n - ft_steps:\n            chain.append(x)
+ if i >= n - ft_steps:\n            chain.append(mean)
dppo sampler: training std not floored | dppo.py | tests/test_dppo_sampling.py
- std = std.clamp(min=args.min_sampling_denoising_std)
+ std = std
dppo sampler: noise not clipped | dppo.py | tests/test_dppo_sampling.py
- noise.clamp(-args.randn_clip_value, args.randn_clip_value)
+ noise
dppo sampler: eval noise at the last DDPM step | dppo.py | tests/test_dppo_sampling.py
- std = std.clamp(min=1e-3) if t > 0 else torch.zeros_like(std)
+ std = std.clamp(min=1e-3)
dppo sampler: eval DDPM std not floored at 1e-3 | dppo.py | tests/test_dppo_sampling.py
- std = std.clamp(min=1e-3) if t > 0 else torch.zeros_like(std)
+ std = std if t > 0 else torch.zeros_like(std)
dppo sampler: eval DDIM with noise | dppo.py | tests/test_dppo_sampling.py
- elif ddim:\n            std = torch.zeros_like(std)\n        else:
+ else:
dppo sampler: DDIM eta 1 in evaluation | dppo.py | tests/test_dppo_sampling.py
- eta = 0.0 if (ddim and mode == "eval") else 1.0
+ eta = 1.0
dppo sampler: DDIM eta 0 in training | dppo.py | tests/test_dppo_sampling.py
- eta = 0.0 if (ddim and mode == "eval") else 1.0
+ eta = 0.0 if ddim else 1.0
dppo sampler: x0 clamp ignores denoised_clip_value | dppo.py | tests/test_dppo_sampling.py
- t_prev_b, ddim, eta, args.denoised_clip_value)
+ t_prev_b, ddim, eta)
dppo step: x0 not clamped | dppo.py | tests/test_dppo_sampling.py
- .clamp(\n        -clip, clip\n    )
+ .clamp(\n        -100 * clip, 100 * clip\n    )
dppo DDIM step: eps not recomputed from the clamped x0 | dppo.py | tests/test_dppo_sampling.py
- eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
+
dppo DDIM step: sigma without 1 - ab/ab_prev | dppo.py | tests/test_dppo_sampling.py
- * (1 - ab / ab_prev)).sqrt()).clamp(min=1e-10)
+ ).sqrt()).clamp(min=1e-10)
dppo DDIM step: direction term without sigma^2 | dppo.py | tests/test_dppo_sampling.py
- (1 - ab_prev - sigma**2).clamp(min=0).sqrt()
+ (1 - ab_prev).clamp(min=0).sqrt()
dppo DDIM plan: trailing grid | dppo.py | tests/test_dppo_sampling.py
- grid = list(range(0, S * r, r))[::-1]
+ grid = list(range(r - 1, S * r, r))[::-1]
dppo log-prob: std not floored | dppo.py | tests/test_dppo_sampling.py
- std = var.sqrt().clamp(min=args.min_logprob_denoising_std)
+ std = var.sqrt()
dppo log-prob: density not clamped | dppo.py | tests/test_dppo_sampling.py
- elementwise.clamp(-5.0, 2.0)[:, :rows]
+ elementwise[:, :rows]
dppo log-prob: density clamped below only | dppo.py | tests/test_dppo_sampling.py
- elementwise.clamp(-5.0, 2.0)[:, :rows]
+ elementwise.clamp(min=-5.0)[:, :rows]
dppo log-prob: x0 clamp ignores denoised_clip_value | dppo.py | tests/test_dppo_sampling.py
- ddim, 1.0, args.denoised_clip_value)
+ ddim, 1.0, 1.0)
dppo log-prob: DDIM with eta 0 | dppo.py | tests/test_dppo_sampling.py
- ddim, 1.0, args.denoised_clip_value)
+ ddim, 0.0, args.denoised_clip_value)
dppo old log-probs: DDPM timesteps under DDIM | dppo.py | tests/test_dppo_sampling.py
- fine_tuned_timesteps(denoising_plan(len(sched["betas"]), args.ddim_steps), K_ft)
+ fine_tuned_timesteps(denoising_plan(len(sched["betas"]), None), K_ft)

# shared copies
GAE without lambda (gaussian) | gaussian_ppo.py | tests/test_shared_copies.py
- last = delta + gamma * gae_lambda * (1 - dones[n]) * last
+ last = delta + gamma * (1 - dones[n]) * last
GAE not cut at episode ends (dppo) | dppo.py | tests/test_shared_copies.py
- last = delta + gamma * gae_lambda * (1 - dones[n]) * last
+ last = delta + gamma * gae_lambda * last
reward scaler subtracts the mean | envs.py | tests/test_shared_copies.py
- return np.clip(rewards / np.sqrt(self.var + 1e-8), -10, 10)
+ return np.clip((rewards - self.mean) / np.sqrt(self.var + 1e-8), -10, 10)
reward scaler without clip | envs.py | tests/test_shared_copies.py
- return np.clip(rewards / np.sqrt(self.var + 1e-8), -10, 10)
+ return rewards / np.sqrt(self.var + 1e-8)
reward scaler ignores episode starts | envs.py | tests/test_shared_copies.py
- self.ret = rewards[n] + self.gamma * (1 - firsts[n]) * self.ret
+ self.ret = rewards[n] + self.gamma * self.ret
soft update ignores tau (dql) | dql.py | tests/test_shared_copies.py
-         p_t.lerp_(p, tau)
+         p_t.lerp_(p, 1.0)
EMA that never moves (idql) | idql.py | tests/test_shared_copies.py
-         p_t.lerp_(p, tau)
+         p_t.lerp_(p, 0.0)
EMA with 1 - tau (dipo) | dipo.py | tests/test_shared_copies.py
-         p_t.lerp_(p, tau)
+         p_t.lerp_(p, 1 - tau)
Bellman target with max (qsm) | qsm.py | tests/test_shared_copies.py
- gamma * (1 - terminated) * torch.minimum(next_q1, next_q2)
+ gamma * (1 - terminated) * torch.maximum(next_q1, next_q2)
denoising loss noises with ab instead of sqrt(ab) (dawr) | dawr.py | tests/test_shared_copies.py
-     x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
+     x_t = ab * x0 + (1 - ab).sqrt() * eps
DDPM posterior mean coefficient (idql) | idql.py | tests/test_shared_copies.py
- sched["coef_xt"] = (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar)
+ sched["coef_xt"] = (1 - alpha_bar_prev) * alphas / (1 - alpha_bar)

# off-policy updates
IDQL expectile inverted | idql.py | tests/test_offpolicy_updates.py
- weight = torch.where(diff > 0, torch.full_like(diff, tau), torch.full_like(diff, 1 - tau))
+ weight = torch.where(diff > 0, torch.full_like(diff, 1 - tau), torch.full_like(diff, tau))
IDQL V fit to Q1 only | idql.py | tests/test_offpolicy_updates.py
- target_q = torch.minimum(*q_target(b["obs"], b["chunks"]))
+ target_q = q_target(b["obs"], b["chunks"])[0]
IDQL Q target ignores terminated | idql.py | tests/test_offpolicy_updates.py
- return rewards + gamma * (1 - terminated) * next_v
+ return rewards + gamma * next_v
IDQL target Q ignores target_ema_rate | idql.py | tests/test_offpolicy_updates.py
- soft_update(q_target, q_critic, args.target_ema_rate)
+ soft_update(q_target, q_critic, 1.0)
DIPO next action from the online actor | dipo.py | tests/test_offpolicy_updates.py
- next_a = sample(\n                target_actor,
+ next_a = sample(\n                actor,
DIPO action gradient descends | dipo.py | tests/test_offpolicy_updates.py
- (a.grad,) = torch.autograd.grad(-torch.minimum(q1, q2).sum(), a)
+ (a.grad,) = torch.autograd.grad(torch.minimum(q1, q2).sum(), a)
DIPO action gradient not clipped | dipo.py | tests/test_offpolicy_updates.py
-         nn.utils.clip_grad_norm_([a], max_norm)\n
+
DIPO actor fit to the unmoved actions | dipo.py | tests/test_offpolicy_updates.py
- actor_loss = denoising_loss(actor, sched, moved, obs, K)
+ actor_loss = denoising_loss(actor, sched, actions, obs, K)
DIPO target actor ignores the EMA rate | dipo.py | tests/test_offpolicy_updates.py
- soft_update(target_actor, actor, args.target_ema_rate)
+ soft_update(target_actor, actor, 1.0)
DAWR advantages from the critic before its update | dawr.py | tests/test_offpolicy_updates.py
- rows, _, targets = buffer_targets(critic, buf, args, device)\n
+ stale = rows, _, targets = buffer_targets(critic, buf, args, device)\n
- rows, values, targets = buffer_targets(critic, buf, args, device)  # advantages from the updated critic
+ rows, values, targets = stale  # advantages from the updated critic
DAWR advantage sign flipped | dawr.py | tests/test_offpolicy_updates.py
- advantages = targets - values
+ advantages = values - targets
DAWR weights not clipped | dawr.py | tests/test_offpolicy_updates.py
- torch.clamp(beta * a, max=math.log(max_weight))
+ beta * a
DAWR TD(lambda) without alpha | dawr.py | tests/test_offpolicy_updates.py
- G = alpha * delta + gamma
+ G = delta + gamma
DAWR time-outs not bootstrapped | dawr.py | tests/test_offpolicy_updates.py
- delta = rewards[n] + gamma * (1 - terminated[n]) * next_values[n]
+ delta = rewards[n] + gamma * (1 - np.maximum(terminated[n], truncated[n])) * next_values[n]
DRWR weights ignored | drwr.py | tests/test_offpolicy_updates.py
- obs[idx], len(sched["betas"]), weights[idx])
+ obs[idx], len(sched["betas"]))

# training loops
time-out not bootstrapped (dppo) | dppo.py | tests/test_loops.py
- rewards = rewards + args.gamma * final_values * buf_timeout
+ rewards = rewards
time-out not bootstrapped (gaussian) | gaussian_ppo.py | tests/test_loops.py
- rewards = rewards + args.gamma * final_values * buf_timeout
+ rewards = rewards
time-out not bootstrapped (gmm) | gmm_ppo.py | tests/test_loops.py
- rewards = rewards + args.gamma * final_values * buf_timeout
+ rewards = rewards
time-out not bootstrapped (exact likelihood) | exact_likelihood_pg.py | tests/test_loops.py
- rewards = rewards + args.gamma * final_values * buf_timeout
+ rewards = rewards
time-out bootstrapped with V(next reset obs) (dppo) | dppo.py | tests/test_loops.py
- rewards = rewards + args.gamma * final_values * buf_timeout
+ rewards = rewards + args.gamma * np.concatenate([values[1:], last_value[None]], 0) * buf_timeout
GAE not cut at a time-out (dppo) | dppo.py | tests/test_loops.py
- dones = np.maximum(buf_term, buf_timeout)
+ dones = buf_term
time-out stored as terminal (dql) | dql.py | tests/test_loops.py
- reward * args.scale_reward_factor, final_obs, term)
+ reward * args.scale_reward_factor, final_obs, np.logical_or(term, trunc))
time-out stored as terminal (idql) | idql.py | tests/test_loops.py
- reward * args.scale_reward_factor, final_obs, term)
+ reward * args.scale_reward_factor, final_obs, np.logical_or(term, trunc))
post-reset observation stored as s' (dipo) | dipo.py | tests/test_loops.py
- reward * args.scale_reward_factor, final_obs, term)
+ reward * args.scale_reward_factor, next_obs, term)
time-out stored as terminal (qsm) | qsm.py | tests/test_loops.py
- reward * args.scale_reward_factor, final_obs, term)
+ reward * args.scale_reward_factor, final_obs, np.logical_or(term, trunc))
time-out not marked truncated (dawr) | dawr.py | tests/test_loops.py
- term,\n                np.logical_and(trunc, np.logical_not(term)),
+ np.logical_or(term, trunc),\n                np.zeros_like(trunc),
target critic ignores its rate in the loop (dql) | dql.py | tests/test_dql_qsm_shared.py
- soft_update(target_critic, critic, args.target_ema_rate)
+ soft_update(target_critic, critic, 0.005)
target critic not updated in the loop (qsm) | qsm.py | tests/test_dql_qsm_shared.py
-             soft_update(target_critic, critic, args.target_ema_rate)\n
+

# pre-training
pre-training EMA that never moves (dppo's tests) | pretraining.py | tests/test_dppo.py -k ema
- else p_ema.lerp_(p, 1 - args.ema_decay)
+ else p_ema.lerp_(p, 0.0)
pre-training EMA with decay and 1 - decay swapped (dppo's tests) | pretraining.py | tests/test_dppo.py -k ema
- else p_ema.lerp_(p, 1 - args.ema_decay)
+ else p_ema.lerp_(p, args.ema_decay)
pre-training EMA ignores its start epoch (dppo's tests) | pretraining.py | tests/test_dppo.py -k ema
- p_ema.copy_(p) if epoch < args.ema_start_epoch else
+ p_ema.copy_(p) if False else
DQL actor loss without eta | dql.py | tests/test_dql.py
- return bc + eta * q_loss, bc, q_loss
+ return bc + q_loss, bc, q_loss
DQL Q heads swapped | dql.py | tests/test_dql.py
- normalized_q_loss(q1, q2) if use_q1 else normalized_q_loss(q2, q1)
+ normalized_q_loss(q2, q1) if use_q1 else normalized_q_loss(q1, q2)
DQL Q term sees the unexecuted actions | dql.py | tests/test_dql.py
- grad=True,\n    )[:, :act_steps]
+ grad=True,\n    )
QSM score target without its coefficient | qsm.py | tests/test_qsm.py
- ((-eps_hat - q_grad_coeff * grad_q) ** 2).mean()
+ ((-eps_hat - grad_q) ** 2).mean()
QSM gradient of Q1 only | qsm.py | tests/test_qsm.py
- torch.autograd.grad((q1.sum() + q2.sum()) / 2, a_exec)
+ torch.autograd.grad(q1.sum(), a_exec)

# off-policy updates (continued)
Bellman target from the online critic (dql) | dql.py | tests/test_dql_qsm_shared.py -k bellman_target_of_the_target
- next_q1, next_q2 = target_critic(batch["next_obs"], next_actions)
+ next_q1, next_q2 = critic(batch["next_obs"], next_actions)
Bellman target at the current state (qsm) | qsm.py | tests/test_dql_qsm_shared.py -k bellman_target_of_the_target
- next_q1, next_q2 = target_critic(batch["next_obs"], next_actions)
+ next_q1, next_q2 = target_critic(batch["obs"], next_actions)
IDQL V fit to the mean (tau 0.5) | idql.py | tests/test_offpolicy_updates.py
- v_loss = expectile_loss(target_q - v, args.expectile)
+ v_loss = expectile_loss(target_q - v, 0.5)
# run plumbing shared by every script (runs.py section 5, arguments.py)
presets override explicit flags | arguments.py | tests/test_runs_cli.py
- args = tyro.cli(args_cls, args=argv, default=dataclasses.replace(args_cls(), **table))
+ args = dataclasses.replace(first, **table)
resume forgets the best evaluation | runs.py | tests/test_runs_cli.py
- self.pretrained, self.best = state["pretrained_eval_return"], state["best_eval_return"]
+ self.pretrained = state["pretrained_eval_return"]
every evaluation counted as the pre-trained one | runs.py | tests/test_runs_cli.py
- if self.pretrained is None:
+ if True:
progress rate counts resumed steps | console.py | tests/test_runs_cli.py
- sps = (env_steps - self.start)
+ sps = env_steps
progress still within an iteration | runs.py | tests/test_runs_cli.py
- progress.tick(env_steps)
+ pass
first evaluation not marked | console.py | tests/test_runs_cli.py
- first = " (before training)" if evals.count == 1 else ""
+ first = ""
resume forgets the last evaluation | runs.py | tests/test_runs_cli.py
- self.last = state.get("final_eval_return", float("nan"))
+ self.last = float("nan")
Ctrl-C line written onto the bar | runs.py | tests/test_runs_cli.py
- console.close_bars()  # the bars end their line first
+ pass  # the bars end their line first
diffusion checkpoint chunk length not checked | envs.py | tests/test_envs.py -k load_diffusion_checkpoint
- or (same_horizon and h != args.horizon_steps)
+ or False
diffusion checkpoint backbone not checked | envs.py | tests/test_envs.py -k load_diffusion_checkpoint
- if getattr(args, "backbone", kw["backbone"]) != kw["backbone"]:
+ if False:
an iteration without its update time | runs.py | tests/test_contract.py -k tags
- writer.add_scalar("time/update_s", t_update, env_steps)
+ pass
an evaluation that is not recorded | runs.py | tests/test_runs_cli.py
- self.add(env_steps, mean, success)
+ pass
evaluation envs seeded like the training envs | runs.py | tests/test_runs_cli.py
- args.seed + 10_000,
+ args.seed,
# official formats and the points where we follow the official code
official diffusion checkpoint takes model, not ema | official.py | tests/test_official.py -k ema_weights
- entry = "ema" if policy == "diffusion" and "ema" in raw else "model"
+ entry = "model"
official Gaussian/GMM checkpoint takes ema | official.py | tests/test_official.py -k gmm_mlp
- entry = "ema" if policy == "diffusion" and "ema" in raw else "model"
+ entry = "ema" if "ema" in raw else "model"
official residual block l1/l2 swapped | official.py | tests/test_official.py -k ema_weights
- out[f"{dst}.blocks.{i}.3.{w}"] = state[f"{src}.layers.{i + 1}.l2.{w}"]
+ out[f"{dst}.blocks.{i}.3.{w}"] = state[f"{src}.layers.{i + 1}.l1.{w}"]
official UNet GroupNorm of the wrong conv block | official.py | tests/test_official.py -k unet
- out[f"{dst}.conv{j + 1}.block.1.{w}"] = state[f"{src}.blocks.{j}.block.2.{w}"]
+ out[f"{dst}.conv{j + 1}.block.1.{w}"] = state[f"{src}.blocks.{1 - j}.block.2.{w}"]
official fine-tuned checkpoint: frozen net from actor_ft | official.py | tests/test_official.py -k finetuning_checkpoint
- frozen = _strip(state, "actor.") if policy
+ frozen = _strip(state, "actor_ft.") if policy
official train.npz left normalized | official.py | tests/test_official.py -k npz
- states = unnormalize_obs(states, norm)
+ pass
reward scaler variance M2/n | envs.py | tests/test_shared_copies.py -k reward_scaler
- m2 / (total - 1), total
+ m2 / total, total
DDIM x0 in the DDPM form | dppo.py | tests/test_official.py -k ddim
- x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt() if ddim else
+ x0 = ((1 / ab).sqrt() * x - (1 / ab - 1).sqrt() * eps if ddim else
Gaussian std parametrised by log sigma | gaussian_ppo.py | tests/test_official.py -k log_variance
- std = (0.5 * self.logvar).exp().clamp
+ std = self.logvar.exp().clamp
old log_std checkpoints not converted | envs.py | tests/test_official.py -k log_variance
- (2 * v if k == "log_std" else v)
+ (v if k == "log_std" else v)
dppo BC chains from the fine-tuned network | dppo.py | tests/test_official.py -k dppo_bc_term
- _, bc_chains = sample(actor, actor, sched
+ _, bc_chains = sample(actor_ft, actor_ft, sched
dppo BC over the executed rows only | dppo.py | tests/test_official.py -k dppo_bc_term
- bc_chains, args, rows=bc_chains.shape[2])
+ bc_chains, args)
dppo BC sign | dppo.py | tests/test_official.py -k dppo_bc_term
- (-args.bc_loss_coeff * bc_logp.mean()).backward()
+ (args.bc_loss_coeff * bc_logp.mean()).backward()
gaussian BC samples from the trained policy | gaussian_ppo.py | tests/test_official.py -k gaussian_bc_term
- sample_action(*base_policy(obs), args.randn_clip_value)
+ sample_action(*policy(obs), args.randn_clip_value)
gaussian BC always on | gaussian_ppo.py | tests/test_official.py -k gaussian_bc_term
- if args.bc_loss_coeff:  # BC
+ if True:  # BC
DAWR TD(lambda) without alpha, against the official targets | dawr.py | tests/test_official.py -k dawr
- G = alpha * delta + gamma * lam
+ G = delta + gamma * lam
gaussian BC teacher not restored on resume | gaussian_ppo.py | tests/test_runs.py -k gaussian_ppo_kill_and_resume
- base_policy.load_state_dict(resume.get("base_model") or base_policy.state_dict())
+ pass

# observation encoder cond_mlp (Square) and its checkpoint config
cond_mlp ends with an activation (dawr) | dawr.py | tests/test_shared_copies.py -k cond_mlp
- for m in (nn.Linear(i, o), act())][:-1]
+ for m in (nn.Linear(i, o), act())]
cond_mlp built but the head sees the raw observation (qsm) | qsm.py | tests/test_shared_copies.py -k cond_mlp
- obs = obs.flatten(1) if self.cond_mlp is None else self.cond_mlp(obs.flatten(1))
+ obs = obs.flatten(1)
cond_mlp dropped when rebuilding from model_kwargs (idql) | idql.py | tests/test_shared_copies.py -k cond_mlp
- cond_mlp_dims = tuple(kw.get("cond_mlp_dims") or ())
+ cond_mlp_dims = ()
robomimic env meta not restored from a diffusion checkpoint | envs.py | tests/test_robomimic_baselines.py
- set_robomimic_env_args(args.env_id, ckpt["robomimic_env_args"])
+ pass
K' of a continued model_ft not checked | envs.py | tests/test_envs.py -k keeps_the_fine_tuned_steps
- if continues_ft and ckpt.get("model_ft") is not None and tuned != args.ft_denoising_steps:
+ if False:
K' checked although the run starts from the base model | envs.py | tests/test_envs.py -k keeps_the_fine_tuned_steps
- if continues_ft and ckpt.get("model_ft") is not None
+ if ckpt.get("model_ft") is not None
cond_mlp_dims not stored in the checkpoint (dppo) | dppo.py | tests/test_robomimic_checkpoints.py -k stores
- keys += ["cond_mlp_dims", "unet_dim"
+ keys += ["unet_dim"
--cond-mlp-dims that disagrees with the checkpoint accepted | envs.py | tests/test_robomimic_checkpoints.py -k flag
- if wanted and wanted != has:
+ if False:
cond_mlp weights and config that disagree accepted | envs.py | tests/test_robomimic_checkpoints.py -k disagree
- if has != says:
+ if False:
robomimic filter keys ignored | robomimic_tasks.py | tests/test_robomimic_mh.py -k filter_key
- demos = [demo for demo in demos if keep is None or demo["name"] in keep]
+ demos = list(demos)
# GMM log-prob: ours per dimension, the official summed one (the Avoid default)
official GMM log-prob not clamped | gmm_ppo.py | tests/test_gmm_ppo.py
- return mixture_log_prob(means, std, logits, actions).clamp(-5.0, 2.0)
+ return mixture_log_prob(means, std, logits, actions)
official GMM log-prob not used by the update | gmm_ppo.py | tests/test_ppo_updates.py -k official_summed
- (official_log_prob if args.official_summed_logprob else log_prob)(
+ (log_prob)(
Avoid GMM not on the official log-prob | gmm_ppo.py | tests/test_gmm_ppo.py -k logprob_defaults
- official_summed_logprob=True,  # the paper's
+ official_summed_logprob=False,  # the paper's
stored old GMM log-prob always per dimension | gmm_ppo.py | tests/test_gmm_ppo.py -k stored_old
- scale = 1 if args.official_summed_logprob else args.horizon_steps * action_dim
+ scale = args.horizon_steps * action_dim
stored old GMM log-prob not clamped | gmm_ppo.py | tests/test_gmm_ppo.py -k stored_old
- old_logp = (summed_logp / scale).clamp(-5.0, 2.0)
+ old_logp = summed_logp / scale
# pre-training recipe of the official Avoid Gaussian/GMM configs (cosine LR, EMA)
EMA ignores its start epoch (gaussian's and gmm's tests) | pretraining.py | tests/test_gaussian_ppo.py -k pretraining_cosine
- p_ema.copy_(p) if epoch < args.ema_start_epoch else
+ p_ema.copy_(p) if epoch < 0 else
pre-training saves live weights, not EMA | pretraining.py | tests/test_gaussian_ppo.py -k pretraining_cosine
- checkpoint, saved, args.pretrain_epochs
+ checkpoint, net, args.pretrain_epochs
pre-training EMA weight swapped (gaussian's and gmm's tests) | pretraining.py | tests/test_gaussian_ppo.py -k pretraining_cosine
- p_ema.lerp_(p, 1 - args.ema_decay)
+ p_ema.lerp_(p, args.ema_decay)
pre-training LR not decayed | pretraining.py | tests/test_gaussian_ppo.py -k pretraining_cosine
- group["lr"] = pretrain_lr(epoch, args)
+ group["lr"] = args.pretrain_lr
pre-training snapshot of the live weights, not the EMA | pretraining.py | tests/test_gaussian_ppo.py -k snapshots
- save_pretrained(checkpoint, saved, epoch + 1
+ save_pretrained(checkpoint, net, epoch + 1
pre-training snapshot one epoch early | pretraining.py | tests/test_gaussian_ppo.py -k snapshots
- (epoch + 1) % every == 0 and epoch + 1 < args.pretrain_epochs
+ epoch % every == 0 and epoch + 1 < args.pretrain_epochs
continued pre-training draws fresh random numbers | pretraining.py | tests/test_gaussian_ppo.py -k killed_pretraining
- runs.set_rng_state(state["rng"])
+ pass
continued pre-training with fresh AdamW moments | pretraining.py | tests/test_gaussian_ppo.py -k killed_pretraining
- opt.load_state_dict(state["optimizer"])
+ pass
continued pre-training restarts its EMA | pretraining.py | tests/test_gaussian_ppo.py -k killed_pretraining
- ema.load_state_dict(state["ema"])
+ pass
continued pre-training with other settings | runs.py | tests/test_gaussian_ppo.py -k killed_pretraining
- if key not in CONTINUE_FREE and ours.get(key) != value:
+ if False:
a rerun pre-training overwrites a fine-tuning that had begun | runs.py | tests/test_gaussian_ppo.py -k killed_pretraining
- if os.path.isdir(run_dir) and newest_checkpoint(run_dir):
+ if False:
eval-only of a fine-tuned Gaussian at env step 0 | gaussian_ppo.py | tests/test_gaussian_ppo.py -k cli_pretrain_then_finetune
- runs.evaluate_only(run_dir, ALGO, args, ckpt.get("env_steps", 0), evals
+ runs.evaluate_only(run_dir, ALGO, args, 0, evals
Avoid pre-training without official recipe (gaussian) | gaussian_ppo.py | tests/test_gaussian_ppo.py -k recipe_defaults
- ema_decay=0.995,  # and the EMA weights
+ ema_decay=None,
Avoid pre-training without the official recipe (gmm) | gmm_ppo.py | tests/test_gaussian_ppo.py -k recipe_defaults
- ema_decay=0.995,  # and the EMA weights
+ ema_decay=None,
robosuite model drawn from an unseeded generator (Lift's cube size differs per env) | robomimic_tasks.py | tests/test_robomimic.py -k same_model
-     seed=0,
+     seed=None,
# Image tasks (lift-img, ...): task table, renderer, chunked image env, image reader, one-line errors
image task camera not the official one | robomimic_tasks.py | tests/test_pixels_env.py -k official
- "square-img": _image_task(("agentview",), 1),
+ "square-img": _image_task(("frontview",), 1),
image task resolved to its state task | envs.py | tests/test_pixels_env.py -k official
- return robomimic_tasks.image_task(env_id)\n    if is_robomimic(env_id):\n        return robomimic_task(env_id)\n    if avoid
+ return robomimic_task(env_id)\n    if is_robomimic(env_id):\n        return robomimic_task(env_id)\n    if avoid
images not flipped upright | robomimic_tasks.py | tests/test_pixels_env.py -k upright
- return sim.render(camera_name=camera, width=size, height=size)[::-1]
+ return sim.render(camera_name=camera, width=size, height=size)
image chunk cut short by the time limit renders too late | envs.py | tests/test_pixels_env.py -k chunk_renders
- base.render_images = i >= self.chunk_length - self.cond_steps
+ base.render_images = i >= self.act_steps - self.cond_steps
image chunk renders the last sub-step only | envs.py | tests/test_pixels_env.py -k chunk_renders
- base.render_images = i >= self.chunk_length - self.cond_steps
+ base.render_images = i >= self.chunk_length - 1
image final observations not taken | envs.py | tests/test_pixels_env.py -k final_observations
- out[k][i] = infos["final_obs"][i][k]
+ pass
image reader swaps rows and columns | robomimic_tasks.py | tests/test_pixels_env.py -k official_order
- .transpose(0, 3, 1, 2) for c in cameras]
+ .transpose(0, 3, 2, 1) for c in cameras]
image reader cameras reversed | robomimic_tasks.py | tests/test_pixels_env.py -k official_order
- .transpose(0, 3, 1, 2) for c in cameras]
+ .transpose(0, 3, 1, 2) for c in reversed(cameras)]
image reader state keys of the state task | robomimic_tasks.py | tests/test_pixels_env.py -k official_order
- list(IMAGE_TASKS[key].low_dim_keys),
+ list(IMAGE_TASKS[key].low_dim_keys)[::-1],
image pre-training samples one step early | envs.py | tests/test_pixels_env.py -k pretraining_samples
- return {k: v[obs_idx] for k, v in obs.items()}, actions[act_idx]
+ return {k: v[np.maximum(obs_idx - 1, 0)] for k, v in obs.items()}, actions[act_idx]
a camera the task lacks accepted | robomimic_tasks.py | tests/test_pixels_env.py -k camera_the_task
- missing = [c for c in cameras if c not in have]
+ missing = []
an image file accepted by a state task | robomimic_tasks.py | tests/test_pixels_env.py -k reverse
- if not image:\n        if have:
+ if not image:\n        if False:
a low-dim file accepted by an image task | robomimic_tasks.py | tests/test_pixels_env.py -k reverse
- if not have:\n        fail(
+ if False:\n        fail(
no osmesa fallback named | robomimic_tasks.py | tests/test_pixels_env.py -k no_gl_backend
- f"{GL_INSTALL} (EGL), or {GL_PACKAGES['osmesa']} (OSMesa)"
+ f"{GL_INSTALL} (EGL)"
image demo frames rendered without forward | robomimic_tasks.py | tests/test_pixels_env.py -k recorder
- sim.set_state_from_flattened(np.asarray(state))\n            sim.forward()
+ sim.set_state_from_flattened(np.asarray(state))
official image train.npz episodes given the wrong images | official.py | tests/test_pixels_env.py -k official_image
- episode["rgb"] = images[a:b]
+ episode["rgb"] = images[a:b][::-1]
official image train.npz accepted by a state task | official.py | tests/test_pixels_env.py -k official_image
- if "images" in data and not image_task:
+ if False:
# summary.json's code version (runs.code_version)
summary commit abbreviated | runs.py | tests/test_run_faults.py -k code_version
- return dict(git_commit=commit.strip(), git_dirty=bool(status.strip()))
+ return dict(git_commit=commit.strip()[:12], git_dirty=bool(status.strip()))
summary never dirty | runs.py | tests/test_run_faults.py -k code_version
- git_dirty=bool(status.strip()))
+ git_dirty=False)
summary crashes outside a git checkout | runs.py | tests/test_run_faults.py -k code_version
- if commit is None or status is None:\n        return dict(git_commit=None, git_dirty=None)
+ if False:\n        return None
summary without the code version | runs.py | tests/test_run_faults.py -k code_version
- **code_version(),
+
# Avoid action noise (paper D.8, Fig. 10 left)
literal action noise given a random sign | avoid.py | tests/test_avoid.py -k action_noise_schedule
- if mode == "symmetric":
+ if mode != "none":
symmetric action noise without its sign | avoid.py | tests/test_avoid.py -k action_noise_schedule
- noise = noise * np.random.choice([-1.0, 1.0], actions.shape)
+ noise = noise
action noise ramp one iteration late | avoid.py | tests/test_avoid.py -k action_noise_schedule
- frac = min(1.0, (iteration - start_itr + 1) / ramp_itrs)
+ frac = min(1.0, (iteration - start_itr) / ramp_itrs)
action noise mode not passed (dppo) | dppo.py | tests/test_avoid.py -k pass_the_noise_mode
- args.train_action_noise, args.train_action_noise_mode
+ args.train_action_noise
action noise mode not passed (gaussian) | gaussian_ppo.py | tests/test_avoid.py -k pass_the_noise_mode
- args.train_action_noise, args.train_action_noise_mode
+ args.train_action_noise
action noise mode not passed (gmm) | gmm_ppo.py | tests/test_avoid.py -k pass_the_noise_mode
- args.train_action_noise, args.train_action_noise_mode
+ args.train_action_noise
# env worker processes and torch threads per phase (workers.py, runs.py section 7, envs.make_vec_env)
env workers: ended episode's final info dropped | workers.py | tests/test_env_workers.py -k sync_vector_env
- if final is not None:\n                infos = self._add_info(infos, final, i)
+ if False:\n                infos = self._add_info(infos, final, i)
env workers: no reset after an episode ends | workers.py | tests/test_env_workers.py -k sync_vector_env
- obs, info = env.reset()
+ pass
env workers: every env seeded alike | workers.py | tests/test_env_workers.py -k sync_vector_env
- seed = [int(seed) + i for i in range(self.num_envs)]
+ seed = [int(seed)] * self.num_envs
env workers: actions sent to the wrong envs of a group | workers.py | tests/test_env_workers.py -k sync_vector_env
- [(0, [actions[i] for i in g]) for g in self.groups]
+ [(0, [actions[i] for i in reversed(g)]) for g in self.groups]
env workers: never used | envs.py | tests/test_env_workers.py -k sync_vector_env
- if env_workers > 1:
+ if False:
env workers: a dead worker's closed pipe is a traceback | workers.py | tests/test_env_workers.py -k alone
- try:\n            return conn.recv()\n        except (EOFError, OSError):\n            self.died(k)
+ return conn.recv()
env workers: a dead worker's process not watched | workers.py | tests/test_env_workers.py -k leaves
- if not process.is_alive():
+ if False:
env workers: death message without the last checkpoint | workers.py | tests/test_env_workers.py -k exits
- kept = self.stopped() if self.stopped is not None else "the run stopped"
+ kept = "the run stopped"
env workers: auto wants three free cores | workers.py | tests/test_env_workers.py -k auto_rules
- if seen["free"] < 2 or num_envs < 2:
+ if seen["free"] < 3 or num_envs < 2:
env workers: auto takes more processes than envs | workers.py | tests/test_env_workers.py -k auto_rules
- workers = min(seen["free"], num_envs)
+ workers = seen["free"]
env workers: --async-envs silently ignored | arguments.py | tests/test_env_workers.py -k async_envs
- ("--async-envs", "--no-async-envs")
+ ("--no-such-flag",)
rollout in parts: a part's actions to the worker's first envs | workers.py | tests/test_env_workers.py -k sync_vector_env
- step_same_step(envs[first + i], action)
+ step_same_step(envs[i], action)
rollout in parts: never in parts | workers.py | tests/test_env_workers.py -k rollout_step_samples
- if getattr(vec, "rollout_parts", 1) <= 1:
+ if True:
rollout in parts: the records out of env order | workers.py | tests/test_env_workers.py -k rollout_step_samples
- return torch.cat(records), vec.step_wait()
+ return torch.cat(records[::-1]), vec.step_wait()
rollout in parts: a part sent after the next is sampled | workers.py | tests/test_env_workers.py -k rollout_step_samples
- vec.step_async_part(rows, actions)\n        records.append(record)
+ records.append((rows, actions, record))\n    for rows, actions, _ in records:\n        vec.step_async_part(rows, actions)\n    records = [r for _, _, r in records]
rollout in parts: dppo ignores the parts | dppo.py | tests/test_env_workers.py -k repeats_itself
- obs_rows, K_ft = envs.take_rows(obs, rows), args.ft_denoising_steps
+ obs_rows, K_ft = obs, args.ft_denoising_steps
rollout in parts: the parts not passed to the vector env | runs.py | tests/test_env_workers.py -k repeats_itself
- parallel = plan["env_workers"], stopped, plan["rollout_parts"]
+ parallel = plan["env_workers"], stopped, 1
rollout in parts: parts with the envs in this process | workers.py | tests/test_env_workers.py -k rollout_parts_rule
- if env_workers > 1 and parts is not None else 1
+ if parts is not None else 1
rollout in parts: a resume forgets the workers the parts follow | runs.py | tests/test_env_workers.py -k in_parts_keeps
- keys.append("env_workers")
+ pass
MH demos: an operator that never succeeds keeps the turn | ../scripts/make_robomimic_demos.py | tests/test_robomimic_mh.py -k never_succeeds
- if tried[name] == STUCK_ATTEMPTS and not made[name]:
+ if False:
threads: the update at the sampling threads | runs.py | tests/test_env_workers.py -k each_phase
- set_threads(plan["sampling_threads" if name == "rollout" else "update_threads"])
+ set_threads(plan["sampling_threads"])
threads: evaluations at the update's threads | runs.py | tests/test_env_workers.py -k each_phase
- before = workers.set_threads(_run["plan"]["sampling_threads"]) if _run.get("plan") else None
+ before = None
image evaluation: every episode's env at once | envs.py | tests/test_pixels_env.py -k rounds
- return min(episodes, IMAGE_EVAL_ENVS) if is_image_task(env_id) else episodes
+ return episodes
image evaluation: each round seeded from the first episode's seed | envs.py | tests/test_pixels_env.py -k rounds
- obs, _ = envs.reset(seed=seed + start)
+ obs, _ = envs.reset(seed=seed)
image memory: never checked | envs.py | tests/test_pixels_env.py -k memory
- robomimic_tasks.check_image_env_memory(env_id, num_envs, workers=env_workers > 1)\n
+ \n
image memory: the last env that fits refused | robomimic_tasks.py | tests/test_pixels_env.py -k memory
- if available is None or num_envs * each <= available:
+ if available is None or num_envs * each < available:
image memory: worker processes counted as envs in this one | envs.py | tests/test_pixels_env.py -k memory
- check_image_env_memory(env_id, num_envs, workers=env_workers > 1)
+ check_image_env_memory(env_id, num_envs, workers=False)
image memory: a worker's memory check suggests no fewer workers | robomimic_tasks.py | tests/test_pixels_env.py -k memory
- if workers and num_envs * IMAGE_ENV_MIB <= available:
+ if False:
env workers: a worker process for a single env | envs.py | tests/test_env_workers.py -k one_env
- env_workers = min(env_workers, num_envs)  # one env in one worker process only waits longer
+ pass
threads: free cores from the lagging load average | workers.py | tests/test_env_workers.py -k machine_counts
- busy = len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
+ busy = load
threads: iowait counted as busy | workers.py | tests/test_env_workers.py -k cpu_jiffies
- busy += sum(values) - values[3] - (values[4] if len(values) > 4 else 0.0)
+ busy += sum(values) - values[3]
threads: auto sampling at torch's count | workers.py | tests/test_env_workers.py -k auto_rules
- plan["sampling_threads"] = args.sampling_threads or 1
+ plan["sampling_threads"] = args.sampling_threads or given_threads
threads: auto update ignores the load | workers.py | tests/test_env_workers.py -k auto_rules
- plan["update_threads"] = args.update_threads or max(1, min(given_threads, seen["free"]))
+ plan["update_threads"] = args.update_threads or given_threads
threads: a resume takes the auto counts of its own start | runs.py | tests/test_env_workers.py -k resume
- plan[key], plan[f"{key}_why"] = saved[key], "as the resumed run chose it"
+ pass
threads: the checkpoint keeps no thread counts | runs.py | tests/test_env_workers.py -k resumed_run
- | dict(parallel=_run.get("plan"))
+
# pixel tasks (paper 5.2, D.5): ViT encoder, random shifts, gradient accumulation, settings, official checkpoints
pixels: ViT input not centred (dppo) | vit.py | tests/test_pixel_policies.py -k official_forward
- self.patch_embed(images / 255.0 - 0.5)
+ self.patch_embed(images / 255.0)
pixels: ViT input not centred (gaussian) | vit.py | tests/test_pixel_policies.py -k gaussian_vision_policy
- self.patch_embed(images / 255.0 - 0.5)
+ self.patch_embed(images / 255.0)
pixels: ViT without patch positions | vit.py | tests/test_pixel_policies.py -k official_forward
- return self.norm(self.transformer(x + self.pos_embed))
+ return self.norm(self.transformer(x))
pixels: spatial embedding averages its channels | vit.py | tests/test_pixel_policies.py -k official_forward
- return (self.weight * self.proj(rows)).sum(dim=1)
+ return (self.weight * self.proj(rows)).mean(dim=1)
pixels: the oldest image of the history | vit.py | tests/test_pixel_policies.py -k official_forward
- rgb = obs["rgb"][:, -1].float()
+ rgb = obs["rgb"][:, 0].float()
pixels: every camera reads the first one's image | vit.py | tests/test_pixel_policies.py -k official_forward
- images = rgb[:, 3 * camera : 3 * camera + 3]
+ images = rgb[:, :3]
pixels: features without the proprioception (critic) | vit.py | tests/test_pixel_policies.py -k vit_critic
- return torch.cat([*features, state], dim=-1)
+ return torch.cat([*features, 0 * state], dim=-1)
random shift: rows moved by the column shift | vit.py | tests/test_pixel_policies.py -k random_shift
- + shift[:, 1:]).clamp(0, height - 1)
+ + shift[:, :1]).clamp(0, height - 1)
random shift: never by +pad | vit.py | tests/test_pixel_policies.py -k random_shift
- torch.randint(-pad, pad + 1,
+ torch.randint(-pad, pad,
random shift: cameras never on their own | vit.py | tests/test_pixel_policies.py -k shift_images
- cameras = rgb.shape[-3] // 3 if per_camera else 1
+ cameras = 1
an image env renders in whichever GL context is current | robomimic_tasks.py | tests/test_pixels_env.py -k renders_the_same_after
- sim._render_context_offscreen.gl_ctx.make_current()
+ pass
a closing image env frees its renderer in another env's GL context | robomimic_tasks.py | tests/test_pixels_env.py -k renders_the_same_after
- context.gl_ctx.make_current()
+ pass
pre-training images not shifted | pretraining.py | tests/test_pixel_runs.py
- o = vit.shift_images(o, per_camera=True)
+ o = o
fine-tuning images not shifted (dppo) | dppo.py | tests/test_pixel_runs.py
- flat_obs = vit.shift_images(flat_obs)
+ flat_obs = flat_obs
fine-tuning images not shifted (gaussian) | gaussian_ppo.py | tests/test_pixel_runs.py
- flat_obs = vit.shift_images(flat_obs)
+ flat_obs = flat_obs
grad accumulation never sums (dppo) | dppo.py | tests/test_pixel_policies.py -k accumulate
- if k % args.grad_accumulate == 0:  # a new sum of gradients
+ if True:  # a new sum of gradients
grad accumulation steps every minibatch (gaussian) | gaussian_ppo.py | tests/test_pixel_policies.py -k accumulate
- if (k + 1) % args.grad_accumulate and k + 1 < len(starts):
+ if False:
grad accumulation drops the epoch's last minibatches (gaussian) | gaussian_ppo.py | tests/test_pixel_policies.py -k accumulate
- if (k + 1) % args.grad_accumulate and k + 1 < len(starts):
+ if (k + 1) % args.grad_accumulate:
pixel Square MLP of the state task (dppo) | dppo.py | tests/test_pixel_policies.py -k parameter_counts
- grad_accumulate=20, logprob_batch_size=1000, mlp_dims=(768,) * 3),\n    transport
+ grad_accumulate=20, logprob_batch_size=1000, mlp_dims=(1024,) * 3),\n    transport
pixel Lift without gradient accumulation (gaussian) | gaussian_ppo.py | tests/test_pixel_policies.py -k task_defaults
- lift=dict(n_steps=300, batch_size=1500, grad_accumulate=5,
+ lift=dict(n_steps=300, batch_size=1500, grad_accumulate=1,
pixel tasks with the state tasks' K (dppo) | dppo.py | tests/test_pixel_policies.py -k task_defaults
- ROBOMIMIC_IMG = dict(ROBOMIMIC, denoising_steps=100,
+ ROBOMIMIC_IMG = dict(ROBOMIMIC, denoising_steps=20,
pixel tasks take the state tables (dppo) | dppo.py | tests/test_pixel_policies.py -k task_defaults
- if envs.is_image_task(args.env_id):\n        task = envs.robomimic_task(args.env_id)
+ if False:\n        task = envs.robomimic_task(args.env_id)
official ViT: layer norms swapped | official.py | tests/test_pixel_policies.py -k official_vision
- "layer_norm1": "norm1",
+ "layer_norm1": "norm2",
official ViT: the two cameras' compressions swapped | official.py | tests/test_pixel_policies.py -k official_vision_diffusion
- cameras = ["compress1", "compress2"] if
+ cameras = ["compress2", "compress1"] if
official pixel policy: the state tasks' K | official.py | tests/test_pixel_policies.py -k official_vision_diffusion
- TABLE |= dict(pixel_denoising_steps=100,
+ TABLE |= dict(pixel_denoising_steps=20,
official state policy taken for a pixel task | official.py | tests/test_pixel_policies.py -k other_kind
- if robomimic_tasks.is_image_task(env_id) and not pixels:
+ if False:
pixel task accepted by a state-only script | arguments.py | tests/test_pixel_policies.py -k state_only
- if robomimic_tasks.is_image_task(first.env_id) and not hasattr(first, "vit_dim"):
+ if False:
# the comparison studies' tables (experiments/)
comparison table: a variant's runs counted as its base's | ../experiments/robomimic_weak_starts/robomimic_comparison_figure.py | tests/test_figures.py -k variant
- glob.glob(os.path.join(cli.runs, f"{algo}__s*"))
+ glob.glob(os.path.join(cli.runs, f"{algo}*__s*"))
comparison table: Fisher test of one seed's episodes | ../experiments/robomimic_weak_starts/robomimic_comparison_figure.py | tests/test_figures.py -k variant
- [[wins, 50 * len(vals) - wins], [start_wins
+ [[wins, 50 - wins], [start_wins
iteration times: mean instead of median | ../experiments/robomimic_pixels/iteration_times.py | tests/test_figures.py -k iteration_times
- median[algo] = np.median(mine, axis=0)
+ median[algo] = np.mean(mine, axis=0)
iteration times: each update's KL read one iteration late | ../experiments/robomimic_pixels/iteration_times.py | tests/test_figures.py -k iteration_times
- kl.get(r.step, np.nan)
+ kl.get(r.step + 1500, np.nan)
iteration times: DPPO against the official Gaussian only | ../experiments/robomimic_pixels/iteration_times.py | tests/test_figures.py -k iteration_times
- for base in ALGOS[1:]:
+ for base in ALGOS[1:2]:
"""


def parse(text):
    """[(name, script, [(old, new), ...], test), ...] from the MUTATIONS table."""
    entries = []

    def unescape(s):
        return s.replace("\\\\", "\0").replace("\\n", "\n").replace("\0", "\\")

    for line in text.splitlines():
        if line.startswith("- "):
            entries[-1][2].append([unescape(line[2:]), None])
        elif line.startswith("+"):
            entries[-1][2][-1][1] = unescape(line[2:])
        elif line.strip() and not line.startswith("#"):
            name, script, test = (part.strip() for part in line.split("|"))
            entries.append((name, script, [], test))
    return entries


def run(name, script, edits, test):
    scratch = tempfile.mkdtemp(prefix="mutation-")
    try:
        for sub in ("cleandppo", "tests", "scripts", "experiments"):  # tests run scripts/ and experiments/ too
            shutil.copytree(
                os.path.join(ROOT, sub), os.path.join(scratch, sub), ignore=shutil.ignore_patterns("__pycache__")
            )
        path = os.path.join(scratch, "cleandppo", script)
        with open(path) as f:
            text = f.read()
        for o, n in edits:
            if text.count(o) != 1:
                return f"STALE     {name}: the line occurs {text.count(o)} times in {script}"
            text = text.replace(o, n)
        with open(path, "w") as f:
            f.write(text)
        env = dict(os.environ, PYTHONPATH=scratch, OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *test.split()],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
        )
        failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return f"{'CAUGHT' if proc.returncode else 'SURVIVED':9} {name}: {failed[0] if failed else ''}"
    finally:
        shutil.rmtree(scratch)


def stale(name, script, edits, test):
    """Without running anything: None when every text of the entry occurs exactly once in its script."""
    with open(os.path.join(ROOT, "cleandppo", script)) as f:
        text = f.read()
    counts = [text.count(o) for o, _ in edits]
    return None if all(c == 1 for c in counts) else f"STALE     {name}: occurrences {counts} in {script}"


if __name__ == "__main__":
    words = [w for w in sys.argv[1:] if w != "--check"]
    chosen = [m for m in parse(MUTATIONS) if not words or any(w.lower() in m[0].lower() for w in words)]
    if "--check" in sys.argv:  # only say which entries no longer match their script (after an edit or a reformat)
        problems = [r for r in map(lambda m: stale(*m), chosen) if r]
        print("\n".join(problems) or f"all {len(chosen)} entries match their scripts")
        sys.exit(bool(problems))
    results = [run(*m) for m in chosen]
    print("\n".join(results))
    sys.exit(any(not r.startswith("CAUGHT") for r in results))
