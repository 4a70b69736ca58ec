"""Bundled Square, Transport and weak Can diffusion checkpoints, and the observation encoder cond_mlp in checkpoints.

Each diffusion script rebuilds the network from a checkpoint's model_kwargs with its own copy of the network code;
a checkpoint whose weights and config disagree about cond_mlp, or a --cond-mlp-dims that disagrees with the
checkpoint, fails in one line naming the fix. No robosuite needed: nothing here builds an environment.
"""

import importlib
import os

import pytest
import torch

from cleandppo import arguments, envs
from conftest import assert_one_line_error

torch.set_num_threads(1)
DIFFUSION = ["dppo", "dawr", "drwr", "dipo", "idql", "dql", "qsm", "exact_likelihood_pg"]
BUNDLED = {"square": (4, (512, 64)), "transport": (8, ()), "can": (4, ())}  # task: (Ta = Tp, cond_mlp_dims)


def load_in(module, path, args):
    """A diffusion checkpoint as `module` loads it: its load_diffusion_checkpoint, or dppo's call of the envs one
    (dppo's UNet may execute fewer actions than it predicts, so any chunk length)."""
    if module.__name__ == "cleandppo.dppo":
        return envs.load_diffusion_checkpoint(path, args, same_horizon=False, continues_ft=True)
    return module.load_diffusion_checkpoint(path, args)


# checkpoint -> (task, its file, time_dim, MLP width): the Square and Transport tables (docs/robomimic.md) and the weak
# can-mhsim checkpoint (Can's table, docs/checkpoints.md)
CHECKPOINTS = {
    "square": ("square", envs.bundled_checkpoint("square", "diffusion"), 32, 1024),
    "transport": ("transport", envs.bundled_checkpoint("transport", "diffusion"), 32, 1024),
    "can-mhsim": ("can", os.path.join(envs.PRETRAINED_DIR, "can-mhsim-diffusion-mlp.pt"), 16, 512),
}
TRANSPORT_MISSING = not os.path.isfile(CHECKPOINTS["transport"][1])


@pytest.mark.parametrize(
    "checkpoint",
    [
        "square",
        pytest.param(  # its pre-training job did not get a CPU slot in time: docs/checkpoints.md has the command
            "transport", marks=pytest.mark.skipif(TRANSPORT_MISSING, reason="transport-diffusion-mlp.pt not made yet")
        ),
        "can-mhsim",
    ],
)
@pytest.mark.parametrize("name", DIFFUSION)
def test_bundled_checkpoint_loads_in_every_diffusion_script(name, checkpoint):
    module = importlib.import_module(f"cleandppo.{name}")
    task, path, time_dim, width = CHECKPOINTS[checkpoint]
    Ta, cond_mlp_dims = BUNDLED[task]
    args = module.Args(env_id=task, act_steps=Ta, horizon_steps=Ta)
    ckpt = load_in(module, path, args)
    kw = ckpt["model_kwargs"]
    assert tuple(kw.get("cond_mlp_dims") or ()) == cond_mlp_dims
    assert (kw["time_dim"], tuple(kw["mlp_dims"])) == (time_dim, (width,) * 3)
    net = module.build_network(kw)
    net.load_state_dict(ckpt["model"])  # strict: every weight has its place, cond_mlp included
    assert (net.cond_mlp is not None) == bool(cond_mlp_dims)
    obs_dim, action_dim = envs.env_dims(task)
    out = net(torch.zeros(2, Ta, action_dim), torch.tensor([0, 19]), torch.zeros(2, 1, obs_dim))
    assert out.shape == (2, Ta, action_dim) and torch.isfinite(out).all()


def resaved(tmp_path, task, **model_kwargs):
    ckpt = torch.load(envs.bundled_checkpoint(task, "diffusion"), weights_only=False)
    ckpt["model_kwargs"] = dict(ckpt["model_kwargs"], **model_kwargs)
    path = str(tmp_path / f"{task}.pt")
    torch.save(ckpt, path)
    return path


def test_cond_mlp_weights_and_config_that_disagree_are_one_line(tmp_path):
    path = resaved(tmp_path, "square", cond_mlp_dims=())  # weights with cond_mlp, config without
    with pytest.raises(SystemExit) as e:
        envs.load_checkpoint(path, "diffusion", "square")
    assert_one_line_error(str(e.value), "a cond_mlp of widths (512, 64)", "['cond_mlp_dims'] = (512, 64)")
    path = resaved(tmp_path, "can", cond_mlp_dims=(512, 64))  # config with cond_mlp, weights without
    with pytest.raises(SystemExit) as e:
        envs.load_checkpoint(path, "diffusion", "can")
    assert_one_line_error(str(e.value), "no cond_mlp", "['cond_mlp_dims'] = ()")


def test_dppo_stores_cond_mlp_dims_in_model_kwargs_and_rebuilds_it():
    from cleandppo import dppo

    kw = dppo.model_kwargs_from(dppo.Args(env_id="square", cond_mlp_dims=(16, 4), mlp_dims=(8, 8, 8)), 23, 7)
    assert tuple(kw["cond_mlp_dims"]) == (16, 4)
    assert [layer.out_features for layer in dppo.build_network(kw).cond_mlp if hasattr(layer, "out_features")] == [
        16,
        4,
    ]


def test_dppo_cond_mlp_flag_that_disagrees_with_the_checkpoint_is_one_line():
    from cleandppo import dppo

    for task, flag, fix in (
        ("can", (512, 64), "pass --cond-mlp-dims with no value (no encoder)"),
        ("square", (256, 64), "pass --cond-mlp-dims 512 64"),
    ):
        Ta = BUNDLED[task][0]
        args = dppo.Args(env_id=task, act_steps=Ta, horizon_steps=Ta, cond_mlp_dims=flag)
        with pytest.raises(SystemExit) as e:
            load_in(dppo, envs.bundled_checkpoint(task, "diffusion"), args)
        assert_one_line_error(str(e.value), f"not {flag}", fix)
    args = dppo.Args(env_id="square", cond_mlp_dims=(512, 64))  # the same widths are fine
    assert load_in(dppo, envs.bundled_checkpoint("square", "diffusion"), args)["model_kwargs"]
    # Square's task table brings the official encoder, so the bundled checkpoint loads with no flag given
    args = arguments.parse_args(dppo.Args, dppo.task_defaults, argv=["--env-id", "square"])
    assert args.cond_mlp_dims == (512, 64)
    assert load_in(dppo, envs.bundled_checkpoint("square", "diffusion"), args)["model_kwargs"]


def test_a_missing_bundled_robomimic_checkpoint_names_the_commands_that_make_one():
    for policy, script in (("gaussian", "gaussian_ppo"), ("gmm", "gmm_ppo")):
        with pytest.raises(SystemExit) as e:
            envs.load_checkpoint(envs.bundled_checkpoint("transport", policy), policy, "transport")
        assert_one_line_error(
            str(e.value),
            "python scripts/make_robomimic_demos.py --task transport && "
            f"python cleandppo/{script}.py --env-id transport --dataset transport-scripted --pretrain-only",
        )
