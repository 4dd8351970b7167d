"""`python -m dalle app` without a browser: the handlers on the release-0.1 fixture models, the page's wiring, the
command line. tests/dalle/test_app_browser.py drives the real page."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio", reason="the web app needs Gradio: pip install 'vit-dalle[app]'")

from pretrained_fixtures import one_thread, write_tiny_pretrained  # noqa: E402, F401 (one_thread: a fixture)

from dalle.app import app_main, app_parser, load_text_to_image  # noqa: E402
from dalle.app_ui import (  # noqa: E402
    Sampling,
    build_app,
    classify,
    generate,
    pipeline_generator,
    pretrained_generator,
)
from dalle.pipeline import load_pipeline  # noqa: E402
from dalle.pretrained import load_pretrained  # noqa: E402
from vit import load_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DALLE_CKPT, VIT_CKPT = FIXTURES / "dalle_v0.1.ckpt", FIXTURES / "vit_v0.1.ckpt"  # 16 px images; 8 px digits


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pretrained_fixtures.py


def brightness(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """A reranker that prefers bright images: (N, 3, H, W) -> (N,)."""
    return images.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def t2i():
    model, tokenizer, vae = load_pipeline(DALLE_CKPT)
    return pipeline_generator(model, tokenizer, vae, name="release 0.1 fixture", reranker=brightness)


@pytest.fixture(scope="module")
def vit():
    return load_classifier(VIT_CKPT)


def run(t2i, prompt="red", *, num_images=3, guidance=3.0, top_k=0, top_p=0.9, seed=0, candidates=6, rerank=False, **kw):
    """The handler as the page calls it (the page's widgets give floats)."""
    return generate(t2i, prompt, num_images, guidance, top_k, top_p, seed, candidates, rerank, **kw)


def png(path: str) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG", f"{path} is {image.format}"
    return image


# ------------------------------------------------------------------------------------------------ text to image


def test_generate_gives_pngs_of_the_models_size(t2i, tmp_path):
    calls = []
    gallery, grid, status = run(t2i, num_images=3, out_dir=tmp_path, progress=lambda *a: calls.append(a))
    assert len(gallery) == 3 and [caption for _, caption in gallery] == ["1", "2", "3"]
    assert all(png(path).size == (16, 16) for path, _ in gallery)  # the fixture's dVAE makes 16 x 16 images
    assert png(grid).size == (3 * 16 + 4 * 2, 16 + 2 * 2)  # one row of 3, 2 px padding
    assert "Seed **0**" in status and "3 image(s) of 16x16 px" in status
    tokens = 3 * 16  # 3 images of a 4 x 4 token grid
    assert calls[-1] == (tokens, tokens) and all(a[0] < b[0] for a, b in zip(calls, calls[1:]))


def test_the_same_seed_gives_the_same_images(t2i, tmp_path):
    def pixels(seed):
        gallery, _, _ = run(t2i, seed=seed, out_dir=tmp_path)
        return [png(path).tobytes() for path, _ in gallery]

    assert pixels(7) == pixels(7)
    assert pixels(7) != pixels(8)


def test_no_seed_draws_one_and_says_which(t2i, tmp_path):
    _, _, status = run(t2i, seed=None, num_images=1, out_dir=tmp_path)
    seed = int(status.split("**")[1])
    gallery, _, again = run(t2i, seed=seed, num_images=1, out_dir=tmp_path)
    assert again.startswith(f"Seed **{seed}**") and png(gallery[0][0]).size == (16, 16)


def test_reranking_keeps_the_best_candidates(t2i, tmp_path):
    gallery, _, status = run(t2i, num_images=2, candidates=8, rerank=True, out_dir=tmp_path)
    scores = [float(caption.split("score ")[1].rstrip(")")) for _, caption in gallery]
    assert len(scores) == 2 and scores[0] >= scores[1]
    every = run(t2i, num_images=8, candidates=8, rerank=True, out_dir=tmp_path)[0]  # the same 8 samples, all kept
    assert max(float(c.split("score ")[1].rstrip(")")) for _, c in every) == pytest.approx(scores[0], abs=1e-3)
    assert "best of 8 candidates" in status


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="", guidance=1.0), "Type a prompt"),
        (dict(prompt="   ", guidance=1.0), "Type a prompt"),
        (dict(num_images=4, candidates=2, rerank=True), "at least as many candidates"),
        (dict(top_p=0.0), "top_p"),  # the pipeline's own ValueError, shown as is
    ],
)
def test_bad_input_is_a_message_in_the_page(t2i, tmp_path, kwargs, message):
    with pytest.raises(gr.Error, match=message):
        run(t2i, out_dir=tmp_path, **kwargs)


def test_an_empty_prompt_with_guidance_samples(t2i, tmp_path):
    gallery, _, _ = run(t2i, prompt="", guidance=3.0, num_images=1, out_dir=tmp_path)
    assert len(gallery) == 1


def test_rerank_without_a_reranker_says_how_to_load_one(t2i, tmp_path):
    bare = pipeline_generator(*load_pipeline(DALLE_CKPT), name="no reranker")
    with pytest.raises(gr.Error, match="--rerank"):
        run(bare, rerank=True, out_dir=tmp_path)


