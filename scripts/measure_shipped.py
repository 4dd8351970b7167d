"""Measure the shipped models (fp16 on disk) against the recipes' fp32 exports they came from, on the same samples.

    python scripts/measure_shipped.py [--prompts 32] [--candidates 16]

Prints one markdown table for docs/shipped_models.md: the digits ViT's test accuracy, the attribute classifier's
accuracy on exact renders, the dVAE's round-trip PSNR, and the DALL·E's prompt adherence (each prompt's best 4 of
--candidates samples by the shipped reranker), with the CPU flags. Needs the runs/ folders scripts/ship_models.py
ships from.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from core_attention.hardware import cpu_flags
from dalle.data.shapes import ShapesDataset
from dalle.judges.attributes import load_classifier as load_attribute_classifier
from dalle.judges.evaluate import evaluate, prompt_scenes
from dalle.judges.reranker import load_reranker
from dalle.pipeline import generation_defaults, load_pipeline
from dalle.shipped import CLASSIFIER_DIR, DALLE_DIR, IMAGE_SIZE, RERANKER_DIR
from vit.data import DigitsDataModule
from vit.module import load_classifier
from vit.shipped import DIGITS_DIR

SOURCES = {  # shipped folder -> the fp32 export it was made from (scripts/ship_models.py)
    DALLE_DIR: Path("runs/dalle_shapes/dalle"),
    RERANKER_DIR: Path("runs/reranker_shapes/export"),
    CLASSIFIER_DIR: Path("runs/attribute_classifier_32px"),
    DIGITS_DIR: Path("runs/vit_digits/checkpoints/last.ckpt"),
}


def vit_accuracy(path: Path) -> float:
    data = DigitsDataModule(img_size=16, batch_size=512)
    data.setup("test")
    model = load_classifier(path)
    correct = total = 0
    for images, labels in data.test_dataloader():
        correct += (model(images).argmax(-1) == labels).sum().item()
        total += len(labels)
    return correct / total


def classifier_accuracy(path: Path, count: int = 1000) -> float:
    from dalle.data.shapes import render
    from dalle.judges.attributes import scene_labels

    scenes = prompt_scenes("held_in", 594) + prompt_scenes("held_out", 126)
    scenes = scenes[:count]
    images = torch.stack([render(s, IMAGE_SIZE) for s in scenes])
    target = torch.tensor([scene_labels(s) for s in scenes])
    return (load_attribute_classifier(path).predict(images) == target).all(1).float().mean().item()


def dvae_psnr(path: Path, count: int = 256) -> float:
    _, _, vae = load_pipeline(path)
    images = torch.stack([ShapesDataset("val", count, image_size=IMAGE_SIZE)[i]["image"] for i in range(count)])
    mse = (vae.reconstruct(images).float() - images).pow(2).mean()
    return 10 * torch.log10(1 / mse).item()


def adherence(dalle: Path, reranker: Path, prompts: int, candidates: int) -> dict[str, float]:
    model, tokenizer, vae = load_pipeline(dalle)
    report = evaluate(
        model,
        tokenizer,
        vae,
        load_attribute_classifier(CLASSIFIER_DIR),  # the same judge for both, so only the generator differs
        num_prompts=prompts,
        images_per_prompt=4,
        candidates=candidates,
        rerank=load_reranker(reranker).score,
        **generation_defaults(DALLE_DIR),
    )
    return {s: report[s]["accuracy"]["all"] for s in ("held_in", "held_out")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32, help="prompts per set (held-in, held-out)")
    parser.add_argument("--candidates", type=int, default=16, help="samples per prompt; the reranker keeps 4")
    args = parser.parse_args()
    print(f"{cpu_flags()}; {torch.get_num_threads()} threads")
    rows = []
    for label, shipped in (("fp32 (the recipes' exports)", False), ("fp16 (shipped)", True)):
        pick = (lambda p: p) if shipped else SOURCES.get
        start = time.perf_counter()
        acc = adherence(pick(DALLE_DIR), pick(RERANKER_DIR), args.prompts, args.candidates)
        seconds = time.perf_counter() - start
        rows.append(
            f"| {label} | {100 * vit_accuracy(pick(DIGITS_DIR)):.1f}% | "
            f"{100 * classifier_accuracy(pick(CLASSIFIER_DIR)):.1f}% | {dvae_psnr(pick(DALLE_DIR)):.2f} dB | "
            f"{100 * acc['held_in']:.1f}% | {100 * acc['held_out']:.1f}% | {seconds:.0f} s |"
        )
    print(
        f"| weights | digits ViT, test accuracy (360) | attribute classifier, all 4 right on renders (720) | "
        f"dVAE round trip PSNR (256 val) | DALL·E held-in, all right ({args.prompts} x best 4 of {args.candidates}) | "
        f"held-out | generation time |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
