"""Official DPPO files (cleandppo/official.py) and the points where we follow the official code.

Each official checkpoint here is built in the test with the official parameter names (random weights); the
network our loader builds must reproduce a forward pass of the official architecture written below with plain
torch ops on the same tensors (official model/diffusion/mlp_diffusion.py `DiffusionMLP`,
model/diffusion/unet.py `Unet1D`, model/common/mlp_gaussian.py, mlp_gmm.py and transformer.py).
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cleandppo import dppo, envs, gaussian_ppo, gmm_ppo
from conftest import TINY_DIFFUSION, assert_one_line_error, run_main

OBS, ACT = 11, 3  # Hopper
ENV = "Hopper-v2"


# ---- the official architectures, written out --------------------------------------------------------------
def lin(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def mish(x):
    return x * torch.tanh(F.softplus(x))


def sinusoidal(t, dim):
    half = dim // 2
    freqs = torch.exp(-torch.arange(half) * math.log(10000) / (half - 1))
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def residual_mlp(x, sd, prefix, act):
    """Official ResidualMLP: Linear, then blocks x + l2(act(l1(act(x)))), then Linear; no activation elsewhere."""
    x = lin(x, sd, f"{prefix}.layers.0")
    i = 1
    while f"{prefix}.layers.{i}.l1.weight" in sd:
        x = x + lin(act(lin(act(x), sd, f"{prefix}.layers.{i}.l1")), sd, f"{prefix}.layers.{i}.l2")
        i += 1
    return lin(x, sd, f"{prefix}.layers.{i}")


def diffusion_mlp(sd, x, t, obs, act):
    """Official DiffusionMLP: [flat chunk, time MLP(sinusoidal), obs features] -> ResidualMLP -> (B, Tp, Da); the obs
    features are the flat obs, or the optional cond_mlp of it (MLP: Linear, act, ..., Linear)."""
    time_dim = sd["time_embedding.1.weight"].shape[1]
    temb = lin(mish(lin(sinusoidal(t, time_dim), sd, "time_embedding.1")), sd, "time_embedding.3")
    feat, i = obs.flatten(1), 0
    while f"cond_mlp.moduleList.{i}.linear_1.weight" in sd:
        feat = lin(act(feat) if i else feat, sd, f"cond_mlp.moduleList.{i}.linear_1")
        i += 1
    return residual_mlp(torch.cat([x.flatten(1), temb, feat], -1), sd, "mlp_mean", act).view(x.shape)


def unet(sd, x, t, obs, groups=8):
    """Official Unet1D (Chi et al.): FiLM residual blocks (scale, bias), strided-conv down, transposed-conv up."""

    def conv_block(h, p):
        w = sd[f"{p}.block.0.weight"]
        h = F.conv1d(h, w, sd[f"{p}.block.0.bias"], padding=w.shape[2] // 2)
        return mish(F.group_norm(h, groups, sd[f"{p}.block.2.weight"], sd[f"{p}.block.2.bias"]))

    def block(h, cond, p):
        out = conv_block(h, f"{p}.blocks.0")
        film = lin(
            mish(lin(mish(lin(cond, sd, f"{p}.cond_encoder.0")), sd, f"{p}.cond_encoder.2")), sd, f"{p}.cond_encoder.4"
        )
        film = film.view(len(h), 2, out.shape[1], 1)
        out = conv_block(film[:, 0] * out + film[:, 1], f"{p}.blocks.1")
        skip = (
            F.conv1d(h, sd[f"{p}.residual_conv.weight"], sd[f"{p}.residual_conv.bias"])
            if f"{p}.residual_conv.weight" in sd
            else h
        )
        return out + skip

    dsed = sd["time_mlp.1.weight"].shape[1]
    cond = torch.cat([lin(mish(lin(sinusoidal(t, dsed), sd, "time_mlp.1")), sd, "time_mlp.3"), obs.flatten(1)], -1)
    h, skips = x.transpose(1, 2), []
    levels = len({k.split(".")[1] for k in sd if k.startswith("down_modules.")})
    for i in range(levels):
        h = block(block(h, cond, f"down_modules.{i}.0"), cond, f"down_modules.{i}.1")
        skips.append(h)
        if i < levels - 1:
            h = F.conv1d(
                h, sd[f"down_modules.{i}.2.conv.weight"], sd[f"down_modules.{i}.2.conv.bias"], stride=2, padding=1
            )
    h = block(block(h, cond, "mid_modules.0"), cond, "mid_modules.1")
    for i in range(levels - 1):
        h = torch.cat([h, skips.pop()], dim=1)
        h = block(block(h, cond, f"up_modules.{i}.0"), cond, f"up_modules.{i}.1")
        h = F.conv_transpose1d(
            h, sd[f"up_modules.{i}.2.conv.weight"], sd[f"up_modules.{i}.2.conv.bias"], stride=2, padding=1
        )
    h = conv_block(h, "final_conv.0")
    return F.conv1d(h, sd["final_conv.1.weight"], sd["final_conv.1.bias"]).transpose(1, 2)


def attention(q_in, kv_in, sd, p, heads):
    d = q_in.shape[-1]
    w, b = sd[f"{p}.in_proj_weight"], sd[f"{p}.in_proj_bias"]
    q, k, v = (y @ w[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i, y in enumerate((q_in, kv_in, kv_in)))
    split = lambda y: y.view(y.shape[0], y.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    return lin((weights @ split(v)).transpose(1, 2).reshape(q_in.shape), sd, f"{p}.out_proj")


def transformer(sd, obs, heads):
    """Official Transformer: one observation token (Linear + position, then Linear-Mish-Linear) as memory, Tp
    learned query positions through pre-norm decoder layers (GELU), final LayerNorm; returns (head out, features)."""
    ln = lambda y, p: F.layer_norm(y, y.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"])  # noqa: E731
    memory = lin(obs.flatten(1), sd, "transformer.cond_obs_emb")[:, None] + sd["transformer.cond_pos_emb"]
    memory = lin(mish(lin(memory, sd, "transformer.encoder.0")), sd, "transformer.encoder.2")
    x = sd["transformer.pos_emb"].expand(len(obs), -1, -1)
    i = 0
    while f"transformer.decoder.layers.{i}.norm1.weight" in sd:
        p = f"transformer.decoder.layers.{i}"
        y = ln(x, f"{p}.norm1")
        x = x + attention(y, y, sd, f"{p}.self_attn", heads)
        x = x + attention(ln(x, f"{p}.norm2"), memory, sd, f"{p}.multihead_attn", heads)
        x = x + lin(F.gelu(lin(ln(x, f"{p}.norm3"), sd, f"{p}.linear1")), sd, f"{p}.linear2")
        i += 1
    features = ln(x, "transformer.ln_f")
    return lin(features, sd, "transformer.head"), features


# ---- official state dicts with random weights --------------------------------------------------------------
def rand(*shape):
    return 0.3 * torch.randn(shape)


def linear(name, d_in, d_out):
    return {f"{name}.weight": rand(d_out, d_in), f"{name}.bias": rand(d_out)}


def residual_mlp_sd(prefix, dims):
    sd = linear(f"{prefix}.layers.0", dims[0], dims[1])
    blocks = (len(dims) - 3) // 2
    for i in range(1, blocks + 1):
        sd.update(
            linear(f"{prefix}.layers.{i}.l1", dims[1], dims[1]) | linear(f"{prefix}.layers.{i}.l2", dims[1], dims[1])
        )
    return sd | linear(f"{prefix}.layers.{blocks + 1}", dims[1], dims[-1])


def diffusion_mlp_sd(time_dim=8, hidden=32, tp=4):
    sd = linear("time_embedding.1", time_dim, 2 * time_dim) | linear("time_embedding.3", 2 * time_dim, time_dim)
    return sd | residual_mlp_sd("mlp_mean", [tp * ACT + time_dim + OBS, hidden, hidden, hidden, tp * ACT])


def unet_sd(dim=8, mults=(1, 2), kernel=3, dsed=8):
    def block(p, c_in, c_out):
        sd = {}
        for j, c in enumerate((c_in, c_out)):
            sd |= {
                f"{p}.blocks.{j}.block.0.weight": rand(c_out, c, kernel),
                f"{p}.blocks.{j}.block.0.bias": rand(c_out),
                f"{p}.blocks.{j}.block.2.weight": 1 + rand(c_out),
                f"{p}.blocks.{j}.block.2.bias": rand(c_out),
            }
        sd |= linear(f"{p}.cond_encoder.0", dsed + OBS, 2 * c_out) | linear(f"{p}.cond_encoder.2", 2 * c_out, 2 * c_out)
        sd |= linear(f"{p}.cond_encoder.4", 2 * c_out, 2 * c_out)
        if c_in != c_out:
            sd |= {f"{p}.residual_conv.weight": rand(c_out, c_in, 1), f"{p}.residual_conv.bias": rand(c_out)}
        return sd

    widths = [ACT] + [dim * m for m in mults]
    levels = list(zip(widths[:-1], widths[1:], strict=True))
    sd = linear("time_mlp.1", dsed, 4 * dsed) | linear("time_mlp.3", 4 * dsed, dsed)
    for i, (c_in, c_out) in enumerate(levels):
        sd |= block(f"down_modules.{i}.0", c_in, c_out) | block(f"down_modules.{i}.1", c_out, c_out)
        if i < len(levels) - 1:
            sd |= {
                f"down_modules.{i}.2.conv.weight": rand(c_out, c_out, 3),
                f"down_modules.{i}.2.conv.bias": rand(c_out),
            }
    sd |= block("mid_modules.0", widths[-1], widths[-1]) | block("mid_modules.1", widths[-1], widths[-1])
    for i, (c_in, c_out) in enumerate(reversed(levels[1:])):
        sd |= block(f"up_modules.{i}.0", 2 * c_out, c_in) | block(f"up_modules.{i}.1", c_in, c_in)
        sd |= {f"up_modules.{i}.2.conv.weight": rand(c_in, c_in, 4), f"up_modules.{i}.2.conv.bias": rand(c_in)}
    sd |= {
        "final_conv.0.block.0.weight": rand(dim, dim, kernel),
        "final_conv.0.block.0.bias": rand(dim),
        "final_conv.0.block.2.weight": 1 + rand(dim),
        "final_conv.0.block.2.bias": rand(dim),
    }
    return sd | {"final_conv.1.weight": rand(ACT, dim, 1), "final_conv.1.bias": rand(ACT)}


def transformer_sd(out_dim, dim=16, layers=2, tp=4):
    sd = linear("transformer.cond_obs_emb", OBS, dim) | {"transformer.cond_pos_emb": rand(1, 1, dim)}
    sd |= linear("transformer.encoder.0", dim, 4 * dim) | linear("transformer.encoder.2", 4 * dim, dim)
    sd |= {"transformer.pos_emb": rand(1, tp, dim)}
    for i in range(layers):
        p = f"transformer.decoder.layers.{i}"
        for att in ("self_attn", "multihead_attn"):
            sd |= {f"{p}.{att}.in_proj_weight": rand(3 * dim, dim), f"{p}.{att}.in_proj_bias": rand(3 * dim)}
            sd |= linear(f"{p}.{att}.out_proj", dim, dim)
        sd |= linear(f"{p}.linear1", dim, 4 * dim) | linear(f"{p}.linear2", 4 * dim, dim)
        for n in (1, 2, 3):
            sd |= {f"{p}.norm{n}.weight": 1 + rand(dim), f"{p}.norm{n}.bias": rand(dim)}
    sd |= {"transformer.ln_f.weight": 1 + rand(dim), "transformer.ln_f.bias": rand(dim)}
    return sd | linear("transformer.head", dim, out_dim)


def std_range_sd(std_min=0.01, std_max=0.2):
    return {"logvar_min": torch.tensor(math.log(std_min**2)), "logvar_max": torch.tensor(math.log(std_max**2))}


def prefixed(sd, prefix):
    return {f"{prefix}{k}": v for k, v in sd.items()}


def write_official(tmp_path, ckpt, name="state_10.pt"):
    """An official checkpoint with the official data folder's normalization.npz beside it."""
    lo = -1 - np.random.default_rng(0).random(OBS)
    np.savez(
        tmp_path / "normalization.npz", obs_min=lo, obs_max=lo + 3, action_min=-np.ones(ACT), action_max=np.ones(ACT)
    )
    torch.save(ckpt, tmp_path / name)
    return str(tmp_path / name)


