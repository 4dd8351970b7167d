"""The page of ``python -m dalle app``: a Gradio app with a text-to-image tab and a classify tab.

The handlers (`generate`, `classify`) are plain functions of already-loaded models, so they run without a browser;
`build_app` lays them out in a `gr.Blocks`. `dalle.app` is the command line that loads the models and serves it.
Importing this module needs Gradio (``pip install 'vit-dalle[app]'``).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from dalle.generation import GenerationResult, Reranker, save_images
from dalle.pipeline import generate_images
from dalle.pretrained import Pretrained
from dalle.transformer.bart import DalleBart
from dalle.transformer.bart_tokenizer import BartTokenizer
from dalle.transformer.model import DALLE
from dalle.transformer.tokenizer import BPETokenizer
from dalle.vae.dvae import DiscreteVAE
from dalle.vae.vqgan import VQGAN
from vit.attention_maps import save_attention_overlay
from vit.data import load_image
from vit.model import VisionTransformer

__all__ = ["Sampling", "TextToImage", "build_app", "classify", "generate", "pipeline_generator", "pretrained_generator"]

Progress = Callable[[int, int], None]  # (image tokens sampled so far, total)
EMPTY_PROMPT = (
    "Type a prompt. An empty prompt asks for images of nothing in particular, which this page only samples with "
    "guidance (a guidance scale other than 1)."
)


# ------------------------------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class Sampling:
    """How to sample one prompt's images. `candidates`: sample that many and keep the reranker's best
    `num_images` (None: no reranking)."""

    num_images: int = 4
    guidance_scale: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    candidates: int | None = None


@dataclass
class TextToImage:
    """A loaded text-to-image model behind one call, with the reranker and the sampling defaults the page offers."""

    name: str
    sample: Callable[[str, Sampling, Progress | None], GenerationResult]
    reranker: Reranker | None
    defaults: Sampling


SHAPES_DEFAULTS = Sampling(guidance_scale=3.0, top_p=0.9)  # the README's settings for the shapes recipes
MINI = Sampling(num_images=4, guidance_scale=16.0, top_k=256)  # min-dalle's


def pipeline_generator(
    model: DALLE | DalleBart,
    tokenizer: BPETokenizer | BartTokenizer,
    vae: DiscreteVAE | VQGAN,
    *,
    name: str,
    reranker: Reranker | None = None,
    defaults: Sampling = SHAPES_DEFAULTS,
    compile: bool = False,
) -> TextToImage:
    """A model `dalle.pipeline.load_pipeline` loads: a DALL·E trained here, or DALL·E Mini / Mega. `compile`: the
    decoding step compiled (each new number of images compiles once, then stays fast)."""

    def sample(prompt: str, s: Sampling, progress: Progress | None) -> GenerationResult:
        return generate_images(
            model,
            tokenizer,
            vae,
            prompt,
            num_images=s.num_images,
            candidates=s.candidates,
            rerank=reranker if s.candidates is not None else None,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            guidance_scale=s.guidance_scale,
            seed=s.seed,
            progress=progress,
            compile=compile,
        )

    return TextToImage(name, sample, reranker, defaults)


def pretrained_generator(
    pipe: Pretrained, *, name: str, reranker: Reranker | None = None, compile: bool = False
) -> TextToImage:
    """DALL·E Mini / Mega (`dalle.pretrained.load_pretrained`), with min-dalle's sampling defaults."""
    return pipeline_generator(
        pipe.model, pipe.tokenizer, pipe.vqgan, name=name, reranker=reranker, defaults=MINI, compile=compile
    )


# ------------------------------------------------------------------------------------------------- the handlers


