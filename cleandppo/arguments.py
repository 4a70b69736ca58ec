"""The command line every cleandppo script shares: tyro parsing with per-task defaults, and one range rule per flag
name, the same in every script (a bad value stops in one line naming a value that works).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np

from cleandppo import robomimic_tasks
from cleandppo.common import fail


@dataclass
class RunArgs:
    """The flags every script accepts, in this order (docs/contract.md); each script's `Args` adds its own after them.
    Defaults are the Gym ones; a script's task tables (task_defaults) may change them per task."""

    env_id: str = "Hopper-v2"
    """task: Hopper-v2, Walker2D-v2, HalfCheetah-v2 (or gymnasium v4/v5 ids), robomimic lift/can/square/transport
    (from pixels: lift-img, ..., in dppo.py and gaussian_ppo.py), avoid-m1/2/3"""
    seed: int = 0
    """seeds torch, numpy and every environment (env i gets seed + i)"""
    num_envs: int = 40
    """parallel environments (E)"""
    total_timesteps: int = 1_000_000
    """fine-tuning budget in environment steps"""
    checkpoint: Optional[str] = None
    """pre-trained policy to fine-tune (the diffusion baselines: any cleandppo diffusion script's), or a run's
    checkpoint of this script to resume; default: the bundled one"""
    eval_only: bool = False
    """only evaluate --checkpoint"""
    eval_freq: int = 10
    """evaluate every N iterations (and after the last one)"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    run_dir: Optional[str] = None
    """where logs, checkpoints and summary.json go (default runs/<env>__<algo>__<seed>__<time>; a resume: its dir)"""
    overwrite: bool = False
    """replace the run already in --run-dir (without it such a dir is refused unless this run resumes it)"""
    save_freq: int = 10
    """write checkpoint_<iter>.pt every N iterations (checkpoint_last.pt is written every iteration)"""
    cuda: bool = True
    """use CUDA when available"""
    torch_deterministic: bool = True
    """deterministic torch kernels"""
    track: bool = False
    """also log to Weights & Biases"""
    capture_video: bool = False
    """record one evaluation episode to the run dir as an mp4 at the end (envs.capture_video)"""
    env_workers: int = 0
    """processes stepping the envs: 0 = auto (one per free core when 2+ are free, else this one), 1 = this process"""
    sampling_threads: int = 0
    """torch threads of sampling (rollouts, evaluations); 0 = auto: 1. Another count may change the last digits"""
    update_threads: int = 0
    """torch threads of the update; 0 = auto: the free cores (a resume: its run's). Another count may change digits"""


def parse_args(args_cls, task_defaults, argv=None):
    """Parse the command line with tyro in two passes. The first reads the fields that choose defaults (--env-id,
    --from-scratch, --backbone); `task_defaults(args)` returns the per-task or preset values for them; the second
    parse starts from those values, so a flag given on the command line, in any spelling, always wins. A pixel task
    (lift-img, ...) given to a script without the ViT flags stops in one line naming the state task."""
    import dataclasses

    import tyro

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.split("=")[0].replace("_", "-") in ("--async-envs", "--no-async-envs") for a in argv):
        fail(
            "--async-envs is gone: pass --env-workers N (N worker processes; 0, the default, chooses; 1: this process)"
        )
    first = tyro.cli(args_cls, args=[a for a in argv if a not in ("-h", "--help")])
    if robomimic_tasks.is_image_task(first.env_id) and not hasattr(first, "vit_dim"):  # (the --vit-* flags: a ViT)
        fail(
            f"this script runs from state only; the pixel tasks (paper 5.2) run in dppo.py and gaussian_ppo.py: pass "
            f"--env-id {robomimic_tasks.robomimic_task(first.env_id)}"
        )
    table = task_defaults(first)
    if not table:
        return tyro.cli(args_cls, args=argv)
    args = tyro.cli(args_cls, args=argv, default=dataclasses.replace(args_cls(), **table))
    kept = ", ".join(f"{k}={v}" for k, v in table.items() if getattr(args, k) == v)
    print(f"[{args.env_id}] defaults for this task: {kept}", flush=True)
    return args