# ---- checkpoints -------------------------------------------------------------------------------------------
def test_diffusion_mlp_pretraining_checkpoint_loads_its_ema_weights(tmp_path):
    torch.manual_seed(0)
    ema, live = diffusion_mlp_sd(), diffusion_mlp_sd()
    path = write_official(tmp_path, dict(epoch=10, model=prefixed(live, "network."), ema=prefixed(ema, "network.")))
    ckpt = envs.load_checkpoint(path, "diffusion", ENV, hints=dict(denoising_steps=6, activation="relu"))
    kw = ckpt["model_kwargs"]
    assert (kw["horizon_steps"], kw["cond_steps"], kw["time_dim"], kw["mlp_dims"], kw["denoising_steps"]) == (
        4,
        1,
        8,
        (32,) * 3,
        6,
    )
    net = dppo.build_network(kw)
    net.load_state_dict(ckpt["model"])
    x, t, obs = torch.randn(5, 4, ACT), torch.tensor([0, 1, 2, 5, 3]), torch.randn(5, 1, OBS)
    torch.testing.assert_close(
        net(x, t, obs), diffusion_mlp(ema, x, t, obs, F.relu)
    )  # the EMA, as official fine-tuning
    np.testing.assert_allclose(ckpt["normalization"]["obs_max"] - ckpt["normalization"]["obs_min"], 3.0, rtol=1e-6)
    # robomimic configs leave the class default Mish: the activation follows the task (or the flag)
    mish_kw = envs.load_checkpoint(path, "diffusion", ENV, hints=dict(activation="mish"))["model_kwargs"]
    net = dppo.build_network(mish_kw)
    net.load_state_dict(ckpt["model"])
    torch.testing.assert_close(net(x, t, obs), diffusion_mlp(ema, x, t, obs, mish))


