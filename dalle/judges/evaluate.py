"""``python -m dalle evaluate``: how often does a DALL·E checkpoint draw what the prompt says?

Prompts. Every prompt is the canonical caption of a one-shape scene, e.g. "a small red circle in the top left"
(``dalle.data.shapes.canonical_caption``). A scene is (colour, shape, size, position); the two prompt sets are

    held-in    colour-shape pair in TRAIN_PAIRS     (33 pairs x 2 sizes x 9 positions = 594 scenes)
    held-out   colour-shape pair in HELD_OUT_PAIRS  ( 7 pairs x 2 sizes x 9 positions = 126 scenes; never in training)

so no prompt is in both. ``--num-prompts K`` scenes are drawn from each set without replacement, spread evenly over
its colour-shape pairs (pair order and each pair's size/position order shuffled by ``--prompt-seed``): the same
flags always give the same prompts. Each prompt gets ``--images-per-prompt`` images (seeded: ``--seed`` for the
held-in set, ``--seed + 1`` for the held-out set). With ``--reranker`` (a :mod:`dalle.judges.reranker` model, trained on
the training split only), ``--candidates`` images are drawn per prompt and the best-scored ones are kept and scored.

Scoring. The attribute classifier (:mod:`dalle.judges.attributes`, a ViT with a head per attribute) reads each generated
image's shape, colour, size and position. Reported per set: the accuracy of each attribute and of all four at once
(the prompt-adherence figure), plus two ceilings measured on exact renders of the same prompts: the classifier's
accuracy on the renders themselves (near 100% means the errors counted are the generator's, not the classifier's)
and on their dVAE round trips (encode -> decode: what the transformer's image tokens can express at best; well
below 100% means the dVAE, not the transformer, limits adherence).

Outputs in ``--out``: ``report.json`` (every figure, the prompts, the settings) and ``grid_held_in.png`` /
``grid_held_out.png`` (a row per prompt; a green frame marks images with all four attributes right, red the others).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from dalle.data.shapes import HELD_OUT_PAIRS, POSITIONS, SIZES, TRAIN_PAIRS, Scene, Shape, canonical_caption, render
from dalle.judges.attributes import ATTRIBUTES, AttributeClassifier, scene_labels
from dalle.shipped import CLASSIFIER_DIR, DALLE_DIR
from dalle.shipped import IMAGE_SIZE as SHIPPED_IMAGE_SIZE

if TYPE_CHECKING:
    from dalle.pipeline import Reranker
    from dalle.transformer.model import DALLE
    from dalle.transformer.tokenizer import BPETokenizer
    from dalle.vae.dvae import DiscreteVAE

__all__ = ["QUALITY_BAR", "SPLITS", "evaluate", "evaluate_main", "evaluate_parser", "prompt_scenes", "split_scenes"]

SPLITS: dict[str, tuple[tuple[str, str], ...]] = {"held_in": TRAIN_PAIRS, "held_out": HELD_OUT_PAIRS}
QUALITY_BAR: dict[str, float] = {"held_in": 0.90, "held_out": 0.75}  # all-attributes accuracy after shapes.yaml
METRICS: tuple[str, ...] = (*ATTRIBUTES, "all")


def split_scenes(split: str) -> list[Scene]:
    """Every one-shape scene of a prompt set, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return [(Shape(kind, colour, size, pos),) for colour, kind in SPLITS[split] for size in SIZES for pos in POSITIONS]


