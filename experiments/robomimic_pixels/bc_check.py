"""Does a pre-trained diffusion policy reproduce its demonstrations' actions on their own observations?

    OMP_NUM_THREADS=1 python experiments/robomimic_pixels/bc_check.py \
        --checkpoint runs/robomimic_lift_pixels/pretrain_diffusion/pretrained.pt --dataset lift-mhsim-img

Draws --samples pre-training samples of --dataset (normalized as the checkpoint normalizes), samples an action chunk
for each with the evaluation's DDIM plan (--ddim-steps of the checkpoint's K, deterministic) and with the full DDPM
chain, and prints the mean squared error to the demonstrated chunk, per action dimension too, next to that of
predicting zeros (the normalized actions' second moment). A policy that has learnt the data is well below the zeros
line; one that samples what it has not learnt is above it (actions spread over [-1, 1])."""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from cleandppo import dppo, envs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--env-id", default="lift-img")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--ddim-steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    torch.manual_seed(cli.seed)
    ckpt = torch.load(cli.checkpoint, weights_only=False, map_location="cpu")
    args = dppo.Args(env_id=cli.env_id)  # the sampler's clip values, as the run that wrote the checkpoint had them
    for key, value in ckpt.get("args", {}).items():
        if hasattr(args, key):
            setattr(args, key, value)
    kw = ckpt["model_kwargs"]
    data = envs.load_dataset(cli.dataset, cli.env_id)
    cond, horizon = kw.get("cond_steps", 1), kw["horizon_steps"]
    obs, actions, starts, firsts = envs.make_pretraining_samples(data["episodes"], ckpt["normalization"], cond, horizon)
    rows = np.random.default_rng(cli.seed).choice(len(starts), min(cli.samples, len(starts)), replace=False)
    obs, target = envs.gather_samples(obs, actions, starts, firsts, rows, cond, horizon)
    obs, target = envs.obs_tensor(obs, "cpu"), torch.as_tensor(target)
    actor, actor_ft, _ = dppo.build_actors(ckpt, 0, "cpu")
    sched = dppo.make_schedule(kw["denoising_steps"])
    zeros = (target**2).mean((0, 1)).numpy().round(3)
    print(f"{len(rows)} samples of {cli.dataset}; zeros: MSE {float((target**2).mean()):.3f}, per dimension {zeros}")
    with torch.no_grad():
        for name, ddim in [(f"DDIM {cli.ddim_steps} steps", cli.ddim_steps), (f"DDPM {kw['denoising_steps']}", None)]:
            chunk, _ = dppo.sample(
                actor, actor_ft, sched, obs, dppo.denoising_plan(kw["denoising_steps"], ddim), 0, "eval", args
            )
            error = (chunk - target) ** 2
            print(f"{name}: MSE {float(error.mean()):.3f}, per dimension {error.mean((0, 1)).numpy().round(3)}")


if __name__ == "__main__":
    main()