def test_diffusion_unet_checkpoint_matches_the_official_unet(tmp_path):
    torch.manual_seed(1)
    sd = unet_sd()
    path = write_official(tmp_path, dict(epoch=3, model=prefixed(sd, "network."), ema=prefixed(sd, "network.")))
    ckpt = envs.load_checkpoint(path, "diffusion", ENV, hints=dict(horizon_steps=4))
    kw = ckpt["model_kwargs"]
    assert (
        kw["backbone"],
        kw["unet_dim"],
        kw["unet_dim_mults"],
        kw["unet_kernel_size"],
        kw["unet_step_embed_dim"],
    ) == ("unet", 8, (1, 2), 3, 8)
    net = dppo.build_network(kw)
    net.load_state_dict(ckpt["model"])
    x, t, obs = torch.randn(5, 4, ACT), torch.tensor([0, 1, 2, 5, 3]), torch.randn(5, 1, OBS)
    torch.testing.assert_close(net(x, t, obs), unet(sd, x, t, obs), rtol=1e-4, atol=1e-5)


def test_dppo_finetuning_checkpoint_gives_frozen_and_finetuned_networks(tmp_path):
    torch.manual_seed(2)
    frozen, tuned = diffusion_mlp_sd(), diffusion_mlp_sd()
    critic = residual_mlp_sd("critic.Q1", [OBS, 16, 16, 16, 1])
    state = prefixed(frozen, "network.") | prefixed(frozen, "actor.") | prefixed(tuned, "actor_ft.") | critic
    path = write_official(tmp_path, dict(itr=100, model=state))
    ckpt = envs.load_checkpoint(path, "diffusion", ENV, hints=dict(ft_denoising_steps=3))
    assert ckpt["ft_denoising_steps"] == 3 and ckpt["official_source"]["itr"] == 100
    actor, actor_ft, eval_steps = dppo.build_actors(ckpt, 3, torch.device("cpu"))
    x, t, obs = torch.randn(5, 4, ACT), torch.tensor([0, 1, 2, 5, 3]), torch.randn(5, 1, OBS)
    torch.testing.assert_close(actor(x, t, obs), diffusion_mlp(frozen, x, t, obs, F.relu))
    torch.testing.assert_close(actor_ft(x, t, obs), diffusion_mlp(tuned, x, t, obs, F.relu))
    assert eval_steps == 3