def prompt_scenes(split: str, num_prompts: int, seed: int = 0) -> list[Scene]:
    """``num_prompts`` distinct scenes of ``split``, spread evenly over its colour-shape pairs (deterministic)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    pairs = list(SPLITS[split])
    options = [(size, pos) for size in SIZES for pos in POSITIONS]
    total = len(pairs) * len(options)
    if not 1 <= num_prompts <= total:
        raise ValueError(
            f"num_prompts must be in [1, {total}] for the {split} set ({total} distinct scenes), got {num_prompts}"
        )
    rng = random.Random(f"vit-dalle/evaluate/{split}/{seed}")
    rng.shuffle(pairs)
    order = {pair: rng.sample(options, len(options)) for pair in pairs}
    scenes: list[Scene] = []
    for k in range(num_prompts):  # round-robin: prompt k uses pair k % len(pairs), its (k // len(pairs))-th option
        colour, kind = pair = pairs[k % len(pairs)]
        size, pos = order[pair][k // len(pairs)]
        scenes.append((Shape(kind, colour, size, pos),))
    return scenes


def accuracy(predicted: Tensor, target: Tensor) -> dict[str, float]:
    """(N, 4) predicted and target labels -> accuracy of each attribute and of all four together."""
    correct = predicted == target  # (N, 4)
    out = {name: correct[:, i].float().mean().item() for i, name in enumerate(ATTRIBUTES)}
    out["all"] = correct.all(1).float().mean().item()
    return out


def evaluate(
    model: DALLE,
    tokenizer: BPETokenizer,
    vae: DiscreteVAE,
    classifier: AttributeClassifier,
    *,
    num_prompts: int = 64,
    images_per_prompt: int = 4,
    prompt_seed: int = 0,
    seed: int = 0,
    batch_size: int = 64,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float = 1.0,
    candidates: int | None = None,
    rerank: Reranker | None = None,
    splits: Sequence[str] = ("held_in", "held_out"),
) -> dict[str, Any]:
    """Generate, classify and score both prompt sets. Returns the report (without file paths) and keeps the images
    under ``report[split]["images"]`` ((P, n, 3, H, W), removed before writing JSON) and the per-image correctness
    under ``report[split]["correct"]`` ((P, n) bool)."""
    from dalle.pipeline import generate_images

    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {images_per_prompt}")
    report: dict[str, Any] = {}
    for offset, split in enumerate(splits):
        scenes = prompt_scenes(split, num_prompts, prompt_seed)
        prompts = [canonical_caption(s) for s in scenes]
        start = time.perf_counter()
        result = generate_images(
            model,
            tokenizer,
            vae,
            prompts,
            num_images=images_per_prompt,
            candidates=candidates,
            rerank=rerank,
            batch_size=batch_size,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            seed=seed + offset,
        )
        seconds = time.perf_counter() - start
        P, n = result.images.shape[:2]
        target = torch.tensor([scene_labels(s) for s in scenes]).repeat_interleave(n, dim=0)  # (P * n, 4)
        predicted = classifier.predict(result.images.flatten(0, 1))  # (P * n, 4)
        real = torch.stack([render(s, vae.image_size) for s in scenes])  # (P, 3, H, W): the classifier's ceiling
        device = next(vae.parameters()).device
        with torch.no_grad():  # the dVAE's round trip of the true image: the best any transformer on this dVAE can do
            tokenized = torch.cat([vae.reconstruct(chunk.to(device)).float().cpu() for chunk in real.split(batch_size)])
        report[split] = {
            "num_prompts": P,
            "num_images": P * n,
            "accuracy": accuracy(predicted, target),
            "classifier_on_real": accuracy(classifier.predict(real), target[::n]),
            "dvae_ceiling": accuracy(classifier.predict(tokenized), target[::n]),
            "per_prompt_all": (predicted == target).all(1).view(P, n).float().mean(1).tolist(),
            "prompts": prompts,
            "seed": result.seed,
            "generation_seconds": round(seconds, 2),
            "images": result.images,
            "correct": (predicted == target).all(1).view(P, n),
        }
    return report


def format_table(report: dict[str, Any]) -> str:
    """Accuracy table: a row per prompt set, a column per attribute and for all attributes together."""
    splits = [s for s in SPLITS if s in report]
    header = f"{'prompt set':<10} {'prompts':>7} {'images':>7} " + " ".join(f"{m:>9}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for split in splits:
        r = report[split]
        lines.append(
            f"{split:<10} {r['num_prompts']:>7} {r['num_images']:>7} "
            + " ".join(f"{100 * r['accuracy'][m]:>8.1f}%" for m in METRICS)
        )
    for key, title in (
        ("classifier_on_real", "classifier on exact renders of the same prompts (the classifier's ceiling):"),
        ("dvae_ceiling", "classifier on dVAE round trips of those renders (what this dVAE lets a model reach):"),
    ):
        lines.append(title)
        for split in splits:
            r = report[split][key]
            lines.append(f"{split:<10} {'':>7} {'':>7} " + " ".join(f"{100 * r[m]:>8.1f}%" for m in METRICS))
    return "\n".join(lines)


def save_grid(images: Tensor, correct: Tensor, path: str | Path, max_prompts: int = 12, border: int = 2) -> Path:
    """(P, n, 3, H, W) images -> a PNG with one row per prompt (first ``max_prompts``), framed green when all four
    attributes were read back right and red otherwise."""
    from torchvision.utils import make_grid, save_image

    images, correct = images[:max_prompts], correct[:max_prompts]
    P, n = images.shape[:2]
    green, red = torch.tensor([0.1, 0.8, 0.1]), torch.tensor([0.9, 0.1, 0.1])
    colours = torch.where(correct.reshape(-1, 1), green, red)  # (P * n, 3)
    framed = (
        colours[:, :, None, None].expand(-1, -1, images.shape[-2] + 2 * border, images.shape[-1] + 2 * border).clone()
    )
    framed[:, :, border:-border, border:-border] = images.flatten(0, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(framed, nrow=n, padding=2, pad_value=1.0), path)
    return path


def get_classifier(
    directory: str | Path, image_size: int, *, train_steps: int = 800, device: torch.device | str = "cpu"
) -> AttributeClassifier:
    """The classifier in ``directory``; trained there with the short recipe first if the folder has none."""
    from dalle.judges.attributes import WEIGHTS_NAME, train_classifier

    directory = Path(directory)
    if (directory / WEIGHTS_NAME).is_file():
        classifier = AttributeClassifier.from_pretrained(directory)
    else:
        print(
            f"no attribute classifier in {directory}: training one for {image_size}px images ({train_steps} steps, "
            "about a minute on 2 CPU cores); it is cached there for later runs",
            flush=True,
        )
        classifier = train_classifier(directory, image_size, max_steps=train_steps)
    test = classifier.metrics.get("test_accuracy")
    if test:
        print(
            "classifier test accuracy on real shapes images: "
            + ", ".join(f"{k} {100 * v:.2f}%" for k, v in test.items())
        )
    return classifier.to(device).eval()


# ----------------------------------------------------------------------------------------------------------- CLI


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dalle evaluate",
        description="Prompt adherence of a DALL·E checkpoint on the shapes data: "
        "generate images for held-in and held-out "
        "colour-shape combinations, read their shape/colour/size/position back with an attribute classifier, and print "
        "per-attribute and all-attributes accuracy. Prompts: the canonical captions of one-shape scenes, --num-prompts "
        "per set spread evenly over its colour-shape pairs (see the module docstring of dalle.judges.evaluate).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        default=str(DALLE_DIR),
        help="the DALL·E to evaluate: a .ckpt written by `python -m dalle fit` "
        "or an exported folder (as for `generate`). Default: the shapes model shipped with the package",
    )
    p.add_argument(
        "--classifier",
        default=None,
        help="attribute classifier folder (save_pretrained). Trained there and cached if it holds none. "
        "Default: the shipped one for 32 px models, else runs/attribute_classifier_<image size>px",
    )
    p.add_argument(
        "--classifier-steps",
        type=int,
        default=800,
        help="training steps when the classifier has to be trained (the configs/dalle/attributes.yaml recipe)",
    )
    p.add_argument("--out", default="runs/evaluate", help="folder for report.json and the PNG grids")
    p.add_argument(
        "--num-prompts", type=int, default=64, help="prompts per set (held-in: at most 594, held-out: at most 126)"
    )
    p.add_argument("--images-per-prompt", type=int, default=4, help="images generated per prompt")
    p.add_argument("--prompt-seed", type=int, default=0, help="which scenes are drawn as prompts")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (held-in set; the held-out set uses seed + 1)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (x2 with guidance)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely image tokens (default: no filter)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1] (default: no filter)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (1 = off)")
    p.add_argument(
        "--reranker",
        default=None,
        help="contrastive reranker (folder or .ckpt from `python -m dalle fit-reranker`): sample --candidates "
        "per prompt and keep the --images-per-prompt best",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="candidates per prompt with --reranker (default 4x --images-per-prompt)",
    )
    p.add_argument("--grid-prompts", type=int, default=12, help="prompts (rows) shown in each PNG grid")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device to generate on")
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("num_prompts", "images_per_prompt", "batch_size", "grid_prompts", "classifier_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    limit = min(len(split_scenes(s)) for s in SPLITS)
    if args.num_prompts > limit:
        p.error(
            f"--num-prompts must be <= {limit} (the held-out set has {limit} distinct one-shape scenes), "
            f"got {args.num_prompts}"
        )
    if args.candidates is not None and args.reranker is None:
        p.error("--candidates needs --reranker (the model that picks the best candidates)")
    if args.candidates is not None and args.candidates < args.images_per_prompt:
        p.error(f"--candidates ({args.candidates}) must be >= --images-per-prompt ({args.images_per_prompt})")
    if not Path(args.checkpoint).exists():
        p.error(f"--checkpoint {args.checkpoint} does not exist")
    if args.reranker is not None and not Path(args.reranker).exists():
        p.error(f"--reranker {args.reranker} does not exist")


def evaluate_main(argv: list[str]) -> int:
    from dalle.pipeline import load_pipeline
    from dalle.transformer.sampling import check_sampling_args

    parser = evaluate_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        check_sampling_args(args.temperature, args.top_k, args.top_p, args.guidance_scale)
    except ValueError as err:
        parser.error(str(err))
    device = torch.device(args.device)
    model, tokenizer, vae = load_pipeline(args.checkpoint, map_location=device)
    model.eval()
    vae.eval()
    shipped = CLASSIFIER_DIR if vae.image_size == SHIPPED_IMAGE_SIZE else None
    classifier_dir = args.classifier or shipped or f"runs/attribute_classifier_{vae.image_size}px"
    classifier = get_classifier(classifier_dir, vae.image_size, train_steps=args.classifier_steps, device=device)
    rerank, candidates = None, None
    if args.reranker is not None:
        from dalle.judges.reranker import load_reranker

        rerank = load_reranker(args.reranker).to(device).score
        candidates = args.candidates or 4 * args.images_per_prompt

    report = evaluate(
        model,
        tokenizer,
        vae,
        classifier,
        num_prompts=args.num_prompts,
        images_per_prompt=args.images_per_prompt,
        prompt_seed=args.prompt_seed,
        seed=args.seed,
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        guidance_scale=args.guidance_scale,
        candidates=candidates,
        rerank=rerank,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grids = {}
    for split in SPLITS:
        grids[split] = str(
            save_grid(
                report[split].pop("images"),
                report[split].pop("correct"),
                out / f"grid_{split}.png",
                max_prompts=args.grid_prompts,
            )
        )
    passed = {s: report[s]["accuracy"]["all"] >= QUALITY_BAR[s] for s in SPLITS}
    full = {
        # The headline: per-attribute and all-attributes accuracy of each prompt set, and the quality bar.
        "summary": {**{s: report[s]["accuracy"] for s in SPLITS}, "quality_bar_passed": passed},
        "checkpoint": str(args.checkpoint),
        "classifier": str(classifier_dir),
        "classifier_test_accuracy": classifier.metrics.get("test_accuracy"),
        "reranker": args.reranker,
        "settings": {
            "num_prompts": args.num_prompts,
            "images_per_prompt": args.images_per_prompt,
            "candidates": candidates,
            "prompt_seed": args.prompt_seed,
            "seed": args.seed,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "guidance_scale": args.guidance_scale,
            "image_size": vae.image_size,
        },
        **report,
        "quality_bar": {"all_attributes": QUALITY_BAR, "passed": passed},
        "grids": grids,
    }
    (out / "report.json").write_text(json.dumps(full, indent=2) + "\n")
    print(format_table(report))
    print(
        "quality bar (all attributes): "
        + ", ".join(f"{s} >= {100 * QUALITY_BAR[s]:.0f}%: {'PASS' if passed[s] else 'FAIL'}" for s in SPLITS)
    )
    print(f"wrote {out / 'report.json'}, {grids['held_in']} and {grids['held_out']}")
    return 0