def page_sampling(
    t2i: TextToImage,
    num_images: float,
    guidance_scale: float,
    top_k: float | None,
    top_p: float,
    seed: float | None,
    candidates: float,
    rerank: bool,
) -> Sampling:
    """The page's controls as `Sampling` (top-k 0 and top-p 1 mean off, no seed means a random one)."""
    num_images, candidates = int(num_images), int(candidates)
    if rerank and t2i.reranker is None:
        raise gr.Error("No reranker is loaded: start the app with --rerank (see python -m dalle app --help).")
    if rerank and candidates < num_images:
        raise gr.Error(f"Sample at least as many candidates ({candidates}) as images to keep ({num_images}).")
    return Sampling(
        num_images=num_images,
        guidance_scale=float(guidance_scale),
        temperature=t2i.defaults.temperature,
        top_k=int(top_k) if top_k else None,
        top_p=float(top_p) if top_p < 1 else None,
        seed=None if seed is None else int(seed),
        candidates=candidates if rerank else None,
    )


def generate(
    t2i: TextToImage,
    prompt: str,
    num_images: float,
    guidance_scale: float,
    top_k: float | None,
    top_p: float,
    seed: float | None,
    candidates: float,
    rerank: bool,
    *,
    out_dir: Path,
    progress: Progress | None = None,
) -> tuple[list[tuple[str, str]], str, str]:
    """The text-to-image tab: -> (gallery of (PNG path, caption), grid PNG path, status in Markdown).

    Bad input raises `gr.Error` with its reason; warnings while sampling (a prompt cut to the text context) are shown
    with `gr.Warning` and listed in the status."""
    s = page_sampling(t2i, num_images, guidance_scale, top_k, top_p, seed, candidates, rerank)
    if not prompt.strip() and s.guidance_scale == 1.0:
        raise gr.Error(EMPTY_PROMPT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = t2i.sample(prompt, s, progress)
        except (ValueError, MemoryError) as err:
            raise gr.Error(str(err)) from None
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    for note in notes:
        gr.Warning(note)
    paths = save_images(result.images, Path(tempfile.mkdtemp(dir=out_dir)) / "grid.png")
    scores = [] if result.scores is None else result.scores[0].tolist()
    captions = [f"{i + 1}" + (f" (score {scores[i]:.3f})" if scores else "") for i in range(len(paths) - 1)]
    return list(zip(map(str, paths[1:]), captions)), str(paths[0]), status(result, s, notes)


def status(result: GenerationResult, s: Sampling, notes: list[str]) -> str:
    """One line on what was made, then the warnings."""
    h, w = result.images.shape[-2:]
    line = f"Seed **{result.seed}**: {s.num_images} image(s) of {w}x{h} px"
    if s.candidates is not None:
        line += f", the reranker's best of {s.candidates} candidates"
    return "\n\n".join([line + "."] + [f"⚠️ {note}" for note in notes])


def preprocess(model: VisionTransformer) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (C, H, W) model input, with the size and normalisation the model was trained with."""
    cfg = model.pretrained_cfg
    gray = model.config.in_chans == 1
    mean = cfg.get("mean", (0.5,) if gray else (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.5,) if gray else (0.229, 0.224, 0.225))
    size = model.patch_embed.img_size
    return T.Compose(
        [T.Resize(size, antialias=True), T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    )


def classify(
    model: VisionTransformer, path: str | None, *, out_dir: Path, top: int = 5, min_size: int = 256
) -> tuple[dict[str, float], str]:
    """The classify tab: -> ({class name: probability} of the `top` classes, attention-rollout overlay PNG path).

    The overlay is drawn on the image enlarged (nearest neighbour) to at least `min_size` px, so small images stay
    visible."""
    if not path:
        raise gr.Error("Upload an image to classify.")
    try:
        image = load_image(path, model.config.in_chans, convert=True)
    except ValueError as err:
        raise gr.Error(str(err).replace(str(path), Path(path).name)) from None
    pixels = preprocess(model)(image)
    with torch.no_grad():
        probs = model(pixels[None]).softmax(-1)[0]
    names = model.pretrained_cfg.get("class_names") or []
    best = probs.topk(min(top, probs.numel()))
    labels = {names[i] if i < len(names) else str(i): p for p, i in zip(best.values.tolist(), best.indices.tolist())}
    scale = max(1, -(-min_size // min(image.size)))
    shown = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    out = Path(tempfile.mkdtemp(dir=out_dir)) / f"{Path(path).stem}.attention.png"
    save_attention_overlay(model, shown, pixels, out)
    return labels, str(out)


# ------------------------------------------------------------------------------------------------- the page


def build_app(generator: TextToImage, classifier: VisionTransformer, *, out_dir: Path | None = None) -> gr.Blocks:
    """The two tabs around the loaded models. Generations queue one at a time (a CPU runs one well), so do
    classifications; the PNGs go under `out_dir` (default: a new temporary folder)."""
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="vit-dalle-app-"))
    with gr.Blocks(title="vit-dalle", delete_cache=(3600, 3600)) as demo:
        gr.HTML(  # the style keeps small images sharp when the page enlarges them
            "<style>#gallery img, #overlay img {image-rendering: pixelated;}</style>"
            "<h2>vit-dalle: images from text, and a ViT that shows where it looks</h2>"
        )
        with gr.Tab("Text to image"):
            text_to_image_tab(generator, out_dir)
        with gr.Tab("Classify"):
            classify_tab(classifier, out_dir)
    demo.queue(default_concurrency_limit=1)
    return demo


def text_to_image_tab(t2i: TextToImage, out_dir: Path) -> None:
    d, can_rerank = t2i.defaults, t2i.reranker is not None
    gr.Markdown(f"**Model:** {t2i.name}")
    with gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(label="Prompt", placeholder="a large red circle in the top left", elem_id="prompt")
            num_images = gr.Slider(1, 16, value=d.num_images, step=1, label="Images")
            guidance = gr.Slider(0, 32, value=d.guidance_scale, step=0.5, label="Guidance scale", info="1 = off")
            top_k = gr.Number(value=d.top_k or 0, precision=0, minimum=0, label="Top-k", info="0 = off")
            top_p = gr.Slider(0.05, 1, value=d.top_p or 1, step=0.05, label="Top-p", info="1 = off")
            seed = gr.Number(
                value=0, precision=0, minimum=0, label="Seed", info="same seed, same images; empty: random"
            )
            with gr.Row():
                rerank = gr.Checkbox(value=can_rerank, interactive=can_rerank, label="Rerank", info="keep the best")
                candidates = gr.Slider(1, 64, value=16, step=1, label="Candidates", interactive=can_rerank)
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="Images", columns=4, object_fit="contain", height="auto", elem_id="gallery")
            grid = gr.File(label="Grid (PNG)", elem_id="grid")
            info = gr.Markdown(elem_id="status")

    def run(prompt, num_images, guidance, top_k, top_p, seed, candidates, rerank, progress=gr.Progress()):  # noqa: B008
        def report(done: int, total: int) -> None:
            progress((done, total), desc="sampling image tokens", unit="tokens")

        return generate(
            t2i, prompt, num_images, guidance, top_k, top_p, seed, candidates, rerank, out_dir=out_dir, progress=report
        )

    controls = [prompt, num_images, guidance, top_k, top_p, seed, candidates, rerank]
    for event in (button.click, prompt.submit):  # one queue for both: one generation at a time
        event(run, controls, [gallery, grid, info], concurrency_id="generate", concurrency_limit=1)


def classify_tab(model: VisionTransformer, out_dir: Path) -> None:
    names = model.pretrained_cfg.get("class_names") or []
    listed = ": " + ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else ""
    gr.Markdown(f"**Classifier:** a ViT of {model.config.num_classes} classes{listed}")
    with gr.Row():
        with gr.Column():
            image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="image")
            button = gr.Button("Classify", variant="primary", elem_id="classify")
        with gr.Column():
            label = gr.Label(num_top_classes=5, label="Top classes", elem_id="label")
            overlay = gr.Image(label="Attention rollout", type="filepath", elem_id="overlay")

    def run(path):
        return classify(model, path, out_dir=out_dir)

    for event in (image.upload, button.click):
        event(run, image, [label, overlay], concurrency_id="classify", concurrency_limit=1)
