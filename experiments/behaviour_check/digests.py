"""Behaviour check for refactors: tiny deterministic runs of every algorithm script, reduced to digests.

Runs each script of a checkout (default: this one) for two short iterations on CPU with one thread, then prints
one JSON line per run: the SHA-256 of every tensor in its `checkpoint_last.pt` (`pretrained.pt` for the
pre-training runs) (networks, optimizers, RNG states,
env state; run metadata such as wall times and the parsed flags are left out) and the returns in `summary.json`.
Two checkouts behave the same when their outputs are identical (`arrays` alone, when a change only added checkpoint
metadata or renamed keys):

    python experiments/behaviour_check/digests.py --repo /path/to/old/checkout > old.jsonl
    python experiments/behaviour_check/digests.py > new.jsonl
    diff old.jsonl new.jsonl && echo identical
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

TINY_AVOID = "--env-id avoid-m2 --num-envs 2 --eval-episodes 1 --eval-freq 1 --no-cuda --seed 3".split()
TINY_CRITIC = "--critic-dims 16 16 16 --buffer-size 64 --batch-size 16".split()
RUNS = {  # name -> (script, flags); every run is two iterations or close
    "dppo-avoid": ("dppo", [*TINY_AVOID, "--n-steps", "8", "--batch-size", "64", "--total-timesteps", "256"]),
    "dppo-hopper": (
        "dppo",
        "--env-id Hopper-v2 --num-envs 2 --n-steps 4 --batch-size 40 --total-timesteps 64 --eval-freq 1 "
        "--eval-episodes 1 --no-cuda --seed 1".split(),
    ),
    "gaussian_ppo": ("gaussian_ppo", [*TINY_AVOID, "--n-steps", "8", "--batch-size", "16", "--total-timesteps", "256"]),
    "gmm_ppo": ("gmm_ppo", [*TINY_AVOID, "--n-steps", "8", "--batch-size", "16", "--total-timesteps", "256"]),
    "exact_likelihood_pg": (
        "exact_likelihood_pg",
        [*TINY_AVOID, "--n-steps", "4", "--batch-size", "8", "--total-timesteps", "128"],
    ),
    "drwr": ("drwr", [*TINY_AVOID, "--n-steps", "8", "--batch-size", "16", "--total-timesteps", "256"]),
    "dawr": ("dawr", [*TINY_AVOID, *TINY_CRITIC, "--n-steps", "8", "--total-timesteps", "256"]),
    "dipo": ("dipo", [*TINY_AVOID, *TINY_CRITIC, "--n-steps", "8", "--total-timesteps", "256"]),
    "idql": ("idql", [*TINY_AVOID, *TINY_CRITIC, "--n-steps", "8", "--total-timesteps", "256"]),
    "dql": ("dql", [*TINY_AVOID, *TINY_CRITIC, "--n-steps", "8", "--total-timesteps", "256"]),
    "qsm": ("qsm", [*TINY_AVOID, *TINY_CRITIC, "--n-steps", "8", "--total-timesteps", "256"]),
}
PRETRAIN = (
    "--env-id avoid-m2 --dataset avoid-m2 --pretrain-only --pretrain-epochs 2 --eval-episodes 1 --no-cuda".split()
)
PRETRAIN_RUNS = {  # pre-training from the scripted Avoid demos (scripts/make_avoid_data.py, 2 demos per route)
    "dppo-pretrain": ("dppo", [*PRETRAIN, "--mlp-dims", "32", "32", "32"]),
    "gaussian_ppo-pretrain": ("gaussian_ppo", [*PRETRAIN, "--mlp-dims", "32", "32"]),
    "gmm_ppo-pretrain": ("gmm_ppo", [*PRETRAIN, "--mlp-dims", "32", "32"]),
}
RUNS |= PRETRAIN_RUNS
SKIP_KEYS = {"args", "wall_time_s", "time", "run_dir", "git", "wall", "started", "parallel"}  # parallel: the load seen


def tensor_digests(obj, prefix="", out=None):
    """Flatten a checkpoint into {path: '#' + sha256 of the bytes of each tensor or array, or repr of each scalar}."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            if str(key) not in SKIP_KEYS:
                tensor_digests(obj[key], f"{prefix}/{key}", out)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            tensor_digests(item, f"{prefix}[{i}]", out)
    elif isinstance(obj, torch.Tensor):
        out[prefix] = "#" + hashlib.sha256(obj.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    elif isinstance(obj, np.ndarray):
        out[prefix] = "#" + hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()[:16]
    elif isinstance(obj, (bytes, bytearray)):
        out[prefix] = hashlib.sha256(obj).hexdigest()[:16]
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        out[prefix] = repr(obj)
    else:  # an object with state (an env's RNG, ...): its pickled bytes
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        out[prefix] = hashlib.sha256(buffer.getvalue()).hexdigest()[:16]
    return out


def digest_run(repo: str, name: str, script: str, flags: list, workdir: str) -> dict:
    run_dir = os.path.join(workdir, name)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=repo, PYTHONWARNINGS="ignore")
    env["CLEANDPPO_DATA"] = os.path.join(workdir, "data")
    if name in PRETRAIN_RUNS and not os.path.isdir(env["CLEANDPPO_DATA"]):
        make = [sys.executable, os.path.join(repo, "scripts", "make_avoid_data.py"), "--demos-per-route", "2"]
        subprocess.run(make, cwd=repo, env=env, capture_output=True, check=True)
    cmd = [sys.executable, os.path.join(repo, "cleandppo", f"{script}.py"), *flags, "--run-dir", run_dir]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"run": name, "error": proc.stderr.strip().splitlines()[-1:]}
    last = "pretrained.pt" if name in PRETRAIN_RUNS else "checkpoint_last.pt"
    ckpt = torch.load(os.path.join(run_dir, last), map_location="cpu", weights_only=False)
    digests = tensor_digests(ckpt)
    whole = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    # the tensors and arrays alone, whatever their keys: equal when only metadata or key names changed
    arrays = sorted(v for v in digests.values() if v.startswith("#"))
    arrays = hashlib.sha256(json.dumps(arrays).encode()).hexdigest()[:16]
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    returns = {k: summary.get(k) for k in ("env_steps", "pretrained_eval_return", "final_eval_return")}
    return {"run": name, "checkpoint": whole, "arrays": arrays, "entries": len(digests), **returns}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    parser.add_argument("--only", nargs="*", default=list(RUNS), help="runs to make (default: all)")
    parser.add_argument("--keep", default=None, help="keep the run dirs here (default: a temporary dir)")
    args = parser.parse_args()
    workdir = args.keep or tempfile.mkdtemp(prefix="digests_")
    for name in args.only:
        script, flags = RUNS[name]
        print(json.dumps(digest_run(os.path.abspath(args.repo), name, script, flags, workdir)), flush=True)


if __name__ == "__main__":
    main()
