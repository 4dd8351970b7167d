"""From prompts to pictures with a trained DALL·E: load a checkpoint or exported folder, generate, rerank, save.

    model, tokenizer, vae = load_pipeline()  # the shipped shapes model; or a path: load_pipeline("runs/.../dalle")
    result = generate_images(model, tokenizer, vae, ["a red circle"], num_images=4, guidance_scale=3, top_p=0.9)
    save_images(result.images, "grid.png")

The token-level loop is :meth:`dalle.transformer.model.DALLE.generate` (with `dalle.transformer.sampling`); this
module is the text and image level around it: tokenise the prompts, prime with a partial image, batch within the
memory there is, decode with the dVAE, rerank N candidates. ``python -m dalle generate`` (`dalle.generate`) is its CLI.

``load_pipeline("mini")`` / ``("mega")`` returns DALL·E Mini / Mega (`dalle.pretrained`) in the same three parts,
and `generate_images` samples them with their own sampler. The prompt and image level that both families share
(prompt checks, priming, reranking, saving) is `dalle.generation`.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor

from core_attention.io import load_checkpoint, load_state_dict_checked
from dalle.generation import (
    GenerationResult,
    Reranker,
    check_prompts,
    keep_best,
    load_prime_image,
    load_reranker,
    prime_ids,
    save_images,
)
from dalle.pretrained import PRETRAINED, Pretrained, generate_pretrained, load_pretrained
from dalle.shipped import DALLE_DIR
from dalle.transformer.bart import DalleBart
from dalle.transformer.bart_tokenizer import BartTokenizer
from dalle.transformer.model import DALLE, DALLEConfig, available_memory
from dalle.transformer.sampling import check_sampling_args
from dalle.transformer.tokenizer import BPETokenizer
from dalle.vae.dvae import DiscreteVAE
from dalle.vae.vqgan import VQGAN

__all__ = [
    "GenerationResult",
    "Reranker",
    "check_prompts",
    "generation_defaults",
    "generate_images",
    "keep_best",
    "load_pipeline",
    "load_prime_image",
    "load_reranker",
    "prime_ids",
    "save_images",
]


def generate_images(
    model: DALLE | DalleBart,
    tokenizer: BPETokenizer | BartTokenizer,
    vae: DiscreteVAE | VQGAN,
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
    compile: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """`num_images` images per prompt. With a `rerank` callable, `candidates` (>= num_images) are sampled per prompt and
    the `num_images` best-scored kept, best first. `batch_size` images (x2 with guidance) run per forward pass.
    `progress(done, total)` is called after each sampled token position with the image tokens sampled so far.
    `compile` runs the decoding step compiled (the same images; the first batch of each size compiles, once per
    process). DALL·E Mini / Mega (``load_pipeline("mini")``) sample with `dalle.pretrained.generate_pretrained`;
    min-dalle's settings for them are ``top_k=256, guidance_scale=16``."""
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
    if isinstance(model, DalleBart):  # DALL·E Mini / Mega: their own sampler, the same candidates and reranking
        if not use_cache:
            raise ValueError("DALL·E Mini / Mega always decode with the cache: use_cache=False is for DALLE models")
        result = generate_pretrained(
            Pretrained(model, tokenizer, vae),
            prompts,
            num_images=candidates,
            batch_size=batch_size,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            seed=seed,
            prime_image=prime_image,
            prime_rows=prime_rows,
            progress=progress or False,
            compile=compile,
        )
        return keep_best(result, rerank, num_images) if rerank is not None else result
    if model.config.image_vocab_size != vae.num_tokens or model.config.image_grid_size != vae.grid_size:
        raise ValueError(
            f"model and dVAE disagree: the model expects {model.config.image_vocab_size} image tokens on a "
            f"{model.config.image_grid_size}x{model.config.image_grid_size} grid, the dVAE has {vae.num_tokens} on "
            f"{vae.grid_size}x{vae.grid_size}"
        )

    text = tokenizer.encode_batch(prompts, model.config.text_seq_len)  # (P, T); warns on truncation
    text = text.repeat_interleave(candidates, dim=0)  # (P * C, T), candidates of a prompt adjacent
    total = text.shape[0]
    check_fits(model, vae, min(batch_size, total) * (2 if guided else 1), total, use_cache)
    prime = prime_ids(vae, prime_image, prime_rows, total) if prime_image is not None else None
    if prime is None and prime_rows:
        raise ValueError("prime_rows given without a prime image")

    if seed is None:
        seed = random.randrange(2**31)
    generator = torch.Generator(model.device).manual_seed(seed)
    ids = torch.empty(total, model.config.image_seq_len, dtype=torch.long)
    first = 0 if prime is None else prime.shape[1]  # the first position sampled
    steps = model.config.image_seq_len - first
    for start in range(0, total, batch_size):
        end = min(start + batch_size, total)
        done, rows = start * steps, end - start  # tokens sampled before this batch; its rows
        on_step = None if progress is None else (lambda j: progress(done + (j - first + 1) * rows, total * steps))
        ids[start:end] = model.generate(
            text[start:end],
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            generator=generator,
            prime=None if prime is None else prime[start:end],
            use_cache=use_cache,
            compile=compile,
            on_step=on_step,
        ).cpu()
    images = torch.cat([decode(vae, ids[s : s + batch_size]) for s in range(0, total, batch_size)])  # (P*C, 3, H, W)

    P = len(prompts)
    images, ids = images.view(P, candidates, *images.shape[1:]), ids.view(P, candidates, -1)
    result = GenerationResult(prompts, images, ids, None, seed)
    return keep_best(result, rerank, num_images) if rerank is not None else result


