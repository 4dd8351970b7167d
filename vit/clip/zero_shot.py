"""Zero-shot classification with CLIP: the label whose prompt embeds closest to the image wins.

python -m vit zero-shot photo.jpg --labels "a cat" "a dog" --clip ViT-B-32/openai --template "a photo of {}."
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .model import CLIP


@torch.no_grad()
def zero_shot(model: CLIP, images: Sequence[Any] | Tensor, labels: Sequence[str], template: str = "{}") -> Tensor:
    """Probabilities (N_images, N_labels): softmax over the labels of CLIP's logits.

    `images`: PIL images, or a (B, 3, H, W) tensor in [0, 1] (both go through `model.preprocess`); `template`
    turns each label into its prompt (CLIP's paper: "a photo of a {}.").
    """
    labels = list(labels)
    if not labels:
        raise ValueError("zero-shot classification needs at least one label")
    if "{}" not in template:
        raise ValueError(f"the template must contain '{{}}' where the label goes, got {template!r}")
    if isinstance(images, Tensor):
        pixels = model.preprocess(images)  # (B, 3, S, S)
    else:
        if not images:
            raise ValueError("zero-shot classification needs at least one image")
        pixels = torch.cat([model.preprocess(image) for image in images])
    text = model.encode_prompts([template.format(label) for label in labels])  # (L, E), normalised
    image = model.encode_image(pixels, normalize=True)  # (B, E)
    return (model.logit_scale.exp() * image @ text.T).softmax(dim=-1)


def zero_shot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vit zero-shot",
        description="Rank free-text labels for each image with CLIP (no training): prints the top-k labels and their "
        "probabilities (softmax over the given labels).",
    )
    p.add_argument("images", nargs="+", help="image files (any mode; converted to RGB)")
    p.add_argument("--labels", nargs="+", required=True, help='candidate labels, e.g. --labels "a cat" "a dog"')
    p.add_argument(
        "--clip",
        required=True,
        help="CLIP weights: a CLIP.save_pretrained folder, open_clip_model.safetensors / "
        "open_clip_pytorch_model.bin, OpenAI's ViT-B-32.pt, hf-hub:<repo>, or a name such as "
        "ViT-B-32/openai (downloads once)",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="architecture name (ViT-B-32, ViT-B-32-quickgelu, ViT-B-16, ViT-L-14, ...): needed for an "
        "OpenCLIP file without its open_clip_config.json, checked against the weights otherwise",
    )
    p.add_argument("--template", default="{}", help='prompt for each label, e.g. "a photo of {}." (default: the label)')
    p.add_argument("--top-k", type=int, default=5, help="labels to print per image (default: 5)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return p


def zero_shot_main(argv: list[str]) -> list[list[tuple[str, float]]]:
    from PIL import Image

    from .weights import load_clip

    args = zero_shot_parser().parse_args(argv)
    if args.top_k < 1:
        raise SystemExit(f"--top-k must be >= 1, got {args.top_k}")
    model = load_clip(args.clip, args.variant).to(args.device)
    images = []
    for path in args.images:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    probs = zero_shot(model, images, args.labels, template=args.template)
    results = []
    for path, row in zip(args.images, probs):
        top = row.topk(min(args.top_k, len(args.labels)))
        ranked = [(args.labels[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist())]
        print(f"{path}: " + ", ".join(f"{label} ({p:.3f})" for label, p in ranked))
        results.append(ranked)
    return results
