"""The pixel policies of paper 5.2 (DPPO-ViT-MLP in dppo.py, Gaussian-ViT-MLP in gaussian_ppo.py) against the
official architecture written out below with plain torch ops under the official parameter names (official
model/common/vit.py VitEncoder/MinVit with embed_style embed2, model/common/modules.py SpatialEmb and
RandomShiftsAug, model/diffusion/mlp_diffusion.py VisionDiffusionMLP, model/common/mlp_gaussian.py
Gaussian_VisionMLP, model/common/critic.py ViTCritic); parameter counts against the count of the official modules
computed here from the official config dims (cfg/robomimic/{pretrain,finetune}/<task>/*_img.yaml)."""

import importlib
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_official import lin, mish, residual_mlp, sinusoidal
from test_ppo_updates import (  # noqa: F401 (stand_in_denoising_log_prob: a fixture)
    _dppo_batch,
    _gaussian_batch,
    assert_grads_close,
    expected_grads,
    gaussian_logp,
    grads,
    normalized,
    stand_in_denoising_log_prob,
    surrogate,
)

from cleandppo import arguments, dppo, envs, gaussian_ppo, vit
from conftest import assert_one_line_error, run_main

torch.set_num_threads(1)
SCRIPTS = [dppo, gaussian_ppo]


