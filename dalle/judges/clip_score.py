"""CLIP as a judge of text-to-image output: the CLIP score metric and a reranker for `generate --rerank clip`.

CLIP score is 100 * max(cos(image, prompt), 0) with CLIP's embeddings, averaged over images (torchmetrics'
`CLIPScore` convention; Hessel et al. scale by 2.5 instead of 100). DALL·E kept the candidates CLIP scored highest.

    python -m dalle clip-score out/grid/ --prompt "a red bicycle" --clip ViT-B-32/openai
    python -m dalle clip-score --checkpoint RUN/dalle --prompts "a red circle" "a blue square" -n 4 --clip PATH
    python -m dalle clip-score --pretrained mega --prompts-file prompts.txt -n 4 --clip ViT-B-32/openai
    python -m dalle generate "a red bicycle" --candidates 64 -n 4 --rerank clip --rerank-checkpoint ViT-B-32/openai
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from vit.clip import CLIP, load_clip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def clip_score(
    model: CLIP, prompts: Sequence[str], images: Tensor | Sequence[Tensor], batch_size: int = 32
) -> Tensor:
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


# ---- CLI -------------------------------------------------------------------------------------------------------


def _image_files(inputs: Sequence[str]) -> list[Path]:
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {item}")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"image {item} does not exist")
    return files


def _caption(image: Path) -> str:
    caption = image.with_suffix(".txt")
    lines = [line.strip() for line in caption.read_text().splitlines() if line.strip()] if caption.is_file() else []
    if not lines:
        raise ValueError(f"no prompt for {image}: pass --prompt, or put its caption in {caption} (first line is used)")
    return lines[0]


def _load_images(files: Sequence[Path]) -> Tensor | list[Tensor]:
    """(N, 3, H, W) in [0, 1] when all files have one size, else a list of (3, H, W)."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    images = []
    for file in files:
        with Image.open(file) as image:
            images.append(pil_to_tensor(image.convert("RGB")).float() / 255)
    return torch.stack(images) if len({im.shape for im in images}) == 1 else images


def clip_score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dalle clip-score",
        description="CLIP score (100 x cosine similarity of CLIP's image and text embeddings, floored at 0; "
        "torchmetrics' convention) of images against their prompts: of image files (the prompt from --prompt or "
        "each image's same-name .txt), or of images a DALL·E checkpoint (or DALL·E Mini / Mega) generates for "
        "--prompts, to compare models on your own prompts. Prints each image's score and the mean.",
    )
    p.add_argument("images", nargs="*", help="image files or folders (searched recursively)")
    p.add_argument("--clip", required=True,
                   help="CLIP weights: a name such as ViT-B-32/openai (downloads once), hf-hub:<repo>, an OpenCLIP "
                   "folder or file, OpenAI's ViT-B-32.pt, or a CLIP.save_pretrained folder")
    p.add_argument("--variant", default=None, help="CLIP architecture for an OpenCLIP file without its config")
    p.add_argument("--prompt", default=None, help="score every image against this prompt")
    p.add_argument("--checkpoint", default=None, help="generate from this DALL·E checkpoint instead of reading images")
    p.add_argument("--pretrained", default=None, metavar="mini|mega|DIR",
                   help="generate with DALL·E Mini / Mega (as `generate --pretrained`) instead of reading images")
    p.add_argument("--prompts", nargs="+", default=None, help="when generating: the prompts")
    p.add_argument("--prompts-file", default=None, help="when generating: a text file of prompts, one per line")
    p.add_argument("-n", "--num-images", type=int, default=4, help="when generating: images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="when generating: sampling seed (default 0)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="when generating: classifier-free guidance (default: 1 = off for --checkpoint, 16 for "
                   "--pretrained, min-dalle's)")
    p.add_argument("--top-p", type=float, default=None, help="when generating: nucleus sampling mass")
    p.add_argument("--json", default=None, help="also write the scores and their mean to this JSON file")
    p.add_argument("--batch-size", type=int, default=32, help="images per CLIP forward pass (default 32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return p


def _generated(args: argparse.Namespace) -> tuple[list[str], Tensor, list[str]]:
    """Prompts, images and names of what --checkpoint or --pretrained samples for the given prompts."""
    prompts = list(args.prompts or [])
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError("generating needs prompts: --prompts ... or --prompts-file FILE")
    n, source = args.num_images, args.checkpoint or args.pretrained
    if args.pretrained is not None:
        from dalle.pretrained import generate_pretrained, load_pretrained

        pipe = load_pretrained(args.pretrained, device=args.device)
        guidance = 16.0 if args.guidance_scale is None else args.guidance_scale
        result = generate_pretrained(pipe, prompts, num_images=n, seed=args.seed, guidance_scale=guidance,
                                     top_p=args.top_p)
    else:
        from dalle.pipeline import generate_images
        from dalle.pipeline import load_pipeline

        model, tokenizer, vae = load_pipeline(args.checkpoint, map_location=torch.device(args.device))
        guidance = 1.0 if args.guidance_scale is None else args.guidance_scale
        result = generate_images(model, tokenizer, vae, prompts, num_images=n, seed=args.seed,
                                 guidance_scale=guidance, top_p=args.top_p)
    names = [f"{source}[prompt {p}, image {i}]" for p in range(len(prompts)) for i in range(n)]
    return [p for p in prompts for _ in range(n)], result.images.flatten(0, 1), names


def clip_score_main(argv: list[str]) -> int:
    clip_score_report(argv)
    return 0


def clip_score_report(argv: list[str]) -> dict:
    """`python -m dalle clip-score ARGV`: prints the scores and returns them with their mean (the --json content)."""
    args = clip_score_parser().parse_args(argv)
    if args.checkpoint is not None and args.pretrained is not None:
        raise SystemExit("give --checkpoint or --pretrained, not both")
    if args.checkpoint is not None or args.pretrained is not None:
        if args.images:
            raise SystemExit("give image files, or --checkpoint / --pretrained to generate; not both")
        prompts, images, names = _generated(args)
    else:
        if not args.images:
            raise SystemExit("no images: give image files or folders, or --checkpoint / --pretrained with --prompts")
        files = _image_files(args.images)
        prompts = [args.prompt if args.prompt is not None else _caption(f) for f in files]
        images, names = _load_images(files), [str(f) for f in files]
    model = load_clip(args.clip, args.variant).to(args.device)
    scores = clip_score(model, prompts, images, args.batch_size)
    for name, prompt, score in zip(names, prompts, scores.tolist()):
        print(f"{score:6.2f}  {name}  {prompt!r}")
    mean = scores.mean().item()
    std = scores.std().item() if len(scores) > 1 else None  # JSON null: no spread from one image
    spread = f" (std {std:.2f})" if std is not None else ""
    print(f"CLIP score: {mean:.2f}{spread} over {len(scores)} image{'s' if len(scores) > 1 else ''}, CLIP {args.clip}")
    report = {"clip": str(args.clip), "mean": mean, "std": std, "count": len(scores),
              "scores": [{"image": n, "prompt": p, "score": s} for n, p, s in zip(names, prompts, scores.tolist())]}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report
