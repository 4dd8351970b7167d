"""The ViT options CLIP's image tower needs (pre_norm, quick_gelu, norm_eps) against timm's CLIP-layout ViT."""

import pytest
import timm
import torch
from open_clip.transformer import QuickGELU as OpenClipQuickGELU

from core_attention import QuickGELU
from vit import VisionTransformer, ViTConfig, from_timm


def test_quick_gelu_is_clips_curve():
    x = torch.linspace(-6, 6, 101)
    torch.testing.assert_close(QuickGELU()(x), OpenClipQuickGELU()(x), atol=0, rtol=0)
    assert (QuickGELU()(x) - torch.nn.functional.gelu(x)).abs().max() > 1e-3  # a different curve, not an alias


@pytest.mark.parametrize("act_layer", ["quick_gelu", "gelu"])
def test_timm_clip_layout_vit_loads_and_matches(act_layer):
    small = dict(img_size=64, embed_dim=64, depth=2, num_heads=4, num_classes=7)
    ref = timm.create_model("vit_base_patch32_clip_224", pretrained=False, act_layer=act_layer, **small).eval()
    torch.manual_seed(0)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)  # far from the LayerNorm init, so a skipped norm_pre shows
    ours = from_timm(ref).eval()
    assert (ours.config.pre_norm, ours.config.act_layer, ours.config.norm_eps) == (True, act_layer, 1e-5)
    assert ours.patch_embed.proj.bias is None and "norm_pre.weight" in ours.state_dict()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=0)


def test_defaults_keep_the_old_state_dict_and_config():
    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    assert "norm_pre.weight" not in model.state_dict() and model.patch_embed.proj.bias is not None
    old = {k: v for k, v in ViTConfig().to_dict().items() if k not in ("pre_norm", "act_layer", "norm_eps")}
    assert ViTConfig.from_dict(old) == ViTConfig()  # configs saved before these options load unchanged
    with pytest.raises(ValueError, match="act_layer must be one of"):
        VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, act_layer="relu")
