"""Small layers shared by every transformer: linear, MLP, stochastic depth, LayerScale (timm's parameter names)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Inputs of at most this many rows take the decoding-step product of `linear` (0 turns it off: the benchmark's
# reference). On an AVX2 EPYC it beat F.linear from 2 to 32 rows; 16 covers a step of 8 prompts with guidance.
MAX_FAST_ROWS = 16


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """`F.linear(x, weight, bias)`, computed the fast way for a decoding step on CPU.

    A step feeds one token per sequence, so x has a handful of rows and the product is bound by reading the
    weight. In fp32 on CPU, MKL streams the weight about twice as fast when asked for (W xᵀ)ᵀ (each weight row
    dotted with every x row) as for x Wᵀ: `benchmarks/generate.py`'s 4 rows x 38M weights read at ~9 GB/s instead
    of ~4.5. It is the same product, so the same numbers up to float rounding, returned as a transposed view;
    elementwise ops, residual adds and the next `linear` (which copies its input to rows) all take it as it is.
    Other devices and dtypes, autocast, inputs of more than MAX_FAST_ROWS rows and compiled graphs go to `F.linear`.
    """
    if (
        x.numel() > MAX_FAST_ROWS * x.shape[-1]  # cheapest tests first: this runs for every projection of every step
        or x.dtype is not torch.float32
        or not x.is_cpu
        or not x.numel()
        or torch.is_autocast_enabled("cpu")
        or torch.compiler.is_compiling()  # inductor picks its own kernel for the product (see core_attention.compiled)
    ):
        return F.linear(x, weight, bias)
    *lead, n_in = x.shape
    x_rows = x.reshape(-1, n_in).contiguous()  # (R, in): the fast kernel reads x by rows
    out = (
        torch.mm(weight, x_rows.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x_rows.t())
    )  # (out, R)
    return out.t().view(*lead, -1)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state dict) whose forward is `linear`: fast decoding steps on CPU."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with; its weights need this exact
    curve."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """fc1 -> activation -> dropout -> fc2 -> dropout."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `drop_prob` while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT), initialised small to ease deep training."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Truncated-normal linear and embedding weights, zero biases, unit norms (timm / GPT-2 convention).

    Use as `model.apply(init_weights)`.
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.trunc_normal_(module.weight, std=std)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
