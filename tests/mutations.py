"""Break one algorithm line at a time in a scratch copy of the repository and check that its guarding test fails.

    python tests/mutations.py            # every mutation below (a few minutes on 2 cores)
    python tests/mutations.py gae ppo    # only those whose name contains one of the words

Each entry is (name, script, the exact text of the line as it is, the broken text, the tests that must fail: a file,
optionally with pytest's -k).
Several lines can be broken together: give tuples of texts. Each text must occur exactly once in the script; when a script is edited and a line no longer matches, the runner
says so (update the entry). Not collected by pytest (the file name does not start with test_).
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PPO, SHARED, OFF = "tests/test_ppo_updates.py", "tests/test_shared_copies.py", "tests/test_offpolicy_updates.py"
LOOPS, DQL_QSM = "tests/test_loops.py", "tests/test_dql_qsm_shared.py"

MUTATIONS = [
    # PPO losses
    (
        "ppo clip on the wrong side (gaussian)",
        "gaussian_ppo.py",
        "torch.max(-adv * ratio, -adv * ratio.clamp",
        "torch.min(-adv * ratio, -adv * ratio.clamp",
        PPO,
    ),
    (
        "ppo clip on the wrong side (gmm)",
        "gmm_ppo.py",
        "torch.max(-adv * ratio, -adv * ratio.clamp",
        "torch.min(-adv * ratio, -adv * ratio.clamp",
        PPO,
    ),
    (
        "ppo clip on the wrong side (dppo)",
        "dppo.py",
        "pg_loss = torch.max(-adv * ratio,",
        "pg_loss = torch.min(-adv * ratio,",
        PPO,
    ),
    (
        "ppo clip on the wrong side (exact likelihood)",
        "exact_likelihood_pg.py",
        "pg_loss = torch.max(-adv * ratio,",
        "pg_loss = torch.min(-adv * ratio,",
        PPO,
    ),
    (
        "ppo advantage sign flipped (gaussian)",
        "gaussian_ppo.py",
        "pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp",
        "pg_loss = torch.max(adv * ratio, adv * ratio.clamp",
        PPO,
    ),
    (
        "ppo no advantage normalisation (gmm)",
        "gmm_ppo.py",
        "adv = (adv - adv.mean()) / (adv.std() + 1e-8)",
        "adv = adv",
        PPO,
    ),
    (
        "ppo no advantage normalisation (exact likelihood)",
        "exact_likelihood_pg.py",
        "adv_mb = (adv_mb - adv_mb.mean()) / (adv_mb.std() + 1e-8)",
        "adv_mb = adv_mb",
        PPO,
    ),
    (
        "ppo entropy bonus sign (gaussian)",
        "gaussian_ppo.py",
        "loss = pg_loss - args.ent_coef * ent",
        "loss = pg_loss + args.ent_coef * ent",
        PPO,
    ),
    ("ppo value loss without vf_coef (gmm)", "gmm_ppo.py", "+ args.vf_coef * v_loss", "+ v_loss", PPO),
    ("dppo no denoising discount", "dppo.py", "adv = adv * discounts[j]", "adv = adv", PPO),
    ("dppo one clip ratio for every denoising step", "dppo.py", "eps = clips[j]", "eps = clips[-1]", PPO),
    (
        "dppo clip schedule runs the wrong way",
        "dppo.py",
        "torch.arange(ft_steps, dtype=torch.float64) / (ft_steps - 1)",
        "torch.arange(ft_steps - 1, -1, -1, dtype=torch.float64) / (ft_steps - 1)",
        PPO,
    ),
    (
        "dppo discount applied before normalisation",
        "dppo.py",
        "adv = (adv - adv.mean()) / (adv.std() + 1e-8)\n            adv = adv * discounts[j]",
        "adv = adv * discounts[j]\n            adv = (adv - adv.mean()) / (adv.std() + 1e-8)",
        PPO,
    ),
    (
        "dppo log-prob at the wrong denoising step",
        "dppo.py",
        "ft_t[j], ft_t_prev[j], ddim, args.act_steps",
        "ft_t[K_ft - 1 - j], ft_t_prev[K_ft - 1 - j], ddim, args.act_steps",
        PPO,
    ),
    (
        "dppo actor stepped during critic warm-up",
        "dppo.py",
        "            if update_actor:\n                actor_opt.step()",
        "            if True:\n                actor_opt.step()",
        PPO,
    ),
    (
        "exact likelihood: pieces averaged instead of summed",
        "exact_likelihood_pg.py",
        "torch.clamp(ratio, 1 - eps, 1 + eps)).sum() / mb",
        "torch.clamp(ratio, 1 - eps, 1 + eps)).mean()",
        PPO,
    ),
    (
        "exact likelihood: new log-likelihood not clamped",
        "exact_likelihood_pg.py",
        "create_graph=update_actor).clamp(lo, hi)",
        "create_graph=update_actor)",
        PPO,
    ),
    # shared copies
    (
        "GAE without lambda (gaussian)",
        "gaussian_ppo.py",
        "last = delta + gamma * gae_lambda * (1 - dones[n]) * last",
        "last = delta + gamma * (1 - dones[n]) * last",
        SHARED,
    ),
    (
        "GAE not cut at episode ends (dppo)",
        "dppo.py",
        "last = delta + gamma * gae_lambda * (1 - dones[n]) * last",
        "last = delta + gamma * gae_lambda * last",
        SHARED,
    ),
    (
        "reward scaler subtracts the mean (dppo)",
        "dppo.py",
        "return np.clip(rewards / np.sqrt(self.var + 1e-8), -10, 10)",
        "return np.clip((rewards - self.mean) / np.sqrt(self.var + 1e-8), -10, 10)",
        SHARED,
    ),
    (
        "reward scaler without clip (gmm)",
        "gmm_ppo.py",
        "return np.clip(rewards / np.sqrt(self.var + 1e-8), -10, 10)",
        "return rewards / np.sqrt(self.var + 1e-8)",
        SHARED,
    ),
    (
        "reward scaler ignores episode starts (exact likelihood)",
        "exact_likelihood_pg.py",
        "self.ret = rewards[n] + self.gamma * (1 - firsts[n]) * self.ret",
        "self.ret = rewards[n] + self.gamma * self.ret",
        SHARED,
    ),
    ("soft update ignores tau (dql)", "dql.py", "        p_t.lerp_(p, tau)", "        p_t.lerp_(p, 1.0)", SHARED),
    ("EMA that never moves (idql)", "idql.py", "        p_t.lerp_(p, tau)", "        p_t.lerp_(p, 0.0)", SHARED),
    ("EMA with 1 - tau (dipo)", "dipo.py", "        p_t.lerp_(p, tau)", "        p_t.lerp_(p, 1 - tau)", SHARED),
    (
        "Bellman target with max (qsm)",
        "qsm.py",
        "gamma * (1 - terminated) * torch.min(next_q1, next_q2)",
        "gamma * (1 - terminated) * torch.max(next_q1, next_q2)",
        SHARED,
    ),
    (
        "denoising loss noises with ab instead of sqrt(ab) (dawr)",
        "dawr.py",
        "    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps",
        "    x_t = ab * x0 + (1 - ab).sqrt() * eps",
        SHARED,
    ),
    (
        "DDPM posterior mean coefficient (idql)",
        "idql.py",
        "coef_xt=(1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar)",
        "coef_xt=(1 - alpha_bar_prev) * alphas / (1 - alpha_bar)",
        SHARED,
    ),
    # off-policy updates
    (
        "IDQL expectile inverted",
        "idql.py",
        "weight = torch.where(diff > 0, torch.full_like(diff, tau), torch.full_like(diff, 1 - tau))",
        "weight = torch.where(diff > 0, torch.full_like(diff, 1 - tau), torch.full_like(diff, tau))",
        OFF,
    ),
    (
        "IDQL V fit to Q1 only",
        "idql.py",
        'target_q = torch.minimum(*q_target(b["obs"], b["actions"]))',
        'target_q = q_target(b["obs"], b["actions"])[0]',
        OFF,
    ),
    (
        "IDQL Q target ignores terminated",
        "idql.py",
        "return rewards + gamma * (1 - terminated) * next_v",
        "return rewards + gamma * next_v",
        OFF,
    ),
    (
        "IDQL target Q ignores critic_tau",
        "idql.py",
        "ema_update(q_target, q_critic, args.critic_tau)",
        "ema_update(q_target, q_critic, 1.0)",
        OFF,
    ),
    (
        "DIPO next action from the online actor",
        "dipo.py",
        "next_a = sample(target_actor, sched,",
        "next_a = sample(actor, sched,",
        OFF,
    ),
    (
        "DIPO action gradient descends",
        "dipo.py",
        "(a.grad,) = torch.autograd.grad(-torch.minimum(q1, q2).sum(), a)",
        "(a.grad,) = torch.autograd.grad(torch.minimum(q1, q2).sum(), a)",
        OFF,
    ),
    ("DIPO action gradient not clipped", "dipo.py", "        nn.utils.clip_grad_norm_([a], max_norm)\n", "", OFF),
    (
        "DIPO actor fit to the unmoved actions",
        "dipo.py",
        "actor_loss = pretrain_loss(actor, sched, moved, obs, K)",
        "actor_loss = pretrain_loss(actor, sched, actions, obs, K)",
        OFF,
    ),
    (
        "DIPO target actor ignores the EMA rate",
        "dipo.py",
        "ema_update(target_actor, actor, args.target_ema_rate)",
        "ema_update(target_actor, actor, 1.0)",
        OFF,
    ),
    (
        "DAWR advantages from the critic before its update",
        "dawr.py",
        (
            "rows, _, targets = buffer_targets(critic, buf, args, device)\n",
            "rows, values, targets = buffer_targets(critic, buf, args, device)  # advantages from the updated critic",
        ),
        (
            "stale = rows, _, targets = buffer_targets(critic, buf, args, device)\n",
            "rows, values, targets = stale  # advantages from the updated critic",
        ),
        OFF,
    ),
    ("DAWR advantage sign flipped", "dawr.py", "advantages = targets - values", "advantages = values - targets", OFF),
    ("DAWR weights not clipped", "dawr.py", "torch.clamp(beta * a, max=math.log(max_weight))", "beta * a", OFF),
    ("DAWR TD(lambda) without alpha", "dawr.py", "G = alpha * delta + gamma", "G = delta + gamma", OFF),
    (
        "DAWR time-outs not bootstrapped",
        "dawr.py",
        "delta = rewards[n] + gamma * (1 - terminated[n]) * next_values[n]",
        "delta = rewards[n] + gamma * (1 - np.maximum(terminated[n], truncated[n])) * next_values[n]",
        OFF,
    ),
    (
        "DRWR weights ignored",
        "drwr.py",
        'obs[idx], len(sched["betas"]), weights[idx])',
        'obs[idx], len(sched["betas"]))',
        OFF,
    ),
    # training loops
    (
        "time-out not bootstrapped (dppo)",
        "dppo.py",
        "rewards = rewards + args.gamma * final_values * buf_timeout",
        "rewards = rewards",
        LOOPS,
    ),
    (
        "time-out not bootstrapped (gaussian)",
        "gaussian_ppo.py",
        "rewards = rewards + args.gamma * final_values * buf_timeout",
        "rewards = rewards",
        LOOPS,
    ),
    (
        "time-out not bootstrapped (gmm)",
        "gmm_ppo.py",
        "rewards = rewards + args.gamma * final_values * buf_timeout",
        "rewards = rewards",
        LOOPS,
    ),
    (
        "time-out not bootstrapped (exact likelihood)",
        "exact_likelihood_pg.py",
        "rewards = rewards + args.gamma * final_values * buf_timeout",
        "rewards = rewards",
        LOOPS,
    ),
    (
        "time-out bootstrapped with V(next reset obs) (dppo)",
        "dppo.py",
        "rewards = rewards + args.gamma * final_values * buf_timeout",
        "rewards = rewards + args.gamma * np.concatenate([values[1:], last_value[None]], 0) * buf_timeout",
        LOOPS,
    ),
    (
        "GAE not cut at a time-out (dppo)",
        "dppo.py",
        "np.maximum(buf_term, buf_timeout), args.gamma, args.gae_lambda",
        "buf_term, args.gamma, args.gae_lambda",
        LOOPS,
    ),
    (
        "time-out stored as terminal (dql)",
        "dql.py",
        "envs.final_observations(next_obs, infos), term)",
        "envs.final_observations(next_obs, infos), np.logical_or(term, trunc))",
        LOOPS,
    ),
    (
        "time-out stored as terminal (idql)",
        "idql.py",
        "envs.final_observations(next_obs, infos), term)",
        "envs.final_observations(next_obs, infos), np.logical_or(term, trunc))",
        LOOPS,
    ),
    (
        "post-reset observation stored as s' (dipo)",
        "dipo.py",
        "envs.final_observations(next_obs, infos), term)",
        "next_obs, term)",
        LOOPS,
    ),
    (
        "time-out stored as terminal (qsm)",
        "qsm.py",
        "envs.final_observations(next_obs, infos), term)",
        "envs.final_observations(next_obs, infos), np.logical_or(term, trunc))",
        LOOPS,
    ),
    (
        "time-out not marked truncated (dawr)",
        "dawr.py",
        "term, np.logical_and(trunc, np.logical_not(term)),",
        "np.logical_or(term, trunc), np.zeros_like(trunc),",
        LOOPS,
    ),
    (
        "target critic ignores its rate in the loop (dql)",
        "dql.py",
        "soft_update(target_critic, critic, args.target_ema_rate)",
        "soft_update(target_critic, critic, 0.005)",
        DQL_QSM,
    ),
    (
        "target critic not updated in the loop (qsm)",
        "qsm.py",
        "                soft_update(target_critic, critic, args.critic_tau)\n",
        "",
        DQL_QSM,
    ),
    (
        "pre-training EMA that never moves (dppo)",
        "dppo.py",
        "else p_ema.lerp_(p, 1 - args.ema_decay)",
        "else p_ema.lerp_(p, 0.0)",
        "tests/test_dppo.py -k ema",
    ),
    (
        "pre-training EMA with decay and 1 - decay swapped (dppo)",
        "dppo.py",
        "else p_ema.lerp_(p, 1 - args.ema_decay)",
        "else p_ema.lerp_(p, args.ema_decay)",
        "tests/test_dppo.py -k ema",
    ),
    (
        "pre-training EMA ignores its start epoch (dppo)",
        "dppo.py",
        "p_ema.copy_(p) if epoch < args.ema_start_epoch else",
        "p_ema.copy_(p) if False else",
        "tests/test_dppo.py -k ema",
    ),
    (
        "IDQL V fit to the mean (tau 0.5)",
        "idql.py",
        "v_loss = expectile_loss(target_q - v, args.expectile)",
        "v_loss = expectile_loss(target_q - v, 0.5)",
        OFF,
    ),
]


def run(name, script, old, new, test):
    scratch = tempfile.mkdtemp(prefix="mutation-")
    try:
        for sub in ("cleandppo", "tests"):
            shutil.copytree(
                os.path.join(ROOT, sub), os.path.join(scratch, sub), ignore=shutil.ignore_patterns("__pycache__")
            )
        path = os.path.join(scratch, "cleandppo", script)
        with open(path) as f:
            text = f.read()
        olds, news = (old, new) if isinstance(old, tuple) else ((old,), (new,))
        for o, n in zip(olds, news, strict=True):
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


if __name__ == "__main__":
    words = sys.argv[1:]
    chosen = [m for m in MUTATIONS if not words or any(w.lower() in m[0].lower() for w in words)]
    results = [run(*m) for m in chosen]
    print("\n".join(results))
    sys.exit(any(not r.startswith("CAUGHT") for r in results))
