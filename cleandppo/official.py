"""Files of the official DPPO code (irom-princeton/dppo) read into this project's formats.

Two entry points, each called from one place in envs.py:
  * convert_checkpoint -- an official `state_<epoch>.pt` (pre-training: `epoch`, `model`, `ema`) or
    `state_<itr>.pt` (fine-tuning: `itr`, `model`) becomes a cleandppo checkpoint dict (docs/checkpoints.md);
  * load_npz_dataset  -- an official processed `train.npz` (+ `normalization.npz`) becomes what
    envs.load_dataset returns (docs/datasets.md).
The architecture comes from the tensors' shapes; what no tensor shows (the activation, K, the UNet's chunk
length) comes from the running script's flags (`hints`) or, without them, from the official configs (TABLE).
"""

from __future__ import annotations

import os
import re

import numpy as np

from cleandppo import avoid, robomimic_tasks
from cleandppo.common import fail, unnormalize_obs

# What the official configs use where no tensor tells (cfg/gym/finetune/*/ft_ppo_*_mlp.yaml,
# cfg/robomimic/finetune/*/ft_ppo_*.yaml; the pixel policies': ft_ppo_*_img.yaml).
TABLE = dict(denoising_steps=20, ft_denoising_steps=10, fixed_std=0.1, unet_n_groups=8)
TABLE |= dict(pixel_denoising_steps=100, pixel_ft_denoising_steps=5)


def is_official_checkpoint(ckpt) -> bool:
    """An official checkpoint: a dict with `model` and `epoch`/`ema` (pre-training) or `itr` (fine-tuning)."""
    return (
        isinstance(ckpt, dict)
        and "model" in ckpt
        and "policy" not in ckpt
        and bool({"ema", "epoch", "itr"} & set(ckpt))
    )


def _hint(hints, key, default):
    value = (hints or {}).get(key)
    return default if value is None else value


def _default_activation(env_id, policy):
    """Official configs: diffusion ReLU on Gym and Avoid, Mish (the class default) on robomimic; Gaussian/GMM Mish
    except the Avoid ones (ReLU)."""
    if policy == "diffusion":
        return "mish" if robomimic_tasks.is_robomimic(env_id) else "relu"
    return "relu" if avoid.is_avoid(env_id) else "mish"


def _strip(state, prefix):
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _residual_mlp(state, src, dst):
    """Official ResidualMLP `src.layers.{0, 1..n, n+1}` (input Linear, n two-Linear blocks, output Linear) mapped onto
    our ResidualMLP `dst.{inp, blocks.i.{1,3}, out}`; returns (mapped tensors, widths [d_in, h, ..., d_out])."""
    n_blocks = len({m.group(1) for k in state if (m := re.match(rf"{re.escape(src)}\.layers\.(\d+)\.l1\.", k))})
    if any(re.match(rf"{re.escape(src)}\.layers\.\d+\.norm", k) for k in state):
        fail(f"the official {src} uses LayerNorm (use_layernorm), which this project's networks do not have")
    out = {f"{dst}.inp.{w}": state[f"{src}.layers.0.{w}"] for w in ("weight", "bias")}
    for i in range(n_blocks):
        for w in ("weight", "bias"):
            out[f"{dst}.blocks.{i}.1.{w}"] = state[f"{src}.layers.{i + 1}.l1.{w}"]
            out[f"{dst}.blocks.{i}.3.{w}"] = state[f"{src}.layers.{i + 1}.l2.{w}"]
    last = state[f"{src}.layers.{n_blocks + 1}.weight"]
    out.update({f"{dst}.out.{w}": state[f"{src}.layers.{n_blocks + 1}.{w}"] for w in ("weight", "bias")})
    hidden = out[f"{dst}.inp.weight"].shape[0]
    return out, [out[f"{dst}.inp.weight"].shape[1], *[hidden] * (2 * n_blocks + 1), last.shape[0]]


def _plain_mlp(state, src, dst):
    """Official MLP `src.moduleList.i.linear_1` mapped onto our non-residual ResidualMLP `dst.{body.2i, out}`."""
    n = len({k for k in state if re.match(rf"{re.escape(src)}\.moduleList\.\d+\.linear_1\.weight", k)})
    if any(re.match(rf"{re.escape(src)}\.moduleList\.\d+\.norm_1", k) for k in state):
        fail(f"the official {src} uses LayerNorm (use_layernorm), which this project's networks do not have")
    out, dims = {}, []
    for i in range(n):
        name = f"{dst}.out" if i == n - 1 else f"{dst}.body.{2 * i}"
        for w in ("weight", "bias"):
            out[f"{name}.{w}"] = state[f"{src}.moduleList.{i}.linear_1.{w}"]
        dims.append(out[f"{name}.weight"].shape[1])
    return out, dims + [out[f"{dst}.out.weight"].shape[0]]


