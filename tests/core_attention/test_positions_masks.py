"""Positional encodings, masks and small layers."""

import math

import pytest
import torch

from core_attention import (
    AxialRotaryEmbedding,
    DropPath,
    LayerScale,
    LearnedPositionalEmbedding,
    Mlp,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    TransformerBlock,
    apply_rotary,
    causal_mask,
    grid_coords,
    key_padding_mask,
    mask_to_text,
    resample_pos_embed,
    sincos_2d,
    sinusoidal_table,
)
from dalle.transformer.masks import dalle_mask, save_mask_png


def test_sinusoidal_table_matches_the_paper():
    table = sinusoidal_table(50, 16)
    pos, i = 7, 3
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    enc = SinusoidalPositionalEncoding(16, max_len=50)
    x = torch.zeros(2, 5, 16)
    torch.testing.assert_close(enc(x, offset=3)[0], table[3:8])
    with pytest.raises(ValueError, match="max_len 50"):
        enc(torch.zeros(1, 51, 16))


def test_learned_embedding_offsets_and_limits():
    emb = LearnedPositionalEmbedding(8, max_len=10)
    x = torch.zeros(1, 4, 8)
    torch.testing.assert_close(emb(x, offset=2)[0], emb.weight[2:6].detach())
    with pytest.raises(ValueError, match="max_len 10"):
        emb(x, offset=8)


def test_sincos_2d_halves_encode_row_and_column():
    table = sincos_2d((3, 4), 16)
    assert table.shape == (12, 16)
    grid = table.view(3, 4, 16)
    assert torch.equal(grid[0, :, :8], grid[0, :1, :8].expand(4, 8))  # same row -> same first half
    assert torch.equal(grid[:, 0, 8:], grid[:1, 0, 8:].expand(3, 8))  # same column -> same second half


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> float:
        ci, si = rope(torch.tensor([i]))
        cj, sj = rope(torch.tensor([j]))
        return (apply_rotary(q, ci, si) * apply_rotary(k, cj, sj)).sum().item()

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    c, s = rope(torch.arange(5))
    torch.testing.assert_close(apply_rotary(q.expand(1, 1, 5, 8), c, s).norm(dim=-1), q.norm(dim=-1).expand(1, 1, 5))


def test_axial_rotary_depends_on_relative_row_and_column():
    rope = AxialRotaryEmbedding(16)
    q, k = torch.randn(16), torch.randn(16)

    def score(a: tuple[int, int], b: tuple[int, int]) -> float:
        ca, sa = rope(torch.tensor([a[0]]), torch.tensor([a[1]]))
        cb, sb = rope(torch.tensor([b[0]]), torch.tensor([b[1]]))
        return (apply_rotary(q, ca[0], sa[0]) * apply_rotary(k, cb[0], sb[0])).sum().item()

    assert score((2, 3), (1, 1)) == pytest.approx(score((5, 4), (4, 2)), abs=1e-5)
    assert score((2, 3), (1, 1)) != pytest.approx(score((2, 3), (1, 2)), abs=1e-3)
    rows, cols = grid_coords(2, 3)
    assert rows.tolist() == [0, 0, 0, 1, 1, 1] and cols.tolist() == [0, 1, 2, 0, 1, 2]


def test_rotary_in_attention_matches_manual_rotation():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2).eval()
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 6, 16)
    fused = attn(x, is_causal=True, rope=rope(torch.arange(6)))
    attn.fused_attn = False
    torch.testing.assert_close(fused, attn(x, is_causal=True, rope=rope(torch.arange(6))), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused, attn(x, is_causal=True))


