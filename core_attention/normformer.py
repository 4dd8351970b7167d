"""The NormFormer block (Shleifer et al. 2021): pre-norm residual branches with one more LayerNorm after each
attention, and a GLU feed-forward with a norm inside. DALL·E Mini and Mega are built from it."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from .attention import MultiHeadAttention
from .cache import KVCache
from .glu import GluMlp


class NormFormerBlock(nn.Module):
    """x + post_norm1(attn(norm1(x))) [+ post_norm_cross(cross_attn(norm_cross(x), context))] + mlp(norm2(x)).

    Same call signature as `TransformerBlock`, so the same caches, masks and decoding loops drive it. The extra
    norms after attention keep the residual stream's scale steady in deep stacks (the reason NormFormer exists).
    `bias=False` (DALL·E Mini / Mega) drops every projection bias; the LayerNorms keep theirs.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hidden_features: int,
        *,
        cross_attention: bool = False,
        bias: bool = False,
        norm_eps: float = 1e-5,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, dim, eps=norm_eps)
        attn = partial(MultiHeadAttention, dim, num_heads, qkv_bias=bias, proj_bias=bias)
        self.norm1, self.attn, self.post_norm1 = norm(), attn(), norm()
        if cross_attention:
            self.norm_cross, self.cross_attn, self.post_norm_cross = norm(), attn(), norm()
        else:
            self.cross_attn = None
        self.norm2 = norm()
        self.mlp = GluMlp(dim, hidden_features, act_layer=act_layer, bias=bias, mid_norm=True, norm_eps=norm_eps)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        context_mask: Tensor | None = None,
        cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        cache_position: Tensor | None = None,
    ) -> Tensor:
        """x: (B, L, dim); context: (B, Lc, dim) for the cross-attention branch. Returns (B, L, dim)."""
        x = x + self.post_norm1(
            self.attn(self.norm1(x), mask=mask, is_causal=is_causal, cache=cache, cache_position=cache_position)
        )
        if self.cross_attn is not None:
            attended = self.cross_attn(self.norm_cross(x), context, mask=context_mask, cache=cross_cache)
            x = x + self.post_norm_cross(attended)
        elif context is not None:
            raise ValueError("`context` given to a NormFormerBlock built without cross_attention=True")
        return x + self.mlp(self.norm2(x))
