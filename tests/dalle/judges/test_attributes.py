"""Attribute classifier (the judge of `python -m dalle evaluate`): model, weights, data, CLI, and a short training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dalle.data.shapes import ALL_PAIRS, COLOURS, HELD_OUT_PAIRS, POSITIONS, SHAPES, SIZES, Shape, ShapesDataset, render
from dalle.judges.attributes import (
    ATTRIBUTES,
    AllPairsShapes,
    AttributeClassifier,
    AttributeDataModule,
    load_classifier,
    train_classifier,
)
from vit import ViTConfig

ROOT = Path(__file__).resolve().parents[3]
TINY = dict(
    img_size=16, patch_size=8, num_classes=0, global_pool="avg", embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0
)


def test_heads_follow_the_dataset_label_order() -> None:
    assert list(ATTRIBUTES) == ["shape", "colour", "size", "position"]
    assert ATTRIBUTES["shape"] == SHAPES and ATTRIBUTES["colour"] == COLOURS
    assert ATTRIBUTES["size"] == SIZES and ATTRIBUTES["position"] == POSITIONS
    shape = Shape("triangle", "blue", "large", "bottom")
    assert shape.labels() == [
        ATTRIBUTES[a].index(v) for a, v in zip(ATTRIBUTES, ("triangle", "blue", "large", "bottom"))
    ]


def test_forward_and_predict_shapes() -> None:
    model = AttributeClassifier(TINY)
    logits = model(torch.rand(3, 3, 16, 16))
    assert {k: tuple(v.shape) for k, v in logits.items()} == {
        "shape": (3, 5),
        "colour": (3, 8),
        "size": (3, 2),
        "position": (3, 9),
    }
    pred = model.predict(torch.rand(5, 3, 32, 32))  # another size: resized to img_size
    assert pred.shape == (5, 4) and pred.dtype == torch.long
    for i, classes in enumerate(ATTRIBUTES.values()):
        assert 0 <= int(pred[:, i].min()) and int(pred[:, i].max()) < len(classes)
    assert model.predict(torch.rand(0, 3, 16, 16)).shape == (0, 4)


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="num_classes=0"):
        AttributeClassifier({**TINY, "num_classes": 10})
    with pytest.raises(ValueError, match="in_chans=3"):
        AttributeClassifier({**TINY, "in_chans": 1})
    with pytest.raises(ValueError, match="RGB images"):
        AttributeClassifier(TINY).predict(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="jitter"):
        AllPairsShapes("train", 4, jitter=0.5)


def test_save_load_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    model = AttributeClassifier(TINY).eval()
    model.save_pretrained(tmp_path / "clf", {"test_accuracy": {"all": 0.5}})
    assert {p.name for p in (tmp_path / "clf").iterdir()} == {"model.safetensors", "config.json"}
    loaded = AttributeClassifier.from_pretrained(tmp_path / "clf")
    x = torch.rand(4, 3, 16, 16)
    torch.testing.assert_close(loaded(x)["position"], model(x)["position"])
    assert loaded.metrics == {"test_accuracy": {"all": 0.5}}
    assert load_classifier(tmp_path / "clf" / "model.safetensors").arch == model.arch
    with pytest.raises(FileNotFoundError, match="fit-classifier"):
        AttributeClassifier.from_pretrained(tmp_path / "missing")


def test_all_pairs_data_is_deterministic_and_covers_held_out_pairs() -> None:
    data = AllPairsShapes("train", 400, image_size=16, seed=3, cache=True)
    again = AllPairsShapes("train", 400, image_size=16, seed=3)
    first = data[7]
    torch.testing.assert_close(first["image"], again[7]["image"], atol=1 / 255, rtol=0)
    torch.testing.assert_close(data[7]["image"], first["image"])  # the cache serves the same pixels
    scene = data.scene_for(7)
    assert first["labels"].tolist() == scene[0].labels()
    torch.testing.assert_close(first["image"], render(scene, 16), atol=1 / 255, rtol=0)  # no jitter: exact render
    pairs = {(data.scene_for(i)[0].colour, data.scene_for(i)[0].kind) for i in range(400)}
    assert set(HELD_OUT_PAIRS) <= pairs and len(pairs) == len(ALL_PAIRS)
    with pytest.raises(IndexError):
        data[400]


def test_datamodule_tests_on_the_project_splits() -> None:
    dm = AttributeDataModule(image_size=16, num_train=8, num_val=4, num_test=10, batch_size=4)
    test_sets = dm.test_set.datasets
    assert [d.split for d in test_sets] == ["test", "heldout"] and sum(map(len, test_sets)) == 10
    assert all(isinstance(d, ShapesDataset) and d.max_shapes == 1 for d in test_sets)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["labels"].shape == (4, 4)


def test_fit_classifier_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dalle", "fit-classifier", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for option in ("--model.arch.patch_size", "--model.export_dir", "--data.jitter", "--model.noise_std"):
        assert option in out.stdout


@pytest.mark.slow
def test_short_training_reads_real_images_accurately(tmp_path) -> None:
    """A reduced recipe (fewer steps and scenes) already reads all four attributes of real test images."""
    clf = train_classifier(tmp_path / "clf", 32, max_steps=500, num_train=6000, num_test=600, seed=0)
    test = clf.metrics["test_accuracy"]
    for name in ATTRIBUTES:
        assert test[name] >= 0.95, test
    # On real held-out pairs as well (the classifier must know the combinations DALL·E never saw).
    heldout = ShapesDataset("heldout", 200, 32, max_shapes=1, seed=5)
    images = torch.stack([heldout[i]["image"] for i in range(200)])
    labels = torch.stack([heldout[i]["labels"] for i in range(200)])
    assert (clf.predict(images) == labels).all(1).float().mean() >= 0.9
    assert isinstance(clf.arch, ViTConfig)
