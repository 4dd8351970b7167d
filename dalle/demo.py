"""The project's demo, both families, the first five minutes end to end on a CPU (`make demo` runs it):

    python -m dalle demo [--out runs/demo] [--quick]

1. The models shipped with the package, at once: images from text (the reranker keeps the best of several samples),
   the shipped model's prompt adherence measured on a small sample and printed, and a digit classified with its
   attention map.
2. Training, end to end: the ViT on scikit-learn's bundled digits, then the shapes dVAE and the DALL·E transformer,
   each for a few minutes only, then pictures from what was just trained. This shows that training works on your
   machine; it is not how the shipped models were made (their full recipes: docs/shipped_models.md).
3. How to open the web app.

Each stage is a plain CLI call you can also run yourself; a training stage whose output already exists is reused,
so a second run only regenerates the pictures and the figures. The demo imports no model code, ViT's or DALL·E's: it
runs their commands. It lives in `dalle`, the top layer, only because that package may use both families.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from dalle.shipped import RERANKER_DIR

PROMPTS = [
    "a large red circle in the top left",
    "a small blue square in the center",
    "a large green triangle in the bottom left",  # (at the bottom centre the shipped model often draws nothing)
    "a large yellow circle on the right",  # held out: yellow circles never appear in training
    "a small red triangle in the top right",  # held out
    "a large cyan circle at the bottom left",  # held out
]


def run(stage: str, *args: str) -> None:
    """Run one stage's CLI in a fresh process, streaming its output (progress bars included)."""
    cmd = [sys.executable, "-m", *args]
    print(f"\n=== {stage}\n$ {shlex.join(cmd)}", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"=== {stage}: done in {time.time() - start:.0f} s", flush=True)


# Stage 1 sample sizes and stage 2 training budgets. "full" stays under 10 minutes on 2 CPU cores, "quick" under 3.
BUDGETS: dict[str, dict[str, list[str]]] = {
    "full": {
        "evaluate": ["--num-prompts", "16", "--images-per-prompt", "2", "--candidates", "8"],
        "vit": ["--trainer.max_epochs=20"],
        "dvae": ["--trainer.max_steps=300"],
        "dalle": ["--trainer.max_steps=150"],
    },
    "quick": {
        "evaluate": ["--num-prompts", "8", "--images-per-prompt", "2", "--candidates", "8"],
        "vit": ["--trainer.max_epochs=3"],
        "dvae": ["--trainer.max_steps=40"],
        "dalle": ["--trainer.max_steps=20"],
    },
}
# A demo stopped half-way goes on from its last checkpoint when run again (stages already done are skipped).
RESUME = "--ckpt_path=last-or-new"
# How every sample is drawn (the shipped model's generation.json): guidance in the nucleus of the conditional pass.
SAMPLING = ["--guidance-scale", "3", "--top-p", "0.9"]


def shipped_models(out: Path, budget: dict[str, list[str]]) -> dict[str, Path]:
    """Stage 1: the shipped models generate, are measured, and classify (seconds, nothing trained)."""
    grid, report, digit = out / "shipped" / "grid.png", out / "shipped" / "evaluate", out / "shipped" / "digit.png"
    run(
        "Shipped DALL·E: text to image (best 4 of 16 samples per prompt, picked by the shipped reranker)",
        "dalle",
        "generate",
        *PROMPTS,
        "-n",
        "4",
        "--candidates",
        "16",
        "--rerank",
        "shapes",
        "--seed",
        "0",
        "--out",
        str(grid),
    )
    run(
        "Shipped DALL·E: prompt adherence on a small sample, measured now (held-in and held-out prompts)",
        "dalle",
        "evaluate",
        "--reranker",
        str(RERANKER_DIR),
        "--out",
        str(report),
        *SAMPLING,
        *budget["evaluate"],
    )
    write_digit_image(digit)
    attention = out / "shipped" / "digit.attention.png"
    run("Shipped ViT: classify a digit", "vit", "predict", str(digit))
    run("Shipped ViT: where it looked (attention rollout)", "vit", "attention", str(digit), "--out", str(attention))
    return {
        "shipped: generated grid": grid,
        "shipped: adherence report": report / "report.json",
        "shipped: attention map": attention,
    }


