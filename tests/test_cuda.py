"""On a machine with a CUDA GPU (skipped everywhere else, CI included): every script trains on the GPU and its
checkpoint then evaluates on the CPU, a GPU run killed mid-iteration resumes bit for bit, and the PPO updates give the
CPU's numbers on the GPU. All runs are tiny ones on avoid-m2 from the bundled checkpoints (no MuJoCo needed).

    python -m pytest tests/test_cuda.py -q     # on the GPU machine
"""

import os

import numpy as np
import pytest
import torch
from test_runs import assert_kill_and_resume_is_exact

from cleandppo import dawr, dipo, dppo, dql, drwr, envs, exact_likelihood_pg, gaussian_ppo, gmm_ppo, idql, qsm, runs
from conftest import read_summary, run_main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PPO = ["--n-steps", "4", "--batch-size", "8", "--update-epochs", "2", "--total-timesteps", "96"]
OFF = ["--critic-dims", "16", "16", "16", "--buffer-size", "64", "--batch-size", "8", "--total-timesteps", "96"]
OFF += ["--n-steps", "4", "--replay-ratio", "2"]
ELPG = ["--sde-method", "euler", "--hutchinson-probes", "1", "--grad-chunk-size", "8"]
# per script: the flags of a run of three short iterations (the policy: which bundled avoid-m2 checkpoint)
RUNS = {
    dppo: ("diffusion", [*PPO, "--ft-denoising-steps", "2"]),
    exact_likelihood_pg: ("diffusion", [*PPO, "--ft-denoising-steps", "2", *ELPG]),
    gaussian_ppo: ("gaussian", PPO),
    gmm_ppo: ("gmm", PPO),
    drwr: ("diffusion", ["--n-steps", "40", "--update-epochs", "1", "--batch-size", "8", "--total-timesteps", "960"]),
    dawr: ("diffusion", [*OFF, "--critic-replay-ratio", "2"]),
    dipo: ("diffusion", OFF),
    idql: ("diffusion", [*OFF, "--num-candidates", "3"]),
    dql: ("diffusion", [*OFF, "--n-critic-warmup-itr", "1"]),
    qsm: ("diffusion", [*OFF, "--n-critic-warmup-itr", "1"]),
}


def name(module):
    return module.__name__.rsplit(".", 1)[1]


def flags_for(module):
    """The command line of a three-iteration avoid-m2 run of `module` (device flag not included)."""
    policy, flags = RUNS[module]
    ckpt = os.path.join(envs.PRETRAINED_DIR, f"avoid-m2-{policy}-mlp.pt")
    return ["--env-id", "avoid-m2", "--checkpoint", ckpt, "--num-envs", "2", "--eval-episodes", "1", *flags]