def check_fits(model: DALLE, vae: DiscreteVAE, rows: int, total: int, use_cache: bool) -> None:
    """Before anything is allocated: the widest batch (`rows` sequences) must fit, and so must all `total` outputs."""
    model.check_memory(rows, model._dtype(), use_cache=use_cache)
    output_bytes = total * (4 * vae.channels * vae.image_size**2 + 8 * model.config.image_seq_len)
    free = available_memory(torch.device("cpu"))
    if free is not None and output_bytes > 0.5 * free:
        raise MemoryError(
            f"{total} images of {vae.image_size}x{vae.image_size} px need {output_bytes / 2**30:.1f} GiB of output "
            f"memory, but only {free / 2**30:.1f} GiB is free: ask for fewer images (-n) or candidates"
        )


def decode(vae: DiscreteVAE, ids: Tensor) -> Tensor:
    return vae.decode(ids.to(next(vae.parameters()).device)).float().cpu()


def load_pipeline(
    path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu"
) -> tuple[DALLE, BPETokenizer, DiscreteVAE] | tuple[DalleBart, BartTokenizer, VQGAN]:
    """(model, tokenizer, dVAE) in eval mode from a ``fit`` checkpoint (.ckpt) or an exported folder; without a
    path, the shapes model shipped in the package (`dalle.shipped.DALLE_DIR`); ``"mini"`` / ``"mega"``: DALL·E Mini /
    Mega with their VQGAN, downloaded once with huggingface_hub (`dalle.pretrained.load_pretrained`, which also reads
    their files from a folder and loads in bf16).

    Checkpoints are read with ``weights_only=True``; weights must match their saved configs exactly (strict)."""
    if str(path) in PRETRAINED:
        pipe = load_pretrained(str(path), device=map_location)
        return pipe.model.eval(), pipe.tokenizer, pipe.vqgan.eval()
    path = Path(DALLE_DIR if path is None else path)
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


SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "guidance_scale")


def generation_defaults(path: str | os.PathLike | None = None) -> dict[str, float]:
    """The sampling settings an exported folder recommends in its ``generation.json`` ({} when it has none, and for
    a .ckpt), e.g. the shipped model's guidance 3 and top-p 0.9. `generate` uses them for the options not given."""
    file = Path(DALLE_DIR if path is None else path) / "generation.json"
    if not file.is_file():
        return {}
    settings = json.loads(file.read_text())
    unknown = set(settings) - set(SAMPLING_OPTIONS)
    if unknown:
        raise ValueError(f"{file}: unknown sampling options {sorted(unknown)} (known: {', '.join(SAMPLING_OPTIONS)})")
    return settings
