"""Attention masks. Convention everywhere: bool, True = may attend, broadcastable to (B, H, Lq, Lk)."""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(lq: int, lk: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    """(Lq, Lk) lower-triangular mask aligned to the lower right: query i sits at key position Lk - Lq + i."""
    lk = lq if lk is None else lk
    if lk < lq:
        raise ValueError(f"causal mask needs at least as many keys as queries, got Lq={lq}, Lk={lk}")
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(diagonal=lk - lq)


def key_padding_mask(is_pad: Tensor) -> Tensor:
    """(B, Lk) bool, True at padding -> (B, 1, 1, Lk) mask that hides the padded keys."""
    if is_pad.dim() != 2 or is_pad.dtype != torch.bool:
        raise ValueError(
            f"key_padding_mask expects a bool tensor (B, Lk) with True at padding, "
            f"got {tuple(is_pad.shape)} {is_pad.dtype}"
        )
    return ~is_pad[:, None, None, :]


def mask_to_text(mask: Tensor, *, allowed: str = "█", blocked: str = "·") -> str:
    """Render a 2-D mask (or the first (Lq, Lk) slice of a bigger one) as text, one query per line."""
    while mask.dim() > 2:
        mask = mask[0]
    if mask.is_floating_point():
        mask = mask > float("-inf")
    return "\n".join("".join(allowed if m else blocked for m in row) for row in mask.tolist())
