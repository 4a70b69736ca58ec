"""Raw simulator speed vs. the same envs inside cleandppo's wrappers (docs/benchmarks.md).

    python scripts/sim_speed.py --env-id Hopper-v2 --num-envs 40 --seconds 20

raw:     `num_envs` gymnasium envs (the v4 id the paper id maps to) stepped one by one in a Python
         loop with random actions, resetting ended episodes: the simulator plus gymnasium's own checks.
wrapped: envs.make_vec_env (chunking, normalization, same-step auto-reset), random chunks.
Both count environment (sub-)steps per second, single process. The training loop's own rollout
steps/s is what dppo.py / gaussian_ppo.py log as charts/SPS and time/rollout_s.
"""

import argparse
import time

import gymnasium as gym
import numpy as np

from cleandppo import envs

parser = argparse.ArgumentParser()
parser.add_argument("--env-id", default="Hopper-v2")
parser.add_argument("--num-envs", type=int, default=40)
parser.add_argument("--act-steps", type=int, default=4)
parser.add_argument("--seconds", type=float, default=20.0)
args = parser.parse_args()

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

vec = envs.make_vec_env(args.env_id, args.num_envs, 0, args.act_steps)
vec.reset(seed=0)
obs_dim, action_dim = envs.env_dims(args.env_id)
steps, t0 = 0, time.time()
while time.time() - t0 < args.seconds:
    _, _, _, _, infos = vec.step(rng.uniform(-1, 1, (args.num_envs, args.act_steps, action_dim)) * 0.1)
    steps += int(np.sum(infos["env_steps"]))
wrapped_sps = steps / (time.time() - t0)
print(f"{args.env_id} x {args.num_envs} envs: raw {raw_sps:.0f} steps/s | make_vec_env (chunks of {args.act_steps}) "
      f"{wrapped_sps:.0f} steps/s | ratio {wrapped_sps / raw_sps:.2f}")
