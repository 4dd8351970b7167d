"""Discrete VAE: the image tokenizer of DALL·E (stage 1).

images (B, 3, H, W) in [0, 1] --encoder--> logits (B, K, H/f, W/f) over a codebook of K tokens
--gumbel-softmax / argmax--> codes --decoder--> logit-Laplace parameters (B, 2*3, H, W) --> images.

Two architectures share one class and one contract:

- ``architecture="dalle"``: our own residual conv encoder/decoder in the same layout (the default): full-width
  3x3 convs with GroupNorm + SiLU before each, which trains several times faster at small sizes than OpenAI's
  un-normalised ReLU blocks.
- ``architecture="openai"``: OpenAI's released dVAE (the ``dall_e`` package) with the same module and
  parameter names (``blocks.group_1.block_1.res_path.conv_1.w`` ...), so its ``Encoder``/``Decoder``
  state dicts load with ``strict=True`` into ``vae.encoder`` / ``vae.decoder`` and give the same
  token ids and the same images.

Weights are saved and loaded as safetensors (``save_pretrained`` / ``from_pretrained``); nothing here unpickles.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from core_attention.config import ConfigMixin

__all__ = [
    "LOGIT_LAPLACE_EPS",
    "DVAEConfig",
    "DVAEOutput",
    "DiscreteVAE",
    "map_pixels",
    "unmap_pixels",
    "logit_laplace_nll",
    "kl_to_uniform",
    "gumbel_softmax",
    "config_from_state_dict",
]

LOGIT_LAPLACE_EPS = 0.1

Architecture = Literal["dalle", "openai"]
ReconLoss = Literal["logit_laplace", "mse"]


# ----------------------------------------------------------------------------------------------------
# Pixels and losses
# ----------------------------------------------------------------------------------------------------


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[0, 1] -> [eps, 1 - eps]: keeps the logit-Laplace density away from the infinite logits at 0 and 1."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Inverse of :func:`map_pixels`, clamped to [0, 1]."""
    return torch.clamp((x - eps) / (1 - 2 * eps), 0, 1)


def logit_laplace_nll(x_mapped: torch.Tensor, mu: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-element negative log-likelihood (nats) of the logit-Laplace distribution (DALL·E, eq. 2).

    ``f(x | mu, b) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x))`` for x in (0, 1); ``x_mapped`` must already
    lie in [eps, 1 - eps] (see :func:`map_pixels`). ``mu`` and ``log_scale = ln b`` are the decoder's two
    outputs per channel. The ``log x(1-x)`` term does not depend on the model but keeps this an honest density.
    """
    x = x_mapped.float()
    mu, log_scale = mu.float(), log_scale.float()
    logit_x = torch.log(x) - torch.log1p(-x)
    return (logit_x - mu).abs() * torch.exp(-log_scale) + log_scale + math.log(2.0) + torch.log(x) + torch.log1p(-x)


def gumbel_softmax(logits: torch.Tensor, temperature: float, hard: bool = False, dim: int = 1) -> torch.Tensor:
    """Relaxed one-hot sample (Jang et al.; Maddison et al.). With ``hard`` the forward value is the one-hot argmax
    and the gradient is the relaxed sample's (straight-through). Same as ``F.gumbel_softmax``, but the noise
    ``-log(-log u)`` comes from ``rand`` (several times faster on CPU than ``exponential_``)."""
    u = torch.rand_like(logits, dtype=torch.float32).clamp_(torch.finfo(torch.float32).tiny, 1.0 - 2**-24)
    gumbels = -torch.log(-torch.log(u))
    soft = F.softmax((logits.float() + gumbels) / temperature, dim=dim)
    if not hard:
        return soft
    index = soft.argmax(dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return one_hot - soft.detach() + soft


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q || uniform over K) per position, with q = softmax(logits). Shape: logits without ``dim``."""
    log_q = F.log_softmax(logits.float(), dim=dim)
    return (log_q.exp() * log_q).sum(dim) + math.log(logits.shape[dim])


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