def _split_obs(env_id, task_dims, feature_dim, what):
    obs_dim, action_dim = task_dims
    if feature_dim % obs_dim:
        fail(
            f"the official {what} takes {feature_dim} observation features, not a multiple of {env_id}'s "
            f"{obs_dim}; pass the --env-id it was trained on"
        )
    return obs_dim, action_dim, feature_dim // obs_dim


def _diffusion_mlp(state, env_id, task_dims, hints):
    cond_mlp = {}
    if "cond_mlp.moduleList.0.linear_1.weight" in state:  # official Square: MLP [To*Do, 512, 64], Identity output
        cond_mlp, cond_dims = _plain_mlp(state, "cond_mlp", "cond_mlp")
        cond_mlp = {
            k.replace(".out.", f".{2 * (len(cond_dims) - 2)}.").replace(".body.", "."): v for k, v in cond_mlp.items()
        }
    if "mlp_mean.layers.0.weight" not in state:
        fail("the official DiffusionMLP is not residual (residual_style False); this project's DiffusionMLP is")
    time_dim = state["time_embedding.1.weight"].shape[1]
    model, widths = _residual_mlp(state, "mlp_mean", "mlp")
    obs_dim, action_dim = task_dims
    horizon_steps = widths[-1] // action_dim
    obs_features = cond_dims[0] if cond_mlp else widths[0] - horizon_steps * action_dim - time_dim
    _, _, cond_steps = _split_obs(env_id, task_dims, obs_features, "DiffusionMLP")
    model.update({k: v for k, v in state.items() if k.startswith("time_embedding.")}, **cond_mlp)
    kw = dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon_steps=horizon_steps,
        cond_steps=cond_steps,
        backbone="mlp",
        time_dim=time_dim,
        mlp_dims=tuple(widths[1:-1]),
        activation=_hint(hints, "activation", _default_activation(env_id, "diffusion")),
        unet_dim=40,
        unet_dim_mults=(1, 2),
        unet_kernel_size=5,
        unet_n_groups=8,
        unet_step_embed_dim=16,
    )
    if cond_mlp:
        kw["cond_mlp_dims"] = tuple(cond_dims[1:])
    return model, kw


def _unet_block(state, src, dst):
    """Official ResidualBlock1D -> our FiLMResidualBlock (conv blocks: GroupNorm moves from index 2 to 1)."""
    if f"{src}.cond_encoder.4.weight" not in state:
        fail(
            "the official UNet uses the small condition encoder or a cond_mlp; this project's UNet has the "
            "large FiLM encoder only (smaller_encoder False, no cond_mlp)"
        )
    out = {}
    for w in ("weight", "bias"):
        for j in (0, 1):
            out[f"{dst}.conv{j + 1}.block.0.{w}"] = state[f"{src}.blocks.{j}.block.0.{w}"]
            out[f"{dst}.conv{j + 1}.block.1.{w}"] = state[f"{src}.blocks.{j}.block.2.{w}"]
        for j in (0, 2, 4):
            out[f"{dst}.cond.{j}.{w}"] = state[f"{src}.cond_encoder.{j}.{w}"]
        if f"{src}.residual_conv.{w}" in state:
            out[f"{dst}.skip.{w}"] = state[f"{src}.residual_conv.{w}"]
    channels = out[f"{dst}.conv1.block.0.weight"].shape[0]
    if out[f"{dst}.cond.4.weight"].shape[0] != 2 * channels:
        fail(
            "the official UNet predicts a FiLM bias only (cond_predict_scale False); this project's UNet "
            "predicts scale and bias"
        )
    return out


