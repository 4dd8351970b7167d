"""Cached incremental decoding gives the same outputs as recomputing the whole sequence."""

import pytest
import torch

from core_attention import Decoder, KVCache, RotaryEmbedding
from dalle.transformer.masks import dalle_mask

DIM, HEADS, DEPTH, B, L = 32, 4, 2, 2, 10


def make_decoder(**kwargs) -> Decoder:
    torch.manual_seed(0)
    return Decoder(DIM, DEPTH, HEADS, **kwargs).eval()


def decode_incrementally(decoder, x, *, context=None, prompt_len=1, rope=None, masks=None):
    cache = decoder.init_cache(B, x.shape[1], context_len=None if context is None else context.shape[1])
    outs, start = [], 0
    for end in [prompt_len, *range(prompt_len + 1, x.shape[1] + 1)]:
        kwargs = {}
        if rope is not None:
            kwargs["rope"] = rope(torch.arange(start, end))
        if masks is not None:
            kwargs["mask"] = [m[start:end, :end] for m in masks]
        outs.append(decoder(x[:, start:end], context, cache=cache, **kwargs))
        start = end
    assert cache.length == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("prompt_len", [1, 4])
@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_cached_equals_full_self_attention(prompt_len, kv_heads):
    decoder = make_decoder(cross_attention=False, num_kv_heads=kv_heads)
    x = torch.randn(B, L, DIM)
    full = decoder(x)
    torch.testing.assert_close(decode_incrementally(decoder, x, prompt_len=prompt_len), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompt_len", [1, 3])
def test_cached_equals_full_with_cross_attention(prompt_len):
    decoder = make_decoder(cross_attention=True, qk_norm=True)
    x, memory = torch.randn(B, L, DIM), torch.randn(B, 6, DIM)
    full = decoder(x, memory)
    cached = decode_incrementally(decoder, x, context=memory, prompt_len=prompt_len)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_cached_equals_full_with_rotary_and_gqa():
    decoder = make_decoder(cross_attention=False, num_kv_heads=2)
    rope = RotaryEmbedding(DIM // HEADS)
    x = torch.randn(B, L, DIM)
    full = decoder(x, rope=rope(torch.arange(L)))
    torch.testing.assert_close(decode_incrementally(decoder, x, prompt_len=3, rope=rope), full, atol=1e-5, rtol=1e-5)


def test_cached_equals_full_with_per_layer_sparse_masks():
    decoder = make_decoder(cross_attention=False)
    text_len, grid = 3, 3
    masks = [dalle_mask(text_len, grid, "row"), dalle_mask(text_len, grid, "conv", kernel_size=3)]
    x = torch.randn(B, text_len + grid * grid, DIM)
    full = decoder(x, mask=masks)
    cached = decode_incrementally(decoder, x, prompt_len=text_len, masks=masks)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_cache_is_preallocated_and_updated_in_place():
    cache = KVCache(B, 8, 2, 4)
    k_ptr = cache.k.data_ptr()
    k_all, _ = cache.update(torch.ones(B, 2, 3, 4), torch.ones(B, 2, 3, 4))
    cache.update(torch.full((B, 2, 1, 4), 2.0), torch.ones(B, 2, 1, 4))
    assert cache.k.data_ptr() == k_ptr and k_all.data_ptr() == k_ptr
    assert cache.length == 4 and (cache.get()[0][:, :, 3] == 2).all()


def test_cache_overflow_and_shape_errors():
    cache = KVCache(B, 4, 2, 4)
    cache.update(torch.zeros(B, 2, 3, 4), torch.zeros(B, 2, 3, 4))
    with pytest.raises(ValueError, match=r"overflow: 3 cached \+ 2 new = 5 positions > max_len 4"):
        cache.update(torch.zeros(B, 2, 2, 4), torch.zeros(B, 2, 2, 4))
    with pytest.raises(ValueError, match=r"received keys of shape \(2, 3, 1, 4\)"):
        cache.update(torch.zeros(B, 3, 1, 4), torch.zeros(B, 3, 1, 4))


def test_cache_in_bf16_autocast():
    decoder = make_decoder(cross_attention=False)
    x = torch.randn(B, L, DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cache = decoder.init_cache(B, L, dtype=torch.bfloat16)
        step = decoder(x[:, :4], cache=cache)
        step = decoder(x[:, 4:5], cache=cache)
    assert torch.isfinite(step).all() and cache.length == 5


@pytest.mark.parametrize("sparse", [False, True])
def test_fixed_shape_steps_equal_the_full_pass(sparse):
    """`cache_position` (a compiled step's static shapes): write at a tensor position, attend to the whole cache
    with the keys after it masked. Same outputs as the full pass, with and without cross-attention / sparse masks."""
    text_len, grid = 3, 3
    n = text_len + grid * grid
    masks = [dalle_mask(text_len, grid, "row"), dalle_mask(text_len, grid, "conv", kernel_size=3)] if sparse else None
    decoder = make_decoder(cross_attention=not sparse)
    x, memory = torch.randn(B, n, DIM), (None if sparse else torch.randn(B, 5, DIM))
    full = decoder(x, memory, mask=masks)
    cache = decoder.init_cache(B, n, context_len=None if sparse else 5)
    outs = [decoder(x[:, :text_len], memory, cache=cache, mask=masks and [m[:text_len, :text_len] for m in masks])]
    for p in range(text_len, n):
        rows = masks and [m[p : p + 1] for m in masks]  # whole-cache rows: (1, n)
        outs.append(decoder(x[:, p : p + 1], None, cache=cache, mask=rows, cache_position=torch.tensor([p])))
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


def test_write_fills_the_buffers_in_place_at_a_tensor_position():
    cache = KVCache(B, 6, 2, 4)
    k_ptr = cache.k.data_ptr()
    k_all, v_all = cache.write(torch.ones(B, 2, 1, 4), torch.full((B, 2, 1, 4), 2.0), torch.tensor([3]))
    assert k_all.data_ptr() == k_ptr and k_all.shape == (B, 2, 6, 4)
    assert k_all[:, :, 3].eq(1).all() and v_all[:, :, 3].eq(2).all()
    assert k_all[:, :, [0, 1, 2, 4, 5]].eq(0).all() and cache.length == 0  # zeros elsewhere: masked keys stay finite
