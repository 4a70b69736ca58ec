"""Pixel observations for the ViT policies of dppo.py and gaussian_ppo.py (paper 5.2, D.5): random-shift
augmentation and Hu et al.'s ViT encoder with its learned spatial embedding. One copy for both scripts, as the
official code keeps them in model/common/vit.py and model/common/modules.py: the encoder is not part of either
algorithm; each script builds its policy (DPPO-ViT-MLP, Gaussian-ViT-MLP) and its critic on it.

Observation batches are {"state": (B, To, Ds) float, "rgb": (B, To, C, H, W) uint8}, the cameras along C.
"""

import torch
import torch.nn as nn


def random_shift(images, pad=4, generator=None):
    """Random-shift augmentation (official RandomShiftsAug, model/common/modules.py): each image (..., C, H, W) moves
    by a whole number of pixels drawn uniformly from [-pad, pad], per image and axis, its border rows and columns
    repeated into the gap. The official code pads by replication and samples the shifted pixel centres bilinearly,
    which lands on these pixels exactly. Any dtype (uint8 stays uint8); the shape is kept."""
    *_, channels, height, width = images.shape
    flat = images.reshape(-1, channels, height, width)
    shift = torch.randint(-pad, pad + 1, (len(flat), 2), device=images.device, generator=generator)  # (x, y)
    rows = (torch.arange(height, device=images.device) + shift[:, 1:]).clamp(0, height - 1)  # (n, H) source rows
    cols = (torch.arange(width, device=images.device) + shift[:, :1]).clamp(0, width - 1)  # (n, W) source columns
    flat = flat.gather(2, rows[:, None, :, None].expand(-1, channels, -1, width))
    flat = flat.gather(3, cols[:, None, None, :].expand(-1, channels, height, -1))
    return flat.reshape(images.shape)


def shift_images(obs, per_camera=False):
    """A pixel observation batch with its images random-shifted (random_shift): all channels of an image together
    (official fine-tuning agents), or with `per_camera` each camera's three channels on their own (official
    pre-training, where the network shifts each camera's image before encoding it). A state observation (no images)
    comes back as it is, and no random number is drawn."""
    if not isinstance(obs, dict):
        return obs
    rgb = obs["rgb"]
    cameras = rgb.shape[-3] // 3 if per_camera else 1
    return dict(obs, rgb=random_shift(rgb.unflatten(-3, (cameras, -1))).flatten(-4, -3))


class SpatialEmbedding(nn.Module):
    """Hu et al.'s learned spatial embedding of the ViT output (official SpatialEmb, model/common/modules.py; paper
    D.5): each of the D channels, its values over the P patches with the proprioception appended, goes through
    Linear -> LayerNorm -> ReLU to `out_dim` features; a learned (D, out_dim) weight then sums over the channels.
    (B, P, D) patches and (B, Dp) proprioception -> (B, out_dim)."""

    def __init__(self, num_patches, patch_dim, prop_dim, out_dim):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(num_patches + prop_dim, out_dim), nn.LayerNorm(out_dim), nn.ReLU())
        self.weight = nn.Parameter(torch.randn(1, patch_dim, out_dim))  # N(0, 1), the official init

    def forward(self, patches, prop):
        channels = patches.transpose(1, 2)  # (B, D, P)
        rows = torch.cat([channels, prop[:, None, :].expand(-1, channels.shape[1], -1)], dim=-1)
        return (self.weight * self.proj(rows)).sum(dim=1)


class VisionEncoder(nn.Module):
    """Pixels and proprioception -> features (paper 5.2, D.5: the ViT of Hu et al.; official VitEncoder with the
    configs' embed_style embed2 and embed_norm 0, model/common/vit.py). Per camera (3 channels of the latest image,
    the official img_cond_steps 1): [0, 255] -> x / 255 - 0.5; patches from Conv(8x8, stride 4) -> ReLU ->
    Conv(3x3, stride 2) (96 x 96 pixels -> 11 x 11 = 121 patches of `embed_dim`); plus a learned position per patch;
    `depth` pre-norm Transformer layers (`heads` heads, GELU MLP of 4 x embed_dim); LayerNorm; then the camera's own
    SpatialEmbedding with the flat proprioception appended to every channel. The cameras share the ViT (official
    num_img 2). Output: [camera features..., proprioception], (B, cameras x spatial_dim + To x Ds)."""

    chunk = 1024  # images per ViT pass (memory only: values and log-probs of a whole rollout go through in pieces)

    def __init__(self, state_dim, cond_steps, image_shape, embed_dim=128, depth=1, heads=4, spatial_dim=128):
        super().__init__()
        channels, height, width = image_shape
        self.patch_embed = nn.Sequential(
            nn.Conv2d(3, embed_dim, 8, 4), nn.ReLU(), nn.Conv2d(embed_dim, embed_dim, 3, 2)
        )
        side = lambda n: ((n - 8) // 4 + 1 - 3) // 2 + 1  # noqa: E731 (the two convolutions' output size)
        num_patches = side(height) * side(width)
        self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, num_patches, embed_dim), std=0.02))
        layer = nn.TransformerEncoderLayer(
            embed_dim, heads, 4 * embed_dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        for name, p in self.transformer.named_parameters():  # timm's ViT init (official init_weights_vit_timm)
            if p.dim() == 2:
                nn.init.trunc_normal_(p, std=0.02)  # the Linear weights (attention in/out, MLP)
            elif "norm" not in name:
                nn.init.zeros_(p)  # their biases
        self.norm = nn.LayerNorm(embed_dim)
        prop_dim = state_dim * cond_steps
        self.compress = nn.ModuleList(
            SpatialEmbedding(num_patches, embed_dim, prop_dim, spatial_dim) for _ in range(channels // 3)
        )
        self.out_dim = len(self.compress) * spatial_dim + prop_dim

    def vit(self, images):
        """(n, 3, H, W) in [0, 255] -> (n, P, embed_dim) patch features."""
        x = self.patch_embed(images / 255.0 - 0.5).flatten(2).transpose(1, 2)
        return self.norm(self.transformer(x + self.pos_embed))

    def forward(self, obs):
        state = obs["state"].flatten(1)
        rgb = obs["rgb"][:, -1].float()  # (B, C, H, W), cameras along the channels
        features = []
        for camera, compress in enumerate(self.compress):
            images = rgb[:, 3 * camera : 3 * camera + 3]
            pieces = [self.vit(images[i : i + self.chunk]) for i in range(0, len(images), self.chunk)]
            features.append(compress(torch.cat(pieces), state))
        return torch.cat([*features, state], dim=-1)


def vision_kwargs(args, state_dim, image_shape):
    """A pixel task's VisionEncoder as checkpoints store it (model_kwargs["vision"]), from the --vit-* flags."""
    sizes = dict(embed_dim=args.vit_dim, depth=args.vit_depth, heads=args.vit_heads, spatial_dim=args.spatial_emb)
    return dict(state_dim=state_dim, cond_steps=args.cond_steps, image_shape=tuple(image_shape), **sizes)