def _unet(state, env_id, task_dims, hints):
    n_levels = len({k.split(".")[1] for k in state if k.startswith("down_modules.")})
    model = {f"time_embedding.{i}.{w}": state[f"time_mlp.{i}.{w}"] for i in (1, 3) for w in ("weight", "bias")}
    widths = []
    for i in range(n_levels):
        for j in (0, 1):
            model.update(_unet_block(state, f"down_modules.{i}.{j}", f"down.{i}.{j}"))
        widths.append(state[f"down_modules.{i}.0.blocks.0.block.0.weight"].shape[0])
        if i < n_levels - 1:
            model.update({f"down.{i}.2.{w}": state[f"down_modules.{i}.2.conv.{w}"] for w in ("weight", "bias")})
    for k in (0, 1):
        model.update(_unet_block(state, f"mid_modules.{k}", f"mid.{k}"))
    for i in range(n_levels - 1):
        for j in (0, 1):
            model.update(_unet_block(state, f"up_modules.{i}.{j}", f"up.{i}.{j}"))
        model.update({f"up.{i}.2.{w}": state[f"up_modules.{i}.2.conv.{w}"] for w in ("weight", "bias")})
    for w in ("weight", "bias"):
        model[f"final.0.block.0.{w}"] = state[f"final_conv.0.block.0.{w}"]
        model[f"final.0.block.1.{w}"] = state[f"final_conv.0.block.2.{w}"]
        model[f"final.1.{w}"] = state[f"final_conv.1.{w}"]
    step_dim = state["time_mlp.1.weight"].shape[1]
    cond_dim = state["down_modules.0.0.cond_encoder.0.weight"].shape[1]
    obs_dim, action_dim, cond_steps = _split_obs(env_id, task_dims, cond_dim - step_dim, "UNet")
    dim = widths[0]
    is_robomimic = robomimic_tasks.is_robomimic(env_id)
    default_tp = (
        robomimic_tasks.ROBOMIMIC_TASKS[robomimic_tasks.robomimic_task(env_id)]["act_steps"] if is_robomimic else 4
    )
    kw = dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        cond_steps=cond_steps,
        backbone="unet",
        horizon_steps=_hint(hints, "horizon_steps", default_tp),  # convolutions do not fix the chunk length
        time_dim=16,
        mlp_dims=(512, 512, 512),
        activation="mish",
        unet_dim=dim,
        unet_dim_mults=tuple(w // dim for w in widths),
        unet_kernel_size=state["final_conv.0.block.0.weight"].shape[2],
        unet_n_groups=TABLE["unet_n_groups"],
        unet_step_embed_dim=step_dim,
    )
    return model, kw


def _std_kwargs(state, hints, logvar_shape):
    """Std range from the official logvar_min/logvar_max; the learned log variance if the network has one (fine-tuned
    or learn_fixed_std), else the fixed std (pre-training) as its start value."""
    import torch

    std_min, std_max = (float(np.exp(0.5 * state[k].item())) for k in ("logvar_min", "logvar_max"))
    init_std = float(_hint(hints, "fixed_std", TABLE["fixed_std"]))
    logvar = (
        state["logvar"].reshape(logvar_shape) if "logvar" in state else torch.full(logvar_shape, 2 * np.log(init_std))
    )
    return {"logvar": logvar.float()}, dict(init_std=init_std, std_min=std_min, std_max=std_max)


def _transformer(state, dst):
    """Official Transformer (under `transformer.`) -> our TransformerBackbone `dst`: the same decoder layers."""
    names = dict(
        cond_obs_emb="obs_proj",
        cond_pos_emb="obs_pos",
        pos_emb="query_pos",
        ln_f="norm",
        encoder="encoder",
        decoder="decoder",
        head="head",
    )
    out = {}
    for k, v in _strip(state, "transformer.").items():
        first, _, rest = k.partition(".")
        out[f"{dst}.{names[first]}" + (f".{rest}" if rest else "")] = v
    layers = len({k.split(".")[3] for k in out if k.startswith(f"{dst}.decoder.layers.")})
    return out, dict(transformer_dim=out[f"{dst}.obs_proj.weight"].shape[0], transformer_layers=layers)


