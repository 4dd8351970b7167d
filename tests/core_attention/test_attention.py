"""MultiHeadAttention: fused ≡ eager, mask semantics, causality, reference equality, gradients, bad input."""

import pytest
import torch
from torch import nn

from core_attention import Linear, MultiHeadAttention, causal_mask, key_padding_mask
from dalle.transformer.masks import dalle_mask

B, L, DIM, HEADS = 2, 12, 32, 4


def make_attn(**kwargs) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(DIM, HEADS, **kwargs).eval()


def both_paths(attn: MultiHeadAttention, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    attn.fused_attn = True
    fused = attn(*args, **kwargs)
    attn.fused_attn = False
    eager = attn(*args, **kwargs)
    attn.fused_attn = True
    return fused, eager


def mask_cases() -> dict:
    torch.manual_seed(1)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, -3:] = True
    return {
        "none": dict(),
        "is_causal": dict(is_causal=True),
        "bool_causal": dict(mask=causal_mask(L)),
        "key_padding": dict(mask=key_padding_mask(pad)),
        "float_bias": dict(mask=torch.randn(B, HEADS, L, L)),
        "per_head_bool": dict(mask=(torch.rand(1, HEADS, L, L) > 0.3) | torch.eye(L, dtype=torch.bool)),
        "dalle_row": dict(mask=dalle_mask(3, 3, "row")),
        "dalle_column": dict(mask=dalle_mask(3, 3, "column")),
        "dalle_conv": dict(mask=dalle_mask(3, 3, "conv", kernel_size=3)),
    }


@pytest.mark.parametrize("case", list(mask_cases()))
@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_fused_equals_eager_for_every_mask(case, kv_heads):
    attn = make_attn(num_kv_heads=kv_heads)
    x = torch.randn(B, L, DIM)
    fused, eager = both_paths(attn, x, **mask_cases()[case])
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_fused_equals_eager_cross_attention_with_padding():
    attn = make_attn(qk_norm=True)
    x, ctx = torch.randn(B, 5, DIM), torch.randn(B, 9, DIM)
    pad = torch.zeros(B, 9, dtype=torch.bool)
    pad[1, 4:] = True
    fused, eager = both_paths(attn, x, ctx, mask=key_padding_mask(pad))
    torch.testing.assert_close(fused, eager, atol=1e-5, rtol=1e-5)


def test_masked_key_cannot_change_output():
    attn = make_attn()
    x = torch.randn(B, L, DIM)
    mask = torch.ones(L, L, dtype=torch.bool)
    mask[:, 4] = False  # nobody may look at position 4
    y = attn(x, mask=mask)
    x2 = x.clone()
    x2[:, 4] += 100.0
    y2 = attn(x2, mask=mask)
    keep = [i for i in range(L) if i != 4]  # position 4's own query changes, its key/value must not matter
    torch.testing.assert_close(y[:, keep], y2[:, keep], atol=1e-5, rtol=1e-5)
    # polarity: True = may attend; flipping the mask does change the result
    assert not torch.allclose(attn(x, mask=mask), attn(x, mask=~mask | torch.eye(L, dtype=torch.bool)))


@pytest.mark.parametrize("kwargs", [dict(is_causal=True), dict(mask=dalle_mask(3, 3, "conv", kernel_size=3))])
def test_causal_outputs_ignore_the_future(kwargs):
    attn = make_attn()
    x = torch.randn(B, L, DIM)
    t = 6
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
    torch.testing.assert_close(attn(x, **kwargs)[:, : t + 1], attn(x2, **kwargs)[:, : t + 1], atol=1e-6, rtol=1e-6)


def test_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(DIM, HEADS, batch_first=True).eval()
    ours = MultiHeadAttention(DIM, HEADS).eval()
    with torch.no_grad():
        ours.qkv.weight.copy_(ref.in_proj_weight)
        ours.qkv.bias.copy_(ref.in_proj_bias)
        ours.proj.weight.copy_(ref.out_proj.weight)
        ours.proj.bias.copy_(ref.out_proj.bias)
    x, ctx = torch.randn(B, L, DIM), torch.randn(B, 7, DIM)
    mask = causal_mask(L)
    expected, expected_w = ref(x, x, x, attn_mask=~mask, average_attn_weights=False)  # torch: True = blocked
    got, got_w = ours(x, mask=mask, return_weights=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_w, expected_w, atol=1e-6, rtol=1e-5)
    expected_cross, _ = ref(x, ctx, ctx)
    torch.testing.assert_close(ours(x, ctx), expected_cross, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_flow_through_every_path(fused):
    attn = MultiHeadAttention(DIM, HEADS, num_kv_heads=2, qk_norm=True, attn_drop=0.1, proj_drop=0.1).train()
    attn.fused_attn = fused
    x = torch.randn(B, L, DIM, requires_grad=True)
    ctx = torch.randn(B, 5, DIM, requires_grad=True)
    (attn(x, is_causal=True).sum() + attn(x, ctx).sum()).backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0 and ctx.grad.abs().sum() > 0


def test_bf16_autocast_runs_and_stays_close():
    attn = make_attn()
    x = torch.randn(B, L, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attn(x, mask=torch.randn(L, L))
        y_causal = attn(x, is_causal=True)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y_causal.float(), attn(x, is_causal=True), atol=5e-2, rtol=5e-2)


def test_return_weights_rows_sum_to_one():
    out, w = make_attn()(torch.randn(B, L, DIM), is_causal=True, return_weights=True)
    assert w.shape == (B, HEADS, L, L)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, HEADS, L))
    assert (w.triu(1) == 0).all()


