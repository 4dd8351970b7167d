"""The main job, end to end on a CPU (`make demo` runs it):

    python -m dalle demo [--out runs/demo] [--quick]

1. trains the ViT on scikit-learn's bundled 8×8 digits, prints its test accuracy, writes an attention-map PNG;
2. trains the shapes dVAE (images -> tokens) and the DALL·E transformer (text -> image tokens);
3. generates a grid for several prompts, held-out colour/shape combinations included;
4. scores prompt adherence with the attribute classifier (held-in vs. held-out).

Each stage is a plain CLI call you can also run yourself; a stage whose output already exists is reused, so a
second run only regenerates the pictures and the figures.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = [
    "a large red circle in the top left",
    "a small blue square in the center",
    "a large green triangle at the bottom",
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


# Training budgets. "full" took 16.2 minutes on 2 CPU cores (the recipes' own step counts are longer: the quality
# figures in docs/benchmarks.md come from those); "quick" is a smoke run of a few minutes with poor images.
BUDGETS: dict[str, dict[str, list[str]]] = {
    "full": {
        "vit": [],  # configs/vit/digits.yaml as it is: ~99% test accuracy in ~3 min
        "dvae": ["--trainer.max_steps=1000"],  # 4.3 min (the recipe: 2500 steps)
        "dalle": ["--trainer.max_steps=450"],  # 7.0 min (the recipe: 1800 steps)
        "evaluate": ["--num-prompts", "24", "--images-per-prompt", "2"],
    },
    "quick": {
        "vit": ["--trainer.max_epochs=10"],
        "dvae": ["--trainer.max_steps=300"],
        "dalle": ["--trainer.max_steps=300"],
        "evaluate": ["--num-prompts", "8", "--images-per-prompt", "2", "--classifier-steps", "500"],
    },
}
# A demo stopped half-way goes on from its last checkpoint when run again (stages already done are skipped).
RESUME = "--ckpt_path=last-or-new"
# How every sample is drawn (as configs/dalle/shapes.yaml recommends): guidance in the nucleus of the conditional pass.
SAMPLING = ["--guidance-scale", "3", "--top-p", "0.9"]


def train_vit(out: Path, budget: dict[str, list[str]]) -> dict[str, Path]:
    root = out / "vit"
    ckpt = root / "checkpoints" / "last.ckpt"
    config = "configs/vit/digits.yaml"
    if not ckpt.is_file():
        run(
            "ViT on the bundled digits: fit",
            "vit",
            "fit",
            "--config",
            config,
            f"--trainer.default_root_dir={root}",
            RESUME,
            *budget["vit"],
        )
    run(
        "ViT: test accuracy",
        "vit",
        "test",
        "--config",
        config,
        f"--trainer.default_root_dir={root}",
        f"--ckpt_path={ckpt}",
    )
    image = write_digit_image(root / "digit.png")
    attention = root / "attention.png"
    run("ViT: attention rollout", "vit", "attention", str(image), "--checkpoint", str(ckpt), "--out", str(attention))
    return {"ViT checkpoint": ckpt, "ViT attention map": attention}


def write_digit_image(path: Path) -> Path:
    """A test digit from scikit-learn's bundled set as a PNG, to show the attention map of a file on disk."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images[-1] / 16.0 * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((64, 64), Image.NEAREST).save(path)
    return path


def train_dalle(out: Path, budget: dict[str, list[str]]) -> dict[str, Path]:
    vae_dir, dalle_root = out / "dvae", out / "dalle"
    if not (vae_dir / "dvae" / "model.safetensors").is_file():
        run(
            "dVAE on captioned shapes: fit",
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
            "DALL·E on captioned shapes: fit",
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
    grid = out / "generated" / "grid.png"
    run(
        "DALL·E: generate",
        "dalle",
        "generate",
        *PROMPTS,
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
    report_dir = out / "evaluate"
    run(
        "DALL·E: prompt adherence",
        "dalle",
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(report_dir),
        "--classifier",
        str(out / "attributes"),
        *SAMPLING,
        *budget["evaluate"],
    )
    return {
        "dVAE": vae_dir / "dvae",
        "dVAE reconstructions": vae_dir / "logs",
        "DALL·E checkpoint": ckpt,
        "DALL·E samples": dalle_root / "lightning_logs",
        "generated grid": grid,
        "evaluation report": report_dir / "report.json",
        "evaluation grids": report_dir,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dalle demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="where everything is written (default: runs/demo)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="train each model for a few hundred steps only (a smoke run, poor images)"
    )
    args = parser.parse_args(argv)
    start = time.time()
    budget = BUDGETS["quick" if args.quick else "full"]
    files = {**train_vit(args.out, budget), **train_dalle(args.out, budget)}
    report = json.loads(files["evaluation report"].read_text())
    print(f"\nAll done in {(time.time() - start) / 60:.1f} min. Files:")
    for name, path in files.items():
        print(f"  {name:<20} {path}")
    print("\nPrompt adherence (all attributes right):", json.dumps(report.get("summary", report), indent=2)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
