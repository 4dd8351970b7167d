"""What a token is sampled from: temperature, top-k / top-p filters and classifier-free guidance.

Shared by every text-to-image transformer in `dalle.transformer` (the paper's DALL·E and DALL·E Mini / Mega).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_sampling_args", "filter_logits", "guide_logits", "sample_logits", "sampling_logits"]


def check_sampling_args(
    temperature: float, top_k: int | None, top_p: float | None, guidance_scale: float = 1.0
) -> None:
    if not temperature > 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature} (use a small value such as 0.1 for near-greedy sampling)"
        )
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no top-k filter), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None for no nucleus filter), got {top_p}")
    if not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance, 3 = typical), got {guidance_scale}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """(B, V) logits with everything outside the top_k and outside the top_p nucleus set to -inf (new tensor).

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p; the most likely token is
    always kept, so a row never ends up empty.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass of the strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = sorted_logits.scatter(-1, order, sorted_logits)  # back to vocabulary order
    return logits


def guide_logits(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: (2B, V) = [conditional; unconditional] -> (B, V) = u + scale * (c - u)."""
    cond, uncond = logits.float().chunk(2)
    return uncond + scale * (cond - uncond)


def sampling_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """The logits a token is drawn from: temperature, then the top_k / top_p filter, then guidance.

    Without guidance: (B, V) -> (B, V). With guidance (scale != 1): (2B, V) = [conditional; unconditional] -> (B, V),
    guided within the conditional model's top_k / top_p set. Guiding outside that set would boost exactly the tokens
    the unconditional model finds unlikely, however unlikely they are under the prompt too (u + s (c - u) grows as
    u falls): on the shapes data unfiltered guidance at scale 3 drew the wrong image for most prompts, guidance
    within the conditional top-p 0.9 set none (see docs/benchmarks.md, "Generation").
    """
    logits = logits.float() / temperature
    if guidance_scale == 1.0:
        return filter_logits(logits, top_k, top_p)
    cond, _ = logits.chunk(2)
    outside = filter_logits(cond, top_k, top_p).isinf()
    return guide_logits(logits, guidance_scale).masked_fill(outside, float("-inf"))


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """One token per image from (B, V) logits ((2B, V) with guidance, see `sampling_logits`) -> (B,) long."""
    probs = sampling_logits(logits, temperature, top_k, top_p, guidance_scale).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