def test_resample_pos_embed_keeps_prefix_and_matches_timm():
    timm_resample = pytest.importorskip("timm.layers").resample_abs_pos_embed
    pe = torch.randn(1, 1 + 4 * 4, 8)
    ours = resample_pos_embed(pe, (6, 6), num_prefix_tokens=1)
    assert ours.shape == (1, 37, 8) and torch.equal(ours[:, :1], pe[:, :1])
    torch.testing.assert_close(ours, timm_resample(pe, (6, 6), num_prefix_tokens=1), atol=1e-6, rtol=1e-6)
    assert resample_pos_embed(pe, 4) is pe
    with pytest.raises(ValueError, match="cannot infer a square grid from 15"):
        resample_pos_embed(torch.randn(1, 16, 8), 6, num_prefix_tokens=1)


def test_causal_and_padding_masks():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]  # lower-right aligned
    pad = torch.tensor([[False, False, True]])
    assert key_padding_mask(pad).shape == (1, 1, 1, 3) and key_padding_mask(pad)[0, 0, 0].tolist() == [
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="True at padding"):
        key_padding_mask(torch.zeros(1, 3))


@pytest.mark.parametrize("kind", ["full", "row", "column", "conv"])
def test_dalle_masks_are_causal_and_see_all_text(kind):
    text, grid = 4, 5
    mask = dalle_mask(text, grid, kind, kernel_size=3)
    n = text + grid * grid
    assert mask.shape == (n, n)
    assert not (mask & ~causal_mask(n)).any()  # never looks ahead
    assert mask[text:, :text].all()  # every image token sees all text
    assert mask.diagonal().all()


def test_dalle_sparse_patterns():
    text, g = 2, 4
    img = lambda r, c: text + r * g + c  # noqa: E731
    row, col, conv = (dalle_mask(text, g, k, kernel_size=3) for k in ("row", "column", "conv"))
    assert row[img(2, 3), img(2, 0)] and not row[img(2, 3), img(1, 3)]
    assert col[img(2, 3), img(0, 3)] and not col[img(2, 3), img(2, 2)]
    assert conv[img(2, 2), img(1, 1)] and conv[img(2, 2), img(2, 1)] and not conv[img(2, 2), img(0, 2)]
    with pytest.raises(ValueError, match="unknown sparse attention kind 'diagonal'"):
        dalle_mask(text, g, "diagonal")


def test_mask_debug_views(tmp_path):
    text = mask_to_text(causal_mask(3))
    assert text.splitlines() == ["█··", "██·", "███"]
    path = save_mask_png(dalle_mask(2, 3, "row"), tmp_path / "mask.png", scale=2)
    from PIL import Image

    assert Image.open(path).size == (22, 22)


def test_layers():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4)
    drop = DropPath(0.5).train()
    y = drop(x)
    dropped = (y == 0).flatten(1).all(1)
    assert dropped.any() and (~dropped).any()
    torch.testing.assert_close(y[~dropped], x[~dropped] * 2)
    assert torch.equal(drop.eval()(x), x)
    ls = LayerScale(4, 0.1)
    torch.testing.assert_close(ls(x), x * 0.1)
    mlp = Mlp(4, 16)
    assert mlp(x).shape == x.shape and {n for n, _ in mlp.named_parameters()} == {
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    }


def test_block_uses_timm_names_and_cross_attention():
    block = TransformerBlock(16, 2, init_values=1e-5, cross_attention=True)
    names = set(block.state_dict())
    for key in [
        "norm1.weight",
        "attn.qkv.weight",
        "attn.proj.bias",
        "ls1.gamma",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc2.bias",
        "ls2.gamma",
        "norm_cross.weight",
        "cross_attn.qkv.weight",
        "ls_cross.gamma",
    ]:
        assert key in names, key
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    assert block(x, ctx).shape == x.shape
    with pytest.raises(ValueError, match="has cross-attention"):
        block(x)
    with pytest.raises(ValueError, match="without cross_attention"):
        TransformerBlock(16, 2)(x, ctx)
    weights = TransformerBlock(16, 2).attention_weights(x, is_causal=True)
    assert weights.shape == (2, 2, 5, 5)
