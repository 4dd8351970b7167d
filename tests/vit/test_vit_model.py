"""vit.VisionTransformer: timm parity (keys, logits, files), pos_embed resampling, head dropping, own weights,
bad input."""

import logging
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from vit import VisionTransformer, ViTConfig, config_from_timm, from_timm, load_timm_weights, read_state_dict

# (timm model name, kwargs for timm.create_model, kwargs for our VisionTransformer) -- small depth/size for speed.
VARIANTS = {
    "tiny16_token": (
        "vit_tiny_patch16_224",
        dict(img_size=64, depth=2),
        dict(img_size=64, patch_size=16, embed_dim=192, depth=2, num_heads=3),
    ),
    "tiny16_avg_no_cls": (
        "vit_tiny_patch16_224",
        dict(img_size=64, depth=2, class_token=False, global_pool="avg"),
        dict(img_size=64, patch_size=16, embed_dim=192, depth=2, num_heads=3, class_token=False, global_pool="avg"),
    ),
    "tiny16_reg4_ls_noembcls": (
        "vit_tiny_patch16_224",
        dict(img_size=64, depth=2, reg_tokens=4, init_values=1e-5, no_embed_class=True),
        dict(
            img_size=64,
            patch_size=16,
            embed_dim=192,
            depth=2,
            num_heads=3,
            reg_tokens=4,
            init_values=1e-5,
            no_embed_class=True,
        ),
    ),
    "small32_token_avg": (
        "vit_small_patch32_224",
        dict(img_size=96, depth=2, global_pool="avg"),
        dict(img_size=96, patch_size=32, embed_dim=384, depth=2, num_heads=6, global_pool="avg"),
    ),
    "tiny8_reg2_embcls": (
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=8, depth=2, reg_tokens=2),
        dict(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, reg_tokens=2),
    ),
    "deit3_small": (
        "deit3_small_patch16_224",
        dict(img_size=48, depth=2),
        dict(img_size=48, patch_size=16, embed_dim=384, depth=2, num_heads=6, init_values=1e-6, no_embed_class=True),
    ),
    "reg4_gap_nonsquare": (
        "vit_base_patch16_reg4_gap_256",
        dict(img_size=(32, 48), depth=2, embed_dim=64, num_heads=2, num_classes=7),
        dict(
            img_size=(32, 48),
            patch_size=16,
            embed_dim=64,
            depth=2,
            num_heads=2,
            num_classes=7,
            class_token=False,
            no_embed_class=True,
            global_pool="avg",
            reg_tokens=4,
        ),
    ),
}


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every parameter (timm's init leaves norms at 1/0 and LayerScale tiny, which hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 and p.shape[0] > 0 else 0.0) * 0.5)
    return model.eval()


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize(timm.create_model(name, pretrained=False, **kwargs))


def image(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timm_state_dict_loads_strict_with_same_logits(variant):
    name, timm_kwargs, our_kwargs = VARIANTS[variant]
    ref = timm_model(name, **timm_kwargs)
    ours = VisionTransformer(**our_kwargs).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names, same order
    ours.load_state_dict(ref.state_dict(), strict=True)
    h, w = ours.patch_embed.img_size
    x = image((2, 3, h, w))
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=1e-4, rtol=0)
        torch.testing.assert_close(
            ours.forward_head(ours.forward_features(x), pre_logits=True),
            ref.forward_head(ref.forward_features(x), pre_logits=True),
            atol=1e-4,
            rtol=0,
        )
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("variant", ["tiny16_reg4_ls_noembcls", "reg4_gap_nonsquare", "small32_token_avg"])
def test_config_from_timm_and_from_timm(variant):
    name, timm_kwargs, our_kwargs = VARIANTS[variant]
    ref = timm_model(name, **timm_kwargs)
    cfg = config_from_timm(ref)
    expected = ViTConfig(**{**our_kwargs, "img_size": our_kwargs["img_size"]})
    for field in (
        "patch_size",
        "embed_dim",
        "depth",
        "num_heads",
        "class_token",
        "reg_tokens",
        "no_embed_class",
        "global_pool",
    ):
        assert getattr(cfg, field) == getattr(expected, field), field
    ours = from_timm(ref).eval()
    h, w = ours.patch_embed.img_size
    x = image((1, 3, h, w))
    with torch.no_grad():
        assert (ours(x) - ref(x)).abs().max().item() <= 1e-4


def test_timm_files_safetensors_and_pth(tmp_path):
    name, timm_kwargs, our_kwargs = VARIANTS["tiny16_reg4_ls_noembcls"]
    ref = timm_model(name, **timm_kwargs)
    sd = ref.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save(sd, tmp_path / "w.pth")
    torch.save({"model": sd, "epoch": 3}, tmp_path / "wrapped.pth")  # DeiT-style checkpoint
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")
    x = image((2, 3, 64, 64))
    with torch.no_grad():
        expected = ref(x)
        for file in ("w.safetensors", "w.pth", "wrapped.pth", "ddp.pth"):
            ours = load_timm_weights(VisionTransformer(**our_kwargs), tmp_path / file).eval()
            assert (ours(x) - expected).abs().max().item() <= 1e-4, file


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pth_is_read_with_weights_only(tmp_path):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"pos_embed": _Payload()}, f, protocol=2)
    with pytest.raises(ValueError, match="refused to load"):
        read_state_dict(tmp_path / "evil.pth")


