"""Sampling for DALL·E: logit filters, classifier-free guidance, prompts -> images, reranking, and the CLI.

``python -m dalle generate "a red circle in the top left" -n 8 --checkpoint RUN/checkpoints/last.ckpt --out grid.png``

The token-level loop lives in :meth:`dalle.model.DALLE.generate`; this module holds what it samples with
(``filter_logits``, ``sample_logits``, ``guide_logits``) and the text/image level around it (``generate_images``:
tokenise the prompts, prime with a partial image, batch, decode with the dVAE, rerank N candidates).

A reranker is any callable ``(prompts: list[str], images: (N, 3, H, W) in [0, 1]) -> scores (N,)``, higher is
better (e.g. a contrastive text-image model); ``--rerank module:function`` plugs one into the CLI.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from core_attention.io import check_writable

if TYPE_CHECKING:
    from .dvae import DiscreteVAE
    from .model import DALLE
    from .tokenizer import BPETokenizer

__all__ = [
    "GenerationResult",
    "Reranker",
    "check_sampling_args",
    "filter_logits",
    "generate_images",
    "generate_main",
    "guide_logits",
    "keep_best",
    "load_reranker",
    "sample_logits",
    "sampling_logits",
    "save_images",
]

Reranker = Callable[[list[str], Tensor], Tensor]


# ---------------------------------------------------------------------------------------------------- token level


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None, guidance_scale: float = 1.0) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use a small value such as 0.1 for near-greedy sampling)")
    if top_k is not None and (int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None for no top-k filter), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (or None for no nucleus filter), got {top_p}")
    if not guidance_scale >= 0:
        raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance, 3 = typical), got {guidance_scale}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """(B, V) logits with everything outside the top_k and outside the top_p nucleus set to -inf (new tensor).

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p; the most likely token is
    always kept, so a row never ends up empty.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass of the strictly more likely tokens
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = sorted_logits.scatter(-1, order, sorted_logits)  # back to vocabulary order
    return logits