def test_gaussian_mlp_finetuning_checkpoint_loads_actor_ft_with_its_learned_std(tmp_path):
    torch.manual_seed(3)
    tuned, base = (
        residual_mlp_sd("mlp_mean", [OBS, 32, 32, 32, 4 * ACT]),
        residual_mlp_sd("mlp_mean", [OBS, 32, 32, 32, 4 * ACT]),
    )
    tuned |= std_range_sd() | {"logvar": torch.log(torch.tensor([0.05, 0.1, 0.5]) ** 2)}  # 0.5 is past std_max
    base |= std_range_sd()
    state = prefixed(tuned, "network.") | prefixed(tuned, "actor_ft.") | prefixed(base, "actor.")
    ckpt = envs.load_checkpoint(write_official(tmp_path, dict(itr=5, model=state)), "gaussian", ENV, "mlp")
    policy = gaussian_ppo.GaussianPolicy(**ckpt["model_kwargs"])
    policy.load_state_dict(ckpt["model"], strict=False)
    obs = torch.randn(6, 1, OBS)
    mean, std = policy(obs)
    torch.testing.assert_close(mean.flatten(1), torch.tanh(residual_mlp(obs.flatten(1), tuned, "mlp_mean", mish)))
    logvar = tuned["logvar"].clamp(tuned["logvar_min"], tuned["logvar_max"])
    torch.testing.assert_close(std.expand(4, ACT).flatten(), torch.exp(0.5 * logvar).repeat(4))


def test_gmm_mlp_pretraining_checkpoint_uses_its_model_weights_and_fixed_std(tmp_path):
    torch.manual_seed(4)
    modes, dims = 5, [OBS, 32, 32, 32]
    sd = residual_mlp_sd("mlp_mean", dims + [modes * 4 * ACT]) | residual_mlp_sd("mlp_weights", dims + [modes])
    sd |= std_range_sd()
    other = {k: rand(*v.shape) for k, v in sd.items()}
    path = write_official(tmp_path, dict(epoch=7, model=prefixed(sd, "network."), ema=prefixed(other, "network.")))
    ckpt = envs.load_checkpoint(path, "gmm", ENV, "mlp", hints=dict(fixed_std=0.1))
    policy = gmm_ppo.GMMPolicy(**ckpt["model_kwargs"])
    policy.load_state_dict(ckpt["model"])
    obs = torch.randn(6, 1, OBS)
    means, std, logits = policy(obs)
    ref_means = torch.tanh(residual_mlp(obs.flatten(1), sd, "mlp_mean", mish)).view(6, modes, 4 * ACT)
    torch.testing.assert_close(means.flatten(2), ref_means)  # the `model` entry (official GMMModel), not the EMA
    torch.testing.assert_close(logits, residual_mlp(obs.flatten(1), sd, "mlp_weights", mish))
    torch.testing.assert_close(std, torch.full((modes, ACT), 0.1))


