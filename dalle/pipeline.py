"""From prompts to pictures with a trained DALL·E: load a checkpoint or exported folder, generate, rerank, save.

    model, tokenizer, vae = load_pipeline("runs/dalle_shapes/dalle")
    result = generate_images(model, tokenizer, vae, ["a red circle"], num_images=4, guidance_scale=3, top_p=0.9)
    save_images(result.images, "grid.png")

The token-level loop is :meth:`dalle.transformer.model.DALLE.generate` (with `dalle.transformer.sampling`); this
module is the text and image level around it: tokenise the prompts, prime with a partial image, batch within the
memory there is, decode with the dVAE, rerank N candidates. ``python -m dalle generate`` (`dalle.generate`) is its CLI.

A reranker is any callable ``(prompts: list[str], images: (N, 3, H, W) in [0, 1]) -> scores (N,)``, higher is
better (e.g. CLIP or a contrastive text-image model); ``--rerank module:function`` plugs one into the CLI.
"""

from __future__ import annotations

import importlib
import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from core_attention.io import load_checkpoint, load_state_dict_checked
from dalle.transformer.model import DALLE, DALLEConfig, available_memory
from dalle.transformer.sampling import check_sampling_args
from dalle.transformer.tokenizer import BPETokenizer
from dalle.vae.dvae import DiscreteVAE

__all__ = [
    "GenerationResult",
    "Reranker",
    "check_prompts",
    "generate_images",
    "keep_best",
    "load_pipeline",
    "load_prime_image",
    "load_reranker",
    "prime_ids",
    "save_images",
]