def test_other_image_size_resamples_pos_embed_like_timm(caplog):
    name, timm_kwargs, our_kwargs = VARIANTS["tiny16_token"]
    ref = timm_model(name, **timm_kwargs)  # 64 px -> 4x4 grid
    ours = VisionTransformer(**{**our_kwargs, "img_size": 96})  # 6x6 grid
    with caplog.at_level(logging.INFO):
        load_timm_weights(ours, ref.state_dict())
    assert "resampled pos_embed" in caplog.text
    expected = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=(6, 6), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.detach(), expected, atol=1e-6, rtol=0)
    # and the whole model matches timm's own loader at the new size
    ref96 = timm.create_model(name, pretrained=False, **{**timm_kwargs, "img_size": 96})
    ref96.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(ref.state_dict(), ref96))
    x = image((1, 3, 96, 96))
    with torch.no_grad():
        assert (ours.eval()(x) - ref96.eval()(x)).abs().max().item() <= 1e-4


def test_no_embed_class_resample_keeps_prefix_out():
    name, timm_kwargs, our_kwargs = VARIANTS["tiny16_reg4_ls_noembcls"]
    ref = timm_model(name, **timm_kwargs)
    ours = load_timm_weights(VisionTransformer(**{**our_kwargs, "img_size": 32}), ref)  # 4x4 -> 2x2
    assert ours.pos_embed.shape == (1, 4, 192)


