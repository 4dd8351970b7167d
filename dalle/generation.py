"""What generating with every DALL·E family shares, at the level of prompts and images: checking prompts, priming
with the top rows of an image, reranking candidates, saving grids. The token-level samplers are the families' own:
`dalle.pipeline.generate_images` (the models trained here) and `dalle.pretrained.generate_pretrained` (Mini / Mega).

A reranker is any callable ``(prompts: list[str], images: (N, 3, H, W) in [0, 1]) -> scores (N,)``, higher is
better (e.g. CLIP or a contrastive text-image model); ``--rerank module:function`` plugs one into the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from core_attention.hardware import emulated_bf16_note, resolve_dtype
from dalle.shipped import RERANKER_DIR
from dalle.vae.dvae import DiscreteVAE
from dalle.vae.vqgan import VQGAN

__all__ = [
    "GenerationResult",
    "Reranker",
    "add_speed_options",
    "check_prompts",
    "keep_best",
    "load_prime_image",
    "load_reranker",
    "prime_ids",
    "save_images",
    "speed_options",
]

Reranker = Callable[[list[str], Tensor], Tensor]


@dataclass
class GenerationResult:
    prompts: list[str]
    images: Tensor  # (P, n, 3, H, W) in [0, 1]
    ids: Tensor  # (P, n, N) image token ids
    scores: Tensor | None = None  # (P, n) reranker scores, best first, when a reranker ran
    seed: int | None = None


def check_prompts(prompts: str | Sequence[str], *, allow_empty: bool) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] is {prompt!r} ({type(prompt).__name__}): every prompt must be a str")
    prompts = list(prompts)
    if not prompts:
        raise ValueError('no prompts given: pass at least one text (an empty string "" asks for unconditional images)')
    if not allow_empty and any(not p.strip() for p in prompts):
        raise ValueError(
            "an empty prompt gives unconditional images: "
            "allow it explicitly with unconditional=True (--unconditional), "
            "or use it with classifier-free guidance (guidance_scale != 1), which needs the unconditional pass anyway"
        )
    return prompts


def prime_ids(vae: DiscreteVAE | VQGAN, image: Tensor, rows: int, count: int) -> Tensor:
    """The first `rows` grid rows of the image tokenizer's codes of `image` ((3, H, W) or (count, 3, H, W) in [0, 1])
    -> (count, rows * w)."""
    g = vae.grid_size
    if not 1 <= rows < g:
        raise ValueError(f"prime_rows must be in [1, {g - 1}] (the image grid has {g} rows of tokens), got {rows}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[1] != vae.channels:
        raise ValueError(
            f"prime image must be ({vae.channels}, H, W) or (B, {vae.channels}, H, W) in [0, 1], "
            f"got {tuple(image.shape)}"
        )
    if image.shape[-2:] != (vae.image_size, vae.image_size):
        raise ValueError(
            f"prime image is {image.shape[-2]}x{image.shape[-1]} "
            f"but this model makes {vae.image_size}x{vae.image_size} "
            "images: resize it first (the CLI's --prime-resize does)"
        )
    if image.shape[0] not in (1, count):
        raise ValueError(f"give one prime image or one per generated image ({count}), got {image.shape[0]}")
    param = next(vae.parameters())
    ids = vae.encode(image.to(param.device, torch.float32))[:, :rows].flatten(1)  # (1 or count, rows * w)
    return ids.expand(count, -1)


def keep_best(result: GenerationResult, rerank: Reranker, num_images: int) -> GenerationResult:
    """The `num_images` of each prompt's candidates that `rerank` scores highest, best first, with their scores.

    Any sampler's result reranks this way (the shapes model's `generate_images`, DALL·E Mini / Mega's).
    """
    P, candidates = result.images.shape[:2]
    if not 1 <= num_images <= candidates:
        raise ValueError(f"can keep 1 to {candidates} of {candidates} candidates per prompt, not {num_images}")
    total = P * candidates
    flat_prompts = [p for p in result.prompts for _ in range(candidates)]
    scores = torch.as_tensor(rerank(flat_prompts, result.images.flatten(0, 1))).float().cpu()
    if scores.shape != (total,):
        raise ValueError(f"the reranker must return one score per image, shape ({total},), got {tuple(scores.shape)}")
    scores, best = scores.view(P, candidates).topk(num_images, dim=1)  # (P, n), best first
    ids = result.ids.gather(1, best[..., None].expand(-1, -1, result.ids.shape[-1]))
    images = result.images[torch.arange(P)[:, None], best]
    return replace(result, images=images, ids=ids, scores=scores)


def save_images(
    images: Tensor, out: str | Path, *, individual_dir: str | Path | None = None, padding: int = 2
) -> list[Path]:
    """Save (P, n, 3, H, W) images as one grid (a row per prompt) at `out`, and each image as
    ``<individual_dir>/<out stem>_<prompt>_<image>.png`` (default folder: ``<out stem>/`` next to `out`)."""
    from torchvision.utils import make_grid, save_image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    P, n = images.shape[:2]
    save_image(make_grid(images.flatten(0, 1), nrow=n, padding=padding, pad_value=1.0), out)
    folder = Path(individual_dir) if individual_dir is not None else out.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [out]
    for p in range(P):
        for i in range(n):
            path = folder / f"{out.stem}_{p:02d}_{i:02d}.png"
            save_image(images[p, i], path)
            paths.append(path)
    return paths


# Short names for --rerank: factories called with --rerank-checkpoint (`shapes`: the shipped reranker by default).
RERANKERS = {"clip": "dalle.judges.clip_score:load_scorer", "shapes": "dalle.judges.reranker:load_scorer"}
DEFAULT_RERANK_CHECKPOINTS = {"shapes": str(RERANKER_DIR)}


def load_reranker(spec: str, checkpoint: str | None = None) -> Reranker:
    """``module:attribute`` -> the reranker callable. With `checkpoint`, the attribute is a factory called with it.

    A key of `RERANKERS` ("clip") names a factory, so it needs `checkpoint` (for CLIP: a path or e.g. ViT-B-32/openai).
    """
    if spec in RERANKERS:
        checkpoint = checkpoint or DEFAULT_RERANK_CHECKPOINTS.get(spec)
        if checkpoint is None:
            raise ValueError(
                f"--rerank {spec} needs --rerank-checkpoint: for CLIP a path, hf-hub:<repo> or a name such "
                "as ViT-B-32/openai (see vit.clip.PRETRAINED)"
            )
        spec = RERANKERS[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--rerank expects 'package.module:function', got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load reranker {spec!r}: {err}") from None
    reranker = obj(checkpoint) if checkpoint is not None else obj
    if not callable(reranker):
        raise TypeError(f"reranker {spec!r} is not callable: it must map (prompts, images) to scores")
    return reranker


def load_prime_image(path: str, size: int, resize: bool) -> Tensor:
    """An image file as a (3, size, size) float tensor in [0, 1] for priming (`resize` instead of refusing another
    size)."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        if not resize:
            raise ValueError(
                f"--prime-image {path} is {image.size[0]}x{image.size[1]} "
                f"but the model makes {size}x{size} images; pass --prime-resize"
            )
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return pil_to_tensor(image).float() / 255


def add_speed_options(p: argparse.ArgumentParser) -> None:
    """--device, --dtype (with --bf16 as its shorthand) and --compile: the options of every command that generates."""
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device of the text-to-image model (default: cuda when available, else cpu)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="dtype of the text-to-image transformer; auto (default): bf16 where the device computes it natively "
        "(GPUs, CPUs with AVX-512-BF16 / AMX), else fp32",
    )
    p.add_argument("--bf16", dest="dtype", action="store_const", const="bf16", help="same as --dtype bf16")
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile the decoding step (torch.compile): about a minute first, once per process, then faster steps",
    )


def speed_options(args: argparse.Namespace) -> torch.dtype:
    """The dtype `add_speed_options`' flags ask for on args.device; says so when bf16 is emulated there, and shows
    the compile log line with --compile."""
    dtype = resolve_dtype(args.dtype, args.device)
    note = emulated_bf16_note(dtype, args.device)
    if note is not None:
        print(note, file=sys.stderr)
    if args.compile:
        logger = logging.getLogger("core_attention.compiled")
        logger.setLevel(logging.INFO)
        if not logger.handlers:
            logger.addHandler(logging.StreamHandler())
    return dtype
