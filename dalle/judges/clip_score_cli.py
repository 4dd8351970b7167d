"""`python -m dalle clip-score`: the CLIP score of image files, or of what a model samples for your prompts.

python -m dalle clip-score out/grid/ --prompt "a red bicycle" --clip ViT-B-32/openai
python -m dalle clip-score --checkpoint RUN/dalle --prompts "a red circle" "a blue square" -n 4 --clip PATH
python -m dalle clip-score --pretrained mega --prompts-file prompts.txt -n 4 --clip ViT-B-32/openai
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from dalle.data.caption_data import decode_caption
from dalle.judges.clip_score import clip_score
from vit.clip import load_clip

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
    text = decode_caption(caption.read_bytes())[0] if caption.is_file() else ""  # UTF-8, else Windows-1252 / Latin-1
    lines = [line.strip() for line in text.splitlines() if line.strip()]
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
    p.add_argument(
        "--clip",
        required=True,
        help="CLIP weights: a name such as ViT-B-32/openai (downloads once), hf-hub:<repo>, an OpenCLIP "
        "folder or file, OpenAI's ViT-B-32.pt, or a CLIP.save_pretrained folder",
    )
    p.add_argument("--variant", default=None, help="CLIP architecture for an OpenCLIP file without its config")
    p.add_argument("--prompt", default=None, help="score every image against this prompt")
    p.add_argument("--checkpoint", default=None, help="generate from this DALL·E checkpoint instead of reading images")
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="mini|mega|DIR",
        help="generate with DALL·E Mini / Mega (as `generate --pretrained`) instead of reading images",
    )
    p.add_argument("--prompts", nargs="+", default=None, help="when generating: the prompts")
    p.add_argument("--prompts-file", default=None, help="when generating: a text file of prompts, one per line")
    p.add_argument("-n", "--num-images", type=int, default=4, help="when generating: images per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="when generating: sampling seed (default 0)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="when generating: classifier-free guidance (default: 1 = off for --checkpoint, 16 for "
        "--pretrained, min-dalle's)",
    )
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
        result = generate_pretrained(
            pipe, prompts, num_images=n, seed=args.seed, guidance_scale=guidance, top_p=args.top_p
        )
    else:
        from dalle.pipeline import generate_images, load_pipeline

        model, tokenizer, vae = load_pipeline(args.checkpoint, map_location=torch.device(args.device))
        guidance = 1.0 if args.guidance_scale is None else args.guidance_scale
        result = generate_images(
            model, tokenizer, vae, prompts, num_images=n, seed=args.seed, guidance_scale=guidance, top_p=args.top_p
        )
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
    report = {
        "clip": str(args.clip),
        "mean": mean,
        "std": std,
        "count": len(scores),
        "scores": [{"image": n, "prompt": p, "score": s} for n, p, s in zip(names, prompts, scores.tolist())],
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report
