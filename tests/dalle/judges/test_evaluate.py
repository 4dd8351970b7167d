"""`python -m dalle evaluate`: prompt sets, scoring, and the command end to end on a tiny DALL·E checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from dalle.data.shapes import HELD_OUT_PAIRS, TRAIN_PAIRS, ShapesDataset, canonical_caption, is_held_out, parse_caption
from dalle.judges.attributes import AttributeClassifier
from dalle.judges.evaluate import SPLITS, accuracy, evaluate_main, prompt_scenes, split_scenes

ROOT = Path(__file__).resolve().parents[3]
METRICS = {"shape", "colour", "size", "position", "all"}


def test_prompt_sets_are_disjoint_deterministic_and_balanced() -> None:
    held_in, held_out = split_scenes("held_in"), split_scenes("held_out")
    assert len(held_in) == 33 * 2 * 9 and len(held_out) == 7 * 2 * 9
    assert not {canonical_caption(s) for s in held_in} & {canonical_caption(s) for s in held_out}
    assert not any(is_held_out(s) for s in held_in) and all(is_held_out(s) for s in held_out)

    scenes = prompt_scenes("held_out", 70, seed=1)
    assert scenes == prompt_scenes("held_out", 70, seed=1) and scenes != prompt_scenes("held_out", 70, seed=2)
    assert len(set(scenes)) == 70  # no repeats
    assert set(Counter((s[0].colour, s[0].kind) for s in scenes).values()) == {10}  # 70 prompts over 7 pairs
    assert {(s[0].colour, s[0].kind) for s in prompt_scenes("held_in", 33)} == set(TRAIN_PAIRS)
    assert len(set(prompt_scenes("held_out", 126))) == 126  # every held-out scene once
    for scene in scenes:
        assert parse_caption(canonical_caption(scene)) == scene  # the prompt says exactly the scene
    with pytest.raises(ValueError, match=r"\[1, 126\]"):
        prompt_scenes("held_out", 127)
    with pytest.raises(ValueError, match="split must be one of"):
        prompt_scenes("train", 3)
    assert set(SPLITS["held_out"]) == set(HELD_OUT_PAIRS)


def test_accuracy_counts_each_attribute_and_all_together() -> None:
    target = torch.tensor([[0, 1, 0, 4], [2, 3, 1, 8]])
    predicted = torch.tensor([[0, 1, 0, 4], [2, 0, 1, 8]])
    assert accuracy(predicted, target) == {"shape": 1.0, "colour": 0.5, "size": 1.0, "position": 1.0, "all": 0.5}


@pytest.fixture(scope="module")
def dalle_folder(tmp_path_factory) -> Path:
    """A tiny untrained DALL·E written through the training module's own export (what `python -m dalle fit` saves)."""
    from dalle.transformer.model import DALLEConfig
    from dalle.transformer.module import DALLEModule
    from dalle.transformer.tokenizer import BPETokenizer
    from dalle.vae.dvae import DiscreteVAE

    root = tmp_path_factory.mktemp("dalle")
    torch.manual_seed(0)
    DiscreteVAE(image_size=16, num_tokens=32, downsample=4, hidden_dim=8, codebook_dim=8).save_pretrained(root / "vae")
    BPETokenizer.train(ShapesDataset("train", 300, 16).iter_captions(), vocab_size=200).save(root / "tokenizer.json")
    module = DALLEModule(
        vae_path=str(root / "vae"),
        tokenizer_path=str(root / "tokenizer.json"),
        arch=DALLEConfig(text_seq_len=24, dim=32, depth=1, num_heads=2),
    )
    return module.export(root / "export")


def run_evaluate(args: list[str], capsys) -> tuple[int, str]:
    code = evaluate_main(args)
    return code, capsys.readouterr().out


