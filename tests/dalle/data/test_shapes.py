import random

import pytest
import torch

from dalle.data.shapes import (
    ALL_PAIRS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    RGB,
    SHAPES,
    SIZES,
    SYNONYMS,
    TRAIN_PAIRS,
    Shape,
    ShapesDataset,
    canonical_caption,
    caption,
    is_held_out,
    parse_caption,
    render,
    write_folder,
)


def random_scene(rng: random.Random, n: int) -> tuple[Shape, ...]:
    cells = rng.sample(POSITIONS, n)
    return tuple(Shape(rng.choice(SHAPES), rng.choice(COLOURS), rng.choice(SIZES), c) for c in cells)


@pytest.mark.parametrize("size", [16, 32, 64, 128, 256])
def test_render_range_dtype_shape(size):
    image = render((Shape("circle", "red", "large", "center"), Shape("cross", "white", "small", "top left")), size)
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert image[:, 0, -1].sum() == 0  # background is black
    edge = ((image > 0) & (image < 1)).any(0).sum()
    assert edge > 0  # antialiased: some partially covered pixels


def test_render_rejects_tiny_and_bad_scenes():
    with pytest.raises(ValueError):
        render((Shape("circle", "red", "large", "center"),), 8)
    with pytest.raises(ValueError):
        render((Shape("circle", "red", "large", "center"), Shape("square", "blue", "small", "center")), 32)
    with pytest.raises(ValueError):
        Shape("hexagon", "red", "large", "center")


@pytest.mark.parametrize("kind", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_render_colour_and_position_are_right(kind, size):
    for ci, colour in enumerate(COLOURS):
        position = POSITIONS[(ci + SHAPES.index(kind)) % 9]
        image = render((Shape(kind, colour, size, position),), 32)
        brightness = image.sum(0)
        core = brightness >= 0.95 * brightness.max()
        mean = image[:, core].mean(1) * 255
        nearest = min(COLOURS, key=lambda c: ((mean - torch.tensor(RGB[c], dtype=torch.float32)) ** 2).sum())
        assert nearest == colour
        weight = brightness / brightness.sum()
        ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")
        cy, cx = (weight * ys).sum().item(), (weight * xs).sum().item()
        row, col = divmod(POSITIONS.index(position), 3)
        assert int(cx // (32 / 3)) == col and int(cy // (32 / 3)) == row


def test_shapes_are_distinguishable():
    for size in SIZES:
        images = [render((Shape(k, "white", size, "center"),), 32) for k in SHAPES]
        for i in range(len(images)):
            for j in range(i + 1, len(images)):
                assert (images[i] - images[j]).abs().sum() > 4.0, (size, SHAPES[i], SHAPES[j])
    small = render((Shape("circle", "white", "small", "center"),), 32).sum()
    large = render((Shape("circle", "white", "large", "center"),), 32).sum()
    assert large > 1.8 * small


def test_synonyms_unambiguous():
    owner = {}
    for value, phrases in SYNONYMS.items():
        assert phrases[0] == value
        for phrase in phrases:
            key = phrase.replace("-", " ")
            assert owner.setdefault(key, value) == value, phrase
            assert "and" not in key.split()
    assert set(SYNONYMS) == set(SHAPES) | set(COLOURS) | set(SIZES) | set(POSITIONS)


def test_caption_parse_round_trip():
    rng = random.Random(0)
    for n in (1, 2, 3):
        for _ in range(300):
            scene = random_scene(rng, n)
            assert parse_caption(canonical_caption(scene)) == scene
            assert parse_caption(caption(scene, rng)) == scene
    assert canonical_caption((Shape("circle", "red", "small", "top left"),)) == "a small red circle in the top left"
    assert parse_caption("Top-Left: a TINY crimson disk") == (Shape("circle", "red", "small", "top left"),)
    assert parse_caption("a red circle") is None  # no size, no position
    assert parse_caption("a small red blue circle in the center") is None


def test_held_out_pairs():
    assert 0.12 < len(HELD_OUT_PAIRS) / len(ALL_PAIRS) < 0.22
    assert {c for c, _ in TRAIN_PAIRS} == set(COLOURS) and {s for _, s in TRAIN_PAIRS} == set(SHAPES)
    for split in ("train", "val", "test"):
        ds = ShapesDataset(split, 1500, max_shapes=2)
        scenes = [ds.scene_for(i) for i in range(len(ds))]
        assert not any(is_held_out(s) for s in scenes)
        if split == "train":
            assert {s.colour for sc in scenes for s in sc} == set(COLOURS)
            assert {s.kind for sc in scenes for s in sc} == set(SHAPES)
            assert {s.position for sc in scenes for s in sc} == set(POSITIONS)
            assert {len(sc) for sc in scenes} == {1, 2}
    heldout = ShapesDataset("heldout", 500, max_shapes=2)
    scenes = [heldout.scene_for(i) for i in range(len(heldout))]
    assert all(is_held_out(s) for s in scenes)
    assert {(s[0].colour, s[0].kind) for s in scenes} == set(HELD_OUT_PAIRS)


def test_dataset_items_deterministic():
    a = ShapesDataset("train", 50, image_size=32, max_shapes=2, seed=3)
    b = ShapesDataset("train", 50, image_size=32, max_shapes=2, seed=3)
    for i in (0, 7, 49):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
        assert torch.equal(x["labels"], y["labels"])
        assert torch.equal(a[i]["image"], x["image"])  # same item on every call
    assert a.scene_for(0) != a.scene_for(1) or a.caption_for(0) != a.caption_for(1)
    assert not torch.equal(a[0]["image"], a[1]["image"])
    other_seed = ShapesDataset("train", 50, max_shapes=2, seed=4)
    val = ShapesDataset("val", 50, max_shapes=2, seed=3)
    assert [a.scene_for(i) for i in range(20)] != [other_seed.scene_for(i) for i in range(20)]
    assert [a.scene_for(i) for i in range(20)] != [val.scene_for(i) for i in range(20)]
    with pytest.raises(IndexError):
        a[50]


def test_item_format_and_labels():
    ds = ShapesDataset("train", 20, image_size=48, max_shapes=2)
    for i in range(20):
        item = ds[i]
        assert set(item) == {"image", "caption", "labels"}
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        assert item["labels"].dtype == torch.long and item["labels"].shape == (4,)
        scene = ds.scene_for(i)
        assert item["labels"].tolist() == scene[0].labels()
        assert parse_caption(item["caption"]) == scene
        assert torch.equal(item["image"], render(scene, 48))


def test_jitter_keeps_attributes():
    ds = ShapesDataset("train", 30, image_size=32, jitter=0.1)
    plain = ShapesDataset("train", 30, image_size=32)
    assert any(not torch.equal(ds[i]["image"], plain[i]["image"]) for i in range(5))
    assert torch.equal(ds[3]["image"], ds[3]["image"])


def test_write_folder(tmp_path):
    ds = ShapesDataset("val", 3, image_size=16)
    assert write_folder(ds, tmp_path / "out", limit=2) == 2
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["00000.png", "00000.txt", "00001.png", "00001.txt"]
    assert (tmp_path / "out" / "00001.txt").read_text().strip() == ds[1]["caption"]


def test_save_sample_grid(tmp_path):
    from torchvision.utils import save_image

    ds = ShapesDataset("train", 32, image_size=32, max_shapes=2)
    save_image(torch.stack([ds[i]["image"] for i in range(32)]), tmp_path / "grid.png", nrow=8, pad_value=0.3)
    assert (tmp_path / "grid.png").stat().st_size > 0