@dataclass
class DVAEConfig(ConfigMixin):
    """Architecture of a :class:`DiscreteVAE`; saved with the weights.

    Args:
        architecture: 'dalle' (this project's compact encoder/decoder) or 'openai' (the layout of OpenAI's released
            dall_e dVAE, so its converted weights load).
        image_size: side of the square images, in pixels (divisible by downsample).
        channels: image channels (3 for RGB).
        num_tokens: codebook size K: how many distinct image tokens the dVAE has.
        downsample: f, one token per f x f pixels (2, 4, 8 or 16): the token grid is image_size / f on a side.
        hidden_dim: width of the first encoder group, doubled per group (OpenAI's n_hid).
        num_resblocks: residual blocks per group (OpenAI's n_blk_per_group).
        codebook_dim: width of the decoder's token embedding (OpenAI's n_init).
        loss: reconstruction loss: 'logit_laplace' (the paper's) or 'mse'.
        straight_through: hard one-hot codes in the forward pass, gumbel-softmax gradients in the backward pass.
    """

    architecture: Architecture = "dalle"
    image_size: int = 32
    channels: int = 3
    num_tokens: int = 512  # K, the codebook size
    downsample: int = 4  # f: one token per f x f pixels
    hidden_dim: int = 64  # width of the first encoder group (doubled per group); OpenAI's n_hid
    num_resblocks: int = 1  # residual blocks per group; OpenAI's n_blk_per_group
    codebook_dim: int = 128  # width of the decoder's token embedding; OpenAI's n_init
    loss: ReconLoss = "logit_laplace"
    straight_through: bool = False  # hard one-hot codes forward, soft gradients backward

    def __post_init__(self) -> None:
        if self.architecture not in ("dalle", "openai"):
            raise ValueError(f"architecture must be 'dalle' or 'openai', got {self.architecture!r}")
        if self.loss not in ("logit_laplace", "mse"):
            raise ValueError(f"loss must be 'logit_laplace' or 'mse', got {self.loss!r}")
        if self.downsample not in (2, 4, 8, 16):
            raise ValueError(f"downsample (f) must be one of 2, 4, 8, 16; got {self.downsample}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not divisible by downsample {self.downsample}")
        if self.num_tokens < 2:
            raise ValueError(f"num_tokens must be >= 2, got {self.num_tokens}")
        if self.architecture == "openai" and self.hidden_dim % 4:
            raise ValueError("the openai architecture needs hidden_dim divisible by 4 (bottleneck = width / 4)")

    @property
    def num_groups(self) -> int:
        return int(math.log2(self.downsample)) + 1

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    @classmethod
    def openai(cls, **overrides) -> DVAEConfig:
        """The released DALL·E dVAE: 256 px, f = 8, K = 8192, n_hid = 256, 2 blocks per group, n_init = 128."""
        base = dict(
            architecture="openai",
            image_size=256,
            channels=3,
            num_tokens=8192,
            downsample=8,
            hidden_dim=256,
            num_resblocks=2,
            codebook_dim=128,
            loss="logit_laplace",
        )
        base.update(overrides)
        return cls(**base)


# ----------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------


class OpenAIConv2d(nn.Module):
    """``dall_e.utils.Conv2d``'s parameter layout (``w``, ``b``), 'same' padding, always in the input's dtype."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        self.kw = kw
        self.w = nn.Parameter(torch.empty(n_out, n_in, kw, kw))
        self.b = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.w, std=1 / math.sqrt(n_in * kw**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)


def _conv(arch: Architecture, n_in: int, n_out: int, k: int) -> nn.Module:
    if arch == "openai":
        return OpenAIConv2d(n_in, n_out, k)
    return nn.Conv2d(n_in, n_out, k, padding=k // 2)


def _conv_weight_bias(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(conv, OpenAIConv2d):
        return conv.w, conv.b
    return conv.weight, conv.bias


def _kernel_size(conv: nn.Module) -> int:
    return conv.kw if isinstance(conv, OpenAIConv2d) else conv.kernel_size[0]


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _preactivation(arch: Architecture, channels: int, index: int, inplace: bool) -> list[tuple[str, nn.Module]]:
    """What runs before each conv: OpenAI's plain ReLU, or GroupNorm + SiLU in ours (much faster to train)."""
    if arch == "openai":
        return [(f"relu_{index}" if index else "relu", nn.ReLU(inplace=inplace))]
    suffix = f"_{index}" if index else ""
    return [(f"norm{suffix}", nn.GroupNorm(math.gcd(8, channels), channels)), (f"act{suffix}", nn.SiLU(inplace=True))]