# ------------------------------------------------------------------------------------------------
# Flag ranges: (low, low included, high, high included); None = unbounded. Every int flag is
#    >= 1 unless named in INT_FROM_ZERO; a float flag must be finite and in the range its name has.
# ------------------------------------------------------------------------------------------------
POSITIVE = (0.0, False, None, False)
NON_NEGATIVE = (0.0, True, None, False)
UNIT = (0.0, True, 1.0, True)
RATE = (0.0, False, 1.0, True)
OPEN_UNIT = (0.0, False, 1.0, False)
ANY = (None, False, None, False)
FLOAT_RANGES = {
    **dict.fromkeys(("gae_lambda", "td_lambda", "ema_decay"), UNIT),
    **dict.fromkeys(("gamma", "gamma_denoising", "td_alpha", "target_ema_rate", "sde_step_size"), RATE),
    **dict.fromkeys(("expectile", "sde_eps"), OPEN_UNIT),
    **dict.fromkeys(
        (
            "min_sampling_denoising_std",
            "std_min",
            "ent_coef",
            "vf_coef",
            "clip_ploss_coef_rate",
            "train_action_noise",
            "q_grad_coeff",
            "eta",
            "bc_loss_coeff",
            "actor_weight_decay",
            "critic_weight_decay",
            "pretrain_weight_decay",
            "actor_min_lr",
            "critic_min_lr",
            "pretrain_min_lr",
        ),
        NON_NEGATIVE,
    ),
    **dict.fromkeys(
        (
            "actor_lr",
            "critic_lr",
            "pretrain_lr",
            "action_lr",
            "std_max",
            "fixed_std",
            "min_logprob_denoising_std",
            "denoised_clip_value",
            "randn_clip_value",
            "beta",
            "boltzmann_temperature",
            "max_adv_weight",
            "max_reward_weight",
            "scale_reward_factor",
            "replay_ratio",
            "target_kl",
            "max_grad_norm",
            "clip_coef",
            "clip_ploss_coef",
            "clip_ploss_coef_base",
        ),
        POSITIVE,
    ),
    **dict.fromkeys(("logprob_min", "logprob_max", "target_return"), ANY),
}
INT_FROM_ZERO = (
    "seed",
    "n_critic_warmup_itr",
    "ema_start_epoch",
    "pretrain_save_freq",
    "record_transitions",
    "hutchinson_probes",
    "critic_replay_ratio",
    "action_gradient_steps",
    "env_workers",
    "sampling_threads",
    "rollout_parts",
    "update_threads",
)
ORDERED_PAIRS = (
    ("std_min", "std_max"),
    ("actor_min_lr", "actor_lr"),
    ("critic_min_lr", "critic_lr"),
    ("pretrain_min_lr", "pretrain_lr"),
    ("logprob_min", "logprob_max"),
)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def range_text(rule) -> str:
    low, low_in, high, high_in = rule
    if high is None:
        return "finite" if low is None else f"{'>=' if low_in else '>'} {low:g}"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def in_range(value: float, rule) -> bool:
    low, low_in, high, high_in = rule
    if not np.isfinite(value):
        return False
    above = low is None or value > low or (low_in and value == low)
    below = high is None or value < high or (high_in and value == high)
    return above and below


def check_ranges(args, steps_per_iter: int | None = None):
    """Check every numeric flag of `args` against its rule (one line naming the flag, its range and its
    default); with `steps_per_iter`, --total-timesteps must cover at least one iteration."""
    defaults = type(args)()
    for field in fields(args):
        value, default = getattr(args, field.name), getattr(defaults, field.name)
        if value is None or isinstance(value, (bool, str)):
            continue
        values = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, (int, float)) for v in values):
            continue
        if all(isinstance(v, int) for v in values):
            rule = NON_NEGATIVE if field.name in INT_FROM_ZERO else (1, True, None, False)
        else:
            rule = FLOAT_RANGES.get(field.name, ANY)
        for v in values:
            if not in_range(v, rule):
                example = " ".join(map(str, default)) if isinstance(default, tuple) else default
                fix = (
                    f"e.g. {flag(field.name)} {example} (the default)"
                    if default is not None
                    else f"{flag(field.name)} {range_text(rule)}, or leave it out (the default)"
                )
                fail(f"{flag(field.name)} must be {range_text(rule)}, got {v}; pass {fix}")
    for low, high in ORDERED_PAIRS:
        a, b = getattr(args, low, None), getattr(args, high, None)
        if a is not None and b is not None and a > b:
            fail(f"{flag(low)} {a} is above {flag(high)} {b}; pass {flag(low)} <= {flag(high)}")
    if steps_per_iter is not None and args.total_timesteps < steps_per_iter:
        fail(
            f"--total-timesteps {args.total_timesteps} is below one iteration ({steps_per_iter} env steps = "
            f"--num-envs x --n-steps x --act-steps); pass --total-timesteps {steps_per_iter} or more"
        )
