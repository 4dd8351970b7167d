"""A bad file in a training folder never ends the epoch: it is replaced by the next image, with a warning naming it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image


def good_image(path: Path, size: int = 24, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), color=128 if mode == "L" else (200, 30, 30)).save(path)
    return path


def bad_files(folder: Path) -> list[Path]:
    """A corrupt, a truncated, an empty and a non-image file, all named like images."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt, truncated, empty, text = (folder / n for n in ("corrupt.png", "truncated.png", "empty.jpg", "notes.png"))
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    full = good_image(folder / "full.png", 64).read_bytes()
    (folder / "full.png").unlink()
    truncated.write_bytes(full[: len(full) // 2])
    empty.write_bytes(b"")
    text.write_text("not an image")
    return [corrupt, truncated, empty, text]


def load_all(loader) -> tuple[int, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = sum(len(batch[0] if isinstance(batch, (tuple, list)) else batch["image"]) for batch in loader)
    return count, [str(w.message) for w in caught if "could not load" in str(w.message)]


def test_vit_image_folder_skips_unreadable_files_naming_each(tmp_path):
    from vit.data import ImageFolderDataModule

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            for i in range(3):
                good_image(tmp_path / split / cls / f"{i}.png")
    bad = bad_files(tmp_path / "train" / "cat")
    data = ImageFolderDataModule(
        str(tmp_path / "train"),
        str(tmp_path / "val"),
        img_size=16,
        batch_size=2,
        num_workers=0,
        auto_augment=None,
        re_prob=0.0,
        shuffle=False,
    )
    data.setup("fit")
    count, messages = load_all(data.train_dataloader())
    assert count == 10  # every item of the epoch was served (drop_last: 10 = 5 full batches of 2)
    for path in bad:
        assert any(str(path) in m for m in messages), (path, messages)


def test_dalle_image_folder_skips_a_decompression_bomb(tmp_path, monkeypatch):
    from dalle.data.image_folder import ImageFiles

    for i in range(4):
        good_image(tmp_path / f"{i}.png", 16)
    good_image(tmp_path / "bomb.png", 64)  # 4096 pixels: a bomb once the limit is 1000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    files = ImageFiles(tmp_path, image_size=16)
    with pytest.warns(UserWarning, match=r"could not load .*bomb.png.*using the next image instead \(1 failure"):
        items = [files[i] for i in range(len(files))]
    assert len(items) == 5 and files.num_failed == 1


def test_vit_load_image_refuses_a_decompression_bomb_clearly(tmp_path, monkeypatch):
    from vit.data import load_image

    path = good_image(tmp_path / "huge.png", 64, mode="L")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"huge.png is too large to open safely .*MAX_IMAGE_PIXELS"):
        load_image(path, 1)
