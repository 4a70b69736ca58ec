"""The behaviour-cloning loop that dppo.py, gaussian_ppo.py and gmm_ppo.py pre-train with (paper D.1, D.6; official
agent/pretrain/train_agent.py, one loop for every policy there too). Each script keeps what is its own: the network
and its loss, and the checkpoint it writes. This module holds the rest: minibatches of (observation history, action
chunk), AdamW, the learning-rate schedule, the EMA copy of the weights, the logs, and the state a killed
pre-training continues from (save_state, load_state).
"""

import copy
import math
import os
import time

import numpy as np
import torch

from cleandppo import envs, runs, vit

STATE_EVERY_S = 60.0  # how often the state to continue from (runs.PRETRAIN_STATE) is written: a kill loses at most this


def pretrain_lr(epoch, args):
    """Linear warm-up over 1 epoch from the min LR, then cosine decay to the min LR (official
    `CosineAnnealingWarmupRestarts`, util/scheduler.py)."""
    lo, hi, warmup = args.pretrain_min_lr, args.pretrain_lr, 1
    if epoch < warmup:
        return lo + (hi - lo) * epoch / warmup
    progress = (epoch - warmup) / max(1, args.pretrain_epochs - warmup)
    return lo + (hi - lo) * (1 + math.cos(math.pi * progress)) / 2


def make_samples(data, args):
    """The (observation history, action chunk) samples of dataset `data` (envs.make_pretraining_samples)."""
    out = envs.make_pretraining_samples(data["episodes"], data["normalization"], args.cond_steps, args.horizon_steps)
    print(f"[pretrain] {len(data['episodes'])} episodes, {len(out[2])} samples from {args.dataset}")
    return out


def save_pretrained(checkpoint, weights, epochs: int, steps: int, args, run_dir: str) -> dict:
    """The script's `checkpoint(weights)` with the dataset, epochs and gradient steps done, written to
    run_dir/pretrained.pt at the end, pretrained_<epochs>.pt before (a snapshot); returns it."""
    ckpt = checkpoint(weights) | dict(dataset=args.dataset, pretrain_epochs=epochs, pretrain_gradient_steps=steps)
    ckpt["wall_time_s"] = runs.elapsed()  # what a run killed in its closing evaluation adds up when rerun
    path = os.path.join(run_dir, "pretrained.pt" if epochs == args.pretrain_epochs else f"pretrained_{epochs}.pt")
    envs.save_checkpoint(ckpt, path)
    print(f"[pretrain] wrote {path}", flush=True)
    return ckpt


