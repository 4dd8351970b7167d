"""Gated feed-forward layer (GLU family): the MLP of DALL·E Mini / Mega, T5 v1.1, PaLM and LLaMA."""

from __future__ import annotations

from torch import Tensor, nn

from .layers import Linear


class GluMlp(nn.Module):
    """fc2(norm(act(fc0 x) * fc1 x)): a gate branch and a value branch multiplied ("GLU Variants Improve
    Transformer", Shazeer 2020), GELU gate by default (GEGLU).

    `mid_norm` adds NormFormer's LayerNorm on the gated hidden units (DALL·E Mega has it); without it `norm` is an
    identity. Bias-free by default, as in the GLU models this layer exists for.
    """

    def __init__(
        self,
        dim: int,
        hidden_features: int,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = False,
        mid_norm: bool = False,
        norm_eps: float = 1e-5,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc0 = Linear(dim, hidden_features, bias=bias)  # gate: goes through the activation
        self.fc1 = Linear(dim, hidden_features, bias=bias)  # value
        self.act = act_layer()
        self.norm = nn.LayerNorm(hidden_features, eps=norm_eps) if mid_norm else nn.Identity()
        self.drop = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, dim) -> (B, L, dim)."""
        return self.fc2(self.drop(self.norm(self.act(self.fc0(x)) * self.fc1(x))))
