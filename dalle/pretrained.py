"""Real images from text with the published DALL·E Mini / Mega weights: find the files, check memory, load, sample.

``load_pretrained("mini")`` / ``("mega")`` downloads dalle-mini's flax repos with `huggingface_hub` into its cache;
``load_pretrained(PATH)`` reads a folder instead (our converted folder, dalle-mini's flax files, or min-dalle's .pt
files), with the VQGAN in ``PATH/vqgan/`` (or ``PATH/../vqgan/``, min-dalle's layout). ``generate_pretrained`` turns
prompts into a `GenerationResult` like the shapes model's, and ``convert_pretrained`` writes our safetensors folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from torch import Tensor
from tqdm.auto import tqdm

from dalle.generation import (
    GenerationResult,
    check_prompts,
    keep_best,
    load_prime_image,
    load_reranker,
    prime_ids,
    save_images,
    speed_options,
)
from dalle.transformer.bart import DalleBart, DalleBartConfig
from dalle.transformer.bart_tokenizer import BartTokenizer
from dalle.transformer.bart_weights import config_from_flax, load_dalle_bart
from dalle.transformer.model import available_memory
from dalle.vae.vqgan import VQGAN
from dalle.vae.vqgan_weights import load_vqgan

__all__ = [
    "PRETRAINED",
    "Pretrained",
    "convert_main",
    "convert_pretrained",
    "generate_pretrained",
    "generate_pretrained_main",
    "load_pretrained",
    "memory_needed",
]

# name -> (Hugging Face repo, the files it needs); the VQGAN is shared by both.
_BART_FILES = ("config.json", "flax_model.msgpack", "vocab.json", "merges.txt", "tokenizer.json")
PRETRAINED = {
    "mini": ("dalle-mini/dalle-mini", _BART_FILES),
    "mega": ("dalle-mini/dalle-mega", _BART_FILES),
}
VQGAN_REPO = ("dalle-mini/vqgan_imagenet_f16_16384", ("config.json", "flax_model.msgpack"))
VQGAN_PARAMS = 76_000_000  # encoder + decoder + codebook of the f16 16384 VQGAN (76.1 M), kept in fp32


@dataclass
class Pretrained:
    model: DalleBart
    tokenizer: BartTokenizer
    vqgan: VQGAN


def _download(name: str) -> tuple[Path, Path]:
    """Both repos' files in the Hugging Face cache, or a clear error naming them and where they could go instead."""
    wanted = [PRETRAINED[name], VQGAN_REPO]
    try:
        return tuple(Path(snapshot_download(repo, allow_patterns=list(files))) for repo, files in wanted)
    except Exception as err:  # offline, blocked, or out of disk: huggingface_hub raises several unrelated types
        listing = "; ".join(f"https://huggingface.co/{repo}: {', '.join(files)}" for repo, files in wanted)
        raise FileNotFoundError(
            f"could not download DALL·E {name.title()} ({type(err).__name__}: {err}). Download these files on a "
            f"machine with internet access - {listing} - put the first repo's files in a folder DIR and the "
            "VQGAN's in DIR/vqgan/, then pass that folder: --pretrained DIR (load_pretrained('DIR'))."
        ) from None


