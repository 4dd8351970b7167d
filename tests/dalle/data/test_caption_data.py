import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dalle.data.caption_data import CaptionFolder, expand_urls, to_rgb, webdataset_pipeline, write_shards
from dalle.data.shapes import ShapesDataset


def make_folder(root):
    """A tiny folder exercising every conversion path. Returns the number of good captioned images."""
    root.mkdir(parents=True, exist_ok=True)
    # RGBA png: left half opaque red, right half fully transparent (composited on white).
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[:, :30] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(root / "rgba.png")
    (root / "rgba.txt").write_text("a red half\nsecond caption line\n\n")
    # Grayscale jpg.
    Image.fromarray(np.full((50, 50), 128, dtype=np.uint8), "L").save(root / "gray.jpg")
    (root / "gray.txt").write_text("a gray square")
    # 16-bit grayscale png at ~25% of full scale.
    Image.fromarray(np.full((32, 48), 16384, dtype=np.uint16)).save(root / "deep.png")
    (root / "deep.txt").write_text("a dark sixteen bit image")
    # Palette image in a subfolder (recursive scan), upper-case extension.
    (root / "sub").mkdir()
    Image.new("P", (20, 30), 3).save(root / "sub" / "pal.PNG")
    (root / "sub" / "pal.txt").write_text("palette")
    # Corrupt file with a caption, and an image without a caption.
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "broken.txt").write_text("never loaded")
    Image.new("RGB", (10, 10)).save(root / "lonely.png")
    return 4


def test_to_rgb_modes():
    assert to_rgb(Image.new("I;16", (4, 4), 65535)).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("I;16", (4, 4), 257 * 10)).getpixel((0, 0)) == (10, 10, 10)
    assert to_rgb(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (4, 4), (0, 0, 255, 255))).getpixel((0, 0)) == (0, 0, 255)
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).mode == "RGB"


def test_caption_folder(tmp_path):
    good = make_folder(tmp_path / "data")
    with pytest.warns(UserWarning) as record:
        ds = CaptionFolder(tmp_path / "data", image_size=24)
    messages = [str(w.message) for w in record]
    assert any("skipped 1 image(s) without" in m and "lonely.png" in m for m in messages)
    assert any("skipped 1 unreadable" in m and "broken.png" in m for m in messages)
    assert len(ds) == good
    items = {p.stem: ds[i] for i, p in enumerate(ds.paths)}
    for item in items.values():
        assert set(item) == {"image", "caption"}
        assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
    rgba = items["rgba"]["image"]  # 40x60 -> 24x36, centre crop keeps x in 6..30 of the resized image
    assert torch.allclose(rgba[:, 12, 2], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)
    assert torch.allclose(rgba[:, 12, 21], torch.ones(3), atol=0.02)
    assert items["rgba"]["caption"] in {"a red half", "second caption line"}
    assert torch.allclose(items["gray"]["image"], torch.full((3, 24, 24), 128 / 255), atol=0.03)
    assert torch.allclose(items["deep"]["image"], torch.full((3, 24, 24), 64 / 255), atol=0.01)
    assert ds.captions_of(ds.paths.index(tmp_path / "data" / "rgba.png")) == ["a red half", "second caption line"]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 24, 24) and len(batch["caption"]) == 4
    assert len(list(ds)) == good  # plain iteration ends: an index past the end raises IndexError
    with pytest.raises(IndexError, match="out of range"):
        ds[good]


def test_caption_folder_reads_latin1_captions_and_reports_empty_ones(tmp_path):
    for name, caption in (
        ("accents", "un café rouge".encode("cp1252")),
        ("utf8", "un café bleu".encode()),
        ("empty", b"\n  \n"),
    ):
        Image.new("RGB", (16, 16)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_bytes(caption)
    with pytest.warns(UserWarning) as record:
        ds = CaptionFolder(tmp_path, image_size=16)
    messages = [str(w.message) for w in record]
    assert any("1 caption file(s) are not UTF-8" in m and "accents.txt" in m for m in messages), messages
    assert any("1 caption file(s) are empty" in m and "empty.txt" in m and "unconditional" in m for m in messages)
    captions = {p.stem: ds.captions_of(i) for i, p in enumerate(ds.paths)}
    assert captions == {"accents": ["un café rouge"], "utf8": ["un café bleu"], "empty": []}


def test_caption_folder_load_time_failure_is_replaced(tmp_path):
    make_folder(tmp_path / "data")
    # A truncated JPEG passes the cheap verify() but fails to decode.
    buffer = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer)
    (tmp_path / "data" / "aaa_truncated.jpg").write_bytes(buffer.read_bytes()[: len(buffer.read_bytes()) // 2])
    (tmp_path / "data" / "aaa_truncated.txt").write_text("cut")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = CaptionFolder(tmp_path / "data", image_size=16)
    index = [p.name for p in ds.paths].index("aaa_truncated.jpg")
    with pytest.warns(UserWarning, match="could not load .*aaa_truncated.jpg"):
        item = ds[index]
    assert item["caption"] != "cut" and item["image"].shape == (3, 16, 16)
    assert ds.num_failed == 1


def test_caption_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no captioned images found in .*empty.*\.txt"):
        CaptionFolder(tmp_path / "empty", 32)
    with pytest.raises(FileNotFoundError):
        CaptionFolder(tmp_path / "missing", 32)


def test_webdataset_round_trip(tmp_path):
    source = ShapesDataset("val", 10, image_size=16)
    shards = write_shards(source, tmp_path / "shards" / "shard-%06d.tar", maxcount=4)
    assert len(shards) == 3 and all(p.endswith(".tar") for p in shards)
    assert expand_urls(str(tmp_path / "shards" / "shard-{000000..000002}.tar")) == shards
    items = list(webdataset_pipeline(shards, image_size=16, shuffle=0))
    assert len(items) == 10
    for i, item in enumerate(items):
        assert set(item) == {"image", "caption"}
        assert item["caption"] == source[i]["caption"]
        assert torch.allclose(item["image"], source[i]["image"], atol=1 / 255 + 1e-6)  # png is 8-bit
    shuffled = [it["caption"] for it in webdataset_pipeline(shards, image_size=16, shuffle=100, seed=1)]
    assert sorted(shuffled) == sorted(it["caption"] for it in items)


def test_webdataset_workers_and_ranks_split_shards(tmp_path, monkeypatch):
    source = ShapesDataset("train", 12, image_size=16)
    shards = write_shards(source, tmp_path / "shard-%06d.tar", maxcount=3)  # 4 shards
    loader = DataLoader(webdataset_pipeline(shards, 16, shuffle=0), batch_size=2, num_workers=2)
    captions = [c for batch in loader for c in batch["caption"]]
    assert sorted(captions) == sorted(source[i]["caption"] for i in range(12))  # no duplicates, nothing lost
    per_rank = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append([it["caption"] for it in webdataset_pipeline(shards, 16, shuffle=0)])
    assert len(per_rank[0]) == len(per_rank[1]) == 6
    assert sorted(per_rank[0] + per_rank[1]) == sorted(captions)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    endless = webdataset_pipeline(shards, 16, shuffle=10, resampled=True, epoch_length=25)
    assert len(list(endless)) == 25
