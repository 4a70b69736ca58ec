"""How far one AdamW step of the PPO loss moves the bundled Gaussian-ViT-MLP of lift-img, measured on its own data.

    python experiments/robomimic_pixels/first_step_kl.py                     # the bundled lift-img Gaussian
    python experiments/robomimic_pixels/first_step_kl.py --rows 375 1500 --lr 1e-4 1e-5
    python experiments/robomimic_pixels/first_step_kl.py --checkpoint cleandppo/pretrained/lift-mhsim-gaussian-mlp.pt \
        --dataset lift-mhsim                                                 # the state policy, for comparison

In the comparison the Gaussian's first update ended with approx. KL 4.4 (target 1) and its success went from 5/5 to
0. This checks the size of that step apart from the run: rows of the policy's image demos (random-shifted once, as
an iteration's batch), chunks sampled from the policy (std 0.1), advantages drawn at random and normalised, one
step of gaussian_ppo.py's clipped loss (clip 0.01) with AdamW at the given learning rate (the official actor LR of
Lift and Can from pixels: 1e-4). Printed per (rows, LR): the k3 KL estimate and the ratio afterwards on the same
rows, as ppo_update logs them, and the RMS change of the mean action (normalised units; the std is 0.1). The first
AdamW step moves every weight by about the LR whatever the gradient's size, so the direction of the advantages
matters little to how far the policy moves.
"""

import argparse

import numpy as np
import torch

from cleandppo import envs, pretraining, vit
from cleandppo import gaussian_ppo as gp


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="cleandppo/pretrained/lift-img-gaussian-mlp.pt")
    parser.add_argument("--dataset", default="lift-mhsim-img", help="its pre-training data (the observations)")
    parser.add_argument("--rows", type=int, nargs="+", default=[375], help="batch sizes (375: an iteration here)")
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1e-5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--step",
        choices=["all", "encoder", "head"],
        default="all",
        help="the weights the step moves (pixels: the ViT "
        "encoder with its spatial embedding, or the MLP head with the std; the rest stays)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = envs.upgrade_checkpoint(torch.load(args.checkpoint, map_location="cpu", weights_only=False))
    run_args = gp.Args(**{k: v for k, v in ckpt["args"].items() if k in gp.Args.__dataclass_fields__})
    run_args.dataset = args.dataset
    data = envs.load_dataset(args.dataset, ckpt["env_id"])
    obs_all, actions_all, starts, firsts = pretraining.make_samples(data, run_args)
    steps = np.arange(len(actions_all))
    print(f"step: {args.step}\n{'rows':>5} {'lr':>7} {'approx_kl':>10} {'ratio':>8} {'mean shift (RMS)':>17}")
    for rows in args.rows:
        for lr in args.lr:
            torch.manual_seed(args.seed)
            rng = np.random.default_rng(args.seed)
            idx = rng.choice(len(starts), rows, replace=False)  # samples as pre-training draws them
            o_idx, _ = envs.gather_samples(
                steps, steps, starts, firsts, idx, run_args.cond_steps, run_args.horizon_steps
            )
            obs = envs.take_rows(envs.obs_tensor(obs_all, "cpu"), torch.as_tensor(o_idx))
            obs = vit.shift_images(obs) if isinstance(obs, dict) else obs  # pixels: shifted once, as a batch is
            policy = gp._load_policy(ckpt, "cpu")
            moved = [
                p
                for n, p in policy.named_parameters()
                if args.step == "all" or n.startswith("encoder.") == (args.step == "encoder")
            ]
            opt = torch.optim.AdamW(moved, lr=lr, weight_decay=0.0)
            with torch.no_grad():
                mean0, std = policy(obs)
                actions = gp.sample_action(mean0, std, run_args.randn_clip_value)
                old = gp.log_prob(mean0, std, actions)
            adv = torch.randn(rows)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            mean, std = policy(obs)
            ratio = (gp.log_prob(mean, std, actions) - old).exp()
            clip = run_args.clip_coef
            loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                mean1, std1 = policy(obs)
                logratio = gp.log_prob(mean1, std1, actions) - old
                kl = ((logratio.exp() - 1) - logratio).mean().item()
                shift = (mean1 - mean0).pow(2).mean().sqrt().item()
            print(f"{rows:>5} {lr:>7.0e} {kl:>10.3f} {logratio.exp().mean().item():>8.3f} {shift:>17.3f}", flush=True)


if __name__ == "__main__":
    main()
