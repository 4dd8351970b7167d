"""DALLE: sequence layout, padding, heads, loss weighting, causality, sparse layers, strict save/load, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dalle.transformer.model import DALLE, DALLEConfig, paper_attn_types

T, G, VT, VI = 5, 4, 40, 24  # text length, grid side, text vocab, image vocab
N = G * G


def tiny(**overrides) -> DALLE:
    torch.manual_seed(0)
    cfg = dict(text_vocab_size=VT, text_seq_len=T, image_vocab_size=VI, image_grid_size=G, dim=32, depth=2, num_heads=4)
    return DALLE(**{**cfg, **overrides}).eval()


def batch(b: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    text = torch.randint(1, VT, (b, T), generator=g)
    text[:, 3:] = 0  # padded captions
    return text, torch.randint(0, VI, (b, N), generator=g)


def test_forward_shapes_and_weighted_loss() -> None:
    model = tiny()
    text, image = batch()
    out = model(text, image)
    assert out.text_logits.shape == (3, T, VT) and out.image_logits.shape == (3, N, VI)
    text_loss = F.cross_entropy(out.text_logits.flatten(0, 1), text.flatten())
    image_loss = F.cross_entropy(out.image_logits.flatten(0, 1), image.flatten())
    torch.testing.assert_close(out.loss, (text_loss + 7 * image_loss) / 8)
    # (B, h, w) image ids are the same as (B, N)
    torch.testing.assert_close(model(text, image.view(3, G, G)).loss, out.loss)
    assert model.config.seq_len == T + N


def test_each_text_pad_position_has_its_own_embedding() -> None:
    model = tiny()
    text = torch.zeros(1, T, dtype=torch.long)  # the empty (unconditional) caption
    x = model.embed_text(text)[0]  # (T + 1, dim): <bos> + T pads
    pos = model.text_pos.weight
    torch.testing.assert_close(x[1:] - pos[1:], model.text_pad_emb)  # pad at position k -> text_pad_emb[k]
    torch.testing.assert_close(x[0] - pos[0], model.text_emb.weight[0])  # row 0 ([PAD]) is only ever <bos>
    with torch.no_grad():
        model.text_emb.weight[0].add_(1.0)
    assert torch.equal(model.embed_text(text)[0, 1:], x[1:])  # pads do not use the [PAD] row


def test_image_positions_are_row_plus_column() -> None:
    model = tiny()
    pos = model.image_pos().view(G, G, -1)
    torch.testing.assert_close(pos[2, 3], model.image_row_emb[2] + model.image_col_emb[3])


@pytest.mark.parametrize("attn_types", [("full",), ("row", "column"), ("conv",)])
def test_causal_every_position_sees_only_the_past(attn_types) -> None:
    model = tiny(attn_types=attn_types, conv_kernel_size=3)
    text, image = batch(1)
    out = model(text, image)
    j = 6
    changed = image.clone()
    changed[0, j] = (changed[0, j] + 1) % VI
    out2 = model(text, changed)
    torch.testing.assert_close(out2.text_logits, out.text_logits)
    torch.testing.assert_close(
        out2.image_logits[:, : j + 1], out.image_logits[:, : j + 1]
    )  # predictions of tokens <= j
    text2 = text.clone()
    text2[0, 2] = 7
    out3 = model(text2, image)
    torch.testing.assert_close(out3.text_logits[:, :3], out.text_logits[:, :3])
    assert not torch.allclose(out3.image_logits, out.image_logits)  # every image position sees the text


def test_row_layer_sees_only_its_own_row() -> None:
    # One "row" layer: the prediction of token k comes from token k-1 and the earlier tokens of k-1's row.
    model = tiny(depth=1, attn_types=("row",))
    text, image = batch(1)
    base = model(text, image).image_logits
    k = 7  # predicts token 7 from token 6 (row 1 = tokens 4..7)
    for j, same_row in [(2, False), (3, False), (4, True), (5, True)]:
        changed = image.clone()
        changed[0, j] = (changed[0, j] + 1) % VI
        moved = not torch.allclose(model(text, changed).image_logits[0, k], base[0, k])
        assert moved == same_row, (
            f"token {j} {'should' if same_row else 'should not'} reach the prediction of token {k}"
        )


def test_layer_types_cycle_and_paper_pattern() -> None:
    model = tiny(depth=5, attn_types=("row", "column", "conv"))
    assert model.layer_types == ["row", "column", "conv", "row", "column"]
    assert {name for name, _ in model.named_buffers()} == {"mask_row", "mask_column", "mask_conv"}
    assert "mask_row" not in model.state_dict()  # masks are rebuilt, never saved
    assert paper_attn_types(6) == ("row", "row", "column", "row", "row", "conv")
    masks = model.layer_masks(T + 3, T + 4)
    assert masks[0].shape == (1, T + 4)


def test_save_and_load_pretrained_strict(tmp_path) -> None:
    model = tiny(attn_types=("row", "full"))
    model.save_pretrained(tmp_path)
    loaded = DALLE.from_pretrained(tmp_path)
    assert loaded.config == model.config
    text, image = batch()
    torch.testing.assert_close(loaded(text, image).loss, model(text, image).loss)
    other = tiny(dim=64)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not match"):
        from core_attention.io import load_state_dict_checked

        load_state_dict_checked(model, DALLE.from_pretrained(tmp_path / "other").state_dict())


def test_config_round_trip_and_validation() -> None:
    cfg = DALLEConfig(attn_types=["row", "conv"])
    assert DALLEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="attn_types"):
        DALLEConfig(attn_types=("axial",))
    with pytest.raises(ValueError, match="divisible"):
        DALLEConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown"):
        DALLEConfig.from_dict({"width": 3})


def test_bad_inputs_have_clear_errors() -> None:
    model = tiny()
    text, image = batch()
    with pytest.raises(ValueError, match=r"text_seq_len=5"):
        model(text[:, :4], image)
    with pytest.raises(ValueError, match=r"text ids must be in \[0, 39\]"):
        model(text + VT, image)
    with pytest.raises(ValueError, match=r"image ids must be in \[0, 23\]"):
        model(text, image + VI)
    with pytest.raises(ValueError, match="16 tokens"):
        model(text, image[:, :10])
    with pytest.raises(ValueError, match="integer"):
        model(text.float(), image)
