"""Attention masks. Convention everywhere: bool, True = may attend, broadcastable to (B, H, Lq, Lk)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

SparseKind = Literal["full", "row", "column", "conv"]


def causal_mask(lq: int, lk: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    """(Lq, Lk) lower-triangular mask aligned to the lower right: query i sits at key position Lk - Lq + i."""
    lk = lq if lk is None else lk
    if lk < lq:
        raise ValueError(f"causal mask needs at least as many keys as queries, got Lq={lq}, Lk={lk}")
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(diagonal=lk - lq)


def key_padding_mask(is_pad: Tensor) -> Tensor:
    """(B, Lk) bool, True at padding -> (B, 1, 1, Lk) mask that hides the padded keys."""
    if is_pad.dim() != 2 or is_pad.dtype != torch.bool:
        raise ValueError(f"key_padding_mask expects a bool tensor (B, Lk) with True at padding, got {tuple(is_pad.shape)} {is_pad.dtype}")
    return ~is_pad[:, None, None, :]


def dalle_mask(
    text_len: int,
    grid_size: int | tuple[int, int],
    kind: SparseKind = "full",
    *,
    kernel_size: int = 11,
    device: torch.device | str | None = None,
) -> Tensor:
    """Causal (L, L) mask over a [text | image-grid] sequence, L = text_len + h * w (DALL·E, appendix B.1).

    Text attends causally to text. Every image token attends to all text and, within the image, to earlier
    (or same) tokens that are
      - "full": anywhere;            - "row": in its own row;
      - "column": in its own column; - "conv": inside a kernel_size × kernel_size window centred on it.
    The diagonal is always kept, so no row is empty.
    """
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    length = text_len + h * w
    mask = causal_mask(length, device=device)
    if kind == "full":
        return mask
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (h*w,) row of each image token
    cols = torch.arange(w, device=device).repeat(h)
    if kind == "row":
        allowed = rows[:, None] == rows[None, :]
    elif kind == "column":
        allowed = cols[:, None] == cols[None, :]
    elif kind == "conv":
        r = kernel_size // 2
        allowed = ((rows[:, None] - rows[None, :]).abs() <= r) & ((cols[:, None] - cols[None, :]).abs() <= r)
    else:
        raise ValueError(f"unknown sparse attention kind {kind!r}; choose one of 'full', 'row', 'column', 'conv'")
    mask[text_len:, text_len:] &= allowed
    return mask


def mask_to_text(mask: Tensor, *, allowed: str = "█", blocked: str = "·") -> str:
    """Render a 2-D mask (or the first (Lq, Lk) slice of a bigger one) as text, one query per line."""
    while mask.dim() > 2:
        mask = mask[0]
    if mask.is_floating_point():
        mask = mask > float("-inf")
    return "\n".join("".join(allowed if m else blocked for m in row) for row in mask.tolist())


def save_mask_png(mask: Tensor, path: str | Path, *, scale: int = 4) -> Path:
    """Save a 2-D mask as a black (blocked) / white (may attend) PNG, each entry `scale` pixels wide."""
    from PIL import Image

    while mask.dim() > 2:
        mask = mask[0]
    if mask.is_floating_point():
        mask = mask > float("-inf")
    pixels = (mask.to(torch.uint8) * 255).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.cpu().numpy()).save(path)
    return path
