"""Multi-head attention: self or cross, fused (SDPA) or eager, with masks, rotary positions, GQA and a KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import KVCache
from .layers import Linear, linear
from .masks import causal_mask
from .positions import apply_rotary


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    fused: bool = True,
    return_weights: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """softmax(q kᵀ / √D + mask) v for q (B, Hq, Lq, D) and k, v (B, Hkv, Lk, D), Hq a multiple of Hkv.

    The fused path is `F.scaled_dot_product_attention` (flash / memory-efficient kernels, no (Lq, Lk) matrix kept
    for backward); the eager path materialises the weights and returns them. Same numbers either way.
    """
    if fused and not return_weights:
        # The CPU flash kernel needs unit-stride head dims (a decoding step's `linear` output is a transposed view);
        # without them SDPA silently takes its slower math path.
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out, None
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, Lq, Lk)
    if is_causal:
        mask = causal_mask(q.shape[2], k.shape[2], device=q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1)
    out = F.dropout(weights, dropout_p) @ v  # (B, H, Lq, D)
    return out, weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention with timm's parameter names (`qkv`, `proj`, `q_norm`, `k_norm`).

    One fused `qkv` projection of size (num_heads + 2 * num_kv_heads) * head_dim serves self-attention in a
    single matmul; for cross-attention (`context` given) its query rows project `x` and its key/value rows
    project `context`. Masks are bool (True = may attend) or float (added to the scores), broadcastable to
    (B, H, Lq, Lk). The fused path (`F.scaled_dot_product_attention`) and the eager path give the same result;
    the eager path runs when `fused_attn` is False or when the attention weights are asked for.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_eps: float = 1e-6,
        proj_bias: bool = True,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if dim % num_heads != 0:
            raise ValueError(
                f"dim ({dim}) must be divisible by num_heads ({num_heads}); "
                f"e.g. dim={num_heads * max(1, dim // num_heads)}"
            )
        if num_heads % num_kv_heads != 0:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.fused_attn = True
        self.qkv = Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim, bias=proj_bias)  # bias-free in BART-style models (DALL·E Mini / Mega)
        self.proj_drop = nn.Dropout(proj_drop)

    def _project_q(self, x: Tensor) -> Tensor:
        b, lq, _ = x.shape
        w_q = self.qkv.weight[: self.num_heads * self.head_dim]
        b_q = self.qkv.bias[: self.num_heads * self.head_dim] if self.qkv.bias is not None else None
        return self.q_norm(linear(x, w_q, b_q).view(b, lq, self.num_heads, self.head_dim).transpose(1, 2))

    def _project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        b, lk, _ = context.shape
        n_q = self.num_heads * self.head_dim
        w_kv = self.qkv.weight[n_q:]
        b_kv = self.qkv.bias[n_q:] if self.qkv.bias is not None else None
        kv = linear(context, w_kv, b_kv).view(b, lk, 2 * self.num_kv_heads, self.head_dim).transpose(1, 2)
        k, v = kv.split([self.num_kv_heads, self.num_kv_heads], dim=1)  # (B, Hkv, Lk, D)
        return self.k_norm(k), v

    def _project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, lq, _ = x.shape
        hq, hkv = self.num_heads, self.num_kv_heads
        qkv = self.qkv(x).view(b, lq, hq + 2 * hkv, self.head_dim).transpose(1, 2)  # (B, Hq+2Hkv, L, D)
        q, k, v = qkv.split([hq, hkv, hkv], dim=1)
        return self.q_norm(q), self.k_norm(k), v

    def _check_inputs(self, x: Tensor, context: Tensor | None, mask: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected x of shape (B, L, {self.dim}), got {tuple(x.shape)}")
        bad_context = context is not None and (
            context.dim() != 3 or context.shape[-1] != self.dim or x.shape[0] % context.shape[0]
        )
        if bad_context:
            raise ValueError(
                f"expected context of shape ({x.shape[0]} or a divisor of it, Lk, {self.dim}), "
                f"got {tuple(context.shape)}"
            )
        if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
            raise TypeError(f"mask must be bool (True = may attend) or float (additive bias), got dtype {mask.dtype}")

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        cache_position: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x: (B, Lq, dim); context: (B, Lk, dim) or None. Returns (B, Lq, dim) [and weights (B, H, Lq, Lk)].

        A context of B / g rows (and its cache, and mask) serves g consecutive rows of x each: several samples of
        one prompt keep one copy of its keys / values, their queries folded into one longer query.

        `rope` is a (cos, sin) pair broadcastable to (B, H, Lq, D) for the positions of `x` (self-attention only).
        With a `cache`, the new keys/values are appended and the queries attend to everything cached so far;
        `is_causal` then aligns the causal mask to the lower right (query i sits at position cached + i).
        A cross-attention cache is filled from `context` on first use and reused afterwards (pass context=None then).
        `cache_position` (Lq,), with a self-attention cache: the fixed-shape step of a compiled decoder. The new keys
        and values are written there and the queries attend to the whole cache, keys after their own position
        masked out (and `mask`, if given, must span the whole cache: (Lq, max_len)).
        """
        b, lq, _ = x.shape
        self._check_inputs(x, context, mask)
        cross = context is not None or (cache is not None and cache.static)
        if cross:
            q = self._project_q(x)
            if cache is not None and cache.length > 0:
                k, v = cache.get()  # context keys/values computed on the first step
            elif context is None:
                raise ValueError("cross-attention needs `context` (or a static cache already filled from it)")
            else:
                k, v = self._project_kv(context)
                if cache is not None:
                    k, v = cache.update(k, v)
        else:
            q, k, v = self._project_qkv(x)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None and cache_position is not None:
                k, v = cache.write(k, v, cache_position)
                seen = torch.arange(cache.max_len, device=x.device) <= cache_position[:, None]  # (Lq, Lmax)
                if mask is None or mask.dtype == torch.bool:
                    mask = seen if mask is None else mask & seen
                else:
                    mask = mask.masked_fill(~seen, float("-inf"))
                is_causal = False
            elif cache is not None:
                k, v = cache.update(k, v)
        k, v = k.to(q.dtype), v.to(q.dtype)  # no-op unless a cache was allocated in another dtype
        lk, groups = k.shape[2], (b // k.shape[0] if k.shape[0] else 1)  # an empty batch: nothing to share
        if groups * k.shape[0] != b:
            raise ValueError(f"a cross-attention cache of {k.shape[0]} rows cannot serve {b} queries (not a multiple)")
        if groups > 1:  # (B, H, Lq, D) -> (B / g, H, g * Lq, D): the rows that share a context, as one query
            q = q.unflatten(0, (-1, groups)).transpose(1, 2).flatten(2, 3)

        if is_causal and not cross:
            if mask is not None:
                raise ValueError(
                    "pass either is_causal=True or an explicit mask, not both (fold causality into the mask)"
                )
            if lq == 1:
                is_causal = False  # one new query may see every cached key
            elif lq != lk:
                mask, is_causal = causal_mask(lq, lk, device=x.device), False
        if mask is not None:
            mask = self._broadcastable(mask, b // groups, lq * groups, lk)
            if mask.is_floating_point():
                mask = mask.to(q.dtype)  # SDPA needs the bias in the query dtype (bf16 under autocast)

        out, weights = attend(
            q,
            k,
            v,
            mask=mask,
            is_causal=is_causal,
            dropout_p=self.attn_drop if self.training else 0.0,
            fused=self.fused_attn,
            return_weights=return_weights,
        )
        if groups > 1:  # back to one row per sample
            out = out.unflatten(2, (groups, lq)).transpose(1, 2).flatten(0, 1)  # (B, H, Lq, D)
            weights = weights.unflatten(2, (groups, lq)).transpose(1, 2).flatten(0, 1) if return_weights else None
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, lq, self.dim)))
        return (out, weights) if return_weights else out

    def _broadcastable(self, mask: Tensor, b: int, lq: int, lk: int) -> Tensor:
        shape = (b, self.num_heads, lq, lk)
        if mask.dim() > 4:
            raise ValueError(
                f"mask must have at most 4 dims broadcastable to (B, H, Lq, Lk) = {shape}, got {tuple(mask.shape)}"
            )
        full = (1,) * (4 - mask.dim()) + tuple(mask.shape)
        if any(m not in (1, s) for m, s in zip(full, shape)):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to (B, H, Lq, Lk) = {shape}")
        return mask.view(full)
