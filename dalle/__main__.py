"""``python -m dalle <command> [options]``.

Each command lives in its own module and takes the remaining arguments; add one by adding a line to
``COMMANDS`` (name -> (module, function, one-line help)). The module is imported only when its command runs.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "dalle.demo",
        "main",
        "the main job: train ViT, dVAE and DALL·E on bundled data, generate, evaluate (make demo)",
    ),
    "fit-vae": ("dalle.vae.module", "fit_vae_main", "train the discrete VAE (stage 1) with LightningCLI"),
    "fit": (
        "dalle.transformer.module",
        "fit_main",
        "train the text-to-image transformer (stage 2) on a trained dVAE, with LightningCLI",
    ),
    "generate": (
        "dalle.generate",
        "generate_main",
        'images from text: generate "a red circle" -n 8 --checkpoint CKPT --out grid.png',
    ),
    "app": (
        "dalle.app",
        "app_main",
        "a local web app: text to image and image classification in the browser (pip install 'vit-dalle[app]')",
    ),
    "convert-pretrained": (
        "dalle.pretrained",
        "convert_main",
        "DALL·E Mini / Mega weights (by name or folder) -> our safetensors folder for generate --pretrained",
    ),
    "evaluate": (
        "dalle.judges.evaluate",
        "evaluate_main",
        "prompt adherence on held-in / held-out shapes prompts, scored by an attribute classifier",
    ),
    "fit-classifier": (
        "dalle.judges.attributes",
        "fit_classifier_main",
        "train the attribute classifier that `evaluate` scores with (LightningCLI)",
    ),
    "clip-score": ("dalle.judges.clip_score_cli", "clip_score_main", "CLIP score of images against their prompts"),
    "fit-reranker": (
        "dalle.judges.reranker",
        "fit_reranker_main",
        "train the contrastive text-image reranker for `generate --rerank` (LightningCLI)",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: python -m dalle <command> [options]   (python -m dalle <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[name]
    result = getattr(importlib.import_module(module), function)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