class ResBlock(nn.Module):
    """``out = id_path(x) + post_gain * res_path(x)``.

    ``kernels`` are the res_path's conv sizes: OpenAI's encoder uses (3, 3, 3, 1) and its decoder (1, 3, 3, 3),
    both with a bottleneck of ``n_out // 4`` and a ReLU before each conv; ours uses (3, 3) at full width (fewer,
    wider convs are faster on a CPU) with GroupNorm + SiLU before each conv.
    """

    def __init__(
        self, arch: Architecture, n_in: int, n_out: int, kernels: tuple[int, ...], n_hid: int, post_gain: float
    ):
        super().__init__()
        self.post_gain = post_gain
        self.id_path = _conv(arch, n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in] + [n_hid] * (len(kernels) - 1) + [n_out]
        layers: list[tuple[str, nn.Module]] = []
        for i, k in enumerate(kernels):
            # The first activation must not overwrite x (id_path still needs it); later ones act on fresh conv outputs.
            layers += _preactivation(arch, widths[i], i + 1, inplace=i > 0)
            layers.append((f"conv_{i + 1}", _conv(arch, widths[i], widths[i + 1], k)))
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # g * res + id in place: the same numbers as id + g * res without two extra full-size tensors.
        return self.res_path(x).mul_(self.post_gain).add_(self.id_path(x))

    def forward_upsampled(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(nearest_upsample_2x(x))``. ReLU and 1x1 convs act per pixel and so commute with nearest
        upsampling: when the block starts with them (OpenAI's decoder blocks do) they run before the upsample,
        the same numbers with 4x less work on those layers."""
        names = [name for name, _ in self.res_path.named_children()]
        first = names.index("conv_1")
        pointwise_head = all(isinstance(m, nn.ReLU) for m in list(self.res_path)[:first])
        id_pointwise = isinstance(self.id_path, nn.Identity) or _kernel_size(self.id_path) == 1
        if not (pointwise_head and id_pointwise and _kernel_size(self.res_path[first]) == 1):
            return self(_upsample2(x))
        h = x
        for layer in list(self.res_path)[: first + 1]:
            h = layer(h)
        h = _upsample2(h)
        for layer in list(self.res_path)[first + 1 :]:
            h = layer(h)
        return h.mul_(self.post_gain).add_(_upsample2(self.id_path(x)))


def _blocks(
    cfg: DVAEConfig,
    part: Literal["encoder", "decoder"],
    input_conv: nn.Module,
    n_in: int,
    widths: list[int],
    n_out: int,
) -> nn.Sequential:
    """``input`` -> ``group_1`` .. ``group_G`` (``num_resblocks`` ResBlocks each, a 2x max-pool (encoder) or nearest
    upsample (decoder) between groups) -> ``output`` (pre-activation + 1x1 conv to ``n_out``): OpenAI's layout."""
    arch, G, R = cfg.architecture, cfg.num_groups, cfg.num_resblocks
    if arch == "openai":
        kernels, div = ((3, 3, 3, 1) if part == "encoder" else (1, 3, 3, 3)), 4
    else:
        kernels, div = (3, 3), 1
    post_gain = 1 / (G * R) ** 2
    groups: list[tuple[str, nn.Module]] = [("input", input_conv)]
    for g, w in enumerate(widths):
        layers: list[tuple[str, nn.Module]] = []
        for r in range(R):
            layers.append((f"block_{r + 1}", ResBlock(arch, n_in, w, kernels, w // div, post_gain)))
            n_in = w
        if g < G - 1:  # halve the resolution between encoder groups, double it between decoder groups
            layers.append(
                ("pool", nn.MaxPool2d(kernel_size=2))
                if part == "encoder"
                else ("upsample", nn.Upsample(scale_factor=2, mode="nearest"))
            )
        groups.append((f"group_{g + 1}", nn.Sequential(OrderedDict(layers))))
    groups.append(
        (
            "output",
            nn.Sequential(
                OrderedDict(
                    [
                        *_preactivation(arch, n_in, 0, inplace=True),
                        ("conv", _conv(arch, n_in, n_out, 1)),
                    ]
                )
            ),
        )
    )
    return nn.Sequential(OrderedDict(groups))


class Encoder(nn.Module):
    """images (B, C, H, W), already mapped to [eps, 1-eps] -> logits (B, K, H/f, W/f)."""

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        widths = [cfg.hidden_dim * 2**g for g in range(cfg.num_groups)]  # (1, 2, 4, 8) x n_hid for f = 8
        input_conv = _conv(cfg.architecture, cfg.channels, widths[0], 7 if cfg.architecture == "openai" else 3)
        self.blocks = _blocks(cfg, "encoder", input_conv, widths[0], widths, cfg.num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """codes (B, K, h, w), one-hot or relaxed -> per-pixel parameters (B, 2C, H, W) (mu, log-scale), or
    (B, C, H, W) for MSE.

    ``forward_ids`` takes token ids and replaces the one-hot input conv by a row lookup in its weight
    (the same numbers, no (B, K, h, w) one-hot tensor).
    """

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        widths = [cfg.hidden_dim * 2**g for g in reversed(range(cfg.num_groups))]  # (8, 4, 2, 1) x n_hid for f = 8
        out_channels = 2 * cfg.channels if cfg.loss == "logit_laplace" else cfg.channels
        input_conv = _conv(cfg.architecture, cfg.num_tokens, cfg.codebook_dim, 1)
        self.blocks = _blocks(cfg, "decoder", input_conv, cfg.codebook_dim, widths, out_channels)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.blocks.input(codes))

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, h, w) ids -> (B, codebook_dim, h, w): rows of the 1x1 input conv (== conv of a one-hot)."""
        w, b = _conv_weight_bias(self.blocks.input)
        table = w[:, :, 0, 0].t()  # (K, D)
        x = F.embedding(ids, table) + b  # (B, h, w, D)
        return x.permute(0, 3, 1, 2)  # (B, D, h, w), channels-last in memory

    def forward_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(self.embed_ids(ids))

    def forward_embedded(self, x: torch.Tensor) -> torch.Tensor:
        upsample_pending = False
        for name, group in self.blocks.named_children():
            if not name.startswith("group_"):
                continue
            for layer_name, layer in group.named_children():
                if layer_name == "upsample":
                    upsample_pending = True  # deferred into the next group's first block
                elif upsample_pending:
                    x = layer.forward_upsampled(x)
                    upsample_pending = False
                else:
                    x = layer(x)
        return self.blocks.output(x)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


@dataclass
class DVAEOutput:
    logits: torch.Tensor  # (B, K, h, w) encoder logits
    codes: torch.Tensor  # (B, K, h, w) relaxed (or straight-through one-hot) samples fed to the decoder
    stats: torch.Tensor  # (B, 2C, H, W) decoder output: mu and log-scale per channel (or (B, C, H, W) for MSE)


class DiscreteVAE(nn.Module):
    """DALL·E's discrete VAE. See the module docstring; the contract used by the text-to-image model:

    - ``encode(images in [0, 1]) -> LongTensor (B, h, w)`` (argmax codes)
    - ``decode(ids (B, h, w) or (B, h*w)) -> images (B, C, H, W) in [0, 1]``
    - ``get_codebook_indices(images) -> (B, h*w)``
    - ``num_tokens`` (K), ``image_size``, ``grid_size`` (h == w)
    """

    def __init__(
        self,
        architecture: Architecture = "dalle",
        image_size: int = 32,
        channels: int = 3,
        num_tokens: int = 512,
        downsample: int = 4,
        hidden_dim: int = 64,
        num_resblocks: int = 1,
        codebook_dim: int = 128,
        loss: ReconLoss = "logit_laplace",
        straight_through: bool = False,
    ):
        super().__init__()
        self.config = DVAEConfig(
            architecture=architecture,
            image_size=image_size,
            channels=channels,
            num_tokens=num_tokens,
            downsample=downsample,
            hidden_dim=hidden_dim,
            num_resblocks=num_resblocks,
            codebook_dim=codebook_dim,
            loss=loss,
            straight_through=straight_through,
        )
        self.image_size = image_size
        self.channels = channels
        self.num_tokens = num_tokens
        self.downsample = downsample
        self.grid_size = self.config.grid_size
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    @classmethod
    def from_config(cls, config: DVAEConfig | dict) -> DiscreteVAE:
        if isinstance(config, dict):
            config = DVAEConfig.from_dict(config)
        return cls(**config.to_dict())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # -------------------------------------------------------------------------------- input checks

    def check_images(self, images: torch.Tensor) -> None:
        """Clear errors for the common mistakes: 0-255 pixels, [-1, 1] normalisation, wrong size or layout."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must be (B, {self.channels}, H, W); got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be float in [0, 1]; got dtype {images.dtype}. For uint8 pixels use images.float() / 255."
            )
        B, C, H, W = images.shape
        if C != self.channels:
            hint = " (channels-last? permute to (B, C, H, W))" if W == self.channels else ""
            raise ValueError(
                f"images must have {self.channels} channels in dim 1; got shape {tuple(images.shape)}{hint}"
            )
        if (H, W) != (self.image_size, self.image_size):
            raise ValueError(
                f"this dVAE was built for {self.image_size}x{self.image_size} images; got {H}x{W}. "
                f"Resize (e.g. torchvision.transforms.v2.Resize({self.image_size}) + CenterCrop) or build a model "
                f"with image_size={H}."
            )
        lo, hi = torch.aminmax(images.detach())
        lo, hi = float(lo), float(hi)
        if hi > 1.0 + 1e-3 or lo < -1e-3:
            if hi > 2.0:
                why = "this looks like 0-255 pixel values; divide by 255"
            elif lo < -1e-3:
                why = "this looks like [-1, 1] or mean/std-normalised images; use (x + 1) / 2 or skip Normalize"
            else:
                why = "clamp or rescale them"
            raise ValueError(f"images must be in [0, 1]; got values in [{lo:.3g}, {hi:.3g}]: {why}")

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Validates token ids and returns them as (B, h, w)."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"token ids must be a torch.Tensor, got {type(ids).__name__}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"token ids must be an integer tensor; got dtype {ids.dtype}")
        g = self.grid_size
        if ids.ndim == 2:
            if ids.shape[1] != g * g:
                raise ValueError(f"token ids of shape (B, L) need L = {g}*{g} = {g * g}; got shape {tuple(ids.shape)}")
            ids = ids.view(ids.shape[0], g, g)
        elif ids.ndim != 3 or ids.shape[1:] != (g, g):
            raise ValueError(f"token ids must be (B, {g}, {g}) or (B, {g * g}); got shape {tuple(ids.shape)}")
        if ids.numel():
            lo, hi = torch.aminmax(ids)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= self.num_tokens:
                raise ValueError(
                    f"token ids must be in [0, {self.num_tokens - 1}] (num_tokens={self.num_tokens}); "
                    f"got values in [{lo}, {hi}]"
                )
        return ids.long()

    # -------------------------------------------------------------------------------- forward

    def encoder_logits(self, images: torch.Tensor, check: bool = True) -> torch.Tensor:
        """images in [0, 1] -> logits (B, K, h, w)."""
        if check:
            self.check_images(images)
        x = map_pixels(images).to(self.dtype)
        return self.encoder(x)

    def forward(
        self, images: torch.Tensor, temperature: float = 1.0, hard: bool | None = None, check: bool = True
    ) -> DVAEOutput:
        """Training path: gumbel-softmax relaxed codes (hard one-hot with straight-through gradients if ``hard``)."""
        hard = self.config.straight_through if hard is None else hard
        logits = self.encoder_logits(images, check=check)  # (B, K, h, w)
        codes = gumbel_softmax(logits, temperature, hard=hard, dim=1).to(logits.dtype)
        return DVAEOutput(logits=logits, codes=codes, stats=self.decoder(codes))

    def stats_to_images(self, stats: torch.Tensor) -> torch.Tensor:
        """Decoder output -> images in [0, 1] (sigmoid of mu, then unmap, as in OpenAI's notebook)."""
        return unmap_pixels(torch.sigmoid(stats[:, : self.channels].float()))

    def loss(self, images: torch.Tensor, out: DVAEOutput, kl_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """Negative ELBO per pixel dimension: (sum recon NLL + kl_weight * sum KL) / (B*C*H*W), as DALL·E normalises."""
        n = images[0].numel()
        C = self.channels
        if self.config.loss == "logit_laplace":
            recon = logit_laplace_nll(map_pixels(images), out.stats[:, :C], out.stats[:, C : 2 * C]).mean()
        else:
            recon = F.mse_loss(torch.sigmoid(out.stats[:, :C].float()), map_pixels(images).float())
        kl = kl_to_uniform(out.logits).sum((1, 2)).mean() / n
        return {"loss": recon + kl_weight * kl, "recon": recon, "kl": kl}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, H, W) in [0, 1] -> token ids (B, h, w), int64."""
        return self.encoder_logits(images).argmax(dim=1)

    @torch.no_grad()
    def get_codebook_indices(self, images: torch.Tensor) -> torch.Tensor:
        """images -> flat token ids (B, h*w) in raster order."""
        return self.encode(images).flatten(1)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """token ids (B, h, w) or (B, h*w) -> images (B, C, H, W) in [0, 1], float32."""
        ids = self.check_ids(ids)
        return self.stats_to_images(self.decoder.forward_ids(ids))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """encode -> decode with hard (argmax) codes: what the text-to-image model will see."""
        return self.decode(self.encode(images))

    # -------------------------------------------------------------------------------- weights

    def load_weights(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
        """``load_state_dict`` with clear errors: a shape mismatch names the key, the expected and the found shape,
        and the config that would fit the weights; missing/unexpected keys are listed."""
        check_state_dict_shapes(self, state_dict)
        if strict:
            from core_attention.io import load_state_dict_checked

            load_state_dict_checked(self, state_dict, source="dVAE weights")
        else:
            self.load_state_dict(state_dict, strict=False)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes ``config.json`` and ``model.safetensors`` (whose metadata holds the config too)."""
        from core_attention.io import save_safetensors

        os.makedirs(directory, exist_ok=True)
        cfg = self.config.to_dict()
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        save_safetensors(os.path.join(directory, "model.safetensors"), self.state_dict(), cfg)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides
    ) -> DiscreteVAE:
        """Loads a ``save_pretrained`` directory, or one ``.safetensors`` file whose metadata holds the config (as
        ``python -m dalle.vae.convert_openai`` writes). ``overrides`` replace config fields (e.g. ``image_size``).
        Safetensors only: nothing is unpickled."""
        from core_attention.io import load_safetensors

        path = os.fspath(path)
        if os.path.isdir(path):
            state_dict, cfg = load_safetensors(os.path.join(path, "model.safetensors"), device=str(map_location))
            config_json = os.path.join(path, "config.json")
            if os.path.isfile(config_json):
                with open(config_json) as f:
                    cfg = json.load(f)
        else:
            state_dict, cfg = load_safetensors(path, device=str(map_location))
        if not cfg:
            cfg = config_from_state_dict(state_dict).to_dict()  # weights without a config: infer it
        cfg.update(overrides)
        model = cls.from_config(cfg)
        model.load_weights(state_dict)
        return model.to(map_location)


# ----------------------------------------------------------------------------------------------------
# State-dict introspection (for clear mismatch errors)
# ----------------------------------------------------------------------------------------------------


def config_from_state_dict(state_dict: dict[str, torch.Tensor], image_size: int | None = None) -> DVAEConfig:
    """Infers the :class:`DVAEConfig` whose model has exactly these parameter shapes (image_size is not in the
    weights)."""
    openai = "encoder.blocks.input.w" in state_dict
    wname = "w" if openai else "weight"
    enc_in = state_dict[f"encoder.blocks.input.{wname}"]
    enc_out = state_dict[f"encoder.blocks.output.conv.{wname}"]
    dec_in = state_dict[f"decoder.blocks.input.{wname}"]
    dec_out = state_dict[f"decoder.blocks.output.conv.{wname}"]
    groups = {k.split(".")[2] for k in state_dict if k.startswith("encoder.blocks.group_")}
    blocks = {k.split(".")[3] for k in state_dict if k.startswith("encoder.blocks.group_1.block_")}
    channels = enc_in.shape[1]
    downsample = 2 ** (len(groups) - 1)
    return DVAEConfig(
        architecture="openai" if openai else "dalle",
        image_size=image_size if image_size is not None else 32 * downsample,
        channels=channels,
        num_tokens=enc_out.shape[0],
        downsample=downsample,
        hidden_dim=enc_in.shape[0],
        num_resblocks=len(blocks),
        codebook_dim=dec_in.shape[0],
        loss="logit_laplace" if dec_out.shape[0] == 2 * channels else "mse",
    )


def check_state_dict_shapes(model: DiscreteVAE, state_dict: dict[str, torch.Tensor]) -> None:
    """Raises a ValueError listing every shape mismatch (key, expected, found) and the config that fits the weights."""
    expected = model.state_dict()
    bad = [
        f"'{key}': the model expects {tuple(want.shape)}, the weights have {tuple(state_dict[key].shape)}"
        for key, want in expected.items()
        if key in state_dict and tuple(want.shape) != tuple(state_dict[key].shape)
    ]
    if not bad:
        return
    try:
        fits = config_from_state_dict(state_dict, image_size=model.image_size).to_dict()
        hint = f"The weights match this config: {fits}"
    except Exception:  # noqa: BLE001 - the hint is best effort; the mismatch itself is the error
        hint = "Could not infer a matching config from the weights."
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    raise ValueError(
        f"dVAE weight shape mismatch at {'; '.join(bad[:5])}{more}. Model config: {model.config.to_dict()}. {hint}"
    )