def _gaussian(state, env_id, task_dims, hints):
    obs_dim, action_dim = task_dims
    head = state.get("transformer.head.weight")
    if any(k.startswith(("mlp_base.", "mlp_logvar.")) for k in state) or (
        head is not None and head.shape[0] != action_dim
    ):
        fail(
            "the official Gaussian network predicts a state-dependent std (fixed_std null); this project's "
            "Gaussian policy learns one std per action dimension"
        )
    if head is not None:
        model, kw = _transformer(state, "net")
        horizon_steps = state["transformer.pos_emb"].shape[1]
        feature_dim, backbone, mlp_dims = (
            state["transformer.cond_obs_emb.weight"].shape[1],
            "transformer",
            (512, 512, 512),
        )
        kw["transformer_heads"] = _hint(hints, "transformer_heads", 4)  # not in the tensors: the flag (official: 4)
    else:
        residual = "mlp_mean.layers.0.weight" in state  # official residual_style
        model, dims = (_residual_mlp if residual else _plain_mlp)(state, "mlp_mean", "net")
        horizon_steps, feature_dim, backbone, mlp_dims = dims[-1] // action_dim, dims[0], "mlp", tuple(dims[1:-1])
        kw = dict(residual=residual)
    _, _, cond_steps = _split_obs(env_id, task_dims, feature_dim, "Gaussian network")
    std_model, std_kw = _std_kwargs(state, hints, (action_dim,))
    model.update(std_model)
    kw = dict(dict(transformer_dim=96, transformer_heads=4, transformer_layers=4), **kw)
    return model, dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon_steps=horizon_steps,
        cond_steps=cond_steps,
        backbone=backbone,
        mlp_dims=mlp_dims,
        **kw,
        **std_kw,
        activation=_default_activation(env_id, "gaussian"),
        obs_norm=False,
    )


def _gmm(state, env_id, task_dims, hints):
    obs_dim, action_dim = task_dims
    head = state.get("transformer.head.weight")
    if any(k.startswith("mlp_logvar.") for k in state) or (
        head is not None and head.shape[0] != state["modes_head.weight"].shape[0] * action_dim
    ):
        fail(
            "the official GMM network predicts state-dependent stds (fixed_std null); this project's GMM policy "
            "learns one std per mode and action dimension"
        )
    if head is not None:
        num_modes = state["modes_head.weight"].shape[0]
        model, kw = _transformer(state, "net")
        model["mean_head.weight"], model["mean_head.bias"] = model.pop("net.head.weight"), model.pop("net.head.bias")
        model.update({f"modes_head.{w}": state[f"modes_head.{w}"] for w in ("weight", "bias")})
        horizon_steps, feature_dim = (
            state["transformer.pos_emb"].shape[1],
            state["transformer.cond_obs_emb.weight"].shape[1],
        )
        kw.update(
            backbone="transformer", mlp_dims=(512, 512, 512), transformer_heads=_hint(hints, "transformer_heads", 4)
        )
    else:
        mlp = _residual_mlp if "mlp_mean.layers.0.weight" in state else _plain_mlp  # official residual_style
        model, dims = mlp(state, "mlp_mean", "mean_net")
        weights, wdims = mlp(state, "mlp_weights", "logits_net")
        model.update(weights)
        hidden = dims[1:-1]
        if mlp is _plain_mlp and len(hidden) % 2 == 1 and len(set(hidden)) == 1:
            fail(
                f"the official GMM MLPs are plain (residual_style False) with widths {hidden}; this project's GMM "
                "policy builds those widths as residual MLPs, so it cannot hold these weights"
            )
        num_modes = wdims[-1]
        horizon_steps, feature_dim = dims[-1] // (num_modes * action_dim), dims[0]
        kw = dict(
            backbone="mlp",
            mlp_dims=tuple(hidden),
            transformer_dim=96,
            transformer_heads=4,
            transformer_layers=4,
            activation=_default_activation(env_id, "gmm"),
        )
    _, _, cond_steps = _split_obs(env_id, task_dims, feature_dim, "GMM network")
    std_model, std_kw = _std_kwargs(state, hints, (num_modes, action_dim))
    model.update(std_model)
    return model, dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        horizon_steps=horizon_steps,
        cond_steps=cond_steps,
        num_modes=num_modes,
        **kw,
        **std_kw,
    )


# ---- pixel policies (paper 5.2): VisionDiffusionMLP, Gaussian_VisionMLP (model/common/vit.py, modules.py) ----------
VIT_NAMES = {  # official VitEncoder/MinVit (under backbone.vit.) -> our VisionEncoder (under encoder.)
    "patch_embed.embed.0": "patch_embed.0",  # Conv 8x8, stride 4 (embed.1: Identity without embed_norm, 2: ReLU)
    "patch_embed.embed.3": "patch_embed.2",  # Conv 3x3, stride 2
    "pos_embed": "pos_embed",
    "norm": "norm",
}
LAYER_NAMES = {  # official TransformerLayer -> torch's TransformerEncoderLayer (the same pre-norm layer)
    "layer_norm1": "norm1",
    "mha.qkv_proj.weight": "self_attn.in_proj_weight",  # q, k, v stacked, heads contiguous: torch's layout
    "mha.qkv_proj.bias": "self_attn.in_proj_bias",
    "mha.out_proj": "self_attn.out_proj",
    "layer_norm2": "norm2",
    "linear1": "linear1",
    "linear2": "linear2",
}


