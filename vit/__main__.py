"""`python -m vit fit|validate|test|predict --config configs/vit/<name>.yaml` and
`python -m vit attention IMAGE ...`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DESCRIPTION = (
    "Train, evaluate and use Vision Transformer classifiers (timm-compatible weights). "
    "Subcommands, each with its own --help: "
    "(1) fit: train, e.g. `python -m vit fit --config configs/vit/digits.yaml`; "
    "(2) validate / test: evaluate a checkpoint on the validation / test split (test prints the top-1 accuracy), "
    "e.g. `python -m vit test --config C --ckpt_path RUN/checkpoints/last.ckpt`; "
    "(3) predict: top-k labels for image files, `python -m vit predict a.png b.png --config C --ckpt_path CKPT` "
    "(without --config and --ckpt_path: the digits ViT shipped with the package) "
    "(or --data.predict_paths '[a.png, b.png]'; --model.top_k K; --model.predict_output preds.csv); "
    "(4) attention: attention map or rollout of one image as a PNG overlay, "
    "`python -m vit attention IMAGE --checkpoint CKPT --out map.png` (see `python -m vit attention --help`); "
    "(5) zero-shot: rank free-text labels for images with CLIP, "
    '`python -m vit zero-shot photo.jpg --labels "a cat" "a dog" --clip ViT-B-32/openai` (see its --help). '
    "Options: the model under --model.* (the ViT architecture under --model.arch.*, timm's keyword names), "
    "the data under --data.* (`python -m vit fit --data.help vit.data.DigitsDataModule` lists a DataModule's options), "
    "the Trainer under --trainer.*, checkpointing under --checkpoint.* (ModelCheckpoint, save_last=True)."
)


def attention_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vit attention",
        description="Save a ViT's attention for one image as a PNG overlay at the image's own size: the attention "
        "rollout over all layers (default) or one layer's attention, averaged over the heads or of one head. "
        "The heat map is the class token's attention to each patch (the mean over patch tokens for models without "
        "a class token).",
    )
    p.add_argument("image", help="input image file (RGB for 3-channel models, grayscale for 1-channel ones)")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="weights: a Lightning .ckpt from `python -m vit fit`, a save_pretrained directory or its "
        "model.safetensors, or timm:<model name> (downloads timm's pretrained weights). "
        "Default: the digits ViT shipped with the package",
    )
    p.add_argument("--out", default=None, help="output PNG (default: IMAGE's folder, <image name>.attention.png)")
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="show this block's attention (0-based, negative counts from the end); default: rollout over all blocks",
    )
    p.add_argument("--head", type=int, default=None, help="with --layer: show this head only (default: fuse the heads)")
    p.add_argument(
        "--head-fusion", default="mean", choices=["mean", "max", "min"], help="how heads are fused (default: mean)"
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="opacity of the heat map over the image, 0..1 (default: 0.5)"
    )
    p.add_argument(
        "--convert",
        action="store_true",
        help="convert an image of another mode (grayscale/RGBA for an RGB model) instead of stopping with an error",
    )
    p.add_argument(
        "--no-ema", action="store_true", help="use the live weights of a checkpoint that also holds EMA weights"
    )
    p.add_argument(
        "--save-maps",
        default=None,
        help="also save the raw per-layer/per-head maps and the rollout to this .safetensors file",
    )
    return p


def attention_main(argv: list[str]) -> Path:
    import torch
    from torchvision.transforms import v2 as T

    from .attention_maps import save_attention_overlay
    from .data import load_image
    from .module import load_classifier
    from .weights import from_timm

    args = attention_parser().parse_args(argv)
    if args.checkpoint is None:
        print("no --checkpoint: using the digits ViT shipped with the package", flush=True)
    if args.checkpoint and args.checkpoint.startswith("timm:"):
        model = from_timm(args.checkpoint[len("timm:") :], pretrained=True).eval()
    else:
        model = load_classifier(args.checkpoint, ema=not args.no_ema)
    cfg, arch = model.pretrained_cfg, model.config
    in_chans = arch.in_chans
    default_mean, default_std = ((0.5,), (0.5,)) if in_chans == 1 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if "mean" not in cfg:
        logging.getLogger("vit").warning(
            "the checkpoint does not record its normalisation; using mean=%s std=%s", default_mean, default_std
        )
    image = load_image(args.image, in_chans, convert=args.convert)
    size = model.patch_embed.img_size
    prep = T.Compose(
        [
            T.Resize(size, antialias=True),
            T.PILToTensor(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(cfg.get("mean", default_mean), cfg.get("std", default_std)),
        ]
    )
    out = Path(args.out) if args.out else Path(args.image).with_name(Path(args.image).stem + ".attention.png")
    result = save_attention_overlay(
        model, image, prep(image), out, layer=args.layer, head=args.head, head_fusion=args.head_fusion, alpha=args.alpha
    )
    if args.save_maps:
        from safetensors.torch import save_file

        save_file({"maps": result["maps"].contiguous(), "rollout": result["rollout"].contiguous()}, args.save_maps)
    with torch.no_grad():
        probs = model(prep(image)[None]).softmax(-1)[0]
    names = cfg.get("class_names") or []
    if probs.numel() > 1:
        top = probs.topk(min(3, probs.numel()))
        labels = [names[i] if i < len(names) else str(i) for i in top.indices.tolist()]
        print("prediction: " + ", ".join(f"{lab} ({p:.3f})" for lab, p in zip(labels, top.values.tolist())))
    print(f"wrote {out}")
    return out


def _with_predict_paths(argv: list[str]) -> list[str]:
    """`predict a.png b.png --config ...`: leading positional paths become --data.predict_paths (appended last so
    the DataModule class from --config is known when they are parsed). Without --config and --ckpt_path, the
    digits ViT shipped with the package predicts (its predict.yaml names the model and the preprocessing)."""
    if not argv or argv[0] != "predict":
        return argv
    if not any(a.split("=")[0] in ("--config", "--ckpt_path") for a in argv):
        from .shipped import DIGITS_DIR

        print(f"no --config / --ckpt_path: using the digits ViT shipped with the package ({DIGITS_DIR})", flush=True)
        argv = [*argv, "--config", str(DIGITS_DIR / "predict.yaml"), f"--model.pretrained={DIGITS_DIR}"]
    i = 1
    while i < len(argv) and not argv[i].startswith("-"):
        i += 1
    paths = argv[1:i]
    if not paths:
        return argv
    return ["predict", *argv[i:], f"--data.predict_paths={json.dumps(paths)}"]


def main(argv: list[str] | None = None):
    # sys.argv stays as typed: Lightning's DDP launcher starts the other processes by re-running it.
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "attention":
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        return attention_main(argv[1:])
    if argv and argv[0] == "zero-shot":
        from .clip.zero_shot import zero_shot_main

        return zero_shot_main(argv[1:])
    from core_attention.training import cli_main

    from .data import ImageDataModule
    from .module import ViTClassifier

    return cli_main(
        ViTClassifier,
        ImageDataModule,
        _with_predict_paths(argv),
        subclass_mode_data=True,
        description=DESCRIPTION,
        prog="python -m vit",
    )


if __name__ == "__main__":
    main()