def test_transformer_checkpoints_match_the_official_transformer(tmp_path):
    torch.manual_seed(5)
    sd = transformer_sd(ACT) | std_range_sd() | {"logvar": torch.log(torch.tensor([0.08, 0.1, 0.12]) ** 2)}
    ckpt = envs.load_checkpoint(
        write_official(tmp_path, dict(epoch=1, model=prefixed(sd, "network."))),
        "gaussian",
        ENV,
        "transformer",
        hints=dict(transformer_heads=2),
    )
    policy = gaussian_ppo.GaussianPolicy(**ckpt["model_kwargs"])
    policy.load_state_dict(ckpt["model"], strict=False)
    obs = torch.randn(6, 1, OBS)
    mean, std = policy(obs)
    torch.testing.assert_close(mean, torch.tanh(transformer(sd, obs, heads=2)[0]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std, torch.tensor([0.08, 0.1, 0.12]))
    # GMM: per-token mode means (B, Tp, M, Da) -> (B, M, Tp, Da), mode logits from all token features
    modes = 2
    sd = transformer_sd(modes * ACT) | linear("modes_head", 4 * 16, modes) | std_range_sd()
    sd["logvar"] = torch.log(torch.linspace(0.05, 0.15, modes * ACT) ** 2)
    ckpt = envs.load_checkpoint(
        write_official(tmp_path, dict(itr=1, model=prefixed(sd, "actor_ft."))),
        "gmm",
        ENV,
        "transformer",
        hints=dict(transformer_heads=2),
    )
    policy = gmm_ppo.GMMPolicy(**ckpt["model_kwargs"])
    policy.load_state_dict(ckpt["model"])
    means, std, logits = policy(obs)
    out, features = transformer(sd, obs, heads=2)
    torch.testing.assert_close(means, torch.tanh(out).view(6, 4, modes, ACT).permute(0, 2, 1, 3), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, lin(features.reshape(6, -1), sd, "modes_head"), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std, torch.linspace(0.05, 0.15, modes * ACT).view(modes, ACT))


@pytest.mark.parametrize(
    "policy, state, needle",
    [
        (
            "diffusion",
            {"network.backbone.x.weight": torch.zeros(1), "network.time_embedding.1.weight": torch.zeros(1)},
            "pixel policy",
        ),
        (
            "gaussian",
            prefixed(linear("mlp_base.moduleList.0.linear_1", OBS, 8) | std_range_sd(), "network."),
            "state-dependent std",
        ),
        ("gaussian", prefixed(diffusion_mlp_sd(), "network."), "holds an official diffusion policy"),
    ],
)
def test_what_has_no_counterpart_is_refused_in_one_line(tmp_path, policy, state, needle):
    path = write_official(tmp_path, dict(epoch=1, model=state, ema=state))
    with pytest.raises(SystemExit) as e:
        envs.load_checkpoint(path, policy, ENV)
    assert_one_line_error(str(e.value), needle)


def test_square_cond_mlp_loads_into_our_network(tmp_path):
    """Official Square DiffusionMLP has an observation encoder cond_mlp [To*Do, 512, 64]: it loads as our
    `cond_mlp_dims` and the network computes what the official one does."""
    torch.manual_seed(9)
    sd = linear("time_embedding.1", 8, 16) | linear("time_embedding.3", 16, 8)
    sd |= linear("cond_mlp.moduleList.0.linear_1", OBS, 16) | linear("cond_mlp.moduleList.1.linear_1", 16, 6)
    sd |= residual_mlp_sd("mlp_mean", [4 * ACT + 8 + 6, 32, 32, 32, 4 * ACT])
    path = write_official(tmp_path, dict(epoch=1, model=prefixed(sd, "network."), ema=prefixed(sd, "network.")))
    ckpt = envs.load_checkpoint(path, "diffusion", ENV, hints=dict(activation="mish"))
    assert ckpt["model_kwargs"]["cond_mlp_dims"] == (16, 6)
    net = dppo.build_network(ckpt["model_kwargs"])
    net.load_state_dict(ckpt["model"])
    x, t, obs = torch.randn(5, 4, ACT), torch.tensor([0, 1, 2, 5, 3]), torch.randn(5, 1, OBS)
    torch.testing.assert_close(net(x, t, obs), diffusion_mlp(sd, x, t, obs, mish))


def test_missing_normalization_names_the_flag(tmp_path):
    sd = prefixed(diffusion_mlp_sd(), "network.")
    (tmp_path / "deep" / "er" / "still" / "deeper").mkdir(parents=True)
    path = tmp_path / "deep" / "er" / "still" / "deeper" / "state_1.pt"
    torch.save(dict(epoch=1, model=sd, ema=sd), path)
    with pytest.raises(SystemExit) as e:
        envs.load_checkpoint(str(path), "diffusion", ENV)
    assert_one_line_error(str(e.value), "--official-normalization")
    write_official(tmp_path, {}, "unused.pt")
    ckpt = envs.load_checkpoint(
        str(path), "diffusion", ENV, hints=dict(official_normalization=str(tmp_path / "normalization.npz"))
    )
    assert ckpt["normalization"]["obs_min"].shape == (OBS,)
    ckpt = envs.load_checkpoint(
        str(path), "diffusion", ENV, hints=dict(dataset=str(tmp_path / "train.npz"))
    )  # beside it
    assert ckpt["normalization"]["obs_min"].shape == (OBS,)


def test_dppo_finetunes_one_iteration_from_an_official_checkpoint(tmp_path):
    torch.manual_seed(6)
    ema = diffusion_mlp_sd()
    path = write_official(
        tmp_path, dict(epoch=10, model=prefixed(diffusion_mlp_sd(), "network."), ema=prefixed(ema, "network."))
    )
    run = tmp_path / "ft"
    run_main(
        dppo,
        "--checkpoint",
        path,
        "--run-dir",
        run,
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "8",
        "--total-timesteps",
        "32",
        "--eval-episodes",
        "1",
        "--bc-loss-coeff",
        "0.1",
        *TINY_DIFFUSION,
    )  # BC wired in main
    saved = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert saved["iteration"] == 1 and saved["algo"] == "dppo"
    for k, v in saved["model"].items():  # the frozen network is the official EMA network
        torch.testing.assert_close(
            v, envs.load_checkpoint(path, "diffusion", ENV, hints=dict(denoising_steps=6))["model"][k]
        )


# ---- datasets ----------------------------------------------------------------------------------------------
def write_npz_dataset(tmp_path, normalize=True, **extra):
    rng = np.random.default_rng(0)
    lengths = np.array([5, 7, 4])
    states, actions = rng.normal(3.0, 2.0, (16, OBS)), rng.uniform(-0.8, 0.9, (16, ACT))
    lo, hi, alo, ahi = states.min(0), states.max(0), actions.min(0), actions.max(0)
    np.savez(tmp_path / "normalization.npz", obs_min=lo, obs_max=hi, action_min=alo, action_max=ahi)
    if normalize:  # official get_d4rl_dataset.py
        stored = 2 * (states - lo) / (hi - lo + 1e-6) - 1, 2 * (actions - alo) / (ahi - alo + 1e-6) - 1
    else:  # process_robomimic_dataset.py without --normalize
        stored = states, actions
    np.savez_compressed(
        tmp_path / "train.npz",
        states=stored[0],
        actions=stored[1],
        rewards=rng.normal(size=16),
        terminals=np.arange(16) == 4,
        traj_lengths=lengths,
        **extra,
    )
    return str(tmp_path / "train.npz"), states, actions, lengths


@pytest.mark.parametrize("normalize", [True, False])
def test_official_train_npz_loads_in_raw_units_with_its_normalization(tmp_path, normalize):
    path, states, actions, lengths = write_npz_dataset(tmp_path, normalize)
    data = envs.load_dataset(path, ENV)
    np.testing.assert_allclose(data["observations"], states, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data["actions"], actions, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data["normalization"]["obs_min"], states.min(0), rtol=1e-6)
    assert [len(ep["actions"]) for ep in data["episodes"]] == list(lengths)
    assert list(np.nonzero(data["terminals"] | data["timeouts"])[0]) == [4, 11, 15]
    # normalizing again reproduces what the official loader feeds the network
    obs, _, _, _ = envs.make_pretraining_samples(data["episodes"], data["normalization"], 1, 4)
    np.testing.assert_allclose(obs, 2 * (states - states.min(0)) / (np.ptp(states, 0) + 1e-6) - 1, atol=1e-5)


def test_pixel_train_npz_is_refused_in_one_line(tmp_path):
    path, *_ = write_npz_dataset(tmp_path, images=np.zeros((16, 3, 8, 8), np.uint8))
    with pytest.raises(SystemExit) as e:
        envs.load_dataset(path, ENV)
    assert_one_line_error(str(e.value), "state-only")


# ---- where we follow the official code ------------------------------------------------------------------------
def test_ddim_x0_uses_the_official_form_accurate_near_alpha_bar_one():
    """Official DDIM: x0 = (x - sqrt(1 - a) eps) / sqrt(a). At K = 100, t = 0 (a = 0.99937) the final DDIM step's mean
    is that x0; sqrt(1/a) x - sqrt(1/a - 1) eps in float32 is off by up to 9.5e-7 there, this form by 3.4e-7."""
    sched = dppo.make_schedule(100)
    x, eps = torch.linspace(-3, 3, 6001).view(-1, 1, 1), torch.linspace(2, -2, 6001).view(-1, 1, 1)

    class ConstantEps(torch.nn.Module):
        def forward(self, x_t, t, obs):
            return eps

    t = torch.zeros(len(x), dtype=torch.long)
    mean, _ = dppo.step_mean_var(ConstantEps(), sched, x, None, t, t - 1, ddim=True, clip=100.0)
    a = sched["alpha_bar"][0].double()
    reference = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
    assert (mean.double() - reference).abs().max() < 5e-7


@pytest.mark.parametrize("module", [gaussian_ppo, gmm_ppo])
def test_learned_std_is_parametrised_by_log_variance(module, tmp_path):
    """Official Gaussian/GMM networks learn log sigma^2: Adam's first step (size lr per parameter) moves log sigma by
    lr / 2. A checkpoint from before (log sigma, `log_std`) loads with the same std."""
    torch.manual_seed(0)
    policy = (
        module.GaussianPolicy(OBS, ACT, 4, 1, mlp_dims=(16, 16, 16))
        if module is gaussian_ppo
        else module.GMMPolicy(OBS, ACT, 4, 1, num_modes=2, mlp_dims=(16, 16, 16))
    )
    obs = torch.randn(3, 1, OBS)
    std_before = policy(obs)[1].detach()
    opt = torch.optim.Adam([policy.logvar], lr=0.01)
    (-policy(obs)[1].log().sum()).backward()  # raise the std
    opt.step()
    torch.testing.assert_close(policy(obs)[1].detach().log() - std_before.log(), torch.full_like(std_before, 0.005))
    old_state = {
        ("log_std" if k == "logvar" else k): (v / 2 if k == "logvar" else v) for k, v in policy.state_dict().items()
    }
    ckpt = dict(
        algo=module.__name__.split(".")[-1],
        policy="gmm" if module is gmm_ppo else "gaussian",
        backbone="mlp",
        env_id=ENV,
        model=old_state,
        model_kwargs={},
    )
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = envs.load_checkpoint(str(tmp_path / "old.pt"), ckpt["policy"], ENV)["model"]
    torch.testing.assert_close(loaded["logvar"], policy.logvar.detach())


# ---- BC regulariser (paper D.7; official use_bc_loss / bc_loss_coeff) ---------------------------------------
def _grads_of_update(update, module, coeff, **kw):
    for p in module.parameters():
        p.grad = None
    torch.manual_seed(7)  # the BC term's samples come from the global generator; the minibatch order from `generator`
    update(coeff, generator=torch.Generator().manual_seed(3), **kw)
    return [p.grad.clone() for p in module.parameters()]


def _perturbed_copy(module, scale=0.2):
    other = copy.deepcopy(module)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn_like(p))
    return other


