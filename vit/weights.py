"""Load timm ViT weights: a timm model, its `state_dict()`, a `.safetensors`/`.pth` file, or a timm model name.

The keys already match (see `vit.model`); what needs adapting is the wrapping of some checkpoint files, the
position table when the image size differs, and the classifier head when the number of classes differs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from core_attention.io import load_checkpoint, load_safetensors, load_state_dict_checked

from .model import VisionTransformer, ViTConfig

log = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "model", "state_dict", "module")  # common checkpoint layouts
_PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, Lightning-style, torch.compile


def read_state_dict(source: str | Path | Mapping[str, Tensor] | nn.Module) -> dict[str, Tensor]:
    """A plain {name: tensor} dict from a timm model, a state dict, or a `.safetensors` / `.pth` / `.pt` / `.bin` file.

    Files are read without unpickling code (`safetensors`, or `torch.load(weights_only=True)`). Checkpoints that
    wrap the weights (`{'model': ...}`, `{'state_dict': ...}`) or prefix them (`module.`) are unwrapped.
    """
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        sd: Mapping[str, Any] = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist")
        if path.suffix == ".safetensors":
            sd = load_safetensors(path)[0]
        elif path.suffix == ".npz":
            raise ValueError(
                f"{path}: original JAX .npz checkpoints are not supported; load them with timm and pass the model"
            )
        else:
            sd = load_checkpoint(path)
    for key in _WRAPPER_KEYS:  # unwrap one level of nesting, preferring EMA weights as timm does
        if key in sd and isinstance(sd[key], Mapping):
            log.info("reading the weights under the checkpoint's %r key", key)
            sd = sd[key]
            break
    sd = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if any(k.startswith("model.") for k in sd) and any(k.startswith("ema.module.") for k in sd):
        log.info("reading the EMA weights of a `python -m vit fit` checkpoint")  # our own Lightning checkpoints
        sd = {k[len("ema.module.") :]: v for k, v in sd.items() if k.startswith("ema.module.")}
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if not sd:
        raise ValueError(f"no tensors found in {source if not isinstance(source, Mapping) else 'the given state dict'}")
    return sd


def load_timm_weights(
    model: VisionTransformer,
    source: str | Path | Mapping[str, Tensor] | nn.Module,
    *,
    old_grid: tuple[int, int] | None = None,
) -> VisionTransformer:
    """Load timm ViT weights into `model` (strictly: every other key and shape must match the config).

    `source`: a timm model, its state dict, a `.safetensors`/`.pth` file, or `"timm:<model name>"` (downloads
    the pretrained weights through `timm.create_model(name, pretrained=True)`; needs network access).
    """
    if isinstance(source, str) and source.startswith("timm:"):
        source = _create_timm(source[len("timm:") :], pretrained=True)
    if isinstance(source, nn.Module) and old_grid is None and hasattr(source, "patch_embed"):
        old_grid = tuple(source.patch_embed.grid_size)
        _copy_pretrained_cfg(source, model)
    sd = model.adapt_state_dict(read_state_dict(source), old_grid=old_grid)
    load_state_dict_checked(
        model, sd, source=f"timm checkpoint {source}" if isinstance(source, (str, Path)) else "timm checkpoint"
    )
    return model


def config_from_timm(timm_model: nn.Module, **overrides: Any) -> ViTConfig:
    """The `ViTConfig` of a timm `VisionTransformer` instance (raises on timm options this ViT does not have)."""
    m = timm_model
    unsupported = []
    block = m.blocks[0]
    pre_norm = not isinstance(m.norm_pre, nn.Identity)
    act = {"GELU": "gelu", "QuickGELU": "quick_gelu"}.get(type(block.mlp.act).__name__)
    if act is None:
        unsupported.append(f"activation {type(block.mlp.act).__name__}")
    if getattr(m, "attn_pool", None) is not None:
        unsupported.append(f"global_pool={m.global_pool!r}")
    if getattr(m, "dynamic_img_size", False):
        unsupported.append("dynamic_img_size")
    if not isinstance(block.attn.q_norm, nn.Identity):
        unsupported.append("qk_norm")
    if m.pos_embed is None:
        unsupported.append("pos_embed=None")
    if type(block).__name__ != "Block" or type(block.attn).__name__ != "Attention":
        unsupported.append(f"block type {type(block).__name__}/{type(block.attn).__name__}")
    if (m.patch_embed.proj.bias is None) != pre_norm:  # timm ties them as we do (CLIP's layout)
        unsupported.append(f"patch embedding {'without' if pre_norm else 'with'} bias and pre_norm={pre_norm}")
    if not isinstance(block.norm1, nn.LayerNorm) or type(block.mlp).__name__ != "Mlp":
        unsupported.append(f"{type(block.norm1).__name__} norm / {type(block.mlp).__name__} MLP")
    if unsupported:
        raise ValueError(
            f"this timm model uses options vit.VisionTransformer does not implement: {', '.join(unsupported)}"
        )
    if isinstance(m.fc_norm, nn.Identity) and isinstance(m.norm, nn.Identity):
        raise ValueError("this timm model has final_norm=False, which vit.VisionTransformer does not implement")
    ls = block.ls1
    has_fc_norm = not isinstance(m.fc_norm, nn.Identity)
    cfg = ViTConfig(
        img_size=tuple(m.patch_embed.img_size),
        patch_size=m.patch_embed.patch_size[0],
        in_chans=m.patch_embed.proj.in_channels,
        num_classes=m.num_classes,
        global_pool=m.global_pool,
        embed_dim=m.embed_dim,
        depth=len(m.blocks),
        num_heads=block.attn.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / m.embed_dim,
        qkv_bias=block.attn.qkv.bias is not None,
        class_token=m.cls_token is not None,
        reg_tokens=m.num_reg_tokens,
        no_embed_class=m.no_embed_class,
        init_values=float(f"{float(ls.gamma.detach().flatten()[0]):.6g}") if hasattr(ls, "gamma") else None,
        fc_norm=None if has_fc_norm == (m.global_pool == "avg") else has_fc_norm,
        pre_norm=pre_norm,
        act_layer=act or "gelu",
        norm_eps=block.norm1.eps,
    )
    if cfg.img_size[0] == cfg.img_size[1]:
        cfg.img_size = cfg.img_size[0]
    if m.patch_embed.patch_size[0] != m.patch_embed.patch_size[1]:
        raise ValueError(f"non-square patches {m.patch_embed.patch_size} are not supported")
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise ValueError(f"unknown ViT config key {k!r}")
        setattr(cfg, k, v)
    return cfg


def from_timm(model_or_name: str | nn.Module, *, pretrained: bool = True, **overrides: Any) -> VisionTransformer:
    """Our `VisionTransformer` with the configuration and weights of a timm ViT.

    `model_or_name`: a timm model instance, or a timm model name for `timm.create_model(name, pretrained=...)`
    (pretrained weights need network access the first time). `overrides` change config fields, e.g.
    `num_classes=10` (the pretrained head is dropped, logged) or `img_size=384` (pos_embed is resampled).
    """
    timm_model = _create_timm(model_or_name, pretrained=pretrained) if isinstance(model_or_name, str) else model_or_name
    model = VisionTransformer.from_config(config_from_timm(timm_model, **overrides))
    return load_timm_weights(model, timm_model)


def _create_timm(name: str, *, pretrained: bool) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained)
    except RuntimeError as err:
        raise RuntimeError(
            f"timm.create_model({name!r}, pretrained={pretrained}) failed (offline? unknown name?): {err}"
        ) from err


def _copy_pretrained_cfg(timm_model: nn.Module, model: VisionTransformer) -> None:
    cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    for key in ("mean", "std", "interpolation", "crop_pct"):
        if key in cfg:
            model.pretrained_cfg[key] = list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]
