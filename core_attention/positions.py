"""Positional encodings: sinusoidal (1-D, 2-D), learned, rotary (1-D, axial 2-D) and grid resampling."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)


def sinusoidal_table(length: int, dim: int, *, base: float = 10000.0) -> Tensor:
    """The paper's table (L, dim): PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(same)."""
    if dim % 2:
        raise ValueError(f"sinusoidal encodings need an even dim, got {dim}")
    position = torch.arange(length, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


def grid_coords(h: int, w: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Row and column coordinates of an h × w grid in row-major order: two (h * w,) long tensors."""
    return torch.arange(h, device=device).repeat_interleave(w), torch.arange(w, device=device).repeat(h)


def sincos_2d(grid_size: int | tuple[int, int], dim: int, *, base: float = 10000.0) -> Tensor:
    """2-D sin-cos table for a patch grid, (h * w, dim) in row-major order: half the channels encode the row, half
    the column."""
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if dim % 4:
        raise ValueError(f"2-D sin-cos encodings need dim divisible by 4, got {dim}")
    rows = sinusoidal_table(h, dim // 2, base=base)  # (h, dim/2)
    cols = sinusoidal_table(w, dim // 2, base=base)  # (w, dim/2)
    return torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], dim=-1).reshape(h * w, dim)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to (B, L, dim) inputs, starting at position `offset` (for cached decoding)."""

    def __init__(self, dim: int, max_len: int = 4096) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """x: (B, L, dim) at positions offset.. offset + L; a tensor offset (1,) (a compiled decoding step's
        position) selects the rows without a Python number, so one graph serves every position."""
        if isinstance(offset, Tensor):
            return x + self.weight.index_select(0, offset + torch.arange(x.shape[1], device=x.device))
        end = offset + x.shape[1]
        if end > self.table.shape[0]:
            raise ValueError(
                f"sequence reaches position {end} but the positional table has max_len {self.table.shape[0]}"
            )
        return x + self.table[offset:end].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A learned (max_len, dim) table added to (B, L, dim) inputs, starting at position `offset`."""

    def __init__(self, dim: int, max_len: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, dim) * init_std)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """x: (B, L, dim) at positions offset.. offset + L; a tensor offset (1,) (a compiled decoding step's
        position) selects the rows without a Python number, so one graph serves every position."""
        if isinstance(offset, Tensor):
            return x + self.weight.index_select(0, offset + torch.arange(x.shape[1], device=x.device))
        end = offset + x.shape[1]
        if end > self.weight.shape[0]:
            raise ValueError(
                f"sequence reaches position {end} but the learned table has max_len {self.weight.shape[0]}"
            )
        return x + self.weight[offset:end]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, L, D) queries or keys by the angles whose cos/sin broadcast to it (usually (L, D))."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """1-D rotary position embedding (RoFormer): returns (cos, sin) of shape (L, head_dim) for given positions."""

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions.float()[..., None] * self.inv_freq  # (..., L, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (..., L, D)
        return angles.cos(), angles.sin()


class AxialRotaryEmbedding(nn.Module):
    """2-D (axial) rotary embedding: half of each head's channels rotate with the row, half with the column."""

    def __init__(self, head_dim: int, *, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"axial rotary embeddings need head_dim divisible by 4, got {head_dim}")
        self.rows = RotaryEmbedding(head_dim // 2, base=base)
        self.cols = RotaryEmbedding(head_dim // 2, base=base)

    def forward(self, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
        """rows, cols: (L,) integer coordinates of each token -> (cos, sin) of shape (L, head_dim)."""
        cos_r, sin_r = self.rows(rows)
        cos_c, sin_c = self.cols(cols)
        return _interleave_halves(cos_r, cos_c), _interleave_halves(sin_r, sin_c)


def _interleave_halves(a: Tensor, b: Tensor) -> Tensor:
    # rotate_half pairs channel i with i + D/2, so each axis must own matching halves of both halves.
    a1, a2 = a.chunk(2, dim=-1)
    b1, b2 = b.chunk(2, dim=-1)
    return torch.cat([a1, b1, a2, b2], dim=-1)


def resample_pos_embed(
    pos_embed: Tensor,
    new_size: int | tuple[int, int],
    old_size: int | tuple[int, int] | None = None,
    *,
    num_prefix_tokens: int = 1,
    interpolation: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """Resample a (1, prefix + h*w, C) grid position table to a new grid, as timm does (prefix tokens kept)."""
    new_h, new_w = (new_size, new_size) if isinstance(new_size, int) else new_size
    num_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_size is None:
        side = math.isqrt(num_grid)
        if side * side != num_grid:
            raise ValueError(f"cannot infer a square grid from {num_grid} position tokens; pass old_size=(h, w)")
        old_size = side
    old_h, old_w = (old_size, old_size) if isinstance(old_size, int) else old_size
    if old_h * old_w != num_grid:
        raise ValueError(f"pos_embed has {num_grid} grid tokens but old_size {old_h}x{old_w} = {old_h * old_w}")
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dtype = grid.dtype
    grid = grid.float().reshape(1, old_h, old_w, -1).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = F.interpolate(grid, size=(new_h, new_w), mode=interpolation, antialias=antialias, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, -1).to(dtype)
    log.info("resampled position embedding from %dx%d to %dx%d", old_h, old_w, new_h, new_w)
    return torch.cat([prefix, grid], dim=1)
