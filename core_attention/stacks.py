"""Stacks of transformer blocks: a bidirectional `Encoder` and a causal `Decoder` (optionally cross-attending)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .block import TransformerBlock
from .cache import DecoderCache, KVCache


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic depth of each block, growing linearly from 0 to `drop_path_rate` (timm's schedule)."""
    return torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: also when built on the meta device


def run_block(block: nn.Module, *args: Any, checkpointing: bool, **kwargs: Any) -> Tensor:
    """`block(*args, **kwargs)`, recomputing its activations in the backward pass when `checkpointing` and training
    with gradients (less memory, ~30% more compute)."""
    if checkpointing and block.training and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


class _Stack(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        *,
        cross_attention: bool,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        dropout: float = 0.0,
        attn_drop: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        drop_path = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                num_kv_heads=num_kv_heads,
                qkv_bias=qkv_bias,
                qk_norm=qk_norm,
                cross_attention=cross_attention,
                proj_drop=dropout,
                attn_drop=attn_drop,
                init_values=init_values,
                drop_path=drop_path[i],
                norm_eps=norm_eps,
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, ~30% more compute."""
        self.grad_checkpointing = enable

    def _run_block(self, block: TransformerBlock, x: Tensor, context: Tensor | None, **kwargs) -> Tensor:
        return run_block(block, x, context, checkpointing=self.grad_checkpointing, **kwargs)


class Encoder(_Stack):
    """Bidirectional self-attention stack with a final LayerNorm. x: (B, L, dim) -> (B, L, dim)."""

    def __init__(self, dim: int, depth: int, num_heads: int, **kwargs) -> None:
        super().__init__(dim, depth, num_heads, cross_attention=False, **kwargs)

    def forward(self, x: Tensor, *, mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """`mask`: bool (True = may attend) broadcastable to (B, H, L, L), e.g. `key_padding_mask(tokens == pad)`."""
        for block in self.blocks:
            x = self._run_block(block, x, None, mask=mask, rope=rope)
        return self.norm(x)


class Decoder(_Stack):
    """Causal self-attention stack, cross-attending to `context` when built with `cross_attention=True`.

    Causality comes from `is_causal` unless `mask` is given; an explicit mask (one tensor, or one per layer for
    sparse patterns) must itself be causal. With a `DecoderCache`, x holds only the new positions and the mask
    (if any) holds their rows: (Lq, cache.length + Lq). With `cache_position` (the fixed-shape step of a compiled
    decoder, see `MultiHeadAttention.forward`) a mask holds whole-cache rows instead: (Lq, max_len).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, *, cross_attention: bool = True, **kwargs) -> None:
        super().__init__(dim, depth, num_heads, cross_attention=cross_attention, **kwargs)
        self.cross_attention = cross_attention

    def init_cache(
        self,
        batch_size: int,
        max_len: int,
        *,
        context_len: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DecoderCache:
        """Preallocate every layer's keys/values for `max_len` positions (and `context_len` context positions)."""
        ref = self.norm.weight
        dtype, device = dtype or ref.dtype, device or ref.device
        head_dim = self.dim // self.num_heads
        make = lambda n, static: KVCache(
            batch_size, n, self.num_kv_heads, head_dim, dtype=dtype, device=device, static=static
        )  # noqa: E731
        self_attn = [make(max_len, False) for _ in self.blocks]
        if not self.cross_attention:
            return DecoderCache(self_attn)
        if context_len is None:
            raise ValueError("a cross-attending decoder's cache needs context_len (the encoder output length)")
        return DecoderCache(self_attn, [make(context_len, True) for _ in self.blocks])

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | Sequence[Tensor] | None = None,
        context_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: DecoderCache | None = None,
        cache_position: Tensor | None = None,
    ) -> Tensor:
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask] * len(self.blocks)
        if len(masks) != len(self.blocks):
            raise ValueError(f"got {len(masks)} per-layer masks for a decoder of depth {len(self.blocks)}")
        for i, block in enumerate(self.blocks):
            x = self._run_block(
                block,
                x,
                context,
                mask=masks[i],
                is_causal=masks[i] is None,
                context_mask=context_mask,
                rope=rope,
                cache=cache.self_attn[i] if cache is not None else None,
                cross_cache=cache.cross_attn[i] if cache is not None and cache.cross_attn is not None else None,
                cache_position=cache_position,
            )
        return self.norm(x)
