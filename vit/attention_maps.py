"""Where a ViT looks: per-layer/per-head attention weights, attention rollout, and PNG overlays.

The weights come from each core block's eager attention path (`TransformerBlock.attention_weights`); nothing here
computes attention itself. Rollout follows Abnar & Zuidema (2020): average the heads, add the identity for the
residual connection, renormalise the rows and multiply through the layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .model import VisionTransformer


@torch.no_grad()
def attention_maps(model: VisionTransformer, images: Tensor) -> list[Tensor]:
    """Self-attention weights of every block for images (B, C, H, W): a list of `depth` tensors (B, heads, L, L).

    Token order is [class token][register tokens][patches in row-major order]; rows sum to 1.
    """
    x = model.norm_pre(model.embed(images))
    maps = []
    for block in model.blocks:
        maps.append(block.attention_weights(x))
        x = block(x)
    return maps


def attention_rollout(maps: list[Tensor], *, head_fusion: str = "mean", residual: float = 0.5) -> Tensor:
    """Attention rollout (B, L, L): how much each output token draws on each input token through all layers.

    Each layer's heads are fused (`mean`, `max` or `min`), mixed with the identity (`residual` weight of the skip
    connection) and renormalised, so every row of the result sums to 1.
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one layer's attention maps")
    fuse = {"mean": lambda a: a.mean(1), "max": lambda a: a.amax(1), "min": lambda a: a.amin(1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion must be one of {sorted(fuse)}, got {head_fusion!r}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    eye = torch.eye(maps[0].shape[-1], dtype=torch.float64, device=maps[0].device)
    rollout = eye.expand(maps[0].shape[0], -1, -1)
    for a in maps:
        a = (1.0 - residual) * fuse[head_fusion](a.double()) + residual * eye  # (B, L, L)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    return rollout.float()


def patch_attention(model: VisionTransformer, matrix: Tensor) -> Tensor:
    """Reduce an attention matrix (B, L, L) to a patch-grid heat map (B, gh, gw) in [0, 1].

    Uses the class token's row when the model has one, otherwise the mean over the patch tokens' rows;
    prefix (class/register) columns are dropped.
    """
    p = model.num_prefix_tokens
    rows = matrix[:, 0] if model.has_class_token else matrix[:, p:].mean(dim=1)  # (B, L)
    gh, gw = model.patch_embed.grid_size
    grid = rows[:, p:].reshape(-1, gh, gw)
    lo = grid.flatten(1).amin(1)[:, None, None]
    hi = grid.flatten(1).amax(1)[:, None, None]
    return (grid - lo) / (hi - lo).clamp_min(1e-12)


def overlay(image: Image.Image, heat: Tensor, *, alpha: float = 0.5, cmap: str = "inferno") -> Image.Image:
    """Blend a (gh, gw) heat map in [0, 1], upsampled to the image's own size, over the image (RGB result)."""
    import matplotlib

    w, h = image.size
    up = F.interpolate(heat[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    colored = matplotlib.colormaps[cmap](up.clamp(0, 1).numpy())[..., :3]  # (h, w, 3) in [0, 1]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * colored
    return Image.fromarray((blended * 255.0).round().clip(0, 255).astype(np.uint8))


def save_attention_overlay(
    model: VisionTransformer,
    image: Image.Image,
    pixels: Tensor,
    out: str | Path,
    *,
    layer: int | None = None,
    head: int | None = None,
    head_fusion: str = "mean",
    alpha: float = 0.5,
) -> dict[str, Tensor]:
    """Save the attention of `model` for one image as a PNG overlay at the image's own size and aspect.

    `pixels` (C, H, W) is the preprocessed image. `layer=None` shows the rollout over all layers; otherwise that
    layer's attention, of one `head` or (head=None) fused over the heads with `head_fusion`.
    Returns {'maps': per-layer (1, heads, L, L) stacked to (depth, heads, L, L), 'rollout': (L, L), 'heat': (gh, gw)}.
    """
    model.eval()
    maps = attention_maps(model, pixels[None])
    rollout = attention_rollout(maps, head_fusion=head_fusion)
    if layer is None:
        matrix = rollout
    else:
        depth = len(maps)
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} out of range: the model has {depth} layers (0..{depth - 1})")
        a = maps[layer]
        if head is not None:
            if not 0 <= head < a.shape[1]:
                raise ValueError(
                    f"head {head} out of range: layer {layer} has {a.shape[1]} heads (0..{a.shape[1] - 1})"
                )
            matrix = a[:, head]
        else:
            matrix = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]
    heat = patch_attention(model, matrix)[0]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, heat, alpha=alpha).save(out, format="PNG")
    return {"maps": torch.cat(maps), "rollout": rollout[0], "heat": heat}