def _vision(state, env_id, task_dims, hints):
    """The official ViT backbone and its SpatialEmb compression(s) -> our VisionEncoder tensors (under `encoder.`) and
    its kwargs (model_kwargs["vision"]); the attention heads are no tensor's shape: the flag (official: 4)."""
    if "backbone.vit.patch_embed.embed.1.weight" in state:
        fail("the official ViT normalizes its patches (embed_norm 1); this project's ViT has the configs' embed_norm 0")
    if "compress.weight" not in state and "compress1.weight" not in state:
        fail(
            "the official pixel policy compresses the ViT output linearly (spatial_emb 0); this project's uses the "
            "configs' learned spatial embedding (spatial_emb 128)"
        )
    out = {}
    for key, value in _strip(state, "backbone.vit.").items():
        head, _, weight = key.rpartition(".")
        if key == "pos_embed":
            out["encoder.pos_embed"] = value
        elif key.startswith("net."):
            _, layer, rest = key.split(".", 2)
            name = LAYER_NAMES.get(rest) or f"{LAYER_NAMES[rest.rpartition('.')[0]]}.{rest.rpartition('.')[2]}"
            out[f"encoder.transformer.layers.{layer}.{name}"] = value
        else:
            out[f"encoder.{VIT_NAMES[head]}.{weight}"] = value
    cameras = ["compress1", "compress2"] if "compress1.weight" in state else ["compress"]
    for i, src in enumerate(cameras):
        out[f"encoder.compress.{i}.weight"] = state[f"{src}.weight"]
        for j in (0, 1):  # Linear, LayerNorm (then ReLU)
            for w in ("weight", "bias"):
                out[f"encoder.compress.{i}.proj.{j}.{w}"] = state[f"{src}.input_proj.{j}.{w}"]
    conv = state["backbone.vit.patch_embed.embed.0.weight"]
    if conv.shape[1] != 3:
        fail(
            f"the official ViT reads {conv.shape[1]} channels per camera (img_cond_steps > 1); this project's reads one image"
        )
    image_shape = robomimic_tasks.IMAGE_TASKS[robomimic_tasks.image_task(env_id)].image_shape
    if image_shape[0] != 3 * len(cameras):
        fail(
            f"the official pixel policy encodes {len(cameras)} camera(s), {env_id} has {image_shape[0] // 3}; "
            "pass the --env-id it was trained on"
        )
    num_patches, embed_dim = state["backbone.vit.pos_embed"].shape[1:]
    prop = state[f"{cameras[0]}.input_proj.0.weight"].shape[1] - num_patches
    state_dim, _, cond_steps = _split_obs(env_id, task_dims, prop, "pixel policy's proprioception")
    depth = len({k.split(".")[3] for k in state if k.startswith("backbone.vit.net.")})
    heads = int(_hint(hints, "vit_heads", 4))
    spatial_dim = state[f"{cameras[0]}.weight"].shape[2]
    kw = dict(state_dim=state_dim, cond_steps=cond_steps, image_shape=tuple(image_shape), embed_dim=int(embed_dim))
    kw.update(depth=depth, heads=heads, spatial_dim=int(spatial_dim))
    return out, kw, len(cameras) * spatial_dim + prop


def _vision_diffusion_mlp(state, env_id, task_dims, hints):
    """Official VisionDiffusionMLP -> our VisionDiffusionMLP (dppo.py): the encoder, the time embedding, the MLP."""
    if "mlp_mean.layers.0.weight" not in state:
        fail("the official VisionDiffusionMLP is not residual (residual_style False); this project's MLP is")
    model, vision, features = _vision(state, env_id, task_dims, hints)
    mlp, widths = _residual_mlp(state, "mlp_mean", "mlp")
    model.update(mlp, **{k: v for k, v in state.items() if k.startswith("time_embedding.")})
    time_dim, action_dim = state["time_embedding.1.weight"].shape[1], task_dims[1]
    horizon_steps = widths[-1] // action_dim
    if widths[0] != horizon_steps * action_dim + time_dim + features:
        fail(f"the official VisionDiffusionMLP's MLP takes {widths[0]} inputs, not chunk + time + image features")
    kw = dict(obs_dim=vision["state_dim"], action_dim=action_dim, horizon_steps=horizon_steps)
    kw.update(cond_steps=vision["cond_steps"], backbone="mlp", time_dim=time_dim, mlp_dims=tuple(widths[1:-1]))
    kw.update(activation=_hint(hints, "activation", "mish"), unet_dim=40, unet_dim_mults=(1, 2), unet_kernel_size=5)
    return model, dict(kw, unet_n_groups=8, unet_step_embed_dim=16, vision=vision)