@pytest.mark.parametrize("module", list(RUNS), ids=name)
def test_a_gpu_run_trains_on_the_gpu_and_its_checkpoint_evaluates_on_the_cpu(module, tmp_path, monkeypatch):
    devices = []
    real = runs.seed_everything
    monkeypatch.setattr(runs, "seed_everything", lambda args: devices.append(real(args)) or devices[-1])
    torch.cuda.reset_peak_memory_stats()
    run_main(module, *flags_for(module), "--cuda", "--run-dir", tmp_path / "gpu")
    assert [d.type for d in devices] == ["cuda"]
    assert torch.cuda.max_memory_allocated() > 0
    assert np.isfinite(read_summary(tmp_path / "gpu", algo=name(module))["final_eval_return"])
    saved = torch.load(tmp_path / "gpu" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert saved["iteration"] >= 3
    flags = flags_for(module)  # the run's own flags (K', chunk sizes), from its last checkpoint, evaluation only
    flags[flags.index("--checkpoint") + 1] = tmp_path / "gpu" / "checkpoint_last.pt"
    run_main(module, *flags, "--eval-only", "--no-cuda", "--run-dir", tmp_path / "cpu_eval")
    assert devices[-1].type == "cpu"
    assert np.isfinite(read_summary(tmp_path / "cpu_eval", algo=name(module))["final_eval_return"])


@pytest.mark.parametrize("module", [dppo, gaussian_ppo, dipo, dql], ids=name)
def test_a_killed_gpu_run_resumes_bit_identically(module, tmp_path, monkeypatch):
    """test_runs.assert_kill_and_resume_is_exact on the GPU: the CUDA generator's state, the optimizer moments and
    (off-policy) the replay buffer all come back from checkpoint_last.pt. Killed at the 2nd vector step of the 3rd
    iteration (4 vector steps per iteration)."""
    assert_kill_and_resume_is_exact(module, [*flags_for(module), "--cuda"], 2 * 4 + 2, tmp_path, monkeypatch)


def assert_same_update(cpu_params, gpu_params, cpu_stats, gpu_stats):
    for key, value in cpu_stats.items():
        assert gpu_stats[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    for p, q in zip(cpu_params, gpu_params, strict=True):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-4, atol=1e-5)


def test_dppo_update_on_the_gpu_equals_the_cpu_update():
    """Two epochs of minibatches of dppo.ppo_update from the same networks, batch and minibatch order: the logged
    statistics and the updated parameters agree to float32 round-off."""
    from test_dppo import _update_setup

    runs_ = {}
    for device in ("cpu", "cuda"):
        net, critic, _, sched, batch = _update_setup()
        net, critic = net.to(device), critic.to(device)
        sched = {k: v.to(device) if torch.is_tensor(v) else v for k, v in sched.items()}
        batch = {k: v.to(device) for k, v in batch.items()}
        aopt, copt = torch.optim.AdamW(net.parameters(), lr=1e-3), torch.optim.AdamW(critic.parameters(), lr=1e-3)
        args = dppo.Args(batch_size=24, update_epochs=2, act_steps=2)
        torch.manual_seed(5)
        stats = dppo.ppo_update(net, net, critic, aopt, copt, sched, batch, args)
        runs_[device] = ([*net.parameters(), *critic.parameters()], stats)
    assert_same_update(runs_["cpu"][0], runs_["cuda"][0], runs_["cpu"][1], runs_["cuda"][1])


@pytest.mark.parametrize("module", [gaussian_ppo, gmm_ppo], ids=name)
def test_gaussian_and_gmm_updates_on_the_gpu_equal_the_cpu_update(module):
    """Two epochs of gaussian_ppo / gmm_ppo.ppo_update on one batch (old log-probs 0.7-1.3 ratios away from the
    current ones, so some ratios clip): statistics and parameters agree between the devices."""
    results = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)  # the same initial weights, made on the CPU
        if module is gaussian_ppo:
            policy = gaussian_ppo.GaussianPolicy(3, 2, 2, 1, mlp_dims=(16, 16))
        else:
            policy = gmm_ppo.GMMPolicy(3, 2, 2, 1, num_modes=3, mlp_dims=(16, 16))
        policy, critic = policy.to(device), module.Critic(3, 1, (16, 16)).to(device)
        g = torch.Generator().manual_seed(1)
        obs, actions = torch.randn(16, 1, 3, generator=g), torch.rand(16, 2, 2, generator=g) * 1.6 - 0.8
        batch = dict(
            obs=obs, actions=actions, advantages=torch.randn(16, generator=g), returns=torch.randn(16, generator=g)
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            current = module.log_prob(*policy(batch["obs"]), batch["actions"])
        batch["logprobs"] = current - torch.log(torch.linspace(0.7, 1.3, 16, device=device))
        aopt, copt = torch.optim.AdamW(policy.parameters(), lr=1e-3), torch.optim.AdamW(critic.parameters(), lr=1e-3)
        torch.manual_seed(5)  # the same minibatch order
        stats = module.ppo_update(policy, critic, aopt, copt, batch, module.Args(batch_size=8, update_epochs=2))
        results[device] = ([*policy.parameters(), *critic.parameters()], stats)
    assert_same_update(results["cpu"][0], results["cuda"][0], results["cpu"][1], results["cuda"][1])
