"""Images without captions, for training the dVAE on any folder (flat, or ImageFolder-style class subfolders).

Batches are ``{"image": float (B, 3, H, W) in [0, 1]}``, like the captioned datamodules minus the caption.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .caption_data import IMAGE_EXTENSIONS, image_transform, open_image

__all__ = ["ImageFiles", "ImageFolderDataModule"]


class ImageFiles(Dataset):
    """Every image file under ``root`` (recursively), resized on the shorter side and centre-cropped to a square."""

    def __init__(self, root: str | Path, image_size: int = 64) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFiles: {self.root} is not a directory")
        self.paths = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.paths:
            raise ValueError(f"ImageFiles: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        self.image_size = image_size
        self.transform = image_transform(image_size)
        self.num_failed = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(min(len(self), 10)):
            path = self.paths[(index + attempt) % len(self)]
            try:
                return {"image": self.transform(open_image(path, self.image_size))}
            except (OSError, ValueError, SyntaxError) as error:  # unreadable file: use the next one, say so
                self.num_failed += 1
                warnings.warn(f"ImageFiles: could not load {path} ({error}); using the next image", stacklevel=2)
        raise RuntimeError(f"ImageFiles: 10 consecutive images from index {index} failed to load")


class ImageFolderDataModule(pl.LightningDataModule):
    """Images under ``train_dir`` (and ``val_dir``, or a seeded ``val_fraction`` of ``train_dir``)."""

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        image_size: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        files = ImageFiles(hp.train_dir, hp.image_size)
        if hp.val_dir is not None:
            self.train_set, self.val_set = files, ImageFiles(hp.val_dir, hp.image_size)
            return
        num_val = max(1, round(len(files) * hp.val_fraction)) if hp.val_fraction > 0 and len(files) > 1 else 0
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(hp.seed)).tolist()
        self.train_set = Subset(files, sorted(order[num_val:]))
        self.val_set = Subset(files, sorted(order[:num_val])) if num_val else None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(dataset, batch_size=hp.batch_size, shuffle=shuffle, num_workers=hp.num_workers,
                          drop_last=shuffle and len(dataset) >= hp.batch_size,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self._loader(self.val_set, shuffle=False) if self.val_set is not None else []
