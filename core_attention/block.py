"""The pre-norm transformer block: self-attention, optional cross-attention, MLP, each a residual branch."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from .attention import MultiHeadAttention
from .cache import KVCache
from .layers import DropPath, LayerScale, Mlp


class TransformerBlock(nn.Module):
    """x + attn(norm1(x)) [+ cross_attn(norm_cross(x), context)] + mlp(norm2(x)).

    Parameter names follow timm's ViT block (`norm1`, `attn.qkv`, `attn.proj`, `ls1`, `norm2`, `mlp.fc1`,
    `mlp.fc2`, `ls2`), so timm checkpoints map one to one; the cross-attention branch adds `norm_cross`,
    `cross_attn`, `ls_cross`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        cross_attention: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        init_values: float | None = None,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, dim, eps=norm_eps)
        attn = partial(
            MultiHeadAttention,
            dim,
            num_heads,
            num_kv_heads=num_kv_heads,
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            norm_eps=norm_eps,
        )
        scale = lambda: LayerScale(dim, init_values) if init_values else nn.Identity()  # noqa: E731

        self.norm1 = norm()
        self.attn = attn()
        self.ls1 = scale()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if cross_attention:
            self.norm_cross = norm()
            self.cross_attn = attn()
            self.ls_cross = scale()
        else:
            self.cross_attn = None
        self.norm2 = norm()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = scale()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        context_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
        cache: KVCache | None = None,
        cross_cache: KVCache | None = None,
        cache_position: Tensor | None = None,
    ) -> Tensor:
        """x: (B, L, dim); context: (B, Lc, dim) for the cross-attention branch. Returns (B, L, dim)."""
        x = x + self.drop_path1(
            self.ls1(
                self.attn(
                    self.norm1(x), mask=mask, is_causal=is_causal, rope=rope, cache=cache, cache_position=cache_position
                )
            )
        )
        if self.cross_attn is not None:
            if context is None and (cross_cache is None or cross_cache.length == 0):
                raise ValueError("this block has cross-attention: pass `context` (e.g. the encoder output)")
            attended = self.cross_attn(self.norm_cross(x), context, mask=context_mask, cache=cross_cache)
            x = x + self.drop_path1(self.ls_cross(attended))
        elif context is not None:
            raise ValueError("`context` given to a block built without cross_attention=True")
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def attention_weights(self, x: Tensor, *, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Self-attention weights (B, H, L, L) of this block for input x (eager path; for maps and teaching)."""
        return self.attn(self.norm1(x), mask=mask, is_causal=is_causal, return_weights=True)[1]