# ---- the official architecture, written out -----------------------------------------------------------------------
def layer_norm(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"])


def official_vit(sd, images, heads, p="backbone.vit"):
    """VitEncoder: x / 255 - 0.5; PatchEmbed2 = Conv(8, stride 4), Identity, ReLU, Conv(3, stride 2); + pos_embed;
    TransformerLayer x n (pre-norm; qkv split as 'b t (k h d) -> b k h t d'; GELU MLP); LayerNorm."""
    x = F.conv2d(images / 255.0 - 0.5, sd[f"{p}.patch_embed.embed.0.weight"], sd[f"{p}.patch_embed.embed.0.bias"], 4)
    x = F.conv2d(F.relu(x), sd[f"{p}.patch_embed.embed.3.weight"], sd[f"{p}.patch_embed.embed.3.bias"], 2)
    x = x.flatten(2).transpose(1, 2) + sd[f"{p}.pos_embed"]
    i = 0
    while f"{p}.net.{i}.layer_norm1.weight" in sd:
        q = f"{p}.net.{i}"
        B, T, D = x.shape
        qkv = lin(layer_norm(x, sd, f"{q}.layer_norm1"), sd, f"{q}.mha.qkv_proj").view(B, T, 3, heads, D // heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        weights = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)
        x = x + lin((weights @ value).transpose(1, 2).reshape(B, T, D), sd, f"{q}.mha.out_proj")
        x = x + lin(F.gelu(lin(layer_norm(x, sd, f"{q}.layer_norm2"), sd, f"{q}.linear1")), sd, f"{q}.linear2")
        i += 1
    return layer_norm(x, sd, f"{p}.norm")


def official_spatial_emb(sd, p, feat, prop):
    """SpatialEmb: per channel, [patch values, proprioception] -> Linear, LayerNorm, ReLU; weighted sum over channels."""
    feat = feat.transpose(1, 2)
    feat = torch.cat([feat, prop.unsqueeze(1).repeat(1, feat.shape[1], 1)], dim=-1)
    y = F.relu(layer_norm(lin(feat, sd, f"{p}.input_proj.0"), sd, f"{p}.input_proj.1"))
    return (sd[f"{p}.weight"] * y).sum(1)


def official_features(sd, cond, heads):
    """The [image features, state] both vision networks feed their MLP: one image (compress) or two (num_img 2:
    compress1, compress2; the backbone shared), the latest image of the history (img_cond_steps 1)."""
    state = cond["state"].flatten(1)
    rgb = cond["rgb"][:, -1].float()
    if "compress1.weight" in sd:
        images = [rgb[:, :3], rgb[:, 3:]]
        feat = [official_spatial_emb(sd, f"compress{n + 1}", official_vit(sd, images[n], heads), state) for n in (0, 1)]
    else:
        feat = [official_spatial_emb(sd, "compress", official_vit(sd, rgb, heads), state)]
    return torch.cat([*feat, state], dim=-1)


def official_vision_diffusion_mlp(sd, x, t, cond, heads=4):
    time_dim = sd["time_embedding.1.weight"].shape[1]
    temb = lin(mish(lin(sinusoidal(t, time_dim), sd, "time_embedding.1")), sd, "time_embedding.3")
    h = torch.cat([x.flatten(1), temb, official_features(sd, cond, heads)], dim=-1)
    return residual_mlp(h, sd, "mlp_mean", mish).view(x.shape)


def official_gaussian_vision_mlp(sd, cond, horizon_steps, heads=4):
    mean = torch.tanh(residual_mlp(official_features(sd, cond, heads), sd, "mlp_mean", mish))
    std = torch.exp(0.5 * sd["logvar"].clamp(sd["logvar_min"], sd["logvar_max"]))
    return mean.view(len(mean), horizon_steps, -1), std


def official_vit_critic(sd, cond, heads=4):
    return residual_mlp(official_features(sd, cond, heads), sd, "Q1", mish).squeeze(-1)


# ---- our modules under the official names (written here from the official module tree) ------------------------
def official_names(ours):
    """Our VisionEncoder (under `encoder.`) and MLP state dict renamed to the official VisionDiffusionMLP /
    Gaussian_VisionMLP / ViTCritic names."""
    out = {}
    two = "encoder.compress.1.weight" in ours
    for key, value in ours.items():
        name = key
        for a, b in [
            ("encoder.patch_embed.0.", "backbone.vit.patch_embed.embed.0."),
            ("encoder.patch_embed.2.", "backbone.vit.patch_embed.embed.3."),
            ("encoder.pos_embed", "backbone.vit.pos_embed"),
            ("encoder.norm.", "backbone.vit.norm."),
            ("encoder.transformer.layers.", "backbone.vit.net."),
            (".self_attn.in_proj_weight", ".mha.qkv_proj.weight"),
            (".self_attn.in_proj_bias", ".mha.qkv_proj.bias"),
            (".self_attn.out_proj.", ".mha.out_proj."),
            (".norm1.", ".layer_norm1."),
            (".norm2.", ".layer_norm2."),
            ("encoder.compress.0.", "compress1." if two else "compress."),
            ("encoder.compress.1.", "compress2."),
            (".proj.", ".input_proj."),
        ]:
            name = name.replace(a, b)
        out[name] = value
    return out


def mlp_official_names(ours, src, dst):
    """Our ResidualMLP `src.{inp, blocks.i.{1,3}, out}` as the official ResidualMLP `dst.layers.{0, i.l1/l2, n+1}`."""
    mine = {k[len(src) + 1 :]: v for k, v in ours.items() if k.startswith(f"{src}.")}
    n = len({k.split(".")[1] for k in mine if k.startswith("blocks.")})
    out = {}
    for k, v in mine.items():
        part, *rest = k.split(".")
        if part == "inp":
            out[f"{dst}.layers.0.{rest[-1]}"] = v
        elif part == "out":
            out[f"{dst}.layers.{n + 1}.{rest[-1]}"] = v
        else:  # blocks.i.1 / blocks.i.3: the block's two Linears
            out[f"{dst}.layers.{int(rest[0]) + 1}.{'l1' if rest[1] == '1' else 'l2'}.{rest[-1]}"] = v
    return out


def pixel_batch(B=3, state_dim=5, cameras=1, size=96, seed=0, history=1):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (B, history, 3 * cameras, size, size), dtype=torch.uint8, generator=g)
    return dict(state=torch.randn(B, history, state_dim, generator=g), rgb=rgb)


def randomized(module, seed=0):
    """`module` with every parameter redrawn (LayerNorm and biases too), so no default init hides a swapped weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if p.dim() == 1 and p.shape[0] > 64 else 0.0))
    return module


VISION = dict(state_dim=5, cond_steps=1, image_shape=(3, 96, 96), embed_dim=16, depth=2, heads=4, spatial_dim=8)


# ---- forward passes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cameras, history", [(1, 1), (2, 1), (1, 2)])
def test_vision_diffusion_mlp_is_the_official_forward(cameras, history):
    """One camera, two (official num_img 2), and a history of two observations (the whole proprioception history,
    the latest image: official img_cond_steps 1)."""
    torch.manual_seed(0)
    vision = dict(VISION, image_shape=(3 * cameras, 96, 96), cond_steps=history)
    net = randomized(dppo.VisionDiffusionMLP(vision, 2, 4, 8, (32, 32, 32), "mish"))
    sd = official_names(net.state_dict()) | mlp_official_names(net.state_dict(), "mlp", "mlp_mean")
    x, t, cond = torch.randn(3, 4, 2), torch.tensor([0, 7, 99]), pixel_batch(cameras=cameras, history=history)
    expected = official_vision_diffusion_mlp(sd, x, t, cond)
    torch.testing.assert_close(net(x, t, cond), expected, rtol=1e-4, atol=1e-4)
    chunked = dppo.VisionDiffusionMLP(vision, 2, 4, 8, (32, 32, 32), "mish")
    chunked.load_state_dict(net.state_dict())
    chunked.encoder.chunk = 2  # a batch larger than the ViT's chunk goes through in pieces, to the same numbers
    torch.testing.assert_close(chunked(x, t, cond), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cameras", [1, 2])
def test_gaussian_vision_policy_is_the_official_forward(cameras):
    torch.manual_seed(1)
    vision = dict(VISION, image_shape=(3 * cameras, 96, 96))
    policy = gaussian_ppo.GaussianPolicy(5, 2, 4, 1, mlp_dims=(32, 32, 32), vision=vision, std_min=0.05, std_max=0.3)
    randomized(policy)
    sd = official_names(policy.state_dict()) | mlp_official_names(policy.state_dict(), "net", "mlp_mean")
    sd |= dict(logvar_min=torch.tensor(math.log(0.05**2)), logvar_max=torch.tensor(math.log(0.3**2)))
    cond = pixel_batch(cameras=cameras, seed=1)
    mean, std = policy(cond)
    expected_mean, expected_std = official_gaussian_vision_mlp(sd, cond, 4)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std, expected_std)


@pytest.mark.parametrize("module", SCRIPTS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_vision_critic_is_the_official_vit_critic(module):
    torch.manual_seed(2)
    critic = randomized(module.VisionCritic(dict(VISION, image_shape=(6, 96, 96)), dims=(16, 16, 16)))
    sd = official_names(critic.state_dict()) | mlp_official_names(critic.state_dict(), "net", "Q1")
    cond = pixel_batch(cameras=2, seed=2)
    torch.testing.assert_close(critic(cond), official_vit_critic(sd, cond), rtol=1e-4, atol=1e-4)


# ---- random shifts -------------------------------------------------------------------------------------------------
def official_random_shift(x, shift, pad):
    """RandomShiftsAug with given integer shifts (n, 2) in [0, 2 pad] (x, y): replicate pad, then grid_sample at the
    shifted pixel centres."""
    n, _, h, _ = x.shape
    x = F.pad(x, (pad,) * 4, "replicate")
    eps = 1.0 / (h + 2 * pad)
    arange = torch.linspace(-1.0 + eps, 1.0 - eps, h + 2 * pad)[:h]
    arange = arange.unsqueeze(0).repeat(h, 1).unsqueeze(2)
    grid = torch.cat([arange, arange.transpose(1, 0)], dim=2).unsqueeze(0).repeat(n, 1, 1, 1)
    grid = grid + shift.view(n, 1, 1, 2).float() * 2.0 / (h + 2 * pad)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def found_shift(image, shifted, pad):
    """The (x, y) shift in [-pad, pad] that turns `image` (C, H, W) into `shifted`: the padded crop that equals it."""
    padded = F.pad(image[None].float(), (pad,) * 4, "replicate")[0]
    h, w = image.shape[-2:]
    hits = [
        (dx, dy)
        for dy in range(-pad, pad + 1)
        for dx in range(-pad, pad + 1)
        if torch.equal(padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w], shifted.float())
    ]
    assert len(hits) == 1, hits
    return hits[0]


def test_random_shift_moves_each_image_by_at_most_pad_pixels_as_the_official_augmentation():
    pad = 4
    images = torch.randint(0, 256, (2, 20, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    shifted = vit.random_shift(images, pad, generator=torch.Generator().manual_seed(4))
    assert shifted.shape == images.shape and shifted.dtype == torch.uint8
    flat, flat_shifted = images.flatten(0, 1), shifted.flatten(0, 1)
    shifts = torch.tensor([found_shift(a, b, pad) for a, b in zip(flat, flat_shifted, strict=True)])
    assert shifts.abs().max() <= pad and {shifts.min().item(), shifts.max().item()} == {-pad, pad}
    assert len({tuple(s) for s in shifts.tolist()}) > 20  # the images move independently
    official = official_random_shift(flat.float(), shifts + pad, pad)
    torch.testing.assert_close(flat_shifted.float(), official, atol=1e-2, rtol=0)


def test_shift_images_moves_cameras_together_or_on_their_own():
    torch.manual_seed(5)
    obs = pixel_batch(B=40, cameras=2, size=16, seed=5)
    together = vit.shift_images(obs)["rgb"][:, 0]
    apart = vit.shift_images(obs, per_camera=True)["rgb"][:, 0]
    rgb = obs["rgb"][:, 0]
    same = [
        found_shift(rgb[i, :3], together[i, :3], 4) == found_shift(rgb[i, 3:], together[i, 3:], 4) for i in range(40)
    ]
    assert all(same)
    same = [found_shift(rgb[i, :3], apart[i, :3], 4) == found_shift(rgb[i, 3:], apart[i, 3:], 4) for i in range(40)]
    assert not all(same)
    assert torch.equal(vit.shift_images(obs)["state"], obs["state"])
    state_obs = torch.randn(3, 1, 5)
    assert vit.shift_images(state_obs) is state_obs  # a state observation: nothing to shift, nothing drawn


# ---- parameter counts: ours = the official modules' (their formula, with the official config dims) --------------
def linear_params(d_in, d_out):
    return d_in * d_out + d_out


def official_vit_params(embed=128, depth=1, patches=121):
    """VitEncoder(num_channel 3): PatchEmbed2 (conv 3->D 8x8, conv D->D 3x3), pos_embed, TransformerLayers, norm."""
    patch = 3 * embed * 64 + embed + embed * embed * 9 + embed
    layer = 4 * embed + linear_params(embed, 3 * embed) + linear_params(embed, embed)
    layer += linear_params(embed, 4 * embed) + linear_params(4 * embed, embed)
    return patch + patches * embed + depth * layer + 2 * embed


def official_spatial_emb_params(prop, proj=128, embed=128, patches=121):
    return linear_params(patches + prop, proj) + 2 * proj + embed * proj


def official_residual_mlp_params(dims):
    hidden = dims[1]
    return (
        linear_params(dims[0], hidden)
        + (len(dims) - 3) * linear_params(hidden, hidden)
        + linear_params(hidden, dims[-1])
    )


# (task, obs_dim, action_dim, Ta, num_img, diffusion mlp, Gaussian mlp): the official *_img.yaml dims
OFFICIAL_IMG = [
    ("lift", 9, 7, 4, 1, 512, 512),
    ("can", 9, 7, 4, 1, 512, 512),
    ("square", 9, 7, 4, 1, 768, 768),
    ("transport", 18, 14, 8, 2, 768, 768),
]


def official_counts(obs_dim, action_dim, ta, num_img, diffusion_mlp, gaussian_mlp):
    """(VisionDiffusionMLP, Gaussian_VisionMLP's trainable, ViTCritic) parameter counts of the official configs:
    time_dim 32, spatial_emb 128, ViT 128 x depth 1, residual MLPs of three equal widths, critic [256] x 3; the
    Gaussian's learned log-variance (learn_fixed_std), not its fixed logvar_min/logvar_max."""
    encoder = official_vit_params() + num_img * official_spatial_emb_params(obs_dim)
    features = 128 * num_img + obs_dim
    time = linear_params(32, 64) + linear_params(64, 32)
    chunk = ta * action_dim
    diffusion = encoder + time + official_residual_mlp_params([chunk + 32 + features] + [diffusion_mlp] * 3 + [chunk])
    gaussian = encoder + official_residual_mlp_params([features] + [gaussian_mlp] * 3 + [chunk]) + action_dim
    critic = encoder + official_residual_mlp_params([features, 256, 256, 256, 1])
    return diffusion, gaussian, critic


def count(module):
    return sum(p.numel() for p in module.parameters())


def pixel_networks(task):
    """The policies and critics the scripts build for `<task>-img` with their per-task defaults (task_defaults)."""
    env_id = f"{task}-img"
    state_dim, action_dim = envs.env_dims(env_id)
    image_shape = envs.IMAGE_TASKS[env_id].image_shape
    args = arguments.parse_args(dppo.Args, dppo.task_defaults, ["--env-id", env_id])
    kw = dppo.model_kwargs_from(args, state_dim, action_dim, image_shape)
    diffusion, diffusion_critic = dppo.build_policy_network(kw), dppo.build_critic(kw, args)
    args = arguments.parse_args(gaussian_ppo.Args, gaussian_ppo.task_defaults, ["--env-id", env_id])
    kw = gaussian_ppo.model_kwargs_from(args, state_dim, action_dim, args.fixed_std, image_shape=image_shape)
    gaussian, gaussian_critic = gaussian_ppo.GaussianPolicy(**kw), gaussian_ppo.build_critic(kw, args)
    return diffusion, gaussian, diffusion_critic, gaussian_critic


@pytest.mark.parametrize("task", OFFICIAL_IMG, ids=lambda t: t[0])
def test_pixel_networks_have_the_official_parameter_counts(task):
    name, obs_dim, action_dim, ta, num_img, diffusion_mlp, gaussian_mlp = task
    diffusion, gaussian, critic = official_counts(obs_dim, action_dim, ta, num_img, diffusion_mlp, gaussian_mlp)
    ours = pixel_networks(name)
    assert [count(n) for n in ours] == [diffusion, gaussian, critic, critic]
    # paper Table A10 (1.06M/1.03M on Lift and Can, 2.05M/1.93M on Transport); its Square column (1.06M/1.03M) is
    # the 512-wide MLP, the official Square configs use 768 (1.78M/1.73M)
    paper = dict(lift=(1.06, 1.03), can=(1.06, 1.03), square=(1.78, 1.73), transport=(2.05, 1.93))[name]
    assert (round(diffusion / 1e6, 2), round(gaussian / 1e6, 2)) == paper


# the official fine-tuning and pre-training values (cfg/robomimic/{finetune,pretrain}/<task>/*_mlp_img.yaml), per task:
# (n_steps, Ta, DPPO actor LR, DPPO minibatch x grad_accumulate, Gaussian actor LR, Gaussian minibatch x accumulate)
OFFICIAL_IMG_TRAINING = dict(
    lift=(300, 4, 5e-5, (500, 15), 1e-4, (1500, 5)),
    can=(300, 4, 5e-5, (500, 15), 1e-4, (1500, 5)),
    square=(400, 4, 1e-5, (500, 20), 1e-5, (1000, 10)),
    transport=(400, 8, 1e-5, (500, 20), 1e-5, (1000, 10)),
)


@pytest.mark.parametrize("task", list(OFFICIAL_IMG_TRAINING))
def test_pixel_task_defaults_are_the_official_configs(task, capsys):
    n_steps, ta, dppo_lr, dppo_batch, gaussian_lr, gaussian_batch = OFFICIAL_IMG_TRAINING[task]
    common = dict(n_steps=n_steps, act_steps=ta, horizon_steps=ta, gamma=0.999, num_envs=50, update_epochs=10)
    common |= dict(critic_lr=1e-3, n_critic_warmup_itr=2, target_kl=1.0, augment=True, vit_dim=128, vit_depth=1)
    common |= dict(vit_heads=4, spatial_emb=128, pretrain_batch_size=256, pretrain_lr=1e-4, pretrain_min_lr=1e-5)
    common |= dict(pretrain_epochs=2000, pretrain_weight_decay=1e-6)
    args = arguments.parse_args(dppo.Args, dppo.task_defaults, ["--env-id", f"{task}-img"])
    diffusion = dict(denoising_steps=100, ft_denoising_steps=5, ddim_steps=5, actor_lr=dppo_lr, ema_decay=0.995)
    diffusion |= dict(clip_ploss_coef=0.01, clip_ploss_coef_base=0.001, clip_ploss_coef_rate=3.0, gamma_denoising=0.99)
    diffusion |= dict(min_sampling_denoising_std=0.1, min_logprob_denoising_std=0.1, time_dim=32, activation="mish")
    for key, value in (common | diffusion).items():
        assert getattr(args, key) == value, (key, getattr(args, key), value)
    assert (args.batch_size, args.grad_accumulate) == dppo_batch
    assert f"[{task}-img] defaults for this task:" in capsys.readouterr().out  # shown at start, as the state tasks'
    args = arguments.parse_args(gaussian_ppo.Args, gaussian_ppo.task_defaults, ["--env-id", f"{task}-img"])
    gaussian = dict(actor_lr=gaussian_lr, clip_coef=0.01, fixed_std=0.1, std_min=0.01, std_max=0.2, ema_decay=None)
    for key, value in (common | gaussian).items():
        assert getattr(args, key) == value, (key, getattr(args, key), value)
    assert (args.batch_size, args.grad_accumulate) == gaussian_batch


# ---- gradient accumulation (official grad_accumulate) -------------------------------------------------------------
class RecordingSGD(torch.optim.SGD):
    """SGD with learning rate 0 that records the gradients it is asked to step with."""

    def __init__(self, module):
        super().__init__(module.parameters(), lr=0.0)
        self.module, self.steps = module, []

    def step(self, closure=None):
        self.steps.append(grads(self.module))
        return super().step(closure)


def test_gaussian_update_steps_with_the_summed_gradients_of_grad_accumulate_minibatches():
    policy, critic, batch = _gaussian_batch(n=15)
    args = gaussian_ppo.Args(batch_size=5, grad_accumulate=2, update_epochs=1, clip_coef=0.2, vf_coef=0.7)
    args.ent_coef, args.target_kl = 0.05, None
    actor_opt, critic_opt = RecordingSGD(policy), RecordingSGD(critic)
    gaussian_ppo.ppo_update(
        policy, critic, actor_opt, critic_opt, batch, args, generator=torch.Generator().manual_seed(7)
    )
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(7))

    def loss(idx):
        obs, actions = batch["obs"][idx], batch["actions"][idx]
        ratio = (gaussian_logp(policy, obs, actions) - batch["logprobs"][idx]).exp()
        pg = surrogate(normalized(batch["advantages"][idx]), ratio, 0.2).mean()
        _, std = policy(obs)
        ent = torch.distributions.Normal(torch.zeros_like(std), std).entropy().mean()
        return pg - 0.05 * ent + 0.7 * 0.5 * ((critic(obs) - batch["returns"][idx]) ** 2).mean()

    # minibatches 0 + 1 make the first step; the epoch's last minibatch (2) steps alone
    assert len(actor_opt.steps) == len(critic_opt.steps) == 2
    for step, minibatches in zip(actor_opt.steps, ([0, 1], [2]), strict=True):
        total = sum(loss(perm[5 * m : 5 * m + 5]) for m in minibatches)
        assert_grads_close(step, expected_grads(total, policy))
    for step, minibatches in zip(critic_opt.steps, ([0, 1], [2]), strict=True):
        total = sum(loss(perm[5 * m : 5 * m + 5]) for m in minibatches)
        assert_grads_close(step, expected_grads(total, critic))


@pytest.mark.usefixtures("stand_in_denoising_log_prob")
def test_dppo_update_steps_with_the_summed_gradients_of_grad_accumulate_minibatches():
    n, K_ft, act_steps = 8, 3, 2
    net, critic, batch, ft_t, _ = _dppo_batch(n=n, K_ft=K_ft, act_steps=act_steps)
    args = dppo.Args(batch_size=6, grad_accumulate=2, update_epochs=1, act_steps=act_steps, target_kl=None)
    args.clip_ploss_coef, args.clip_ploss_coef_base, args.gamma_denoising = 0.3, 0.3, 0.7
    actor_opt, critic_opt = RecordingSGD(net), RecordingSGD(critic)
    sched = dppo.make_schedule(6)
    dppo.ppo_update(
        net, net, critic, actor_opt, critic_opt, sched, batch, args, generator=torch.Generator().manual_seed(8)
    )
    perm = torch.randperm(n * K_ft, generator=torch.Generator().manual_seed(8))

    def loss(pairs):
        i, j = pairs // K_ft, pairs % K_ft
        x_in, x_out = batch["chains"][i, j], batch["chains"][i, j + 1]
        new = -((x_out - net.theta[ft_t[j]].view(-1, 1, 1) * x_in)[:, :act_steps] ** 2).mean(dim=(1, 2))
        ratio = (new - batch["logprobs"][i, j]).exp()
        adv = normalized(batch["advantages"][i]) * 0.7 ** (K_ft - 1 - j)
        v = 0.5 * ((critic(batch["obs"][i]) - batch["returns"][i]) ** 2).mean()
        return surrogate(adv, ratio, 0.3).mean() + 0.5 * v

    groups = ([0, 1], [2, 3])  # 24 pairs: four minibatches of 6, two steps
    assert len(actor_opt.steps) == len(critic_opt.steps) == 2
    for step_actor, step_critic, minibatches in zip(actor_opt.steps, critic_opt.steps, groups, strict=True):
        total = sum(loss(perm[6 * m : 6 * m + 6]) for m in minibatches)
        assert_grads_close(step_actor, expected_grads(total, net))
        assert_grads_close(step_critic, expected_grads(total, critic))


# ---- official pixel checkpoints (cleandppo/official.py) -----------------------------------------------------------
def prefixed(sd, prefix):
    return {f"{prefix}{k}": v for k, v in sd.items()}


def write_official(tmp_path, ckpt, state_dim, action_dim):
    """An official checkpoint with the official -img data folder's normalization.npz (state and actions) beside it."""
    lo = -1 - np.random.default_rng(0).random(state_dim)
    np.savez(
        tmp_path / "normalization.npz",
        obs_min=lo,
        obs_max=lo + 3,
        action_min=-np.ones(action_dim),
        action_max=np.ones(action_dim),
    )
    torch.save(ckpt, tmp_path / "state_10.pt")
    return str(tmp_path / "state_10.pt")


def official_diffusion_sd(seed, cameras=1, state_dim=9, action_dim=7, horizon=4):
    """A VisionDiffusionMLP's weights under the official names: a randomized network of the official module tree
    (ViT 16 wide, 2 layers; spatial embedding 8; time 8; MLP 32 x 3), renamed."""
    vision = dict(VISION, state_dim=state_dim, image_shape=(3 * cameras, 96, 96))
    net = randomized(dppo.VisionDiffusionMLP(vision, action_dim, horizon, 8, (32, 32, 32), "mish"), seed)
    return official_names(net.state_dict()) | mlp_official_names(net.state_dict(), "mlp", "mlp_mean")


def test_official_vision_diffusion_checkpoints_load_with_their_ema_or_fine_tuned_weights(tmp_path):
    ema, live = official_diffusion_sd(0), official_diffusion_sd(1)
    path = write_official(
        tmp_path, dict(epoch=10, model=prefixed(live, "network."), ema=prefixed(ema, "network.")), 9, 7
    )
    ckpt = envs.load_checkpoint(path, "diffusion", "lift-img", hints=dict(vit_heads=4))
    kw = ckpt["model_kwargs"]
    assert kw["vision"] == dict(VISION, state_dim=9) and kw["denoising_steps"] == 100  # official pixel K
    assert (kw["horizon_steps"], kw["time_dim"], kw["mlp_dims"], kw["obs_dim"]) == (4, 8, (32,) * 3, 9)
    net = dppo.build_policy_network(kw)
    net.load_state_dict(ckpt["model"])
    x, t, cond = torch.randn(3, 4, 7), torch.tensor([0, 50, 99]), pixel_batch(state_dim=9, seed=3)
    expected = official_vision_diffusion_mlp(ema, x, t, cond)  # the EMA, as official fine-tuning loads
    torch.testing.assert_close(net(x, t, cond), expected, rtol=1e-4, atol=1e-4)

    actor = official_diffusion_sd(2, cameras=2, state_dim=18, action_dim=14, horizon=8)
    actor_ft = official_diffusion_sd(3, cameras=2, state_dim=18, action_dim=14, horizon=8)
    fine_tuned = dict(itr=5, model=prefixed(actor, "actor.") | prefixed(actor_ft, "actor_ft."))
    (tmp_path / "ft").mkdir()
    path = write_official(tmp_path / "ft", fine_tuned, 18, 14)
    ckpt = envs.load_checkpoint(path, "diffusion", "transport-img", hints=dict(ft_denoising_steps=None))
    assert ckpt["ft_denoising_steps"] == 5 and ckpt["model_kwargs"]["vision"]["image_shape"] == (6, 96, 96)
    frozen, tuned = dppo.build_policy_network(ckpt["model_kwargs"]), dppo.build_policy_network(ckpt["model_kwargs"])
    frozen.load_state_dict(ckpt["model"])
    tuned.load_state_dict(ckpt["model_ft"])
    x, t, cond = torch.randn(2, 8, 14), torch.tensor([3, 60]), pixel_batch(B=2, state_dim=18, cameras=2, seed=4)
    torch.testing.assert_close(
        frozen(x, t, cond), official_vision_diffusion_mlp(actor, x, t, cond), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        tuned(x, t, cond), official_vision_diffusion_mlp(actor_ft, x, t, cond), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("learned_std", [False, True], ids=["pre-trained", "fine-tuned"])
def test_official_gaussian_vision_checkpoints_load(tmp_path, learned_std):
    torch.manual_seed(4)
    vision = dict(VISION, state_dim=9)
    policy = randomized(gaussian_ppo.GaussianPolicy(9, 7, 4, 1, mlp_dims=(32, 32, 32), vision=vision), 5)
    sd = official_names(policy.state_dict()) | mlp_official_names(policy.state_dict(), "net", "mlp_mean")
    sd = {k: v for k, v in sd.items() if not k.startswith("obs_")}  # our from-scratch statistics: not official
    sd |= dict(logvar_min=torch.tensor(math.log(0.01**2)), logvar_max=torch.tensor(math.log(0.2**2)))
    if learned_std:  # learn_fixed_std: the official fine-tuned policy under actor_ft.
        sd["logvar"] = torch.log(torch.linspace(0.05, 0.15, 7) ** 2)
        raw = dict(itr=3, model=prefixed(sd, "actor_ft."))
    else:  # pre-training: fixed_std 0.1, no logvar tensor
        del sd["logvar"]
        raw = dict(epoch=500, model=prefixed(sd, "network."), ema=prefixed(sd, "network."))
    path = write_official(tmp_path, raw, 9, 7)
    ckpt = envs.load_checkpoint(path, "gaussian", "lift-img", "mlp", hints=dict(fixed_std=0.1))
    loaded = gaussian_ppo.GaussianPolicy(**ckpt["model_kwargs"])
    loaded.load_state_dict(ckpt["model"], strict=False)
    cond = pixel_batch(state_dim=9, seed=6)
    mean, std = loaded(cond)
    expected_sd = sd if learned_std else dict(sd, logvar=torch.full((7,), math.log(0.1**2)))
    expected_mean, expected_std = official_gaussian_vision_mlp(expected_sd, cond, 4)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std, expected_std)


def test_official_pixel_and_state_checkpoints_for_the_other_kind_of_task_are_one_line(tmp_path):
    sd = official_diffusion_sd(0)
    path = write_official(tmp_path, dict(epoch=1, model=prefixed(sd, "network."), ema=prefixed(sd, "network.")), 9, 7)
    with pytest.raises(SystemExit) as e:
        envs.load_checkpoint(path, "diffusion", "lift")
    assert_one_line_error(str(e.value), "pixel policy", "--env-id lift-img")
    state_sd = {k: v for k, v in sd.items() if not k.startswith(("backbone.", "compress"))}
    (tmp_path / "state").mkdir()
    path = write_official(tmp_path / "state", dict(epoch=1, model=prefixed(state_sd, "network.")), 9, 7)
    with pytest.raises(SystemExit) as e:
        envs.load_checkpoint(path, "diffusion", "lift-img")
    assert_one_line_error(str(e.value), "state policy", "--env-id lift")


@pytest.mark.parametrize("name", ["gmm_ppo", "dawr", "drwr", "dipo", "idql", "dql", "qsm", "exact_likelihood_pg"])
def test_the_state_only_scripts_refuse_a_pixel_task_in_one_line(name, tmp_path):
    module = importlib.import_module(f"cleandppo.{name}")
    with pytest.raises(SystemExit) as e:
        run_main(module, "--env-id", "can-img", "--run-dir", tmp_path / "run")
    assert_one_line_error(str(e.value), "dppo.py and gaussian_ppo.py", "--env-id can")
    assert not (tmp_path / "run").exists()


# ---- the bundled pixel checkpoints: what --env-id <task>-img starts from --------------------------------------------
RESULTS = os.path.join(os.path.dirname(__file__), "..", "experiments/robomimic_pixels")
BUDGETS = {"lift": f"{RESULTS}/results_53c1f22/budgets.csv", "can": f"{RESULTS}/results_65f69c4/budgets.csv"}


# what each bundled pixel checkpoint's recipe was, and its row in the task's budgets.csv (policy, epochs, episodes,
# success)
BUNDLED_PIXELS = {
    ("lift", "diffusion"): (
        dict(pretrain_epochs=40, pretrain_lr=1e-3, pretrain_min_lr=1e-4),
        "diffusion lr 1e-3,40,50,0.28",
    ),
    ("lift", "gaussian"): (dict(pretrain_epochs=10, pretrain_lr=1e-4, pretrain_min_lr=1e-5), "gaussian,10,50,0.48"),
    ("can", "diffusion"): (
        dict(pretrain_epochs=40, pretrain_lr=1e-3, pretrain_min_lr=1e-4),
        "diffusion lr 1e-3,40,50,0.2,",
    ),
    ("can", "gaussian"): (dict(pretrain_epochs=30, pretrain_lr=1e-4, pretrain_min_lr=1e-5), "gaussian,30,50,0.34"),
}


@pytest.mark.parametrize("task, policy", list(BUNDLED_PIXELS))
def test_a_bundled_pixel_checkpoint_is_the_official_network_pre_trained_on_our_image_demos(task, policy):
    """The official network's size (counted from the official layers, Table A10: about 1.06M parameters for
    DPPO-ViT-MLP and 1.03M for Gaussian-ViT-MLP on Lift), the task's camera, the MH-like image demos it was
    pre-trained on, and its recipe, whose 50-episode success budgets.csv lists (every budget tried is there)."""
    env_id = f"{task}-img"
    ckpt = envs.load_checkpoint(envs.bundled_checkpoint(env_id, policy), policy, env_id)
    assert (ckpt["env_id"], ckpt["dataset"], ckpt["iteration"]) == (env_id, f"{task}-mhsim-img", 0)
    assert ckpt["robomimic_env_args"]["env_kwargs"]["camera_names"] == ["robot0_eye_in_hand"]
    recipe, budget = BUNDLED_PIXELS[task, policy]
    assert ckpt["pretrain_epochs"] == recipe["pretrain_epochs"]
    assert (ckpt["args"]["pretrain_lr"], ckpt["args"]["pretrain_min_lr"]) == (
        recipe["pretrain_lr"],
        recipe["pretrain_min_lr"],
    )
    if policy == "diffusion":
        net = dppo.build_policy_network(ckpt["model_kwargs"])
    else:
        net = gaussian_ppo.GaussianPolicy(**ckpt["model_kwargs"])
    net.load_state_dict(ckpt["model"])
    official = official_counts(*next(t for t in OFFICIAL_IMG if t[0] == task)[1:])
    assert count(net) == official[0 if policy == "diffusion" else 1]
    with open(BUDGETS[task]) as f:
        assert budget in f.read().replace('"', "")
