"""Rebuild the small models that ship inside the package (dalle/shipped/, vit/shipped/) from the recipes.

    python scripts/ship_models.py --train   # run the five recipes below (about 50 minutes on 2 CPU cores), then ship
    python scripts/ship_models.py           # ship what the recipes already wrote under runs/

Shipping copies each exported folder into the package, with the floating-point weights stored as fp16 where that
changes no measured figure (they load back as fp32; docs/shipped_models.md), and writes the DALL·E's recommended
sampling settings (generation.json) beside it. `tests/test_shipped_models.py` checks the result.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from core_attention.io import load_safetensors, save_safetensors
from dalle.shipped import CLASSIFIER_DIR, DALLE_DIR, RERANKER_DIR
from vit.module import load_classifier
from vit.shipped import DIGITS_DIR

# The recipes, run as the README documents them. The DALL·E run gets an hour instead of the config's 28-minute
# limit so that a busy machine still trains all 1800 steps (the limit exists to bound a newcomer's wait).
RECIPES = [
    ["dalle", "fit-vae", "--config", "configs/dalle/shapes_vae.yaml"],
    ["dalle", "fit", "--config", "configs/dalle/shapes.yaml", "--trainer.max_time", "00:01:00:00"],
    ["dalle", "fit-reranker", "--config", "configs/dalle/reranker.yaml"],
    ["dalle", "fit-classifier", "--config", "configs/dalle/attributes.yaml"],
    ["vit", "fit", "--config", "configs/vit/digits.yaml"],
]
# Exported folder the recipe writes -> where it ships.
FOLDERS = {
    Path("runs/dalle_shapes/dalle"): DALLE_DIR,
    Path("runs/reranker_shapes/export"): RERANKER_DIR,
    Path("runs/attribute_classifier_32px"): CLASSIFIER_DIR,
}
VIT_CHECKPOINT = Path("runs/vit_digits/checkpoints/last.ckpt")  # EMA weights, as `vit test` measures them
# fp16 storage lost something measurable for the dVAE (scripts/measure_shipped.py: 0.12 dB of round-trip PSNR), so
# it ships in fp32; the transformer, reranker, classifier and ViT lost nothing.
KEEP_FP32 = {DALLE_DIR / "vae"}
# How the shapes DALL·E is meant to be sampled (docs/benchmarks.md): guidance in the nucleus of the conditional pass.
GENERATION = {"guidance_scale": 3.0, "top_p": 0.9}


def to_fp16(path: Path) -> None:
    """Rewrite a safetensors file with its floating-point tensors in fp16, keeping its metadata."""
    state_dict, config = load_safetensors(path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    save_safetensors(path, half, config)


def ship_folder(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source} does not exist: run its recipe first (python scripts/ship_models.py --train)"
        )
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.ckpt", "*.png"))
    for weights in target.rglob("*.safetensors"):
        if weights.parent not in KEEP_FP32:
            to_fp16(weights)


def ship_vit(checkpoint: Path, target: Path) -> None:
    """The EMA weights as a save_pretrained folder, and the predict.yaml that `python -m vit predict IMAGE` uses."""
    shutil.rmtree(target, ignore_errors=True)
    model = load_classifier(checkpoint)
    model.save_pretrained(target)
    if target not in KEEP_FP32:
        to_fp16(target / "model.safetensors")
    predict = {  # the model.pretrained path is added on the command line: the package's location varies
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False},
        "model": {"arch": model.config.to_dict(), "top_k": 5},
        "data": {"class_path": "vit.data.DigitsDataModule", "init_args": {"img_size": model.config.img_size}},
    }
    (target / "predict.yaml").write_text(json.dumps(predict, indent=2) + "\n")  # JSON is YAML


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="run the recipes first (writes runs/)")
    args = parser.parse_args(argv)
    if args.train:
        for recipe in RECIPES:
            print("$ python -m " + " ".join(recipe), flush=True)
            subprocess.run([sys.executable, "-m", *recipe], check=True)
    for source, target in FOLDERS.items():
        ship_folder(source, target)
    (DALLE_DIR / "generation.json").write_text(json.dumps(GENERATION, indent=2) + "\n")
    ship_vit(VIT_CHECKPOINT, DIGITS_DIR)
    for folder in (*FOLDERS.values(), DIGITS_DIR):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"shipped {folder} ({size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