def test_dppo_bc_term_is_minus_the_finetuned_log_prob_of_frozen_actor_chains(monkeypatch):
    """Official PPODiffusion.loss: chains sampled from the frozen actor for the minibatch observations (training
    noise), log-probs of all K' transitions under actor_ft (std floor, elementwise clamp, mean over every chunk row),
    loss + coeff * (-mean)."""
    torch.manual_seed(0)
    K, K_ft, Tp, Da, Do, n = 4, 2, 2, 2, 3, 5
    actor = dppo.DiffusionMLP(Do, Da, Tp, 1, time_dim=4, mlp_dims=(8, 8, 8), activation="relu").requires_grad_(False)
    actor_ft = _perturbed_copy(actor).requires_grad_(True)
    critic = dppo.Critic(Do, 1, (8, 8, 8))
    sched, plan = dppo.make_schedule(K), dppo.denoising_plan(K, None)
    ft_t, ft_t_prev = dppo.fine_tuned_timesteps(plan, K_ft)
    obs = torch.randn(n, 1, Do)
    batch = dict(
        obs=obs,
        chains=0.5 * torch.randn(n, K_ft + 1, Tp, Da),
        logprobs=torch.zeros(n, K_ft),
        advantages=torch.randn(n),
        returns=torch.randn(n),
    )

    def update(coeff, generator):
        args = dppo.Args(
            denoising_steps=K,
            ft_denoising_steps=K_ft,
            horizon_steps=Tp,
            act_steps=1,
            batch_size=n * K_ft,
            update_epochs=1,
            target_kl=None,
            bc_loss_coeff=coeff,
        )
        opts = (torch.optim.SGD(actor_ft.parameters(), lr=0.0), torch.optim.SGD(critic.parameters(), lr=0.0))
        dppo.ppo_update(actor, actor_ft, critic, *opts, sched, batch, args, generator=generator)

    sample = dppo.sample
    with monkeypatch.context() as m:  # coefficient 0: nothing is sampled, the update is the plain PPO one
        m.setattr(dppo, "sample", lambda *a, **k: pytest.fail("sampled with bc_loss_coeff 0"))
        plain = _grads_of_update(update, actor_ft, 0.0)
    with_bc = _grads_of_update(update, actor_ft, 0.5)
    pairs = torch.randperm(n * K_ft, generator=torch.Generator().manual_seed(3))
    mb_obs = obs[pairs // K_ft]  # one observation per (env step, denoising step) pair, in the update's order
    torch.manual_seed(7)
    every_row = dppo.Args(act_steps=Tp)  # std floors 0.1, noise clip 3, x0 clip 1
    _, chain = sample(actor, actor, sched, mb_obs, plan, K_ft, "train", every_row)
    logp = [
        dppo.denoising_log_prob(
            actor_ft,
            sched,
            mb_obs[b : b + 1],
            chain[b : b + 1, j],
            chain[b : b + 1, j + 1],
            ft_t[j : j + 1],
            ft_t_prev[j : j + 1],
            every_row,
        )
        for b in range(len(mb_obs))
        for j in range(K_ft)
    ]
    bc = -torch.cat(logp).mean()
    expected = torch.autograd.grad(0.5 * bc, list(actor_ft.parameters()))
    for got, base, exp in zip(with_bc, plain, expected, strict=True):
        torch.testing.assert_close(got - base, exp, rtol=1e-4, atol=1e-6)


def test_gaussian_bc_term_is_minus_the_log_prob_of_frozen_policy_samples(monkeypatch):
    """Official PPO_Gaussian.loss: actions sampled (clipped at 3 sigma) from the frozen base policy, their
    per-dimension-mean log-prob under the policy clamped to [-5, 2], loss + coeff * (-mean)."""
    torch.manual_seed(1)
    n, Tp = 6, 2
    policy = gaussian_ppo.GaussianPolicy(OBS, ACT, Tp, 1, mlp_dims=(8, 8, 8), init_std=0.15)
    base = _perturbed_copy(policy).requires_grad_(False)
    critic = gaussian_ppo.Critic(OBS, 1, (8, 8, 8))
    obs = torch.randn(n, 1, OBS)
    with torch.no_grad():
        actions = policy(obs)[0] + 0.1 * torch.randn(n, Tp, ACT)
    batch = dict(obs=obs, actions=actions, logprobs=torch.zeros(n), advantages=torch.randn(n), returns=torch.randn(n))

    def update(coeff, generator):
        args = gaussian_ppo.Args(batch_size=n, update_epochs=1, target_kl=None, bc_loss_coeff=coeff)
        gaussian_ppo.ppo_update(
            policy,
            critic,
            torch.optim.SGD(policy.parameters(), lr=0.0),
            torch.optim.SGD(critic.parameters(), lr=0.0),
            batch,
            args,
            generator=generator,
            base_policy=base,
        )

    with monkeypatch.context() as m:
        m.setattr(gaussian_ppo, "sample_action", lambda *a, **k: pytest.fail("sampled with bc_loss_coeff 0"))
        plain = _grads_of_update(update, policy, 0.0)
    with_bc = _grads_of_update(update, policy, 0.3)
    mb_obs = obs[torch.randperm(n, generator=torch.Generator().manual_seed(3))]
    torch.manual_seed(7)
    with torch.no_grad():
        base_mean, base_std = base(mb_obs)
        teacher = base_mean + base_std * torch.randn(base_mean.shape).clamp(-3, 3)
    mean, std = policy(mb_obs)
    logp = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(teacher).mean(dim=(1, 2)).clamp(-5, 2)
    expected = torch.autograd.grad(-0.3 * logp.mean(), list(policy.parameters()), allow_unused=True)
    for got, plain_g, exp in zip(with_bc, plain, expected, strict=True):
        torch.testing.assert_close(got - plain_g, torch.zeros_like(got) if exp is None else exp, rtol=1e-4, atol=1e-6)


# ---- DAWR TD(lambda) against the official td_values ---------------------------------------------------------
def official_td_values(rewards, values, terminated, gamma=0.99, alpha=0.95, lam=0.95):
    """Official TrainAWRDiffusionAgent's td_values, written out: V of the next stored row (V of the newest row for
    the newest), zeroed where terminated; G <- alpha delta + gamma lam (1 - term) G; target = V + G."""
    targets, g = np.zeros_like(values), np.zeros(values.shape[1])
    for i in reversed(range(len(values))):
        next_value = values[min(i + 1, len(values) - 1)] * (1 - terminated[i])
        g = alpha * (rewards[i] + gamma * next_value - values[i]) + gamma * lam * (1 - terminated[i]) * g
        targets[i] = values[i] + g
    return targets


def test_dawr_td_lambda_reproduces_the_official_targets_under_its_conventions():
    """docs/dawr.md: on identical inputs our targets differ from the official ones only through alpha (default 1),
    time-outs and the newest row's next value; with those set as the official code has them they are equal."""
    from cleandppo import dawr

    rng = np.random.default_rng(0)
    T, E = 50, 3
    rewards, values = rng.normal(0.03, 0.01, (T, E)), rng.normal(2.0, 0.3, (T, E))
    terminated = rng.uniform(size=(T, E)) < 0.05
    next_values = np.where(
        terminated, rng.normal(size=(T, E)), np.concatenate([values[1:], values[-1:]])
    )  # V' zeroed there
    no_timeouts = np.zeros((T, E), bool)
    ours = dawr.td_lambda_targets(rewards, values, next_values, terminated, no_timeouts, 0.99, 0.95, alpha=0.95)
    np.testing.assert_allclose(ours, official_td_values(rewards, values, terminated.astype(float)), rtol=1e-12)
    default = dawr.td_lambda_targets(rewards, values, next_values, terminated, no_timeouts, 0.99, 0.95)  # alpha 1
    assert np.abs(default - ours).mean() > 1e-3  # what the doc's first row measures


def plain_mlp_sd(prefix, dims):
    return {
        k: v
        for i in range(len(dims) - 1)
        for k, v in linear(f"{prefix}.moduleList.{i}.linear_1", dims[i], dims[i + 1]).items()
    }


def test_gym_gaussian_checkpoint_plain_mlp_loads_and_finetunes_one_iteration(tmp_path):
    """Official Gym Gaussian pre-training (pre_gaussian_mlp, Hopper): a plain MLP (residual_style False) of three
    equal widths, Mish, fixed std 0.1, Tp = 1. Our policy builds it plain (not residual) and gaussian_ppo fine-tunes
    from it."""
    torch.manual_seed(8)
    sd = plain_mlp_sd("mlp_mean", [OBS, 16, 16, 16, ACT]) | std_range_sd(0.01, 1.0)
    path = write_official(tmp_path, dict(epoch=200, model=prefixed(sd, "network."), ema=prefixed(sd, "network.")))
    ckpt = envs.load_checkpoint(path, "gaussian", ENV, "mlp")
    policy = gaussian_ppo.GaussianPolicy(**ckpt["model_kwargs"])
    policy.load_state_dict(ckpt["model"], strict=False)
    obs = torch.randn(6, 1, OBS)
    h = obs.flatten(1)
    for i in range(3):  # Linear -> Mish, then the Identity output layer, then tanh (official Gaussian_MLP)
        h = mish(lin(h, sd, f"mlp_mean.moduleList.{i}.linear_1"))
    expected = torch.tanh(lin(h, sd, "mlp_mean.moduleList.3.linear_1"))
    torch.testing.assert_close(policy(obs)[0].flatten(1), expected)
    run = tmp_path / "ft"
    run_main(
        gaussian_ppo,
        "--checkpoint",
        path,
        "--run-dir",
        run,
        "--horizon-steps",
        "1",
        "--act-steps",
        "1",
        "--num-envs",
        "2",
        "--n-steps",
        "4",
        "--batch-size",
        "4",
        "--total-timesteps",
        "8",
        "--eval-episodes",
        "1",
        "--bc-loss-coeff",
        "0.1",
    )  # the frozen copy reaches the update
    saved = torch.load(run / "checkpoint_last.pt", weights_only=False)
    assert saved["iteration"] == 1 and saved["model_kwargs"]["residual"] is False


def test_an_unknown_official_network_is_one_line(tmp_path):
    state = prefixed(diffusion_mlp_sd(), "network.")
    del state["network.mlp_mean.layers.2.weight"]  # the output layer of an unexpected shape of network
    path = write_official(tmp_path, dict(epoch=1, model=state, ema=state))
    with pytest.raises(SystemExit) as e:
        envs.load_checkpoint(path, "diffusion", ENV)
    assert_one_line_error(str(e.value), "does not map", "docs/checkpoints.md")


def test_avoid_gmm_checkpoint_plain_relu_mlps_load(tmp_path):
    """Official Avoid GMM (cfg/d3il/*/ft_ppo_gmm_mlp): plain MLPs [256, 256] with ReLU, fixed std 0.1."""
    torch.manual_seed(10)
    obs_dim, act_dim, modes, tp = 4, 2, 3, 4
    sd = plain_mlp_sd("mlp_mean", [obs_dim, 16, 16, modes * tp * act_dim]) | plain_mlp_sd(
        "mlp_weights", [obs_dim, 16, 16, modes]
    )
    sd |= std_range_sd()
    np.savez(
        tmp_path / "normalization.npz",
        obs_min=-np.ones(obs_dim),
        obs_max=np.ones(obs_dim),
        action_min=-np.ones(act_dim),
        action_max=np.ones(act_dim),
    )
    torch.save(dict(epoch=5, model=prefixed(sd, "network."), ema=prefixed(sd, "network.")), tmp_path / "state_5.pt")
    ckpt = envs.load_checkpoint(str(tmp_path / "state_5.pt"), "gmm", "avoid-m2", "mlp")
    assert ckpt["model_kwargs"]["activation"] == "relu"
    policy = gmm_ppo.GMMPolicy(**ckpt["model_kwargs"])
    policy.load_state_dict(ckpt["model"])
    obs = torch.randn(5, 1, obs_dim)

    def plain(prefix):
        h = obs.flatten(1)
        for i in range(2):
            h = F.relu(lin(h, sd, f"{prefix}.moduleList.{i}.linear_1"))
        return lin(h, sd, f"{prefix}.moduleList.2.linear_1")

    means, std, logits = policy(obs)
    torch.testing.assert_close(means.flatten(2), torch.tanh(plain("mlp_mean")).view(5, modes, tp * act_dim))
    torch.testing.assert_close(logits, plain("mlp_weights"))