Reranker = Callable[[list[str], Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------- text level


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


def prime_ids(vae: DiscreteVAE, image: Tensor, rows: int, count: int) -> Tensor:
    """The first `rows` grid rows of the dVAE codes of `image` ((3, H, W) or (count, 3, H, W) in [0, 1])
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


def generate_images(
    model: DALLE,
    tokenizer: BPETokenizer,
    vae: DiscreteVAE,
    prompts: str | Sequence[str],
    *,
    num_images: int = 1,
    candidates: int | None = None,
    rerank: Reranker | None = None,
    batch_size: int = 16,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
    seed: int | None = None,
    prime_image: Tensor | None = None,
    prime_rows: int = 0,
    unconditional: bool = False,
    use_cache: bool = True,
) -> GenerationResult:
    """`num_images` images per prompt. With a `rerank` callable, `candidates` (>= num_images) are sampled per prompt and
    the `num_images` best-scored kept, best first. `batch_size` images (x2 with guidance) run per forward pass."""
    guided = guidance_scale != 1.0
    prompts = check_prompts(prompts, allow_empty=unconditional or guided)
    check_sampling_args(temperature, top_k, top_p, guidance_scale)
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    candidates = num_images if candidates is None else candidates
    if candidates < num_images:
        raise ValueError(f"candidates ({candidates}) must be >= num_images ({num_images})")
    if guided and top_k is None and top_p is None:
        warnings.warn(
            "classifier-free guidance without top_k / top_p can draw tokens the prompt makes unlikely; "
            "add e.g. top_p=0.9 (--top-p 0.9)",
            stacklevel=2,
        )
    if candidates > num_images and rerank is None:
        raise ValueError(f"sampling {candidates} candidates to keep {num_images} needs a reranker (rerank=...)")
    if model.config.image_vocab_size != vae.num_tokens or model.config.image_grid_size != vae.grid_size:
        raise ValueError(
            f"model and dVAE disagree: the model expects {model.config.image_vocab_size} image tokens on a "
            f"{model.config.image_grid_size}x{model.config.image_grid_size} grid, the dVAE has {vae.num_tokens} on "
            f"{vae.grid_size}x{vae.grid_size}"
        )

    text = tokenizer.encode_batch(prompts, model.config.text_seq_len)  # (P, T); warns on truncation
    text = text.repeat_interleave(candidates, dim=0)  # (P * C, T), candidates of a prompt adjacent
    total = text.shape[0]
    # Checks up front, before anything is allocated: the widest batch must fit, and so must all the outputs.
    model.check_memory(min(batch_size, total) * (2 if guided else 1), model._dtype(), use_cache=use_cache)
    output_bytes = total * (4 * vae.channels * vae.image_size**2 + 8 * model.config.image_seq_len)
    free = available_memory(torch.device("cpu"))
    if free is not None and output_bytes > 0.5 * free:
        raise MemoryError(
            f"{len(prompts)} prompt(s) x {candidates} images of {vae.image_size}x{vae.image_size} px need "
            f"{output_bytes / 2**30:.1f} GiB of output memory, but only {free / 2**30:.1f} GiB is free: "
            "ask for fewer images (-n)"
        )
    prime = prime_ids(vae, prime_image, prime_rows, total) if prime_image is not None else None
    if prime is None and prime_rows:
        raise ValueError("prime_rows given without a prime image")

    if seed is None:
        seed = random.randrange(2**31)
    generator = torch.Generator(model.device).manual_seed(seed)
    ids = torch.empty(total, model.config.image_seq_len, dtype=torch.long)
    for start in range(0, total, batch_size):
        end = min(start + batch_size, total)
        ids[start:end] = model.generate(
            text[start:end],
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            generator=generator,
            prime=None if prime is None else prime[start:end],
            use_cache=use_cache,
        ).cpu()
    images = torch.cat([decode(vae, ids[s : s + batch_size]) for s in range(0, total, batch_size)])  # (P*C, 3, H, W)

    P = len(prompts)
    images, ids = images.view(P, candidates, *images.shape[1:]), ids.view(P, candidates, -1)
    result = GenerationResult(prompts, images, ids, None, seed)
    return keep_best(result, rerank, num_images) if rerank is not None else result


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


def decode(vae: DiscreteVAE, ids: Tensor) -> Tensor:
    return vae.decode(ids.to(next(vae.parameters()).device)).float().cpu()


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


# Short names for --rerank: factories called with --rerank-checkpoint.
RERANKERS = {"clip": "dalle.judges.clip_score:load_scorer"}


def load_reranker(spec: str, checkpoint: str | None = None) -> Reranker:
    """``module:attribute`` -> the reranker callable. With `checkpoint`, the attribute is a factory called with it.

    A key of `RERANKERS` ("clip") names a factory, so it needs `checkpoint` (for CLIP: a path or e.g. ViT-B-32/openai).
    """
    if spec in RERANKERS:
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


def load_pipeline(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[DALLE, BPETokenizer, DiscreteVAE]:
    """(model, tokenizer, dVAE) in eval mode from a ``fit`` checkpoint (.ckpt) or an exported folder.

    Checkpoints are read with ``weights_only=True``; weights must match their saved configs exactly (strict)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{path} is not an exported DALLE folder (no model.safetensors; expected also tokenizer.json and vae/)"
            )
        model = DALLE.from_pretrained(path, map_location)
        vae = DiscreteVAE.from_pretrained(path / "vae", map_location=map_location)
        return model, BPETokenizer.load(path / "tokenizer.json"), vae.eval()
    ckpt = load_checkpoint(path, map_location=map_location)
    missing = [
        k for k in ("state_dict", "dalle_config", "vae_config", "vae_state_dict", "tokenizer_json") if k not in ckpt
    ]
    if missing:
        raise ValueError(f"{path} is not a checkpoint written by `python -m dalle fit` (it lacks {', '.join(missing)})")
    state = ckpt["state_dict"]
    model = DALLE(DALLEConfig.from_dict(ckpt["dalle_config"]))
    load_state_dict_checked(
        model, {k[6:]: v for k, v in state.items() if k.startswith("model.")}, source=f"checkpoint {path}"
    )
    vae = DiscreteVAE.from_config(ckpt["vae_config"])
    vae.load_weights(ckpt["vae_state_dict"])
    tokenizer = BPETokenizer(Tokenizer.from_str(ckpt["tokenizer_json"]))
    if tokenizer.vocab_size != model.config.text_vocab_size:
        raise ValueError(
            f"{path}: tokenizer vocab {tokenizer.vocab_size} != model text_vocab_size {model.config.text_vocab_size}"
        )
    return model.to(map_location).eval(), tokenizer, vae.to(map_location).eval()
