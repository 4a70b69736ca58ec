"""Raw simulator speed vs. the same envs inside cleandppo's wrappers (docs/benchmarks.md).

    python scripts/sim_speed.py --env-id Hopper-v2 --num-envs 40 --seconds 20

raw:     `num_envs` gymnasium envs (the v4 id the paper id maps to) stepped one by one in a Python
         loop with random actions, resetting ended episodes: the simulator plus gymnasium's own checks.
wrapped: envs.make_vec_env (chunking, normalization, same-step auto-reset), random chunks.
dppo / gaussian: the same envs driven by the training loop's rollout step, i.e. the script's own
         sampler on the bundled checkpoint (DPPO: 20 denoising steps with chain recording, K' = 10)
         followed by the vector-env step, as in dppo.py / gaussian_ppo.py.
All count environment (sub-)steps per second, one after another in one process, so they share the
machine's conditions and their ratios are meaningful even on a loaded machine.

    python scripts/sim_speed.py --render --seconds 10      # the image tasks (docs/robomimic_images.md#speed)

--render: per image task, 96x96 frames/s of its cameras on one core (Mesa's llvmpipe held to one thread,
LP_NUM_THREADS=1, unless set), per wall and per CPU second, and env steps/s of the chunked image env (random
chunks of the task's act_steps, images rendered for the last sub-step only) beside the state task's.
"""

import argparse
import os
import time

import gymnasium as gym
import numpy as np
import torch

from cleandppo import dppo, envs, gaussian_ppo, robomimic_tasks

parser = argparse.ArgumentParser()
parser.add_argument("--env-id", default="Hopper-v2")
parser.add_argument("--num-envs", type=int, default=40)
parser.add_argument("--act-steps", type=int, default=4)
parser.add_argument("--seconds", type=float, default=20.0)
parser.add_argument("--render", action="store_true", help="measure the image tasks' rendering instead")
parser.add_argument("--tasks", nargs="+", default=list(robomimic_tasks.IMAGE_TASKS), help="with --render")
args = parser.parse_args()


def render_speed(task: str, seconds: float) -> str:
    """One line: frames/s of the task's cameras, and env steps/s with and without images (per wall second, and per
    CPU second of this process, which a loaded machine disturbs less)."""
    env = envs.make_env(task)
    env.reset(seed=0)
    base = env.unwrapped
    frames, t0, c0 = 0, time.time(), time.process_time()
    while time.time() - t0 < seconds:
        base.camera_images()
        frames += len(base.cameras)
    wall, cpu = frames / (time.time() - t0), frames / (time.process_time() - c0)
    env.close()
    line = f"{task} ({', '.join(base.cameras)}): {wall:.1f} frames/s ({cpu:.1f} per CPU second)"
    act_steps = envs.ROBOMIMIC_TASKS[envs.robomimic_task(task)]["act_steps"]
    for env_id in (task, envs.robomimic_task(task)):
        env = envs.make_env(env_id, act_steps=act_steps)
        env.reset(seed=0)
        rng, steps, t0, c0 = np.random.default_rng(0), 0, time.time(), time.process_time()
        while time.time() - t0 < seconds:
            _, _, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
            steps += info["env_steps"]
        rate, cpu_rate = steps / (time.time() - t0), steps / (time.process_time() - c0)
        env.close()
        kind = "with images" if env_id == task else "state only"
        line += f"; env steps/s {kind} (chunks of {act_steps}): {rate:.1f} ({cpu_rate:.1f} per CPU second)"
    return line


if args.render:
    os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe's threads: one core
    robomimic_tasks.gl_backend()
    print(f"LP_NUM_THREADS={os.environ['LP_NUM_THREADS']}")
    for task in args.tasks:
        print(render_speed(task, args.seconds), flush=True)
    raise SystemExit(0)

rng = np.random.default_rng(0)
raw = [gym.make(envs.resolve_env_id(args.env_id), max_episode_steps=1000) for _ in range(args.num_envs)]
for i, e in enumerate(raw):
    e.reset(seed=i)
steps, t0 = 0, time.time()
while time.time() - t0 < args.seconds:
    for e in raw:
        _, _, term, trunc, _ = e.step(rng.uniform(-1, 1, e.action_space.shape) * 0.1)
        steps += 1
        if term or trunc:
            e.reset()
raw_sps = steps / (time.time() - t0)


def timed(act_fn, normalization):
    """env steps/s of `act_fn(obs) -> chunk` plus the vector-env step, for args.seconds."""
    vec = envs.make_vec_env(args.env_id, args.num_envs, 0, args.act_steps, 1, normalization)
    obs, _ = vec.reset(seed=0)
    steps, t0 = 0, time.time()
    while time.time() - t0 < args.seconds:
        obs, _, _, _, infos = vec.step(act_fn(obs)[:, : args.act_steps])
        steps += int(np.sum(infos["env_steps"]))
    vec.close()
    return steps / (time.time() - t0)


obs_dim, action_dim = envs.env_dims(args.env_id)
wrapped_sps = timed(lambda obs: rng.uniform(-1, 1, (args.num_envs, args.act_steps, action_dim)) * 0.1, None)

ckpt = envs.load_checkpoint(envs.bundled_checkpoint(args.env_id, "diffusion"), "diffusion", args.env_id)
actor, actor_ft, _ = dppo.build_actors(ckpt, 10, torch.device("cpu"))
sched, plan = dppo.make_schedule(20), dppo.denoising_plan(20, None)
dppo_sps = timed(
    lambda obs: dppo.sample(actor, actor_ft, sched, torch.as_tensor(obs), plan, 10, "train", dppo.Args())[0].numpy(),
    ckpt["normalization"],
)

ckpt = envs.load_checkpoint(envs.bundled_checkpoint(args.env_id, "gaussian"), "gaussian", args.env_id)
policy = gaussian_ppo._load_policy(ckpt, torch.device("cpu"))


def gaussian_act(obs):
    with torch.no_grad():
        mean, std = policy(torch.as_tensor(obs))
        return gaussian_ppo.sample_action(mean, std, 3.0).numpy()


gaussian_sps = timed(gaussian_act, ckpt["normalization"])
print(
    f"{args.env_id} x {args.num_envs} envs, chunks of {args.act_steps} (env steps/s): raw simulator {raw_sps:.0f} | "
    f"make_vec_env {wrapped_sps:.0f} ({wrapped_sps / raw_sps:.2f}x raw) | dppo rollout {dppo_sps:.0f} "
    f"({dppo_sps / raw_sps:.2f}x) | gaussian_ppo rollout {gaussian_sps:.0f} ({gaussian_sps / raw_sps:.2f}x)"
)