def test_a_prompt_longer_than_the_text_context_says_it_was_cut(t2i, tmp_path):
    # The fixture's tokenizer spells letters: 8 tokens of text context.
    with pytest.warns(UserWarning, match=r"prompt cut from \d+ to text_seq_len=8 tokens"):  # gr.Warning outside a page
        gallery, _, status = run(t2i, prompt="a red circle, please", num_images=1, out_dir=tmp_path)
    assert len(gallery) == 1 and "⚠️ prompt cut from 21 to text_seq_len=8 tokens" in status


def test_dall_e_mini_style_models_generate_with_progress_and_reranking(tmp_path):
    pipe = load_pretrained(write_tiny_pretrained(tmp_path))
    mini = pretrained_generator(pipe, name="tiny", reranker=brightness)
    assert mini.defaults == Sampling(num_images=4, guidance_scale=16.0, top_k=256)  # min-dalle's
    calls = []
    gallery, grid, status = run(
        mini,
        prompt="a fox",
        num_images=1,
        candidates=2,
        rerank=True,
        top_k=8,
        out_dir=tmp_path,
        progress=lambda *a: calls.append(a),
    )
    assert len(gallery) == 1 and png(gallery[0][0]).size == (32, 32) and "score" in gallery[0][1]
    assert calls[-1] == (2 * 256, 2 * 256) and len(calls) == 256  # both candidates in one batch, 256 tokens each


# ------------------------------------------------------------------------------------------------ classify


def test_classify_gives_the_top_classes_and_an_overlay(vit, tmp_path):
    digit = tmp_path / "digit.png"
    Image.fromarray((torch.rand(8, 8, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(digit)
    labels, overlay = classify(vit, str(digit), out_dir=tmp_path)
    assert len(labels) == 5 and set(labels) <= set("0123456789")
    assert 0 < sum(labels.values()) <= 1 + 1e-6 and list(labels.values()) == sorted(labels.values(), reverse=True)
    assert png(overlay).size == (256, 256)  # the 8 px image enlarged 32x so the page shows it


def test_classify_keeps_all_classes_when_there_are_fewer_than_five(vit, tmp_path):
    few = load_classifier(VIT_CKPT)
    few.pretrained_cfg = {**few.pretrained_cfg, "class_names": ["zero", "one", "two"]}
    few.head = torch.nn.Linear(few.head.in_features, 3)
    image = tmp_path / "photo.jpg"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(image)  # an RGB photo for a grayscale model: converted
    labels, overlay = classify(few, str(image), out_dir=tmp_path)
    assert set(labels) == {"zero", "one", "two"} and sum(labels.values()) == pytest.approx(1.0)
    assert png(overlay).size == (600, 400)  # its own aspect, enlarged 2x to a short side >= 256


@pytest.mark.parametrize("content", [b"not an image at all", b""])
def test_a_file_that_is_not_an_image_is_a_message(vit, tmp_path, content):
    fake = tmp_path / "notes.png"
    fake.write_bytes(content)
    with pytest.raises(gr.Error, match="notes.png is not a readable image") as err:
        classify(vit, str(fake), out_dir=tmp_path)
    assert str(tmp_path) not in err.value.message  # the name the user knows, not the server's upload path
    with pytest.raises(gr.Error, match="Upload an image"):
        classify(vit, None, out_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ page and command


def test_one_generation_at_a_time_whatever_starts_it(t2i, vit, tmp_path):
    demo = build_app(t2i, vit, out_dir=tmp_path)
    generating = [fn for fn in demo.fns.values() if fn.name == "run" and len(fn.inputs) == 8]
    assert len(generating) == 2  # the button and Enter in the prompt box
    assert {(fn.concurrency_id, fn.concurrency_limit) for fn in generating} == {("generate", 1)}
    assert {fn.concurrency_limit for fn in demo.fns.values()} == {1}


def test_the_command_loads_an_exported_folder_with_its_sampling_defaults(tmp_path):
    model, tokenizer, vae = load_pipeline(DALLE_CKPT)
    model.save_pretrained(tmp_path)
    vae.save_pretrained(tmp_path / "vae")
    tokenizer.save(tmp_path / "tokenizer.json")
    (tmp_path / "generation.json").write_text('{"guidance_scale": 2.5, "top_k": 5}')
    t2i = load_text_to_image(app_parser().parse_args(["--checkpoint", str(tmp_path)]))
    assert t2i.defaults == Sampling(guidance_scale=2.5, top_k=5, top_p=0.9) and t2i.reranker is None
    gallery, _, _ = run(t2i, num_images=1, out_dir=tmp_path)
    assert png(gallery[0][0]).size == (16, 16)


def test_without_gradio_the_command_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert app_main(["--checkpoint", str(DALLE_CKPT)]) == 1
    assert "pip install 'vit-dalle[app]'" in capsys.readouterr().err


def test_a_wrong_checkpoint_is_a_message_not_a_traceback(tmp_path, capsys):
    assert app_main(["--checkpoint", str(VIT_CKPT), "--classifier", str(VIT_CKPT)]) == 1
    assert "is not a checkpoint written by `python -m dalle fit`" in capsys.readouterr().err


def test_importing_dalle_and_its_help_never_import_gradio():
    code = (
        "import sys, dalle, dalle.app, dalle.__main__ as m; m.main(['--help']);"
        "from dalle.app import app_parser; app_parser().format_help();"
        "assert 'gradio' not in sys.modules, 'gradio was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "app" in done.stdout
