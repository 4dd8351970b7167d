"""`python -m vit zero-shot` as users run it, on a saved random-weight CLIP, against open_clip's numbers."""

import subprocess
import sys

import open_clip
import pytest
import torch
from clip_fixtures import TINY_CFG, save_open_clip_folder, tiny_open_clip
from PIL import Image

from vit.clip import load_clip, zero_shot

LABELS = ["a red square", "a green circle", "a photo of a cat"]


def run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero_shot")
    ref = tiny_open_clip(quick_gelu=True, seed=3)
    folder = save_open_clip_folder(ref, tmp / "repo", quick_gelu=True).parent
    images = []
    for i, colour in enumerate([(200, 30, 30), (20, 180, 40)]):
        image = Image.new("RGB", (48, 40), colour)  # not square, not the model's size: resize + centre crop
        image.paste((255, 255, 255), (5 * i, 4, 20 + 5 * i, 30))
        image.save(tmp / f"img{i}.png")
        images.append(tmp / f"img{i}.png")
    return ref, folder, images


def reference_probs(ref, images) -> torch.Tensor:
    preprocess = open_clip.image_transform(TINY_CFG["vision_cfg"]["image_size"], is_train=False)
    pixels = torch.stack([preprocess(Image.open(p)) for p in images])
    with torch.no_grad():
        image = ref.encode_image(pixels, normalize=True)
        text = ref.encode_text(open_clip.tokenize(LABELS), normalize=True)
        return (ref.logit_scale.exp() * image @ text.T).softmax(-1)


def test_zero_shot_cli_prints_open_clips_ranking(setup):
    ref, folder, images = setup
    expected = reference_probs(ref, images)
    result = run("zero-shot", *map(str, images), "--labels", *LABELS, "--clip", str(folder), "--top-k", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, path, probs in zip(lines, images, expected):
        top = probs.topk(3)
        want = ", ".join(f"{LABELS[i]} ({p:.3f})" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        assert line == f"{path}: {want}"


def test_zero_shot_function_matches_open_clip(setup):
    ref, folder, images = setup
    probs = zero_shot(load_clip(folder), [Image.open(p) for p in images], LABELS)
    torch.testing.assert_close(probs, reference_probs(ref, images), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="at least one label"):
        zero_shot(load_clip(folder), [Image.open(images[0])], [])


def test_zero_shot_cli_errors_are_clear(setup, capsys):
    from vit.__main__ import main

    _, folder, images = setup
    # In-process: a subprocess costs ~10 s of imports, and the one above already checked the entry point.
    with pytest.raises(ValueError, match="is not a ViT-B-32 checkpoint"):
        main(["zero-shot", str(images[0]), "--labels", "a", "--clip", str(folder), "--variant", "ViT-B-32"])
    with pytest.raises(SystemExit) as exit_:
        main(["zero-shot", str(images[0]), "--clip", str(folder)])
    assert exit_.value.code == 2 and "--labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["zero-shot", "--help"])
    assert "--template" in capsys.readouterr().out
