"""CLIP as DALL·E's judge: the CLIP score against open_clip, `generate --rerank clip`, `python -m dalle clip-score`."""

import json

import open_clip
import pytest
import torch
from clip_fixtures import save_open_clip_folder, tiny_open_clip
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from dalle.__main__ import main as dalle_main
from dalle.generate import generate_main
from dalle.judges.clip_score import CLIPReranker, clip_score, clip_similarity
from dalle.judges.clip_score_cli import clip_score_report
from dalle.pipeline import generate_images, load_reranker
from dalle.transformer.model import DALLE
from dalle.transformer.tokenizer import BPETokenizer
from dalle.vae.dvae import DiscreteVAE
from vit.clip import load_clip
from vit.clip.model import CLIP_MEAN, CLIP_STD

CAPTIONS = ["a red circle in the top left", "a big blue square at the bottom", "a green cross on the right"] * 4


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    ref = tiny_open_clip(quick_gelu=False, seed=5)
    return ref, save_open_clip_folder(ref, tmp_path_factory.mktemp("clip") / "repo", quick_gelu=False).parent


@pytest.fixture(scope="module")
def dalle_folder(tmp_path_factory):
    tokenizer = BPETokenizer.train(CAPTIONS, 200)
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=16, num_tokens=32, downsample=4, hidden_dim=8, codebook_dim=8).eval()
    model = DALLE(
        text_vocab_size=tokenizer.vocab_size,
        text_seq_len=8,
        image_vocab_size=32,
        image_grid_size=4,
        dim=32,
        depth=2,
        num_heads=4,
    ).eval()
    folder = tmp_path_factory.mktemp("dalle") / "export"
    model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    vae.save_pretrained(folder / "vae")
    return (model, tokenizer, vae), folder


