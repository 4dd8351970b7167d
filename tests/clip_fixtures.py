"""Small random-weight open_clip models (the reference implementation) for the CLIP tests; nothing is downloaded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

TINY_CFG = {  # open_clip's model_cfg layout, as in an open_clip_config.json; heads = width // 64 as in OpenAI's
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Move the vectors off their init: LayerNorms at exactly 1/0 and zero biases would hide a norm or bias applied in
    the wrong place. The matrices are random already (and perturbing ViT-B/32's 150M weights takes seconds)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(torch.randn(p.shape, generator=gen) * std)
    return model


def tiny_open_clip(quick_gelu: bool = True, seed: int = 0, cfg: dict = TINY_CFG) -> OpenClipCLIP:
    model = OpenClipCLIP(
        cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]), quick_gelu=quick_gelu
    )
    return perturb(model, seed).eval()


def save_open_clip_folder(model: OpenClipCLIP, folder: Path, quick_gelu: bool, cfg: dict = TINY_CFG) -> Path:
    """An open_clip Hugging Face repo's layout: open_clip_model.safetensors + open_clip_config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": {**cfg, "quick_gelu": quick_gelu}, "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder / "open_clip_model.safetensors"


def save_openai_torchscript(model: OpenClipCLIP, path: Path) -> Path:
    """A TorchScript archive with fp16 weights, as OpenAI released ViT-B-32.pt & co."""
    size = TINY_CFG["vision_cfg"]["image_size"]
    inputs = {"encode_image": torch.zeros(1, 3, size, size), "encode_text": torch.zeros(1, 77, dtype=torch.long)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing's deprecation and TracerWarnings: this is a fixture, not the test
        traced = torch.jit.trace_module(model, inputs)
    traced.half().save(str(path))
    return path
