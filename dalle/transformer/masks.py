"""DALL·E's attention masks over a [text | image grid] sequence: causal, and the paper's sparse image patterns."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from core_attention import causal_mask, grid_coords

SparseKind = Literal["full", "row", "column", "conv"]

__all__ = ["SparseKind", "dalle_mask", "save_mask_png"]


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
    rows, cols = grid_coords(h, w, device)  # (h*w,) row and column of each image token
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
