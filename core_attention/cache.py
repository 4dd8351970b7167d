"""Preallocated key/value cache for incremental decoding."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of one attention layer, preallocated to `max_len` and filled in place.

    `update(k, v)` writes the new positions and returns views of everything cached so far, so a decoding
    step costs one copy of the new keys/values and no reallocation. A cache used for cross-attention is
    filled once from the context and then only read (`static=True`).

    `write(k, v, position)` is the fixed-shape update a compiled decoding step needs: it writes at a position given
    as a tensor and returns the whole buffers, which the caller masks beyond the position. The buffers start as
    zeros for that (masked keys still meet their values in the product; garbage memory could hold NaN).
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        static: bool = False,
    ) -> None:
        shape = (batch_size, num_kv_heads, max_len, head_dim)  # (B, Hkv, Lmax, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.static = static

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append `k, v` of shape (B, Hkv, n, D); return all cached keys and values (B, Hkv, length, D)."""
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(
                f"KVCache.update expects k and v of equal shape (B, Hkv, n, D), "
                f"got {tuple(k.shape)} and {tuple(v.shape)}"
            )
        b, h, n, d = k.shape
        if (b, h, d) != (self.k.shape[0], self.k.shape[1], self.k.shape[3]):
            raise ValueError(
                f"KVCache holds (B={self.k.shape[0]}, Hkv={self.k.shape[1]}, D={self.k.shape[3]}) "
                f"but received keys of shape {tuple(k.shape)}"
            )
        end = self.length + n
        if end > self.max_len:
            raise ValueError(
                f"KVCache overflow: {self.length} cached + {n} new = {end} positions > max_len {self.max_len}. "
                "Allocate the cache with a larger max_len (prompt length + new tokens)."
            )
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def write(self, k: Tensor, v: Tensor, position: Tensor) -> tuple[Tensor, Tensor]:
        """Write `k, v` (B, Hkv, n, D) at the positions `position` (n,) and return the whole buffers (B, Hkv, Lmax, D).

        Shapes never change from one step to the next and no Python number follows the position, so one compiled
        graph serves every step. `length` is left alone: the caller knows where it writes.
        """
        self.k.index_copy_(2, position, k.to(self.k.dtype))
        self.v.index_copy_(2, position, v.to(self.v.dtype))
        return self.k, self.v

    def get(self) -> tuple[Tensor, Tensor]:
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def reorder(self, index: Tensor) -> None:
        """Select batch rows in place (beam search keeps the beams it extends)."""
        self.k.copy_(self.k.index_select(0, index))
        self.v.copy_(self.v.index_select(0, index))

    def reset(self) -> None:
        self.length = 0


class DecoderCache:
    """The caches of a whole decoder stack: one self-attention KVCache per layer, plus one static
    cross-attention KVCache per layer when the decoder attends to an encoder output."""

    def __init__(self, self_attn: list[KVCache], cross_attn: list[KVCache] | None = None) -> None:
        self.self_attn = self_attn
        self.cross_attn = cross_attn

    @property
    def length(self) -> int:
        """Number of positions decoded so far (the position of the next token)."""
        return self.self_attn[0].length

    def reorder(self, index: Tensor) -> None:
        for cache in self.self_attn + (self.cross_attn or []):
            cache.reorder(index)

    def reset(self) -> None:
        for cache in self.self_attn + (self.cross_attn or []):
            cache.reset()
