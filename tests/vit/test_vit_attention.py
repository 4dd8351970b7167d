"""Attention maps of vit.VisionTransformer: per-layer/per-head weights, rollout, PNG overlay and the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from vit import VisionTransformer, attention_maps, attention_rollout
from vit.__main__ import attention_parser, main


def tiny(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        **{**dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=4), **kwargs}
    ).eval()


@pytest.mark.parametrize("kwargs", [dict(), dict(class_token=False, global_pool="avg", reg_tokens=2)])
def test_maps_and_rollout(kwargs):
    model = tiny(**kwargs)
    x = torch.randn(2, 3, 32, 32)
    maps = attention_maps(model, x)
    n = 16 + model.num_prefix_tokens
    assert len(maps) == 3 and all(m.shape == (2, 4, n, n) for m in maps)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, n))
    rollout = attention_rollout(maps)
    assert rollout.shape == (2, n, n) and (rollout >= 0).all()
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, n), atol=1e-5, rtol=0)
    # the maps are the ones the fused forward uses: replaying them gives the model's features
    with torch.no_grad():
        tokens = model.embed(x)
        for block, a in zip(model.blocks, maps):
            w = block.attn.qkv.weight
            q, k, v = (
                torch.nn.functional.linear(block.norm1(tokens), w, block.attn.qkv.bias)
                .view(2, n, 3, 4, 8)
                .permute(2, 0, 3, 1, 4)
            )
            attn_out = block.attn.proj((a @ v).transpose(1, 2).reshape(2, n, 32))
            tokens = tokens + block.ls1(attn_out)
            tokens = tokens + block.ls2(block.mlp(block.norm2(tokens)))
        torch.testing.assert_close(model.norm(tokens), model.forward_features(x), atol=1e-5, rtol=1e-4)


def test_rollout_bad_arguments():
    with pytest.raises(ValueError, match="at least one layer"):
        attention_rollout([])
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([torch.rand(1, 2, 3, 3)], head_fusion="median")


def test_cli_writes_overlay_with_the_image_aspect(tmp_path, capsys):
    model = tiny()
    model.pretrained_cfg = {"mean": [0.5] * 3, "std": [0.5] * 3, "class_names": ["a", "b", "c", "d"]}
    model.save_pretrained(tmp_path / "weights")
    img = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(img)
    out = main(
        [
            "attention",
            str(img),
            "--checkpoint",
            str(tmp_path / "weights"),
            "--out",
            str(tmp_path / "map.png"),
            "--save-maps",
            str(tmp_path / "maps.safetensors"),
        ]
    )
    assert out == tmp_path / "map.png"
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (50, 30)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "maps.safetensors"))
    assert saved["maps"].shape == (3, 4, 17, 17)
    torch.testing.assert_close(saved["rollout"].sum(-1), torch.ones(17), atol=1e-5, rtol=0)
    assert "prediction:" in capsys.readouterr().out
    # one layer, one head, default output next to the input
    out = main(
        [
            "attention",
            str(img),
            "--checkpoint",
            str(tmp_path / "weights" / "model.safetensors"),
            "--layer",
            "-1",
            "--head",
            "2",
        ]
    )
    assert out == tmp_path / "wide.attention.png" and Image.open(out).size == (50, 30)
    with pytest.raises(ValueError, match="head 9 out of range: layer 1 has 4 heads"):
        main(["attention", str(img), "--checkpoint", str(tmp_path / "weights"), "--layer", "1", "--head", "9"])


def test_cli_rejects_rgba_and_grayscale_unless_converted(tmp_path):
    tiny().save_pretrained(tmp_path / "w")
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (40, 40), (10, 20, 30, 128)).save(rgba)
    gray = tmp_path / "gray.png"
    Image.new("L", (40, 40), 100).save(gray)
    with pytest.raises(ValueError, match=r"RGBA \(with an alpha channel\).*expects 3-channel RGB"):
        main(["attention", str(rgba), "--checkpoint", str(tmp_path / "w")])
    with pytest.raises(ValueError, match=r"grayscale image.*expects 3-channel RGB"):
        main(["attention", str(gray), "--checkpoint", str(tmp_path / "w")])
    assert main(["attention", str(rgba), "--checkpoint", str(tmp_path / "w"), "--convert"]).is_file()


def test_attention_help_explains_every_option():
    text = attention_parser().format_help()
    for action in attention_parser()._actions:
        assert action.help, action.dest
    for opt in (
        "--checkpoint",
        "--out",
        "--layer",
        "--head",
        "--head-fusion",
        "--alpha",
        "--convert",
        "--no-ema",
        "--save-maps",
    ):
        assert opt in text
