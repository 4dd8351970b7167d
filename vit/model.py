"""Vision Transformer (ViT) classifier with timm's keyword names and state-dict keys.

Every block is a `core_attention.TransformerBlock`; this file only adds what is image-shaped: the patch embedding,
the class/register tokens with their learned position table, pooling and the classifier head.

    image (B, C, H, W) -> patches (B, N, D) -> [cls | reg | patches] + pos (B, L, D) -> blocks -> norm -> pool -> head
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from core_attention import QuickGELU, TransformerBlock, init_weights, resample_pos_embed
from core_attention.config import ConfigMixin
from core_attention.io import load_safetensors, load_state_dict_checked, save_safetensors
from core_attention.stacks import drop_path_rates, run_block

log = logging.getLogger(__name__)

GlobalPool = Literal["token", "avg", ""]
# timm's names for the MLP activations the ViT can be built with (CLIP's OpenAI weights need quick_gelu).
ACT_LAYERS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


@dataclass
class ViTConfig(ConfigMixin):
    """Architecture of a `VisionTransformer`; field names and defaults are timm's (ViT-B/16 at 224 px).

    Args:
        img_size: Input image size (square int or [height, width]); must be divisible by patch_size.
        patch_size: Side of the square patches the image is cut into.
        in_chans: Image channels (3 for RGB, 1 for grayscale).
        num_classes: Classifier outputs; 0 leaves no head (forward returns pooled features).
        global_pool: How the token sequence becomes one vector: 'token' (class token), 'avg' (mean of the
            patch tokens, with fc_norm) or '' (no pooling: forward_head returns every token).
        embed_dim: Token width.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block (embed_dim must be divisible by it).
        mlp_ratio: MLP hidden width as a multiple of embed_dim.
        qkv_bias: Bias in the fused query/key/value projection.
        class_token: Prepend a learned class token.
        reg_tokens: Number of learned register tokens prepended after the class token ("ViTs need registers").
        no_embed_class: Position embeddings cover only the patches, not the class/register tokens (DeiT-3, DINOv2).
        init_values: LayerScale init value of each residual branch; None disables LayerScale.
        fc_norm: Put the final norm after pooling instead of before; None means "when global_pool is 'avg'" (timm).
        drop_rate: Dropout before the classifier head.
        pos_drop_rate: Dropout after adding position embeddings.
        proj_drop_rate: Dropout after the attention output projection and in the MLP.
        attn_drop_rate: Dropout on the attention weights.
        drop_path_rate: Stochastic depth of the last block; the rate grows linearly from 0 over the blocks.
        pre_norm: LayerNorm the tokens before the first block (`norm_pre`) and drop the patch projection's bias,
            as CLIP's image tower does (timm's `pre_norm`).
        act_layer: MLP activation, a key of `ACT_LAYERS` ('gelu', or 'quick_gelu' for OpenAI's CLIP weights).
        norm_eps: Epsilon of every LayerNorm (timm's ViTs 1e-6, CLIP's towers 1e-5).
    """

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: GlobalPool = "token"
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    init_values: float | None = None
    fc_norm: bool | None = None
    drop_rate: float = 0.0
    pos_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    pre_norm: bool = False
    act_layer: str = "gelu"
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):  # from JSON
            self.img_size = tuple(self.img_size)


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to embed_dim with one strided Conv2d."""

    def __init__(
        self, img_size: int | tuple[int, int], patch_size: int, in_chans: int, embed_dim: int, bias: bool = True
    ) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        bad = [f"{n} {s}" for n, s, p in zip(("height", "width"), self.img_size, self.patch_size) if s % p]
        if bad:
            raise ValueError(
                f"image size {self.img_size[0]}x{self.img_size[1]} is not divisible by the patch size {patch_size} "
                f"({', '.join(bad)}); use an img_size that is a multiple of {patch_size}, e.g. "
                f"{(self.img_size[0] // self.patch_size[0]) * self.patch_size[0] or self.patch_size[0]}"
            )
        self.in_chans = in_chans
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        expected = (self.in_chans, *self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}: resize the "
                "input, or build the model for this size (from_pretrained(..., img_size=...) resamples pos_embed)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class VisionTransformer(nn.Module):
    """ViT ("An Image is Worth 16x16 Words") with timm's keyword arguments and state-dict keys.

    A timm `VisionTransformer` state dict with the same configuration loads here with `strict=True` and gives
    the same logits. See `ViTConfig` for every argument.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: GlobalPool = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        reg_tokens: int = 0,
        no_embed_class: bool = False,
        init_values: float | None = None,
        fc_norm: bool | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pre_norm: bool = False,
        act_layer: str = "gelu",
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.config = ViTConfig(**{k: v for k, v in locals().items() if k in _CONFIG_FIELDS})
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '' (no pooling), got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs the class token: set class_token=True or global_pool='avg'")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if act_layer not in ACT_LAYERS:
            raise ValueError(f"act_layer must be one of {sorted(ACT_LAYERS)}, got {act_layer!r}")
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_reg_tokens = reg_tokens
        self.num_prefix_tokens = int(class_token) + reg_tokens
        self.has_class_token = class_token
        self.no_embed_class = no_embed_class
        self.grad_checkpointing = False
        # Normalisation and labels the weights expect (filled by data/loaders; saved by save_pretrained).
        self.pretrained_cfg: dict[str, Any] = {}

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=not pre_norm)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
        embed_len = num_patches if no_embed_class else num_patches + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_pre = nn.LayerNorm(embed_dim, eps=norm_eps) if pre_norm else nn.Identity()

        drop_path = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(
            *[
                TransformerBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    init_values=init_values,
                    drop_path=drop_path[i],
                    norm_eps=norm_eps,
                    act_layer=ACT_LAYERS[act_layer],
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if not use_fc_norm else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # ---- construction helpers -------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: ViTConfig | dict[str, Any]) -> VisionTransformer:
        cfg = ViTConfig.from_dict(config) if isinstance(config, dict) else config
        return cls(**dataclasses.asdict(cfg))

    def init_weights(self) -> None:
        """timm's default init: trunc-normal(0.02) linears and pos_embed, tiny class/register tokens."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        self.apply(init_weights)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that AdamW must not decay (norms and biases are excluded by their 1-D shape)."""
        return {"pos_embed", "cls_token", "reg_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups for layer-wise LR decay (timm's `param_groups_layer_decay` reads this)."""
        return dict(
            stem=r"^cls_token|reg_token|pos_embed|patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (less activation memory, ~30% more compute)."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: GlobalPool | None = None) -> None:
        """Replace the head with a freshly initialised one for `num_classes` (0 = no head)."""
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == "token" and not self.has_class_token:
                raise ValueError("global_pool='token' needs a class token; this model has none")
            self.global_pool = global_pool
            self.config.global_pool = global_pool
            self.config.fc_norm = not isinstance(self.fc_norm, nn.Identity)  # keep the norm placement
        self.num_classes = num_classes
        self.config.num_classes = num_classes
        ref = self.pos_embed
        self.head = (
            nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
            if num_classes > 0
            else nn.Identity()
        )
        if num_classes > 0:
            init_weights(self.head)
        self.head.train(self.training)
        self.pretrained_cfg.pop("class_names", None)

    # ---- forward -------------------------------------------------------------------------------------------

    def embed(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> token sequence (B, prefix + N, D) with position embeddings, before the blocks."""
        x = self.patch_embed(x)  # (B, N, D)
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(x.shape[0], -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        if self.no_embed_class:
            x = x + self.pos_embed  # the table covers only the patches
            if prefix:
                x = torch.cat(prefix + [x], dim=1)
        else:
            if prefix:
                x = torch.cat(prefix + [x], dim=1)
            x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> normalised tokens (B, prefix + N, D)."""
        x = self.norm_pre(self.embed(x))
        for block in self.blocks:
            x = run_block(block, x, checkpointing=self.grad_checkpointing)
        return self.norm(x)

    def pool(self, x: Tensor, pool_type: str | None = None) -> Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "token":
            return x[:, 0]
        if pool_type == "avg":
            return x[:, self.num_prefix_tokens :].mean(dim=1)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, L, D) -> logits (B, num_classes), or the pooled features (B, D) when pre_logits=True."""
        x = self.head_drop(self.fc_norm(self.pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def adapt_state_dict(
        self, state_dict: Mapping[str, Tensor], *, old_grid: tuple[int, int] | None = None
    ) -> dict[str, Tensor]:
        """Fit a ViT state dict to this model: resample `pos_embed` to its grid (bicubic, antialiased, like timm) and
        replace a classifier head of another size by the model's fresh head (logged). Everything else is left for
        the strict load to check. `old_grid` is the checkpoint's patch grid (h, w); None assumes a square grid."""
        sd = {k: v for k, v in state_dict.items() if not k.startswith("pre_logits.")}  # unused in timm's ViTs too
        pos = sd.get("pos_embed")
        ckpt_prefix = int("cls_token" in sd) + (sd["reg_token"].shape[1] if "reg_token" in sd else 0)
        same_tokens = ckpt_prefix == self.num_prefix_tokens  # else the strict load names the missing/extra tokens
        if pos is not None and pos.dim() == 3 and pos.shape[-1] == self.pos_embed.shape[-1] and same_tokens:
            prefix = 0 if self.no_embed_class else self.num_prefix_tokens
            new_grid = self.patch_embed.grid_size
            n_grid = pos.shape[1] - prefix
            if old_grid is None:
                side = math.isqrt(max(n_grid, 0))
                if pos.shape[1] == self.pos_embed.shape[1]:
                    old_grid = new_grid  # same number of positions: assume the same grid, as timm does
                elif side * side == n_grid:
                    old_grid = (side, side)
                else:
                    raise ValueError(
                        f"the checkpoint's pos_embed has {n_grid} patch positions, not a square grid: "
                        "pass old_grid=(h, w), the patch grid of the image size it was trained at"
                    )
            if tuple(old_grid) != new_grid:
                sd["pos_embed"] = resample_pos_embed(pos, new_grid, tuple(old_grid), num_prefix_tokens=prefix)
                log.info(
                    "resampled pos_embed from the checkpoint's %dx%d patch grid to the model's %dx%d",
                    *old_grid,
                    *new_grid,
                )

        own_head = self.head.state_dict()
        ckpt_head = {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
        n_ckpt = ckpt_head["weight"].shape[0] if "weight" in ckpt_head else 0
        if ckpt_head and n_ckpt != self.num_classes:  # a head of the right size but wrong width is a config mismatch
            log.warning(
                "dropping the checkpoint's classifier head (%d classes): the model has num_classes=%d, so its head "
                "keeps its fresh initialisation and needs training",
                n_ckpt,
                self.num_classes,
            )
            sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
            sd.update({f"head.{k}": v for k, v in own_head.items()})
        elif not ckpt_head and own_head:
            log.warning(
                "the checkpoint has no classifier head: the model's %d-class head keeps its fresh initialisation",
                self.num_classes,
            )
            sd.update({f"head.{k}": v for k, v in own_head.items()})
        return sd

    # ---- our own weights -----------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `model.safetensors` (weights + config in its header) and a readable `config.json` to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "architecture": "VisionTransformer",
            "config": self.config.to_dict(),
            "pretrained_cfg": self.pretrained_cfg,
        }
        save_safetensors(directory / WEIGHTS_NAME, self.state_dict(), config)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> VisionTransformer:
        """Load a model written by `save_pretrained` (a directory or its `model.safetensors`).

        `overrides` change config fields: another `img_size` resamples pos_embed, another `num_classes`
        drops the saved head (logged), anything else must match the weights.
        """
        path = Path(path)
        file = path / WEIGHTS_NAME if path.is_dir() else path
        state_dict, meta = load_safetensors(file)
        if "config" not in meta:
            raise ValueError(
                f"{file} has no ViT config in its header (not written by save_pretrained?); for a timm checkpoint "
                "build the model yourself and use vit.load_timm_weights(model, path)"
            )
        config = ViTConfig.from_dict({**meta["config"], **overrides})
        model = cls.from_config(config)
        old_grid = PatchEmbed(meta["config"]["img_size"], meta["config"]["patch_size"], 1, 1).grid_size
        state_dict = model.adapt_state_dict(state_dict, old_grid=old_grid)  # the same rules as for timm weights
        load_state_dict_checked(model, state_dict, source=str(file))
        model.pretrained_cfg = dict(meta.get("pretrained_cfg") or {})
        if config.num_classes != meta["config"]["num_classes"]:
            model.pretrained_cfg.pop("class_names", None)
        return model


_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ViTConfig)}
