"""The VQGAN of DALL·E Mini / Mega (taming-transformers' f16 model, 16384 codes; Esser et al. 2021).

Images (B, 3, 256, 256) in [0, 1] <-> codes (B, 16, 16) in [0, 16384). The decoder turns codes into pixels; the
encoder (present in the flax weights, absent from min-dalle's `detoker.pt`) turns an image into codes, so the top
rows of a user's image can prime generation. Convolutional ResNet blocks with GroupNorm + swish; the attention blocks
at 16 x 16 px are single-head `core_attention.MultiHeadAttention` over the pixels of the feature map.

Parameter names follow taming's (`encoder.down.0.block.1.conv1`, `decoder.up.4.attn.2`, `quantize.embedding`), except
that an attention block's q / k / v 1x1 convolutions are one `attn.qkv` linear and `proj_out` is `attn.proj`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from core_attention import MultiHeadAttention
from core_attention.config import ConfigMixin

__all__ = ["ARCHITECTURE", "VQGAN", "VQGANConfig"]

ARCHITECTURE = "vqgan"


@dataclass
class VQGANConfig(ConfigMixin):
    """taming's VQGAN hyper-parameters; the defaults are `dalle-mini/vqgan_imagenet_f16_16384`."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 256
    channels: int = 3
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 16384
    num_groups: int = 32
    norm_eps: float = 1e-6  # flax / taming; min-dalle's torch port runs GroupNorm's default 1e-5
    has_encoder: bool = True  # min-dalle's detoker.pt holds the decoder only

    def __post_init__(self) -> None:
        self.ch_mult, self.attn_resolutions = tuple(self.ch_mult), tuple(self.attn_resolutions)

    @property
    def grid_size(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)


class ResnetBlock(nn.Module):
    def __init__(self, c: VQGANConfig, n_in: int, n_out: int) -> None:
        super().__init__()
        norm = partial(nn.GroupNorm, c.num_groups, eps=c.norm_eps)
        self.norm1, self.conv1 = norm(n_in), nn.Conv2d(n_in, n_out, 3, padding=1)
        self.norm2, self.conv2 = norm(n_out), nn.Conv2d(n_out, n_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """x + attention over the H * W pixels (one head, C channels) of GroupNorm(x)."""

    def __init__(self, c: VQGANConfig, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(c.num_groups, channels, eps=c.norm_eps)
        self.attn = MultiHeadAttention(channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, ch, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H * W, C)
        return x + self.attn(tokens).transpose(1, 2).reshape(b, ch, h, w)


class Level(nn.Module):
    """One resolution: ResNet blocks (each followed by attention at the attention resolutions), then a resampler."""

    def __init__(self, c: VQGANConfig, n_in: int, n_out: int, n_blocks: int, attention: bool, resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c, n_in if i == 0 else n_out, n_out) for i in range(n_blocks))
        self.attn = nn.ModuleList(AttnBlock(c, n_out) for _ in range(n_blocks)) if attention else None
        self.resample = resample
        if resample is not None:  # named as in taming: `upsample` / `downsample`
            self.add_module(f"{resample}sample", Resample(n_out, up=resample == "up"))

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn is not None:
                x = self.attn[i](x)
        return getattr(self, f"{self.resample}sample")(x) if self.resample is not None else x


class Resample(nn.Module):
    """Nearest x2 upsampling then a 3x3 conv, or a stride-2 3x3 conv after padding right and bottom (taming's)."""

    def __init__(self, channels: int, *, up: bool) -> None:
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1 if up else 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.up:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Mid(nn.Module):
    def __init__(self, c: VQGANConfig, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, channels, channels)
        self.attn_1 = AttnBlock(c, channels)
        self.block_2 = ResnetBlock(c, channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in (1,) + c.ch_mult]
        last = len(c.ch_mult) - 1
        self.conv_in = nn.Conv2d(c.channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level(
                c,
                widths[i],
                widths[i + 1],
                c.num_res_blocks,
                c.resolution >> i in c.attn_resolutions,
                "down" if i < last else None,
            )
            for i in range(len(c.ch_mult))
        )
        self.mid = Mid(c, widths[-1])
        self.norm_out = nn.GroupNorm(c.num_groups, widths[-1], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(widths[-1], c.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class Decoder(nn.Module):
    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        last = len(c.ch_mult) - 1
        self.conv_in = nn.Conv2d(c.z_channels, widths[-1], 3, padding=1)
        self.mid = Mid(c, widths[-1])
        # Stored lowest resolution last (taming's order); run from up[last] to up[0].
        self.up = nn.ModuleList(
            Level(
                c,
                widths[min(i + 1, last)],
                widths[i],
                c.num_res_blocks + 1,
                c.resolution >> i in c.attn_resolutions,
                "up" if i > 0 else None,
            )
            for i in range(len(c.ch_mult))
        )
        self.norm_out = nn.GroupNorm(c.num_groups, widths[0], eps=c.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], c.channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Quantize(nn.Module):
    def __init__(self, c: VQGANConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(c.n_embed, c.embed_dim)

    def forward(self, z: Tensor) -> Tensor:
        """(B, D, h, w) -> ids (B, h, w) of the nearest codes (L2)."""
        flat = z.permute(0, 2, 3, 1)  # (B, h, w, D)
        e = self.embedding.weight
        dist = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(-1)  # (B, h, w, K)
        return dist.argmin(-1)


class VQGAN(nn.Module):
    """`encode(images) -> ids (B, h, w)`, `decode(ids) -> images`; the same surface as `DiscreteVAE` for sampling."""

    def __init__(self, config: VQGANConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = c = config if config is not None else VQGANConfig(**kwargs)
        if c.has_encoder:
            self.encoder = Encoder(c)
            self.quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, 1)
        self.quantize = Quantize(c)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)
        self.decoder = Decoder(c)

    # The attributes generation code reads from an image tokenizer.
    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @property
    def image_size(self) -> int:
        return self.config.resolution

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def num_tokens(self) -> int:
        return self.config.n_embed

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> ids (B, h, w)."""
        if not self.config.has_encoder:
            raise ValueError(
                "these VQGAN weights have no encoder (min-dalle's detoker.pt is decoder-only): load the "
                "flax weights of dalle-mini/vqgan_imagenet_f16_16384 to prime with an image"
            )
        x = images.to(self.post_quant_conv.weight.dtype)
        return self.quantize(self.quant_conv(self.encoder(x)))

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """ids (B, h, w) or (B, h * w) -> images (B, 3, H, W) in [0, 1], float32."""
        g = self.grid_size
        ids = ids.reshape(ids.shape[0], g, g).to(self.post_quant_conv.weight.device)
        if ids.min() < 0 or ids.max() >= self.num_tokens:
            raise ValueError(f"VQGAN ids must be in [0, {self.num_tokens}), got [{ids.min()}, {ids.max()}]")
        z = self.quantize.embedding(ids).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decoder(self.post_quant_conv(z)).float().clamp(0.0, 1.0)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"architecture": ARCHITECTURE, **self.config.to_dict()}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> VQGAN:
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        if config.get("architecture") != ARCHITECTURE:
            raise ValueError(
                f"{directory}/config.json is not a {ARCHITECTURE} config (architecture {config.get('architecture')!r})"
            )
        with torch.device("meta"):
            model = cls(VQGANConfig.from_dict(config))
        model.load_state_dict(load_file(directory / "model.safetensors", device=str(device)), strict=True, assign=True)
        return model.eval()