def _vision_gaussian(state, env_id, task_dims, hints):
    """Official Gaussian_VisionMLP -> our GaussianPolicy with a VisionEncoder (gaussian_ppo.py)."""
    if any(k.startswith("mlp_logvar.") for k in state):
        fail(
            "the official Gaussian network predicts a state-dependent std (fixed_std null); this project's "
            "Gaussian policy learns one std per action dimension"
        )
    model, vision, features = _vision(state, env_id, task_dims, hints)
    residual = "mlp_mean.layers.0.weight" in state  # official residual_style
    mlp, dims = (_residual_mlp if residual else _plain_mlp)(state, "mlp_mean", "net")
    action_dim = task_dims[1]
    if dims[0] != features:
        fail(f"the official Gaussian_VisionMLP's MLP takes {dims[0]} inputs, not the {features} image features")
    std_model, std_kw = _std_kwargs(state, hints, (action_dim,))
    model.update(mlp, **std_model)
    kw = dict(obs_dim=vision["state_dim"], action_dim=action_dim, horizon_steps=dims[-1] // action_dim)
    kw.update(cond_steps=vision["cond_steps"], backbone="mlp", mlp_dims=tuple(dims[1:-1]), residual=residual)
    kw.update(transformer_dim=96, transformer_heads=4, transformer_layers=4, activation="mish", obs_norm=False)
    return model, dict(kw, **std_kw, vision=vision)


def _network_state(raw, policy):
    """(weights of the network to start from, weights of the frozen copy or None, which entry): pre-training
    checkpoints give `ema` for diffusion (official DiffusionModel loads `ema` when present) and `model` for
    Gaussian/GMM (official GaussianModel/GMMModel load `model`); fine-tuning checkpoints (`itr`) give
    `actor_ft` (the fine-tuned network) and, for diffusion, `actor` (the frozen early denoising steps)."""
    if "itr" in raw:
        state = raw["model"]
        if not any(k.startswith("actor_ft.") for k in state):
            fail("the official fine-tuning checkpoint has no actor_ft weights; pass a PPO fine-tuning checkpoint")
        frozen = _strip(state, "actor.") if policy == "diffusion" else None
        return _strip(state, "actor_ft."), frozen, "model/actor_ft"
    entry = "ema" if policy == "diffusion" and "ema" in raw else "model"
    return _strip(raw[entry], "network."), None, f"{entry}/network"


def find_normalization(path, hints=None, name="normalization.npz"):
    """`--official-normalization` if given; else `name` beside an official `--dataset` train.npz, in the checkpoint's
    folder or up to three folders above."""
    given, dataset = (hints or {}).get("official_normalization"), str((hints or {}).get("dataset") or "")
    if given:
        return given
    if dataset.endswith("train.npz") and os.path.isfile(dataset.replace("train.npz", name)):
        return dataset.replace("train.npz", name)
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(4):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
        folder = os.path.dirname(folder)
    fail(f"no {name} next to {path}; pass --official-normalization PATH (the official data folder's normalization.npz)")


def read_normalization(path):
    if not os.path.isfile(path):
        fail(f"normalization file {path} does not exist; pass the official data folder's normalization.npz")
    f = read_npz(path, "an official normalization.npz")
    missing = {"obs_min", "obs_max", "action_min", "action_max"} - set(f)
    if missing:
        fail(f"{path} lacks {sorted(missing)}; pass an official normalization.npz")
    return {k: f[k].astype(np.float32) for k in ("obs_min", "obs_max", "action_min", "action_max")}


def read_npz(path, wanted: str) -> dict:
    """The arrays of an .npz file by name; a file that is missing or no .npz archive (garbage, an .npy renamed .npz,
    a truncated download) stops in one line asking for `wanted`."""
    if not os.path.isfile(path):
        fail(f"{path} does not exist; pass {wanted}")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # an .npy file: one unnamed array
            fail(f"{path} holds one .npy array, not an .npz archive of named arrays; pass {wanted}")
        with f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # ValueError, OSError, zipfile.BadZipFile, EOFError: depends on how the bytes are wrong
        fail(f"cannot read {path} as an .npz archive ({e.__class__.__name__}); pass {wanted}")


def convert_checkpoint(raw, path, policy, env_id, task_dims, hints=None) -> dict:
    """An official checkpoint as a cleandppo checkpoint dict (the network weights under our parameter names) for the
    task `env_id`, whose (obs_dim, action_dim) are `task_dims`."""
    try:
        return _convert(raw, path, policy, env_id, task_dims, hints)
    except KeyError as e:
        fail(
            f"{path} holds an official {policy} network of a kind this project does not map (no {e}); "
            "docs/checkpoints.md lists the ones that load"
        )


def _convert(raw, path, policy, env_id, task_dims, hints):
    state, frozen, entry = _network_state(raw, policy)
    pixels = any(k.startswith(("backbone.", "compress")) for k in state)
    if pixels and not robomimic_tasks.is_image_task(env_id):
        task = robomimic_tasks.robomimic_task(env_id) if robomimic_tasks.is_robomimic(env_id) else "<task>"
        fail(f"{path} is an official pixel policy (a ViT on camera images); pass its pixel task, --env-id {task}-img")
    if robomimic_tasks.is_image_task(env_id) and not pixels:
        task = robomimic_tasks.robomimic_task(env_id)
        fail(
            f"{path} is an official state policy and {env_id} a pixel task; pass --env-id {task} or an official "
            "pixel (*_img) checkpoint"
        )
    if "time_embedding.1.weight" in state or "time_mlp.1.weight" in state:
        found = "diffusion"
    elif (
        "modes_head.weight" in state
        or "mlp_weights.layers.0.weight" in state
        or "mlp_weights.moduleList.0.linear_1.weight" in state
    ):
        found = "gmm"
    else:
        found = "gaussian"
    if found != policy:
        fail(f"{path} holds an official {found} policy, this script needs a {policy} one; pass a {policy} checkpoint")
    if policy == "diffusion":
        convert = _vision_diffusion_mlp if pixels else _unet if "time_mlp.1.weight" in state else _diffusion_mlp
        model, kw = convert(state, env_id, task_dims, hints)
        K = TABLE["pixel_denoising_steps" if pixels else "denoising_steps"]
        kw["denoising_steps"] = int(_hint(hints, "denoising_steps", K))
        extra = {}
        if frozen is not None:  # DPPO fine-tuned: frozen `actor` for the early steps, `actor_ft` for the last K'
            K_ft = TABLE["pixel_ft_denoising_steps" if pixels else "ft_denoising_steps"]
            extra = dict(model_ft=model, ft_denoising_steps=int(_hint(hints, "ft_denoising_steps", K_ft)))
            model, _ = convert(frozen, env_id, task_dims, hints)
    else:
        convert = _vision_gaussian if pixels else _gaussian if policy == "gaussian" else _gmm
        model, kw = convert(state, env_id, task_dims, hints)
        extra = {}
    norm = read_normalization(find_normalization(path, hints))
    obs_dim, action_dim = task_dims
    if norm["obs_min"].shape != (obs_dim,) or norm["action_min"].shape != (action_dim,):
        fail(
            f"the normalization file has obs/action dims {norm['obs_min'].shape[0]}/{norm['action_min'].shape[0]}, "
            f"{env_id} needs {obs_dim}/{action_dim}; pass the normalization.npz of this task's data"
        )
    return dict(
        algo="official",
        policy=policy,
        backbone=kw["backbone"],
        model=model,
        model_kwargs=kw,
        normalization=norm,
        env_id=env_id,
        args={},
        iteration=0,
        env_steps=0,
        official_source=dict(path=path, weights=entry, epoch=raw.get("epoch"), itr=raw.get("itr")),
        **extra,
    )


def load_npz_dataset(path, env_id=None, task_dims=None) -> dict:
    """An official processed dataset (script/dataset/*: `states`, `actions`, `traj_lengths`, optional `rewards`,
    `terminals`, `images`) with the `normalization.npz` of the same prefix beside it. States and actions come back
    in raw units (the official files hold them normalized to [-1, 1]); episodes are the traj_lengths slices, taken as
    they are (the official conversion already dropped the ones it drops). For an image task (`lift-img`, ...) the
    official `<task>-img` train.npz: `images` (N, 3 * cameras, 96, 96) in [0, 255] become each episode's "rgb" (uint8),
    as the official StitchedSequenceDataset (agent/dataset/sequence.py) gives them to the network, unnormalized."""
    data = read_npz(path, "an official train.npz (script/dataset/*)")
    image_task = env_id is not None and robomimic_tasks.is_image_task(env_id)
    if "images" in data and not image_task:
        fail(
            f"{path} holds images (a pixel dataset); {env_id or 'this'} is a state-only task: pass --env-id "
            "<task>-img (lift-img, can-img, square-img, transport-img), or process the data without cameras"
        )
    if image_task and "images" not in data:
        fail(f"{path} holds no images (a state dataset); {env_id} needs the official {env_id.lower()} train.npz")
    missing = {"states", "actions", "traj_lengths"} - set(data)
    if missing:
        fail(f"{path} lacks {sorted(missing)}; pass an official train.npz (script/dataset/*)")
    folder, base = os.path.split(os.path.abspath(path))
    norm = read_normalization(
        os.path.join(
            folder,
            base.replace("train.npz", "normalization.npz") if base.endswith("train.npz") else "normalization.npz",
        )
    )
    states, actions = data["states"].astype(np.float64), data["actions"].astype(np.float64)
    if _looks_normalized(states, norm["obs_min"], norm["obs_max"]):  # robomimic's --normalize is optional
        states = unnormalize_obs(states, norm)
        actions = (actions + 1.0) / 2.0 * (norm["action_max"] - norm["action_min"] + 1e-6) + norm["action_min"]
    lengths = np.asarray(data["traj_lengths"], dtype=int)
    if lengths.sum() != len(states):
        fail(
            f"{path}: traj_lengths sum to {lengths.sum()} but there are {len(states)} states; "
            "pass an unmodified train.npz"
        )
    n = len(states)
    rewards = np.asarray(data.get("rewards", np.zeros(n)), dtype=np.float64).reshape(n)
    terminals = np.asarray(data.get("terminals", np.zeros(n)), dtype=bool).reshape(n)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[np.cumsum(lengths) - 1] = True
    timeouts &= ~terminals
    out = dict(
        observations=states.astype(np.float32),
        actions=actions.astype(np.float32),
        rewards=rewards,
        terminals=terminals,
        timeouts=timeouts,
        normalization=norm,
        attrs={"source": path},
    )
    if env_id is not None:
        obs_dim, action_dim = task_dims
        if states.shape[1] != obs_dim or actions.shape[1] != action_dim:
            fail(
                f"dataset {path} has obs/action dims {states.shape[1]}/{actions.shape[1]}, {env_id} needs "
                f"{obs_dim}/{action_dim}; pass a dataset of {env_id}"
            )
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    out["episodes"] = [
        {k: out[k][a:b] for k in ("observations", "actions", "rewards", "terminals")}
        for a, b in zip(bounds[:-1], bounds[1:])
        if b > a
    ]
    if image_task:
        images = _official_images(path, data["images"], env_id, n)
        for episode, a, b in zip(out["episodes"], bounds[:-1][lengths > 0], bounds[1:][lengths > 0]):
            episode["rgb"] = images[a:b]
    return out


def _official_images(path, images, env_id, n) -> np.ndarray:
    """An official train.npz's `images` as uint8 (n, 3 * cameras, 96, 96); other shapes or values stop in one line."""
    shape = robomimic_tasks.IMAGE_TASKS[robomimic_tasks.image_task(env_id)].image_shape
    if images.shape != (n, *shape):
        fail(f"{path}: images have shape {images.shape}, {env_id} needs ({n}, {', '.join(map(str, shape))})")
    if images.dtype != np.uint8:
        if not (np.all(images >= 0) and np.all(images <= 255) and np.all(images == np.round(images))):
            fail(f"{path}: images are not whole numbers in [0, 255]; pass the official {env_id.lower()} train.npz")
        images = images.astype(np.uint8)
    return images


def _looks_normalized(states, lo, hi):
    """Whether the stored states are the normalized ones: their per-dimension range is nearer [-1, 1] than the
    raw [obs_min, obs_max] of normalization.npz."""
    to_unit = np.abs(states.min(0) + 1).sum() + np.abs(states.max(0) - 1).sum()
    to_raw = np.abs(states.min(0) - lo).sum() + np.abs(states.max(0) - hi).sum()
    return to_unit <= to_raw