def test_other_num_classes_drops_head_with_log(caplog):
    name, timm_kwargs, our_kwargs = VARIANTS["tiny16_token"]
    ref = timm_model(name, **timm_kwargs)
    ours = VisionTransformer(**{**our_kwargs, "num_classes": 10})
    head_before = ours.head.weight.detach().clone()
    with caplog.at_level(logging.WARNING):
        load_timm_weights(ours, ref.state_dict())
    assert "dropping the checkpoint's classifier head (1000 classes)" in caplog.text
    assert torch.equal(ours.head.weight, head_before)
    assert torch.equal(ours.blocks[1].mlp.fc2.weight, ref.blocks[1].mlp.fc2.weight)
    x = image((1, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(
            ours.eval().forward_head(ours.forward_features(x), pre_logits=True),
            ref.forward_head(ref.forward_features(x), pre_logits=True),
            atol=1e-4,
            rtol=0,
        )
    headless = VisionTransformer(**{**our_kwargs, "num_classes": 0})
    load_timm_weights(headless, ref.state_dict())
    assert headless(x).shape == (1, 192)


def test_mismatched_checkpoint_names_what_was_expected():
    name, timm_kwargs, our_kwargs = VARIANTS["tiny16_token"]
    ref = timm_model(name, **timm_kwargs)
    with pytest.raises(
        ValueError, match=r"shape mismatches(.|\n)*patch_embed.proj.weight: model expects \(96, 3, 16, 16\)"
    ):
        load_timm_weights(VisionTransformer(**{**our_kwargs, "embed_dim": 96}), ref.state_dict())
    with pytest.raises(ValueError, match=r"unexpected keys \(24\): blocks\.1\."):
        load_timm_weights(
            VisionTransformer(**{**our_kwargs, "depth": 1}), timm_model(name, **{**timm_kwargs, "depth": 3})
        )
    with pytest.raises(ValueError, match=r"missing keys \(1\): reg_token"):
        load_timm_weights(VisionTransformer(**{**our_kwargs, "reg_tokens": 1}), ref.state_dict())


def test_unsupported_timm_options_are_named():
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, qk_norm=True)
    with pytest.raises(ValueError, match="qk_norm"):
        config_from_timm(ref)


def test_save_pretrained_round_trip(tmp_path):
    model = randomize(
        VisionTransformer(
            img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=5, reg_tokens=1, init_values=0.1
        )
    )
    model.pretrained_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "class_names": list("abcde")}
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "config.json").is_file()
    loaded = VisionTransformer.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    assert loaded.pretrained_cfg["class_names"] == list("abcde")
    x = image((2, 3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    bigger = VisionTransformer.from_pretrained(tmp_path / "m" / "model.safetensors", img_size=48, num_classes=3)
    assert bigger.pos_embed.shape == (1, 2 + 36, 64) and bigger.head.out_features == 3
    assert "class_names" not in bigger.pretrained_cfg
    with pytest.raises(ValueError, match=r"unknown ViTConfig keys \[.embed_size.\]"):
        VisionTransformer.from_pretrained(tmp_path / "m", embed_size=3)


def test_config_matches_constructor_signature():
    import inspect

    params = inspect.signature(VisionTransformer.__init__).parameters
    fields = {f: getattr(ViTConfig(), f) for f in ViTConfig.__dataclass_fields__}
    assert list(fields) == [p for p in params if p != "self"]
    assert all(params[k].default == v for k, v in fields.items())


def test_timm_defaults_and_options():
    m = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2, drop_path_rate=0.3, init_values=1e-5
    )
    assert [round(b.drop_path1.drop_prob if hasattr(b.drop_path1, "drop_prob") else 0.0, 6) for b in m.blocks] == [
        0.0,
        0.1,
        0.2,
        0.3,
    ]
    assert all(b.norm1.eps == 1e-6 and b.attn.qkv.bias is not None for b in m.blocks) and m.norm.eps == 1e-6
    assert m.blocks[0].ls1.gamma.detach().eq(1e-5).all()
    assert m.no_weight_decay() == {"pos_embed", "cls_token", "reg_token"}
    tokens = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2, global_pool="")
    assert tokens.eval()(image((2, 3, 32, 32))).shape == (2, 17, 1000)
    assert tokens.forward_head(tokens.forward_features(image((2, 3, 32, 32))), pre_logits=True).shape == (2, 17, 64)
    m.reset_classifier(7, global_pool="avg")
    assert m.head.out_features == 7 and m.config.num_classes == 7 and m(image((1, 3, 32, 32))).shape == (1, 7)
    m.reset_classifier(0)
    assert isinstance(m.head, torch.nn.Identity)


def test_grad_checkpointing_and_eager_attention_give_the_same_numbers():
    torch.manual_seed(0)
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=3)
    x = image((2, 3, 32, 32))
    m.train()
    m(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5)
    m.eval()
    fused = m(x)
    for b in m.blocks:
        b.attn.fused_attn = False
    torch.testing.assert_close(m(x), fused, atol=1e-5, rtol=1e-5)


def test_bad_input_errors_name_what_was_expected():
    with pytest.raises(ValueError, match=r"image size 30x30 is not divisible by the patch size 8"):
        VisionTransformer(img_size=30, patch_size=8)
    with pytest.raises(ValueError, match=r"global_pool='token' needs the class token"):
        VisionTransformer(class_token=False, global_pool="token")
    m = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\), got \(1, 1, 32, 32\)"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got \(1, 3, 48, 32\): resize the input"):
        m(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"expected images of shape"):
        m(torch.randn(3, 32, 32))


def test_timm_model_names_go_through_create_model(monkeypatch):
    """The online path (`timm:<name>` / from_timm(name)) without network: create_model is asked for pretrained
    weights."""
    calls = []
    real = timm.create_model

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained))
        model = real(name, pretrained=False, img_size=32, depth=1, **kwargs)
        model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
        return randomize(model)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    ours = from_timm("vit_tiny_patch16_224", num_classes=3)
    assert calls == [("vit_tiny_patch16_224", True)]
    assert ours.config.depth == 1 and ours.head.out_features == 3 and ours.pretrained_cfg["mean"] == [0.5, 0.5, 0.5]
    target = VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3)
    load_timm_weights(target, "timm:vit_tiny_patch16_224")
    assert calls[-1] == ("vit_tiny_patch16_224", True)