def test_bad_input_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"dim \(30\) must be divisible by num_heads \(4\)"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        MultiHeadAttention(32, 4, num_kv_heads=3)
    attn = make_attn()
    with pytest.raises(ValueError, match=r"expected x of shape \(B, L, 32\), got \(2, 12, 16\)"):
        attn(torch.randn(B, L, 16))
    with pytest.raises(
        ValueError, match=r"mask of shape \(5, 5\) does not broadcast to \(B, H, Lq, Lk\) = \(2, 4, 12, 12\)"
    ):
        attn(torch.randn(B, L, DIM), mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be bool"):
        attn(torch.randn(B, L, DIM), mask=torch.ones(L, L, dtype=torch.long))
    with pytest.raises(ValueError, match="either is_causal=True or an explicit mask"):
        attn(torch.randn(B, L, DIM), mask=causal_mask(L), is_causal=True)


# ---------------------------------------------------------------------------------------------------- Linear


@pytest.mark.parametrize("shape", [(1, 64), (4, 64), (4, 1, 64), (2, 3, 64), (16, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_decoding_path_matches_f_linear(shape, bias):
    torch.manual_seed(0)
    layer = Linear(64, 96, bias=bias)
    x = torch.randn(shape, requires_grad=True)
    out = layer(x)
    ref = nn.functional.linear(x, layer.weight, layer.bias)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if x.numel() > 64:  # more than one row: the (W xᵀ)ᵀ product ran, and its result is a transposed view
        assert not out.is_contiguous()
    grads = torch.autograd.grad(out.square().sum(), (x, layer.weight))
    refs = torch.autograd.grad(ref.square().sum(), (x, layer.weight))
    for g, r in zip(grads, refs):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    # The transposed view feeds the next layer as it is (the next linear copies it to rows).
    head = Linear(96, 8)
    torch.testing.assert_close(head(out), nn.functional.linear(ref, head.weight, head.bias), atol=1e-5, rtol=1e-5)


def test_linear_is_nn_linear_and_leaves_other_inputs_to_f_linear():
    layer = Linear(32, 48)
    assert isinstance(layer, nn.Linear)
    assert layer.state_dict().keys() == nn.Linear(32, 48).state_dict().keys()
    many = torch.randn(17, 32)  # more rows than a decoding step: plain F.linear (contiguous result)
    assert layer(many).is_contiguous()
    torch.testing.assert_close(layer(many), nn.functional.linear(many, layer.weight, layer.bias))
    half = layer.to(torch.bfloat16)
    assert half(torch.randn(4, 32, dtype=torch.bfloat16)).is_contiguous()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert Linear(32, 48)(torch.randn(4, 32)).dtype == torch.bfloat16


def test_attention_of_a_decoding_step_equals_a_contiguous_one():
    # The projections of a one-token step come back as transposed views; attention (and SDPA's fused CPU kernel,
    # which needs unit-stride head dims) must give the same result as for contiguous inputs.
    torch.manual_seed(0)
    attn = MultiHeadAttention(64, 4).eval()
    x = torch.randn(3, 1, 64)
    context = torch.randn(3, 7, 64)
    assert not attn.qkv(x).is_contiguous()
    with torch.no_grad():
        ref_self = nn.functional.scaled_dot_product_attention(*(t.contiguous() for t in attn._project_qkv(x)))
        torch.testing.assert_close(attn(x), attn.proj(ref_self.transpose(1, 2).reshape(3, 1, 64)), atol=1e-6, rtol=1e-5)
        with torch.profiler.profile() as prof:
            attn(x)
        assert not [e.key for e in prof.key_averages() if "attention_math" in e.key], "SDPA fell back to its math path"
        attn.fused_attn = False
        eager = attn(x, context)
        attn.fused_attn = True
        torch.testing.assert_close(attn(x, context), eager, atol=1e-6, rtol=1e-5)