def guide_logits(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: (2B, V) = [conditional; unconditional] -> (B, V) = u + scale * (c - u)."""
    cond, uncond = logits.float().chunk(2)
    return uncond + scale * (cond - uncond)


def sampling_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """The logits a token is drawn from: temperature, then the top_k / top_p filter, then guidance.

    Without guidance: (B, V) -> (B, V). With guidance (scale != 1): (2B, V) = [conditional; unconditional] -> (B, V),
    guided within the conditional model's top_k / top_p set. Guiding outside that set would boost exactly the tokens
    the unconditional model finds unlikely, however unlikely they are under the prompt too (u + s (c - u) grows as
    u falls): on the shapes data unfiltered guidance at scale 3 drew the wrong image for most prompts, guidance
    within the conditional top-p 0.9 set none (see docs/benchmarks.md, "Generation").
    """
    logits = logits.float() / temperature
    if guidance_scale == 1.0:
        return filter_logits(logits, top_k, top_p)
    cond, _ = logits.chunk(2)
    outside = filter_logits(cond, top_k, top_p).isinf()
    return guide_logits(logits, guidance_scale).masked_fill(outside, float("-inf"))


def sample_logits(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    guidance_scale: float = 1.0,
) -> Tensor:
    """One token per image from (B, V) logits ((2B, V) with guidance, see `sampling_logits`) -> (B,) long."""
    probs = sampling_logits(logits, temperature, top_k, top_p, guidance_scale).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


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
        raise ValueError("no prompts given: pass at least one text (an empty string \"\" asks for unconditional images)")
    if not allow_empty and any(not p.strip() for p in prompts):
        raise ValueError(
            "an empty prompt gives unconditional images: allow it explicitly with unconditional=True (--unconditional), "
            "or use it with classifier-free guidance (guidance_scale != 1), which needs the unconditional pass anyway"
        )
    return prompts


def prime_ids(vae: DiscreteVAE, image: Tensor, rows: int, count: int) -> Tensor:
    """The first `rows` grid rows of the dVAE codes of `image` ((3, H, W) or (count, 3, H, W) in [0, 1]) -> (count, rows * w)."""
    g = vae.grid_size
    if not 1 <= rows < g:
        raise ValueError(f"prime_rows must be in [1, {g - 1}] (the image grid has {g} rows of tokens), got {rows}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[1] != vae.channels:
        raise ValueError(f"prime image must be ({vae.channels}, H, W) or (B, {vae.channels}, H, W) in [0, 1], got {tuple(image.shape)}")
    if image.shape[-2:] != (vae.image_size, vae.image_size):
        raise ValueError(
            f"prime image is {image.shape[-2]}x{image.shape[-1]} but this model makes {vae.image_size}x{vae.image_size} "
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
    from .model import available_memory

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
            f"{output_bytes / 2**30:.1f} GiB of output memory, but only {free / 2**30:.1f} GiB is free: ask for fewer images (-n)"
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
            text[start:end], temperature=temperature, top_k=top_k, top_p=top_p, guidance_scale=guidance_scale,
            generator=generator, prime=None if prime is None else prime[start:end], use_cache=use_cache,
        ).cpu()  # fmt: skip
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
    return dataclasses.replace(result, images=images, ids=ids, scores=scores)


def decode(vae: DiscreteVAE, ids: Tensor) -> Tensor:
    return vae.decode(ids.to(next(vae.parameters()).device)).float().cpu()


def save_images(images: Tensor, out: str | Path, *, individual_dir: str | Path | None = None, padding: int = 2) -> list[Path]:
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
            raise ValueError(f"--rerank {spec} needs --rerank-checkpoint: for CLIP a path, hf-hub:<repo> or a name such "
                             "as ViT-B-32/openai (see vit.clip.PRETRAINED)")
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


# ---------------------------------------------------------------------------------------------------- CLI


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dalle generate",
        description="Generate images from text with a trained DALL·E checkpoint (its tokenizer and dVAE travel with it). "
        "Writes a PNG grid (one row per prompt) and each image as its own PNG.",
    )
    p.add_argument("prompts", nargs="+", help='one or more prompts; "" is the unconditional prompt (needs --guidance-scale or --unconditional)')
    p.add_argument("--checkpoint", default=None, help="a .ckpt written by `python -m dalle fit`, or an exported folder (model.safetensors, tokenizer.json, vae/)")
    p.add_argument("--pretrained", default=None, metavar="mini|mega|DIR",
                   help="instead of --checkpoint: DALL·E Mini / Mega (downloaded from Hugging Face) or a folder of their weights (see README)")
    p.add_argument("-n", "--num-images", type=int, default=8, help="images per prompt (default 8)")
    p.add_argument("--out", default="grid.png", help="grid PNG path (default grid.png); single images go to <out stem>/")
    p.add_argument("--individual-dir", default=None, help="folder for the single images (default: <out stem>/)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0; below 1 is more conservative; default 1)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: no filter; 256 with --pretrained)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: keep the most likely tokens up to this mass")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance (default 1 = off; 2-4 typical, with --top-p 0.9; --pretrained: 16, min-dalle's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed -> same images); printed when not given")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (x2 with guidance)")
    p.add_argument("--unconditional", action="store_true", help="allow empty prompts without guidance")
    p.add_argument("--prime-image", default=None, help="complete this image: its top --prime-rows token rows are kept")
    p.add_argument("--prime-rows", type=int, default=0, help="token rows of --prime-image to keep (1 .. grid-1)")
    p.add_argument("--prime-resize", action="store_true", help="resize --prime-image to the model's size instead of failing")
    p.add_argument("--candidates", type=int, default=None, help="with --rerank: sample this many per prompt, keep the best -n")
    p.add_argument("--rerank", default=None,
                   help="reranker: 'clip' (with --rerank-checkpoint naming CLIP weights) or 'module:function' scoring "
                   "(prompts, images) -> scores")
    p.add_argument("--rerank-checkpoint", default=None, help="if given, --rerank names a factory called with this path")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow; for checking)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to generate on (default: cuda when available, else cpu)")
    p.add_argument("--bf16", action="store_true", help="run the transformer in bfloat16")
    return p


def _load_image(path: str, size: int, resize: bool) -> Tensor:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    image = Image.open(path).convert("RGB")
    if image.size != (size, size):
        if not resize:
            raise ValueError(f"--prime-image {path} is {image.size[0]}x{image.size[1]} but the model makes {size}x{size} images; pass --prime-resize")
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return pil_to_tensor(image).float() / 255


def generate_main(argv: list[str]) -> int:
    from .module import load_pipeline

    args = generate_parser().parse_args(argv)
    if args.pretrained is not None:
        from .pretrained import generate_pretrained_main

        return generate_pretrained_main(args)
    if args.checkpoint is None:
        generate_parser().error("pass --checkpoint CKPT (a model trained here) or --pretrained mini|mega|DIR")
    check_writable(args.out, what="grid image (--out)")  # before the model loads and samples, not after
    check_writable(args.individual_dir or Path(args.out).with_suffix(""), folder=True, what="folder of single images")
    device = torch.device(args.device)
    model, tokenizer, vae = load_pipeline(args.checkpoint, map_location=device)
    if args.bf16:
        model = model.to(torch.bfloat16)
    prime = _load_image(args.prime_image, vae.image_size, args.prime_resize) if args.prime_image else None
    rerank = load_reranker(args.rerank, args.rerank_checkpoint) if args.rerank else None
    result = generate_images(
        model, tokenizer, vae, args.prompts,
        num_images=args.num_images, candidates=args.candidates, rerank=rerank, batch_size=args.batch_size,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        guidance_scale=1.0 if args.guidance_scale is None else args.guidance_scale, seed=args.seed,
        prime_image=prime, prime_rows=args.prime_rows, unconditional=args.unconditional,
        use_cache=not args.no_cache,
    )  # fmt: skip
    paths = save_images(result.images, args.out, individual_dir=args.individual_dir)
    print(f"seed {result.seed}: wrote the grid {paths[0]} and {len(paths) - 1} images in {paths[1].parent}")
    if result.scores is not None:
        for prompt, scores in zip(result.prompts, result.scores.tolist()):
            print(f"  {prompt!r}: reranker scores " + ", ".join(f"{s:.3f}" for s in scores))
    return 0
