"""CLIP as a judge of text-to-image output: the CLIP score metric and a reranker for `generate --rerank clip`.

CLIP score is 100 * max(cos(image, prompt), 0) with CLIP's embeddings, averaged over images (torchmetrics'
`CLIPScore` convention; Hessel et al. scale by 2.5 instead of 100). DALL·E kept the candidates CLIP scored highest.

    python -m dalle generate "a red bicycle" --candidates 64 -n 4 --rerank clip --rerank-checkpoint ViT-B-32/openai

The `python -m dalle clip-score` command is `dalle.judges.clip_score_cli`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from vit.clip import CLIP, load_clip


@torch.no_grad()
def clip_similarity(
    model: CLIP, prompts: Sequence[str], images: Tensor | Sequence[Tensor], batch_size: int = 32
) -> Tensor:
    """Cosine similarity (N,) of each image with its prompt (N prompts, repeats allowed).

    `images`: (N, 3, H, W) in [0, 1], or a list of (3, H, W) of different sizes; CLIP's preprocessing (bicubic resize
    of the short side, centre crop) brings each to the model's input size.
    """
    prompts = list(prompts)
    if isinstance(images, Tensor) and (images.dim() != 4 or images.shape[1] != 3):
        raise ValueError(f"expected RGB images (N, 3, H, W) with values in [0, 1], got {tuple(images.shape)}")
    if len(prompts) != len(images):
        raise ValueError(f"need one prompt per image: got {len(prompts)} prompts for {len(images)} images")
    if not prompts:
        raise ValueError("no images to score")
    index = {p: i for i, p in enumerate(dict.fromkeys(prompts))}  # a prompt's candidates share one text embedding
    unique = list(index)
    text = torch.cat([model.encode_prompts(unique[i : i + batch_size]) for i in range(0, len(unique), batch_size)])
    row = torch.tensor([index[p] for p in prompts], device=text.device)
    sims = []
    for start in range(0, len(prompts), batch_size):
        chunk = images[start : start + batch_size]
        if isinstance(chunk, Tensor):
            pixels = model.preprocess(chunk)  # (b, 3, S, S)
        else:
            pixels = torch.cat([model.preprocess(im) for im in chunk])
        image = model.encode_image(pixels, normalize=True)  # (b, E)
        sims.append((image * text[row[start : start + batch_size]]).sum(-1))
    return torch.cat(sims).float().cpu()


def clip_score(model: CLIP, prompts: Sequence[str], images: Tensor | Sequence[Tensor], batch_size: int = 32) -> Tensor:
    """Per-image CLIP score (N,): 100 * max(cosine similarity, 0); report its mean over a set of images."""
    return 100 * clip_similarity(model, prompts, images, batch_size).clamp(min=0)


class CLIPReranker:
    """`(prompts, images) -> scores` for `generate_images(rerank=...)`: higher means closer to the prompt."""

    def __init__(self, model: CLIP, batch_size: int = 32) -> None:
        self.model, self.batch_size = model.eval(), batch_size

    def __call__(self, prompts: list[str], images: Tensor) -> Tensor:
        return 100 * clip_similarity(self.model, prompts, images, self.batch_size)  # not clamped: ranks every image


def load_scorer(checkpoint: str | Path, device: str | None = None) -> CLIPReranker:
    """The `--rerank clip --rerank-checkpoint PATH` factory; PATH is anything `vit.clip.load_clip` takes."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return CLIPReranker(load_clip(checkpoint).to(device))
