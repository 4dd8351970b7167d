"""``python -m dalle app``: a local web page that makes images from text and classifies images with a ViT.

    python -m dalle app                    # the shipped shapes DALL·E with its reranker, and the shipped digits ViT
    python -m dalle app --checkpoint RUN/checkpoints/last.ckpt --classifier VIT_RUN/checkpoints/last.ckpt
    python -m dalle app --pretrained mini --rerank clip --rerank-checkpoint ViT-B-32/openai

The models load once, at start-up; `dalle.app_ui` is the page (Gradio). Serves on 127.0.0.1:7860 until Ctrl+C.
Needs Gradio: ``pip install 'vit-dalle[app]'``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dalle.generation import add_speed_options, speed_options

if TYPE_CHECKING:
    from dalle.app_ui import TextToImage

__all__ = ["app_main", "app_parser"]

INSTALL_HINT = "the web app needs Gradio: pip install 'vit-dalle[app]'"


def app_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dalle app",
        description="A local web app with two tabs: text to image (prompt, sampling options, reranking, PNG "
        "downloads) and classify (top-5 classes and the attention rollout of an uploaded image). Loads the models "
        "once, then serves until Ctrl+C. " + INSTALL_HINT[0].upper() + INSTALL_HINT[1:] + ".",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="the text-to-image model: a .ckpt of `python -m dalle fit` or an exported folder "
        "(default: the shapes model shipped with the package, with its reranker)",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="mini|mega|DIR",
        help="instead of --checkpoint: DALL·E Mini / Mega (downloaded from Hugging Face) or a folder of their weights",
    )
    p.add_argument(
        "--rerank",
        default=None,
        help="reranker as in `generate`: 'shapes', 'clip' (with --rerank-checkpoint) or 'module:function' "
        "(default: 'shapes' for the shipped model, none otherwise)",
    )
    p.add_argument("--rerank-checkpoint", default=None, help="if given, --rerank names a factory called with this path")
    p.add_argument(
        "--classifier",
        default=None,
        help="the ViT of the classify tab: a .ckpt of `python -m vit fit` or a save_pretrained folder "
        "(default: the digits ViT shipped with the package)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    add_speed_options(p)
    return p


def load_text_to_image(args: argparse.Namespace) -> TextToImage:
    """The `dalle.app_ui.TextToImage` the options name, with its reranker."""
    from dalle.app_ui import SHAPES_DEFAULTS, pipeline_generator, pretrained_generator
    from dalle.pipeline import generation_defaults, load_pipeline, load_reranker
    from dalle.shipped import DALLE_DIR

    dtype = speed_options(args)
    rerank = args.rerank or ("shapes" if args.checkpoint is None and args.pretrained is None else None)
    reranker = load_reranker(rerank, args.rerank_checkpoint) if rerank else None
    if args.pretrained is not None:
        from dalle.pretrained import load_pretrained

        pipe = load_pretrained(args.pretrained, dtype=dtype, device=args.device)
        name = f"DALL·E {str(args.pretrained).title()}"
        return pretrained_generator(pipe, name=name, reranker=reranker, compile=args.compile)
    path = Path(args.checkpoint) if args.checkpoint is not None else DALLE_DIR
    model, tokenizer, vae = load_pipeline(path, map_location=args.device)
    model = model.to(dtype)
    defaults = replace(SHAPES_DEFAULTS, **generation_defaults(path))  # the folder's generation.json, if any
    name = f"{path}" if args.checkpoint is not None else f"the shapes model shipped with the package ({path})"
    return pipeline_generator(
        model, tokenizer, vae, name=name, reranker=reranker, defaults=defaults, compile=args.compile
    )


def app_main(argv: list[str]) -> int:
    args = app_parser().parse_args(argv)
    if args.checkpoint is not None and args.pretrained is not None:
        app_parser().error("pass --checkpoint or --pretrained, not both")
    if importlib.util.find_spec("gradio") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local app: no telemetry
    from dalle.app_ui import build_app
    from vit import load_classifier

    try:
        t2i = load_text_to_image(args)
        classifier = load_classifier(args.classifier)
    except (FileNotFoundError, ValueError) as err:  # a wrong path, or a file of another kind
        print(f"python -m dalle app: {err}", file=sys.stderr)
        return 1
    print(f"text to image: {t2i.name}; classifier: {args.classifier or 'the digits ViT shipped with the package'}")
    demo = build_app(t2i, classifier)
    try:
        demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True, share=False)
    except OSError as err:
        print(f"cannot serve on {args.host}:{args.port} ({err}): pick another --port", file=sys.stderr)
        return 1
    print(f"open {demo.local_url} in a browser (Ctrl+C stops the app)", flush=True)
    demo.block_thread()
    return 0
