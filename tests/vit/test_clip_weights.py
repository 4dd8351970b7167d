"""Loading CLIP weights: OpenCLIP files, OpenAI TorchScript archives (without running them), hub names offline."""

import json
import pickle
import zipfile

import open_clip
import pytest
import torch
from clip_fixtures import TINY_CFG, save_open_clip_folder, save_openai_torchscript, tiny_open_clip

from vit.clip import CLIP, VARIANTS, config_from_state_dict, load_clip, load_open_clip_weights, read_torchscript
from vit.clip.weights import check_variant

IDS = open_clip.tokenize(["a photo of a cat", "two dogs"])
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def assert_same(ours: CLIP, ref) -> None:
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(IMAGES), ref.encode_image(IMAGES), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encode_text(IDS), ref.encode_text(IDS), atol=1e-5, rtol=0)
    assert not ours.training


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_open_clip_hub_folder_and_file(tmp_path, quick_gelu):
    ref = tiny_open_clip(quick_gelu)
    file = save_open_clip_folder(ref, tmp_path / "repo", quick_gelu)
    for source in (file, file.parent):  # open_clip_config.json beside the weights says which activation
        model = load_clip(source)
        assert model.config.quick_gelu is quick_gelu
        assert_same(model, ref)


def test_hub_config_gives_the_head_counts_and_refuses_what_is_not_built(tmp_path):
    # Head counts are not in the shapes; open_clip's ViT-H-14 has head_width 80, so width // 64 would be wrong.
    cfg = {
        **TINY_CFG,
        "vision_cfg": {**TINY_CFG["vision_cfg"], "head_width": 32},
        "text_cfg": {**TINY_CFG["text_cfg"], "heads": 4},
    }
    ref = tiny_open_clip(False, cfg=cfg)
    model = load_clip(save_open_clip_folder(ref, tmp_path / "repo", False, cfg=cfg).parent)
    assert (model.config.vision_heads, model.config.text_heads) == (2, 4)
    assert_same(model, ref)
    cfg = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "attentional_pool": True, "pool_type": "tok"}}
    save_open_clip_folder(ref, tmp_path / "other", False, cfg=cfg)
    with pytest.raises(ValueError, match=r"options vit.clip lacks: attentional_pool=True$"):
        load_clip(tmp_path / "other")


def test_bin_and_training_checkpoints_load_with_weights_only(tmp_path):
    ref = tiny_open_clip(False)
    torch.save(ref.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="cannot tell from the weights whether this CLIP was trained with QuickGELU"):
        load_clip(tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    assert_same(load_clip(tmp_path), ref)
    train = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    torch.save(train, tmp_path / "epoch_3.pt")  # open_clip's training checkpoint layout (DDP prefixes)
    assert_same(load_clip(tmp_path / "epoch_3.pt"), ref)


def test_openai_torchscript_is_read_without_running_it(tmp_path, monkeypatch):
    ref = tiny_open_clip(True)
    path = save_openai_torchscript(ref, tmp_path / "ViT-tiny.pt")
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load runs the archive"))
    tensors = read_torchscript(path)
    assert tensors["visual.conv1.weight"].dtype == torch.float16 and "attn_mask" in tensors
    model = load_clip(path)  # OpenAI's archives were all trained with QuickGELU
    assert model.config == config_from_state_dict(ref.state_dict(), quick_gelu=True)
    assert_same(model, ref.half().float())  # the archive holds fp16 weights; loaded as fp32


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/should-not-exist-clip-test", "w"))


def test_torchscript_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": _Payload()}, protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
    with pytest.raises(ValueError, match=r"refused to read .*evil.pt: its data.pkl needs (io|builtins)\.open"):
        load_clip(path, variant="ViT-B-32")
    assert not (tmp_path / "should-not-exist-clip-test").exists()


def test_another_variant_is_named():
    with torch.device("meta"):
        sd = open_clip.create_model("ViT-B-16", pretrained=None, device="meta").state_dict()
    config = config_from_state_dict(sd, quick_gelu=False)
    assert check_variant(config, "ViT-B-16-quickgelu", "x.safetensors") == VARIANTS["ViT-B-16-quickgelu"]
    with pytest.raises(
        ValueError,
        match=r"x.safetensors is not a ViT-B-32 checkpoint: its weights have patch_size 16 "
        r"\(variant: 32\); it looks like ViT-B-16 or ViT-B-16-quickgelu",
    ):
        check_variant(config, "ViT-B-32", "x.safetensors")
    with pytest.raises(ValueError, match="unknown CLIP variant 'ViT-bigG-14'"):
        check_variant(config, "ViT-bigG-14", "x.safetensors")
    ref = tiny_open_clip()
    with pytest.raises(ValueError, match=r"shape mismatches(.|\n)*visual.patch_embed.proj.weight: model expects"):
        load_open_clip_weights(CLIP.empty(VARIANTS["ViT-B-32"]), ref.state_dict())


def test_hub_names_download_once_and_fail_clearly_offline(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic is off")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError) as err:
        load_clip("ViT-B-32/laion2b_s34b_b79k")
    message = str(err.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message and "open_clip_model.safetensors" in message
    url = "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/open_clip_model.safetensors"
    assert url in message  # where to fetch it by hand

    ref = tiny_open_clip(True)
    save_open_clip_folder(ref, tmp_path / "cache", quick_gelu=True)
    asked = []

    def cached(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(tmp_path / "cache" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", cached)
    assert_same(load_clip("hf-hub:someone/tiny-clip"), ref)
    assert asked == [("someone/tiny-clip", name) for name in ("open_clip_model.safetensors", "open_clip_config.json")]
    # A known repo gets its variant (OpenAI's QuickGELU) even when the hub config would not say it; checked here by
    # the tiny files failing the variant's shapes.
    with pytest.raises(ValueError, match="is not a ViT-B-32-quickgelu checkpoint"):
        load_clip("hf-hub:timm/vit_base_patch32_clip_224.openai")


def test_save_pretrained_folder_loads_through_load_clip(tmp_path):
    ref = tiny_open_clip(True)
    load_clip(save_open_clip_folder(ref, tmp_path / "repo", True)).save_pretrained(tmp_path / "ours")
    assert_same(load_clip(tmp_path / "ours"), ref)
    with pytest.raises(FileNotFoundError, match="holds no CLIP weights"):
        load_clip(tmp_path)
    with pytest.raises(FileNotFoundError, match="CLIP weights nowhere.pt not found"):
        load_clip("nowhere.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors is not a valid safetensors file"):
        load_clip(tmp_path / "broken.safetensors", variant="ViT-B-32")