def test_clip_score_is_open_clips_cosine(clip_folder):
    ref, folder = clip_folder
    model = load_clip(folder)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # the model's size: no resize
    prompts = ["a red circle", "a blue square", "a red circle", "a dog"]
    with torch.no_grad():
        pixels = (images - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
        image = ref.encode_image(pixels, normalize=True)
        text = ref.encode_text(open_clip.tokenize(prompts), normalize=True)
    expected = (image * text).sum(-1)
    torch.testing.assert_close(clip_similarity(model, prompts, images, batch_size=3), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(clip_score(model, prompts, images), 100 * expected.clamp(min=0), atol=1e-3, rtol=0)
    small = torch.rand(2, 3, 16, 16)  # generated images are resized as CLIP resizes: short side, then centre crop
    mixed = clip_similarity(model, ["a", "b"], [small[0], torch.rand(3, 20, 24)])
    assert mixed.shape == (2,) and torch.allclose(mixed[0], clip_similarity(model, ["a"], small[:1])[0], atol=1e-6)
    with pytest.raises(ValueError, match="one prompt per image: got 1 prompts for 2 images"):
        clip_score(model, ["a"], small)


def test_generate_reranks_with_clip(clip_folder, dalle_folder, tmp_path, capsys):
    _, clip_path = clip_folder
    (model, tokenizer, vae), folder = dalle_folder
    reranker = load_reranker("clip", str(clip_path))
    assert isinstance(reranker, CLIPReranker)
    seen = []

    def recording(prompts, images):
        seen.append(reranker(prompts, images))
        return seen[-1]

    prompts = ["a red circle", "a blue square"]
    result = generate_images(model, tokenizer, vae, prompts, num_images=2, candidates=5, rerank=recording, seed=1)
    all_scores = seen[0].view(2, 5)
    torch.testing.assert_close(result.scores, all_scores.topk(2, dim=1).values)  # kept the two CLIP liked best
    torch.testing.assert_close(reranker(["a red circle"] * 2, result.images[0]), result.scores[0], atol=1e-4, rtol=0)
    argv = [
        *prompts,
        "-n",
        "2",
        "--candidates",
        "5",
        "--checkpoint",
        str(folder),
        "--out",
        str(tmp_path / "g.png"),
        "--seed",
        "1",
        "--rerank",
        "clip",
        "--rerank-checkpoint",
        str(clip_path),
        "--device",
        "cpu",
    ]
    assert generate_main(argv) == 0
    out = capsys.readouterr().out
    assert f"'a red circle': reranker scores {result.scores[0, 0]:.3f}" in out
    with pytest.raises(ValueError, match="--rerank clip needs --rerank-checkpoint"):
        load_reranker("clip")


def test_clip_score_cli_on_files_and_on_a_checkpoint(clip_folder, dalle_folder, tmp_path, capsys):
    _, clip_path = clip_folder
    _, folder = dalle_folder
    images = tmp_path / "images"
    images.mkdir()
    for i, (colour, caption) in enumerate([((220, 20, 20), "a red square"), ((20, 20, 220), "a blue square")]):
        Image.new("RGB", (40, 40), colour).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(caption + "\nanother caption\n")
    argv = ["clip-score", str(images), "--clip", str(clip_path), "--json", str(tmp_path / "s.json")]
    assert dalle_main(argv) == 0  # the `python -m dalle` dispatch, in-process (a subprocess costs ~10 s of imports)
    stdout = capsys.readouterr().out
    report = json.loads((tmp_path / "s.json").read_text())
    assert [s["prompt"] for s in report["scores"]] == ["a red square", "a blue square"] and report["count"] == 2
    pixels = torch.stack([pil_to_tensor(Image.open(images / f"{i}.png")) / 255 for i in range(2)])
    expected = clip_score(load_clip(clip_path), ["a red square", "a blue square"], pixels)
    assert report["mean"] == pytest.approx(expected.mean().item(), abs=1e-4)
    assert f"CLIP score: {expected.mean().item():.2f}" in stdout

    report = clip_score_report(
        [
            "--checkpoint",
            str(folder),
            "--prompts",
            "a red circle",
            "a blue square",
            "-n",
            "2",
            "--clip",
            str(clip_path),
            "--device",
            "cpu",
        ]
    )
    assert report["count"] == 4 and "CLIP score:" in capsys.readouterr().out
    (images / "1.txt").unlink()
    with pytest.raises(ValueError, match=r"no prompt for .*1.png: pass --prompt, or put its caption in .*1.txt"):
        clip_score_report([str(images), "--clip", str(clip_path)])
    assert clip_score_report([str(images), "--clip", str(clip_path), "--prompt", "a square"])["count"] == 2
    (images / "1.txt").write_bytes("a blue carré\n".encode("latin-1"))  # not UTF-8: read as the caption folder does
    assert clip_score_report([str(images), "--clip", str(clip_path)])["scores"][1]["prompt"] == "a blue carré"


def test_pretrained_mini_mega_rerank_with_clip(clip_folder, tmp_path, monkeypatch, capsys):
    """`generate --pretrained mini --candidates 4 -n 2 --rerank clip`: the sampler (faked here: no download) is asked
    for 4 candidates per prompt, and the 2 that CLIP scores highest are kept."""
    from types import SimpleNamespace

    import dalle.pretrained as pretrained
    from dalle.pipeline import GenerationResult

    _, clip_path = clip_folder
    gen = torch.Generator().manual_seed(0)
    asked = {}

    def fake_generate(pipe, prompts, *, num_images, seed, **kwargs):
        asked["num_images"] = num_images
        images = torch.rand(len(prompts), num_images, 3, 16, 16, generator=gen)
        ids = torch.zeros(len(prompts), num_images, 4, dtype=torch.long)
        return GenerationResult(list(prompts), images, ids, None, 7)

    monkeypatch.setattr(pretrained, "load_pretrained", lambda *a, **k: SimpleNamespace(vqgan=None))
    monkeypatch.setattr(pretrained, "generate_pretrained", fake_generate)
    prompts = ["a red circle", "a blue square"]
    argv = [
        *prompts,
        "--pretrained",
        "mini",
        "-n",
        "2",
        "--candidates",
        "4",
        "--rerank",
        "clip",
        "--rerank-checkpoint",
        str(clip_path),
        "--out",
        str(tmp_path / "g.png"),
        "--device",
        "cpu",
    ]
    assert generate_main(argv) == 0
    assert asked["num_images"] == 4
    out = capsys.readouterr().out
    gen.manual_seed(0)
    candidates = torch.rand(2, 4, 3, 16, 16, generator=gen)  # what the fake sampler returned
    flat_prompts = [p for p in prompts for _ in range(4)]
    scores = CLIPReranker(load_clip(clip_path))(flat_prompts, candidates.flatten(0, 1)).view(2, 4)
    best = scores.topk(2, dim=1).values
    assert f"'a red circle': reranker scores {best[0, 0]:.3f}, {best[0, 1]:.3f}" in out
    assert len(list((tmp_path / "g").glob("*.png"))) == 4  # 2 prompts x the 2 kept
    with pytest.raises(SystemExit, match="--candidates 4 needs --rerank"):
        generate_main([*prompts, "--pretrained", "mini", "-n", "2", "--candidates", "4", "--out", str(tmp_path / "h")])


def test_clip_score_of_mini_mega_samples(clip_folder, monkeypatch, capsys):
    """`clip-score --pretrained mini --prompts ...`: min-dalle's guidance default, CLIP scores of what it sampled."""
    from types import SimpleNamespace

    import dalle.pretrained as pretrained
    from dalle.pipeline import GenerationResult

    _, clip_path = clip_folder
    images = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    asked = {}

    def fake_generate(pipe, prompts, *, num_images, seed, guidance_scale, top_p):
        asked.update(num_images=num_images, guidance_scale=guidance_scale)
        return GenerationResult(list(prompts), images, torch.zeros(1, 3, 4, dtype=torch.long), None, seed)

    monkeypatch.setattr(pretrained, "load_pretrained", lambda *a, **k: SimpleNamespace())
    monkeypatch.setattr(pretrained, "generate_pretrained", fake_generate)
    clip = str(clip_path)
    report = clip_score_report(["--pretrained", "mini", "--prompts", "a red circle", "-n", "3", "--clip", clip])
    assert asked == {"num_images": 3, "guidance_scale": 16.0}
    expected = clip_score(load_clip(clip_path), ["a red circle"] * 3, images[0])
    assert [s["score"] for s in report["scores"]] == pytest.approx(expected.tolist(), abs=1e-4)
    assert report["scores"][0]["image"] == "mini[prompt 0, image 0]"
    with pytest.raises(SystemExit, match="not both"):
        clip_score_report(["--pretrained", "mini", "--checkpoint", "x", "--prompts", "a", "--clip", clip])