def _locate(name_or_path: str | os.PathLike) -> tuple[Path, Path]:
    if str(name_or_path) in PRETRAINED:
        return _download(str(name_or_path))
    path = Path(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(f"--pretrained takes mini, mega or a folder; {path} is neither")
    for vqgan in (path / "vqgan", path.parent / "vqgan"):
        if vqgan.is_dir():
            return path, vqgan
    raise FileNotFoundError(
        f"no VQGAN folder next to the weights in {path}: expected {path / 'vqgan'} "
        f"(our folder, dalle-mini's flax files) or {path.parent / 'vqgan'} (min-dalle's layout)"
    )


def _num_params(path: Path) -> int | None:
    """Parameter count of the weights in `path`, read from its config or file sizes before anything is loaded."""
    config = path / "config.json"
    if config.is_file():
        d = json.loads(config.read_text())
        if d.get("architecture") == "dalle-bart":
            return DalleBartConfig.from_dict(d).num_params()
        if "d_model" in d:
            return config_from_flax(d).num_params()
    for suffix in ("", "_mini"):  # min-dalle's files (fp16), in the order load_dalle_bart looks for them
        files = [path / f"encoder{suffix}.pt", path / f"decoder{suffix}.pt"]
        if all(f.is_file() for f in files):
            return sum(f.stat().st_size for f in files) // 2
    return None


def memory_needed(num_params: int, dtype: torch.dtype, rows: int = 2) -> int:
    """Bytes to hold the weights in `dtype`, the fp32 VQGAN and `rows` sequences' caches and activations (rough)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return num_params * itemsize + VQGAN_PARAMS * 4 + rows * 64 * 2**20 + 2**30  # + 1 GiB of working memory


def check_memory(num_params: int, dtype: torch.dtype, device: torch.device, name: str) -> None:
    need, free = memory_needed(num_params, dtype), available_memory(device)
    if free is not None and need > 0.9 * free:
        gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
        raise MemoryError(
            f"DALL·E {name} has {num_params / 1e9:.2f} B parameters: {gib(memory_needed(num_params, torch.float32))} "
            f"to run in fp32, {gib(memory_needed(num_params, torch.bfloat16))} in fp16 / bf16. Loading it in "
            f"{str(dtype).removeprefix('torch.')} needs about {gib(need)} but {gib(free)} is free on {device}: use "
            "--bf16, free memory, or the smaller model (--pretrained mini)."
        )


def load_pretrained(
    name_or_path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> Pretrained:
    """DALL·E Mini / Mega (transformer in `dtype`, VQGAN in fp32), its tokenizer, after checking it fits."""
    device = torch.device(device)
    model_dir, vqgan_dir = _locate(name_or_path)
    num_params = _num_params(model_dir)
    if num_params is not None:
        check_memory(num_params, dtype, device, str(name_or_path))
    model = load_dalle_bart(model_dir, dtype, device)  # straight to the device, array by array
    # BART's vocab.json lists one token more than Mini's embedding (<mask>, which text never encodes to): the ids
    # are checked when they are encoded, not the vocabulary size.
    return Pretrained(model, BartTokenizer.from_folder(model_dir), load_vqgan(vqgan_dir, device))


def convert_pretrained(
    name_or_path: str | os.PathLike, out: str | os.PathLike, *, dtype: torch.dtype = torch.float16
) -> Path:
    """Our folder (model.safetensors + config.json, vocab.json + merges.txt, vqgan/) from any supported source."""
    out = Path(out)
    model_dir, vqgan_dir = _locate(name_or_path)
    load_dalle_bart(model_dir, dtype).save_pretrained(out)
    for suffix in ("", "_mini"):
        if (model_dir / f"vocab{suffix}.json").is_file() and (model_dir / f"merges{suffix}.txt").is_file():
            shutil.copyfile(model_dir / f"vocab{suffix}.json", out / "vocab.json")
            shutil.copyfile(model_dir / f"merges{suffix}.txt", out / "merges.txt")
            break
    load_vqgan(vqgan_dir).save_pretrained(out / "vqgan")
    return out


def generate_pretrained(
    pipe: Pretrained,
    prompts: str | Sequence[str],
    *,
    num_images: int = 1,
    batch_size: int = 8,
    temperature: float = 1.0,
    top_k: int | None = 256,
    guidance_scale: float = 16.0,
    seed: int | None = None,
    prime_image: Tensor | None = None,
    prime_rows: int = 0,
    progress: bool | Callable[[int, int], None] = False,
    top_p: float | None = None,
    compile: bool = False,
) -> GenerationResult:
    """`num_images` images per prompt, `batch_size` images (x2 with guidance) per decoding pass. The defaults are
    min-dalle's (temperature 1, top-k 256, super-conditioning 16). `prime_image` ((3, 256, 256) in [0, 1]) keeps its
    top `prime_rows` token rows (16 px each) and completes the rest (needs the VQGAN encoder: the flax weights).
    `progress`: True shows a progress bar; a callable gets (image tokens sampled so far, total) after each position.
    `compile` runs the decoding step compiled (`DalleBart.generate`)."""
    prompts = check_prompts(prompts, allow_empty=True)
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    model, c = pipe.model, pipe.model.config
    text = pipe.tokenizer.encode_batch(prompts, c.text_seq_len).repeat_interleave(num_images, dim=0)  # (P * n, T)
    uncond = pipe.tokenizer.encode_batch([""], c.text_seq_len)
    total = text.shape[0]
    rows = min(batch_size, total) * (2 if guidance_scale != 1.0 else 1)
    need, free = model.generation_bytes(rows), available_memory(model.device)
    if free is not None and need > 0.9 * free:
        fits = max(1, int(batch_size * 0.9 * free / need))
        raise MemoryError(
            f"decoding {rows} rows at once needs about {need / 2**30:.1f} GiB beside the weights but "
            f"{free / 2**30:.1f} GiB is free on {model.device}: use a smaller --batch-size (e.g. {fits})"
        )
    prime = prime_ids(pipe.vqgan, prime_image, prime_rows, total) if prime_image is not None else None
    if prime is None and prime_rows:
        raise ValueError("prime_rows given without a prime image")
    if seed is None:
        seed = random.randrange(2**31)
    generator = torch.Generator(model.device).manual_seed(seed)
    steps = c.image_seq_len - (prime.shape[1] if prime is not None else 0)
    ids = torch.empty(total, c.image_seq_len, dtype=torch.long)
    report = progress if callable(progress) else None
    done = 0

    def step(rows: int) -> None:  # after each sampled position of a batch of `rows` images
        nonlocal done
        done += rows
        bar.update(rows)
        if report is not None:
            report(done, total * steps)

    with tqdm(total=total * steps, desc="image tokens", unit="tok", disable=progress is not True) as bar:
        for start in range(0, total, batch_size):
            end = min(start + batch_size, total)
            ids[start:end] = model.generate(
                text[start:end],
                uncond,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                guidance_scale=guidance_scale,
                generator=generator,
                prime=None if prime is None else prime[start:end],
                on_step=lambda _, n=end - start: step(n),
                compile=compile,
            ).cpu()
    images = torch.cat([pipe.vqgan.decode(ids[s : s + batch_size]).cpu() for s in range(0, total, batch_size)])
    P = len(prompts)
    return GenerationResult(
        prompts, images.view(P, num_images, *images.shape[1:]), ids.view(P, num_images, -1), None, seed
    )


def generate_pretrained_main(args: argparse.Namespace) -> int:
    """`python -m dalle generate --pretrained mini|mega|DIR PROMPT... -n N`: the generate command's options."""
    if args.no_cache:
        raise SystemExit("python -m dalle generate: --no-cache cannot be used with --pretrained")
    candidates = args.candidates or args.num_images
    if candidates < args.num_images or (candidates > args.num_images and not args.rerank):
        raise SystemExit(f"python -m dalle generate: --candidates {candidates} needs --rerank and -n <= {candidates}")
    rerank = load_reranker(args.rerank, args.rerank_checkpoint) if args.rerank else None  # fails before sampling
    pipe = load_pretrained(args.pretrained, dtype=speed_options(args), device=args.device)
    prime = load_prime_image(args.prime_image, pipe.vqgan.image_size, args.prime_resize) if args.prime_image else None
    result = generate_pretrained(
        pipe,
        args.prompts,
        num_images=candidates,
        batch_size=args.batch_size,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=256 if args.top_k is None else args.top_k,
        top_p=args.top_p,
        guidance_scale=16.0 if args.guidance_scale is None else args.guidance_scale,
        seed=args.seed,
        prime_image=prime,
        prime_rows=args.prime_rows,
        progress=True,
        compile=args.compile,
    )
    if rerank is not None:
        result = keep_best(result, rerank, args.num_images)
    paths = save_images(result.images, args.out, individual_dir=args.individual_dir)
    print(f"seed {result.seed}: wrote the grid {paths[0]} and {len(paths) - 1} images in {paths[1].parent}")
    if result.scores is not None:
        for prompt, scores in zip(result.prompts, result.scores.tolist()):
            print(f"  {prompt!r}: reranker scores " + ", ".join(f"{s:.3f}" for s in scores))
    return 0


def convert_main(argv: list[str]) -> int:
    """`python -m dalle convert-pretrained mini|mega|DIR OUT [--dtype fp16]`."""
    p = argparse.ArgumentParser(
        prog="python -m dalle convert-pretrained",
        description="Write DALL·E Mini / Mega (and its tokenizer and VQGAN) as our folder: model.safetensors + "
        "config.json, vocab.json + merges.txt, vqgan/. `generate --pretrained OUT` then loads it without a download.",
    )
    p.add_argument("source", help="mini, mega (downloaded from Hugging Face), or a folder of flax / min-dalle weights")
    p.add_argument("out", help="the folder to write")
    p.add_argument(
        "--dtype",
        choices=("fp16", "bf16", "fp32"),
        default="fp16",
        help="dtype of the stored transformer weights (default fp16: half the size of the flax files)",
    )
    args = p.parse_args(argv)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    print(f"wrote {convert_pretrained(args.source, args.out, dtype=dtype)}")
    return 0