def test_evaluate_end_to_end(dalle_folder, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    AttributeClassifier(
        dict(
            img_size=48,
            patch_size=16,
            num_classes=0,
            global_pool="",
            class_token=False,
            embed_dim=16,
            depth=1,
            num_heads=2,
        )
    ).save_pretrained(tmp_path / "clf")
    out = tmp_path / "eval"
    args = [
        "--checkpoint",
        str(dalle_folder),
        "--classifier",
        str(tmp_path / "clf"),
        "--num-prompts",
        "5",
        "--images-per-prompt",
        "2",
        "--batch-size",
        "4",
        "--grid-prompts",
        "3",
    ]
    code, printed = run_evaluate([*args, "--out", str(out)], capsys)
    assert code == 0
    assert "held_in" in printed and "held_out" in printed and "quality bar" in printed

    report = json.loads((out / "report.json").read_text())
    assert {"summary", "checkpoint", "classifier", "settings", "held_in", "held_out", "quality_bar", "grids"} <= set(
        report
    )
    assert report["summary"]["held_out"] == report["held_out"]["accuracy"]
    for split in ("held_in", "held_out"):
        r = report[split]
        assert r["num_prompts"] == 5 and r["num_images"] == 10 and len(r["prompts"]) == 5
        figures = [r["accuracy"], r["classifier_on_real"], r["dvae_ceiling"]]
        assert all(set(f) == METRICS for f in figures)
        assert all(0.0 <= v <= 1.0 for v in [*(v for f in figures for v in f.values()), *r["per_prompt_all"]])
        assert Path(report["grids"][split]).is_file()
    assert not set(report["held_in"]["prompts"]) & set(report["held_out"]["prompts"])
    assert all(is_held_out(parse_caption(p)) for p in report["held_out"]["prompts"])
    assert not any(is_held_out(parse_caption(p)) for p in report["held_in"]["prompts"])
    assert set(report["quality_bar"]["passed"]) == {"held_in", "held_out"}

    # Same flags, same prompts and images: the whole evaluation is seeded.
    run_evaluate([*args, "--out", str(tmp_path / "again")], capsys)
    second = json.loads((tmp_path / "again" / "report.json").read_text())
    assert second["held_out"]["prompts"] == report["held_out"]["prompts"]
    assert second["held_in"]["accuracy"] == report["held_in"]["accuracy"]


def test_evaluate_trains_and_caches_a_missing_classifier(dalle_folder, tmp_path, capsys) -> None:
    args = [
        "--checkpoint",
        str(dalle_folder),
        "--classifier",
        str(tmp_path / "clf"),
        "--classifier-steps",
        "2",
        "--out",
        str(tmp_path / "eval"),
        "--num-prompts",
        "2",
        "--images-per-prompt",
        "1",
    ]
    code, printed = run_evaluate(args, capsys)
    assert code == 0 and "training one" in printed
    assert (tmp_path / "clf" / "model.safetensors").is_file()
    assert "test_accuracy" in json.loads((tmp_path / "clf" / "config.json").read_text())["metrics"]
    code, printed = run_evaluate(args, capsys)  # second run: loaded from the cache, not retrained
    assert code == 0 and "training one" not in printed


def test_evaluate_with_a_reranker_scores_its_best_candidates(dalle_folder, tmp_path, capsys) -> None:
    """`--reranker DIR --candidates C`: each prompt's images are the reranker's best of C candidates (the shipped
    shapes figures are measured this way), and the report records which reranker and how many candidates."""
    from recipes import tiny_reranker_config as tiny_config

    from dalle.judges.evaluate import evaluate
    from dalle.judges.reranker import ContrastiveReranker, load_reranker
    from dalle.pipeline import generate_images, load_pipeline
    from dalle.transformer.tokenizer import BPETokenizer

    torch.manual_seed(0)
    tokenizer = BPETokenizer.train(ShapesDataset("train", 300, 16).iter_captions(), vocab_size=200)
    ContrastiveReranker(tiny_config(), tokenizer).save_pretrained(tmp_path / "rr")
    AttributeClassifier(
        dict(
            img_size=48,
            patch_size=16,
            num_classes=0,
            global_pool="",
            class_token=False,
            embed_dim=16,
            depth=1,
            num_heads=2,
        )
    ).save_pretrained(tmp_path / "clf")
    args = [
        "--checkpoint",
        str(dalle_folder),
        "--classifier",
        str(tmp_path / "clf"),
        "--num-prompts",
        "3",
        "--images-per-prompt",
        "2",
        "--reranker",
        str(tmp_path / "rr"),
        "--candidates",
        "5",
        "--out",
        str(tmp_path / "eval"),
    ]
    code, _ = run_evaluate(args, capsys)
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["reranker"] == str(tmp_path / "rr") and report["settings"]["candidates"] == 5
    assert report["held_out"]["num_images"] == 6

    model, dalle_tokenizer, vae = load_pipeline(dalle_folder)
    reranker = load_reranker(tmp_path / "rr")
    classifier = AttributeClassifier.from_pretrained(tmp_path / "clf")
    kept = evaluate(
        model,
        dalle_tokenizer,
        vae,
        classifier,
        num_prompts=3,
        images_per_prompt=2,
        candidates=5,
        rerank=reranker.score,
        splits=("held_out",),
        seed=1,
    )["held_out"]
    prompts = kept["prompts"]
    assert kept["accuracy"] == report["held_out"]["accuracy"]  # the CLI ran the same evaluation
    every = generate_images(model, dalle_tokenizer, vae, prompts, num_images=5, seed=1).images  # (3, 5, 3, H, W)
    scores = reranker.score([p for p in prompts for _ in range(5)], every.flatten(0, 1)).view(3, 5)
    best = scores.topk(2, dim=1).indices  # (3, 2)
    torch.testing.assert_close(kept["images"], torch.stack([every[i, best[i]] for i in range(3)]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-prompts", "0"], "--num-prompts must be >= 1"),
        (["--num-prompts", "200"], "--num-prompts must be <= 126"),
        (["--candidates", "8"], "--candidates needs --reranker"),
        (["--temperature", "0"], "temperature must be > 0"),
    ],
)
def test_bad_arguments_are_explained(dalle_folder, extra, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--checkpoint", str(dalle_folder), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_explained(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", str(tmp_path / "nope.ckpt")])
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dalle", "evaluate", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for option in (
        "--checkpoint",
        "--classifier",
        "--num-prompts",
        "--images-per-prompt",
        "--prompt-seed",
        "--seed",
        "--reranker",
        "--candidates",
        "--guidance-scale",
        "--out",
        "--classifier-steps",
    ):
        assert option in out.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "dalle", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert all(name in listing.stdout for name in ("evaluate", "fit-classifier", "fit-reranker"))