def write_digit_image(path: Path) -> Path:
    """A test digit from scikit-learn's bundled set as a PNG, to classify a file on disk."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images[-1] / 16.0 * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(path)
    return path


def train_vit(out: Path, budget: dict[str, list[str]]) -> dict[str, Path]:
    root = out / "vit"
    ckpt = root / "checkpoints" / "last.ckpt"
    config = "configs/vit/digits.yaml"
    if not ckpt.is_file():
        run(
            "Training check 1/3: the ViT on the bundled digits (a short run)",
            "vit",
            "fit",
            "--config",
            config,
            f"--trainer.default_root_dir={root}",
            RESUME,
            *budget["vit"],
        )
    run(
        "ViT just trained: test accuracy",
        "vit",
        "test",
        "--config",
        config,
        f"--trainer.default_root_dir={root}",
        f"--ckpt_path={ckpt}",
    )
    write_digit_image(root / "digit.png")
    return {"trained: ViT checkpoint": ckpt}


def train_dalle(out: Path, budget: dict[str, list[str]]) -> dict[str, Path]:
    vae_dir, dalle_root = out / "dvae", out / "dalle"
    if not (vae_dir / "dvae" / "model.safetensors").is_file():
        run(
            "Training check 2/3: the shapes dVAE (a short run)",
            "dalle",
            "fit-vae",
            "--config",
            "configs/dalle/shapes_vae.yaml",
            RESUME,
            f"--trainer.default_root_dir={vae_dir}",
            f"--trainer.logger.init_args.save_dir={vae_dir}",
            f"--model.export_dir={vae_dir / 'dvae'}",
            *budget["dvae"],
        )
    ckpt = dalle_root / "checkpoints" / "last.ckpt"
    if not (dalle_root / "dalle" / "model.safetensors").is_file():  # exported at the end of fit: the stage is done
        run(
            "Training check 3/3: the DALL·E transformer on that dVAE (a short run)",
            "dalle",
            "fit",
            "--config",
            "configs/dalle/shapes.yaml",
            RESUME,
            f"--trainer.default_root_dir={dalle_root}",
            f"--model.vae_path={vae_dir / 'dvae'}",
            f"--model.export_dir={dalle_root / 'dalle'}",
            *budget["dalle"],
        )
    grid = out / "trained" / "grid.png"
    run(
        "DALL·E just trained: generate (expect blurry shapes after a few minutes of training)",
        "dalle",
        "generate",
        *PROMPTS[:3],
        "-n",
        "4",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(grid),
        "--seed",
        "0",
        *SAMPLING,
    )
    return {"trained: dVAE": vae_dir / "dvae", "trained: DALL·E checkpoint": ckpt, "trained: generated grid": grid}


def adherence_lines(report_file: Path) -> list[str]:
    """'held_in: all 93.8% (shape 95.3%, ...)' per prompt set, from an `evaluate` report."""
    summary = json.loads(report_file.read_text())["summary"]
    lines = []
    for split in ("held_in", "held_out"):
        acc = summary[split]
        details = ", ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items() if k != "all")
        lines.append(f"  {split}: all attributes right {100 * acc['all']:.1f}% ({details})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dalle demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="where everything is written (default: runs/demo)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples and training runs (under 3 minutes)")
    args = parser.parse_args(argv)
    start = time.time()
    budget = BUDGETS["quick" if args.quick else "full"]
    files = shipped_models(args.out, budget)
    shipped_minutes = (time.time() - start) / 60
    files.update(train_vit(args.out, budget))
    files.update(train_dalle(args.out, budget))
    print(f"\nAll done in {(time.time() - start) / 60:.1f} min (the shipped models: {shipped_minutes:.1f} min). Files:")
    for name, path in files.items():
        print(f"  {name:<28} {path}")
    print("\nPrompt adherence of the shipped DALL·E on this sample (its reranker keeps the best of the candidates):")
    print("\n".join(adherence_lines(files["shipped: adherence report"])))
    print(
        "\nOpen the web app (text to image, and classify with attention maps):\n"
        "  pip install 'vit-dalle[app]'   # once: Gradio\n"
        "  python -m dalle app            # then open http://127.0.0.1:7860 in a browser"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
