"""``python -m dalle generate``: images from text with a DALL·E trained here or the pretrained DALL·E Mini / Mega.

    python -m dalle generate "a red circle in the top left" -n 8 --checkpoint RUN/checkpoints/last.ckpt --out grid.png
    python -m dalle generate "a fox in the snow" -n 9 --pretrained mini

The work is done by `dalle.pipeline` (our checkpoints) and `dalle.pretrained` (Mini / Mega); this is the command line.
Importing the old sampling names from here still works for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from core_attention.io import check_writable
from dalle.generation import add_speed_options, load_prime_image, load_reranker, save_images, speed_options
from dalle.moved import moved_names
from dalle.pipeline import generate_images, generation_defaults, load_pipeline
from dalle.pretrained import generate_pretrained_main
from dalle.shipped import DALLE_DIR

__all__ = ["generate_main", "generate_parser"]

# Names this module held before the package was split into layers (release 0.1), and where they live now.
_MOVED = {
    **dict.fromkeys(
        ("check_sampling_args", "filter_logits", "guide_logits", "sample_logits", "sampling_logits"),
        "dalle.transformer.sampling",
    ),
    **dict.fromkeys(
        ("GenerationResult", "Reranker", "check_prompts", "keep_best", "prime_ids", "RERANKERS"), "dalle.generation"
    ),
    "decode": "dalle.pipeline",
}


__getattr__ = moved_names(__name__, _MOVED)


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dalle generate",
        description="Generate images from text with a trained DALL·E checkpoint "
        "(its tokenizer and dVAE travel with it). "
        "Writes a PNG grid (one row per prompt) and each image as its own PNG.",
    )
    p.add_argument(
        "prompts",
        nargs="+",
        help='one or more prompts; "" is the unconditional prompt (needs --guidance-scale or --unconditional)',
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a .ckpt written by `python -m dalle fit`, or an exported folder (model.safetensors, tokenizer.json, "
        "vae/, optional generation.json with its sampling defaults). Default: the shapes model shipped with the "
        "package (guidance 3, top-p 0.9 unless given)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="mini|mega|DIR",
        help="instead of --checkpoint: DALL·E Mini / Mega (downloaded from Hugging Face) "
        "or a folder of their weights (see README)",
    )
    p.add_argument("-n", "--num-images", type=int, default=8, help="images per prompt (default 8)")
    p.add_argument(
        "--out", default="grid.png", help="grid PNG path (default grid.png); single images go to <out stem>/"
    )
    p.add_argument("--individual-dir", default=None, help="folder for the single images (default: <out stem>/)")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="sampling temperature (> 0; below 1 is more conservative; default 1)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="keep the k most likely tokens (default: no filter; 256 with --pretrained)",
    )
    p.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling: keep the most likely tokens up to this mass"
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default 1 = off; 2-4 typical, with --top-p 0.9; --pretrained: 16, min-dalle's)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed (same seed -> same images); printed when not given"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (x2 with guidance)")
    p.add_argument("--unconditional", action="store_true", help="allow empty prompts without guidance")
    p.add_argument("--prime-image", default=None, help="complete this image: its top --prime-rows token rows are kept")
    p.add_argument("--prime-rows", type=int, default=0, help="token rows of --prime-image to keep (1 .. grid-1)")
    p.add_argument(
        "--prime-resize", action="store_true", help="resize --prime-image to the model's size instead of failing"
    )
    p.add_argument(
        "--candidates", type=int, default=None, help="with --rerank: sample this many per prompt, keep the best -n"
    )
    p.add_argument(
        "--rerank",
        default=None,
        help="reranker: 'shapes' (the shipped shapes reranker, or --rerank-checkpoint DIR of fit-reranker), "
        "'clip' (with --rerank-checkpoint naming CLIP weights) or 'module:function' scoring "
        "(prompts, images) -> scores",
    )
    p.add_argument("--rerank-checkpoint", default=None, help="if given, --rerank names a factory called with this path")
    p.add_argument(
        "--no-cache", action="store_true", help="recompute the whole sequence every step (slow; for checking)"
    )
    add_speed_options(p)
    return p


def generate_main(argv: list[str]) -> int:
    args = generate_parser().parse_args(argv)
    if args.pretrained is not None:
        return generate_pretrained_main(args)
    if args.checkpoint is None:
        print(f"no --checkpoint: using the shapes model shipped with the package ({DALLE_DIR})", flush=True)
    defaults = generation_defaults(args.checkpoint)  # {} for a .ckpt or a folder without generation.json
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    check_writable(args.out, what="grid image (--out)")  # before the model loads and samples, not after
    check_writable(args.individual_dir or Path(args.out).with_suffix(""), folder=True, what="folder of single images")
    device = torch.device(args.device)
    dtype = speed_options(args)
    model, tokenizer, vae = load_pipeline(args.checkpoint, map_location=device)
    model = model.to(dtype)
    prime = load_prime_image(args.prime_image, vae.image_size, args.prime_resize) if args.prime_image else None
    rerank = load_reranker(args.rerank, args.rerank_checkpoint) if args.rerank else None
    result = generate_images(
        model,
        tokenizer,
        vae,
        args.prompts,
        num_images=args.num_images,
        candidates=args.candidates,
        rerank=rerank,
        batch_size=args.batch_size,
        temperature=1.0 if args.temperature is None else args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=1.0 if args.guidance_scale is None else args.guidance_scale,
        seed=args.seed,
        prime_image=prime,
        prime_rows=args.prime_rows,
        unconditional=args.unconditional,
        use_cache=not args.no_cache,
        compile=args.compile,
    )
    paths = save_images(result.images, args.out, individual_dir=args.individual_dir)
    print(f"seed {result.seed}: wrote the grid {paths[0]} and {len(paths) - 1} images in {paths[1].parent}")
    if result.scores is not None:
        for prompt, scores in zip(result.prompts, result.scores.tolist()):
            print(f"  {prompt!r}: reranker scores " + ", ".join(f"{s:.3f}" for s in scores))
    return 0