def behaviour_cloning(net, loss_fn, samples, args, device, writer, checkpoint, run_dir):
    """Train `net` on `samples` (envs.make_pretraining_samples) for args.pretrain_epochs epochs; save the weights
    (the EMA copy, or `net` itself when args.ema_decay is None) as the script's `checkpoint(weights)` to
    run_dir/pretrained.pt (save_pretrained) and return that checkpoint.

    Per epoch: the learning rate of pretrain_lr (constant args.pretrain_lr when args.pretrain_min_lr is None), then
    minibatches of args.pretrain_batch_size samples in a fresh random order (numpy's global RNG), each a
    `loss_fn(obs, action_chunk)` step of AdamW over the parameters that require a gradient. Pixel observations are
    random-shifted first with args.augment, each camera on its own (official pre-training). The EMA copy starts at
    `net` and copies it every args.ema_freq steps until epoch args.ema_start_epoch, then moves towards it by
    1 - args.ema_decay. Logs pretrain/loss (the epoch's mean) and pretrain/learning_rate per epoch. With
    args.pretrain_save_freq = N > 0 the weights as they stand after every N-th epoch but the last are saved too
    (pretrained_<epoch>.pt: snapshots of a long pre-training).

    At most every STATE_EVERY_S seconds, at the end of an epoch, run_dir/runs.PRETRAIN_STATE also holds what
    continuing needs: the live and EMA weights, AdamW's moments, the RNGs, the epochs done. A run dir that holds one
    when this starts is an interrupted pre-training rerun with its command (runs.open_run_dir checked it): it
    continues from there and ends as the uninterrupted run would have; the file goes once pretrained.pt is written.
    One that holds pretrained.pt alone had finished (killed in the closing evaluation): that is returned as it is."""
    obs, actions, starts, firsts = samples
    ema = copy.deepcopy(net).requires_grad_(False) if args.ema_decay is not None else None
    saved = net if ema is None else ema  # the weights every checkpoint holds
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.pretrain_lr, weight_decay=args.pretrain_weight_decay)
    obs_t, act_t = envs.obs_tensor(obs, device), torch.as_tensor(actions, device=device)
    rows = np.arange(len(actions))  # one per step of obs and actions: gathered as indices, then looked up on device
    steps_per_epoch, step, t0 = math.ceil(len(starts) / args.pretrain_batch_size), 0, time.time()
    state_path, first, saved_at = os.path.join(run_dir, runs.PRETRAIN_STATE), 0, t0
    finished = os.path.join(run_dir, "pretrained.pt")
    if os.path.isfile(finished) and not os.path.isfile(state_path):  # finished, then killed in its closing evaluation
        return torch.load(finished, map_location="cpu", weights_only=False)
    if os.path.isfile(state_path):
        first, step = load_state(state_path, net, ema, opt)
    for epoch in range(first, args.pretrain_epochs):
        if args.pretrain_min_lr is not None:
            for group in opt.param_groups:
                group["lr"] = pretrain_lr(epoch, args)
        perm = np.random.permutation(len(starts))
        total = 0.0
        for k in range(steps_per_epoch):
            idx = perm[k * args.pretrain_batch_size : (k + 1) * args.pretrain_batch_size]
            o_idx, a_idx = envs.gather_samples(rows, rows, starts, firsts, idx, args.cond_steps, args.horizon_steps)
            o, a = envs.take_rows(obs_t, torch.as_tensor(o_idx)), act_t[torch.as_tensor(a_idx)]
            if getattr(args, "augment", False):  # pixels (official VisionDiffusionMLP, Gaussian_VisionMLP augment)
                o = vit.shift_images(o, per_camera=True)
            loss = loss_fn(o, a)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            total += loss.item()
            if ema is not None and step % args.ema_freq == 0:
                with torch.no_grad():
                    for p_ema, p in zip(ema.parameters(), net.parameters()):
                        p_ema.copy_(p) if epoch < args.ema_start_epoch else p_ema.lerp_(p, 1 - args.ema_decay)
        every = getattr(args, "pretrain_save_freq", 0)
        if every and (epoch + 1) % every == 0 and epoch + 1 < args.pretrain_epochs:
            save_pretrained(checkpoint, saved, epoch + 1, step, args, run_dir)
        if time.time() - saved_at >= STATE_EVERY_S and epoch + 1 < args.pretrain_epochs:
            save_state(state_path, checkpoint(saved), net, ema, opt, epoch + 1, step)
            saved_at = time.time()
        mean_loss, lr = total / steps_per_epoch, opt.param_groups[0]["lr"]
        writer.add_scalar("pretrain/loss", mean_loss, epoch)
        writer.add_scalar("pretrain/learning_rate", lr, epoch)
        if epoch % max(1, args.pretrain_epochs // 20) == 0 or epoch == args.pretrain_epochs - 1:
            left = (time.time() - t0) / (epoch + 1 - first) * (args.pretrain_epochs - epoch - 1) / 60
            done = f"epoch {epoch + 1}/{args.pretrain_epochs}"
            print(f"[pretrain] {done} | loss {mean_loss:.4f} | lr {lr:.2e} | left {left:.1f}m", flush=True)
    ckpt = save_pretrained(checkpoint, saved, args.pretrain_epochs, step, args, run_dir)
    if os.path.isfile(state_path):
        os.remove(state_path)
    return ckpt


def save_state(path, ckpt, net, ema, opt, epochs: int, steps: int):
    """runs.PRETRAIN_STATE: the script's checkpoint `ckpt` of the weights as they stand (loadable like a snapshot),
    with the epochs and gradient steps done and what load_state needs to continue exactly."""
    state = dict(live=net.state_dict(), ema=None if ema is None else ema.state_dict(), optimizer=opt.state_dict())
    state |= dict(rng=runs.rng_state(), wall_time_s=runs.elapsed())
    envs.save_checkpoint(ckpt | state | dict(pretrain_epochs=epochs, pretrain_gradient_steps=steps), path)


def load_state(path, net, ema, opt) -> tuple[int, int]:
    """Put `net`, `ema`, `opt` and the RNGs back as save_state wrote them; returns (epochs, gradient steps) done."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(state["live"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    runs.set_rng_state(state["rng"])
    return state["pretrain_epochs"], state["pretrain_gradient_steps"]
