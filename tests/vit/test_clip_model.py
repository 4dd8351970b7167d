"""vit.clip.CLIP against open_clip (the reference, dev extra) with the same random weights: embeddings and logits."""

import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F
from clip_fixtures import perturb, tiny_open_clip

from vit.clip import (
    CLIP,
    VARIANTS,
    CLIPConfig,
    config_from_state_dict,
    convert_open_clip_state_dict,
    load_open_clip_weights,
)
from vit.clip.weights import check_variant

PROMPTS = ["a photo of a cat", "A DOG on the beach!!", "“quotes”, café & 日本語 🐱", "word " * 100]


@pytest.fixture(scope="module", params=["ViT-B-32", "ViT-B-32-quickgelu"])
def pair(request):
    logging.getLogger("root").setLevel(logging.ERROR)  # open_clip warns that pretrained=None means random weights
    torch.manual_seed(0)
    ref = perturb(open_clip.create_model(request.param, pretrained=None)).eval()
    config = config_from_state_dict(ref.state_dict(), quick_gelu=request.param.endswith("quickgelu"))
    assert config == VARIANTS[request.param]
    return ref, load_open_clip_weights(CLIP.empty(config), ref.state_dict())


def test_full_size_embeddings_and_logits_match_open_clip(pair):
    ref, ours = pair
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = open_clip.get_tokenizer("ViT-B-32")(PROMPTS[2:])  # non-ASCII and over-long; test_clip_tokenizer has more
    assert torch.equal(ours.tokenizer(PROMPTS[2:]), ids)
    with torch.no_grad():  # one small pass per tower and model: full size is slow on a shared CPU
        image_ref, text_ref = ref.encode_image(images), ref.encode_text(ids)
        image, text = ours.encode_image(images), ours.encode_text(ids)
    torch.testing.assert_close(image, image_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(text, text_ref, atol=1e-5, rtol=0)
    logits_ref = ref.logit_scale.exp() * F.normalize(image_ref, dim=-1) @ F.normalize(text_ref, dim=-1).T
    logits = ours.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T  # forward's formula
    torch.testing.assert_close(logits, logits_ref, atol=1e-5, rtol=0)


def test_wrong_image_size_and_bad_ids_are_clear_errors(pair):
    _, ours = pair
    with pytest.raises(ValueError, match=r"images of shape \(B, 3, 224, 224\), got \(1, 3, 256, 256\): .*preprocess"):
        ours.encode_image(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match=r"token ids of shape \(B, L <= 77\).*model.tokenizer"):
        ours.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids of shape \(B, L <= 77\)"):
        ours.encode_text(torch.zeros(0, 77, dtype=torch.long))
    with pytest.raises(ValueError, match="empty list of prompts"):
        ours.encode_prompts([])


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_tiny_model_matches_and_activation_matters(quick_gelu):
    ref = tiny_open_clip(quick_gelu)
    sd = ref.state_dict()
    ours = load_open_clip_weights(CLIP(config_from_state_dict(sd, quick_gelu=quick_gelu)), sd)
    other = load_open_clip_weights(CLIP(config_from_state_dict(sd, quick_gelu=not quick_gelu)), sd)
    images, ids = torch.randn(3, 3, 32, 32), open_clip.tokenize(PROMPTS[:2])
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(ids), ref.encode_text(ids), atol=1e-5, rtol=0)
        image_ref, text_ref, scale = ref(images, ids)  # normalised features
        torch.testing.assert_close(ours(images, ids), scale * image_ref @ text_ref.T, atol=1e-5, rtol=0)
        assert (other.encode_text(ids) - ref.encode_text(ids)).abs().max() > 1e-4  # the test can tell them apart


@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-L-14", "ViT-L-14-quickgelu", "ViT-H-14"])
def test_larger_variants_map_name_for_name_and_shape_for_shape(name):
    with torch.device("meta"):  # shapes only: no memory, no init
        ref = open_clip.create_model(name, pretrained=None, device="meta")
        config = check_variant(config_from_state_dict(ref.state_dict(), quick_gelu=False), name, name)
        ours = CLIP(config).state_dict()
    assert config == VARIANTS[name]
    assert config.vision_heads == ref.visual.transformer.resblocks[0].attn.num_heads  # H-14: 16 heads of width 80
    assert config.quick_gelu == name.endswith("quickgelu")
    ref_sd = ref.state_dict()
    converted = convert_open_clip_state_dict(ref_sd)
    assert sorted(converted) == sorted(ours)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_save_pretrained_round_trip(tmp_path):
    ref = tiny_open_clip()
    model = load_open_clip_weights(CLIP(config_from_state_dict(ref.state_dict(), quick_gelu=True)), ref.state_dict())
    model.save_pretrained(tmp_path / "clip")
    loaded = CLIP.from_pretrained(tmp_path / "clip")
    assert loaded.config == model.config and '"architecture": "CLIP"' in (tmp_path / "clip" / "config.json").read_text()
    ids, images = model.tokenizer(["a red circle"]), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, ids), model(images, ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown CLIPConfig keys"):
        CLIPConfig.from_dict({"width": 3})


def test_bf16_model_takes_preprocessed_images_and_prompts():
    ref = tiny_open_clip()
    model = load_open_clip_weights(CLIP(config_from_state_dict(ref.state_dict(), quick_gelu=True)), ref.state_dict())
    images = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fp32 = model.encode_image(model.preprocess(images), normalize=True) @ model.encode_prompts(["a cat"]).T
        model.to(torch.bfloat16)
        pixels = model.preprocess(images)  # in the model's dtype, so no cast is left to the caller
        bf16 = model.encode_image(pixels, normalize=True) @ model.encode_prompts(["a cat"]).T
    assert pixels.dtype == torch.bfloat16 and bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, atol=3e-2, rtol=0)
