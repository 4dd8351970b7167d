"""core_attention's GLU feed-forward, NormFormer block and bias-free attention output projection."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core_attention import DecoderCache, GluMlp, KVCache, MultiHeadAttention, NormFormerBlock


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere, norms included (a norm left at ones / zeros would hide a swapped norm)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


def test_glu_mlp_is_the_gated_formula():
    mlp = GluMlp(16, 24, mid_norm=True)
    randomize_(mlp)
    x = torch.randn(2, 5, 16)
    hidden = F.gelu(F.linear(x, mlp.fc0.weight)) * F.linear(x, mlp.fc1.weight)
    expected = F.linear(F.layer_norm(hidden, (24,), mlp.norm.weight, mlp.norm.bias, 1e-5), mlp.fc2.weight)
    torch.testing.assert_close(mlp(x), expected)
    assert all(m.bias is None for m in (mlp.fc0, mlp.fc1, mlp.fc2))
    assert isinstance(GluMlp(16, 24).norm, torch.nn.Identity)
    assert GluMlp(16, 24, bias=True).fc0.bias is not None


def test_attention_proj_bias_option_keeps_default_names():
    assert set(MultiHeadAttention(16, 2).state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    assert set(MultiHeadAttention(16, 2, qkv_bias=False, proj_bias=False).state_dict()) == {"qkv.weight", "proj.weight"}


def _reference_block(block: NormFormerBlock, x, context, is_pad):
    """The NormFormer block written out with plain torch ops, heads and all."""

    def attention(attn, q_in, kv_in, mask):
        d, h = attn.dim, attn.num_heads
        wq, wk, wv = attn.qkv.weight.split(d)
        split = lambda t: t.view(t.shape[0], t.shape[1], h, d // h).transpose(1, 2)  # noqa: E731
        q, k, v = split(q_in @ wq.t()), split(kv_in @ wk.t()), split(kv_in @ wv.t())
        scores = (q @ k.transpose(-1, -2)) / (d // h) ** 0.5
        scores = scores.masked_fill(~mask, float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(q_in.shape)
        return out @ attn.proj.weight.t()

    L = x.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    x = x + block.post_norm1(attention(block.attn, block.norm1(x), block.norm1(x), causal))
    y = block.norm_cross(x)
    x = x + block.post_norm_cross(attention(block.cross_attn, y, context, ~is_pad[:, None, None, :]))
    return x + block.mlp(block.norm2(x))


def test_normformer_block_matches_the_written_out_math():
    block = NormFormerBlock(32, 4, 48, cross_attention=True)
    randomize_(block, 1)
    x, context = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    is_pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    out = block(x, context, is_causal=True, context_mask=~is_pad[:, None, None, :])
    torch.testing.assert_close(out, _reference_block(block, x, context, is_pad), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix", [1, 4])
def test_normformer_cached_decoding_equals_full_pass(prefix):
    blocks = torch.nn.ModuleList(NormFormerBlock(32, 4, 48, cross_attention=True) for _ in range(2))
    randomize_(blocks, 2)
    x, context = torch.randn(3, 9, 32), torch.randn(3, 6, 32)
    mask = torch.ones(3, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., -2:] = False

    def run(h, cache=None, ctx=context):
        for i, block in enumerate(blocks):
            h = block(
                h,
                ctx,
                is_causal=True,
                context_mask=mask,
                cache=cache and cache.self_attn[i],
                cross_cache=cache and cache.cross_attn[i],
            )
        return h

    full = run(x)
    cache = DecoderCache([KVCache(3, 9, 4, 8) for _ in blocks], [KVCache(3, 6, 4, 8, static=True) for _ in blocks])
    steps = [run(x[:, :prefix], cache)] + [run(x[:, j : j + 1], cache, None) for j in range(prefix, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_normformer_block_without_cross_attention_refuses_context():
    block = NormFormerBlock(16, 2, 24)
    assert block.cross_attn is None and not any("cross" in k for k in block.state_dict())
    with pytest.raises(ValueError, match="cross_attention"):
        block(torch.randn(1, 3, 16), torch.randn(1, 2, 16))


@pytest.mark.parametrize("fused", [True, False])
def test_shared_context_equals_repeated_context(fused):
    """A context of B / g rows serves g consecutive query rows: the same result as repeating each context g times,
    through a static cache as well (one copy of a prompt's keys / values for all its samples)."""
    attn = MultiHeadAttention(32, 4, qkv_bias=False, proj_bias=False)
    attn.fused_attn = fused
    randomize_(attn, 3)
    x, context = torch.randn(6, 2, 32), torch.randn(2, 5, 32)  # 2 contexts x 3 samples each
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[1, ..., -2:] = False
    expected = attn(x, context.repeat_interleave(3, 0), mask=mask.repeat_interleave(3, 0))
    torch.testing.assert_close(attn(x, context, mask=mask), expected, atol=1e-5, rtol=1e-5)
    cache = KVCache(2, 5, 4, 8, static=True)
    attn(x[:, :1], context, mask=mask, cache=cache)
    torch.testing.assert_close(attn(x[:, 1:], None, mask=mask, cache=cache), expected[:, 1:], atol=1e-5, rtol=1e-5)
    weights = attn(x, context, mask=mask, return_weights=True)[1]
    assert weights.shape == (6, 4, 2, 5) and torch.equal(weights[3:, ..., -2:], torch.zeros(3, 4, 2, 2))
    with pytest.raises(ValueError, match="divisor"):
        attn(x, torch.randn(4, 5, 32))
