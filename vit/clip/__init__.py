"""CLIP on the shared core: the image tower is `vit.VisionTransformer`, the text tower `core_attention` blocks.

    from vit.clip import load_clip
    model = load_clip("ViT-B-32/openai")  # or a path: open_clip_model.safetensors, OpenAI's ViT-B-32.pt, a folder
    probs = zero_shot(model, [image], ["a photo of a cat", "a photo of a dog"])  # (1, 2)

`python -m vit zero-shot photo.jpg --labels "a cat" "a dog" --clip PATH` does the same from the shell.
"""

from .model import CLIP, CLIP_MEAN, CLIP_STD, CLIPConfig, TextTransformer, image_transform
from .tokenizer import CLIPTokenizer
from .weights import (
    PRETRAINED,
    VARIANTS,
    config_from_state_dict,
    convert_open_clip_state_dict,
    load_clip,
    load_open_clip_weights,
    read_open_clip_state_dict,
    read_torchscript,
)
from .zero_shot import zero_shot

__all__ = [
    "CLIP",
    "CLIPConfig",
    "CLIPTokenizer",
    "CLIP_MEAN",
    "CLIP_STD",
    "PRETRAINED",
    "TextTransformer",
    "VARIANTS",
    "config_from_state_dict",
    "convert_open_clip_state_dict",
    "image_transform",
    "load_clip",
    "load_open_clip_weights",
    "read_open_clip_state_dict",
    "read_torchscript",
    "zero_shot",
]
