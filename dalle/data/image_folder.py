"""Images without captions, for training the dVAE on any folder (flat, or ImageFolder-style class subfolders).

Batches are ``{"image": float (B, 3, H, W) in [0, 1]}``, like the captioned datamodules minus the caption.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from core_attention.training import fixed_order_sampler
from dalle.data.caption_data import IMAGE_ERRORS, IMAGE_EXTENSIONS, image_transform, open_image
from dalle.data.datamodules import dataloader, holdout_split

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
            except IMAGE_ERRORS as error:  # unreadable file or decompression bomb: use the next one, say so
                self.num_failed += 1
                warnings.warn(
                    f"ImageFiles: could not load {path} ({error}); using the next image instead "
                    f"({self.num_failed} failure(s) so far in this process)",
                    stacklevel=2,
                )
        raise RuntimeError(f"ImageFiles: 10 consecutive images from index {index} failed to load")


class ImageFolderDataModule(pl.LightningDataModule):
    """Images under ``train_dir`` (and ``val_dir``, or a seeded ``val_fraction`` of ``train_dir``).

    Args:
        train_dir: folder of training images, searched recursively (flat, or ImageFolder-style class sub-folders).
        val_dir: a separate folder of validation images; None holds out val_fraction of train_dir.
        image_size: side of the square images: the shorter side is resized to it, then the centre cropped.
        batch_size: images per batch (per process under DDP).
        num_workers: DataLoader worker processes (0 = load in the main process).
        shuffle: shuffle the training items every epoch (False: a fixed order, e.g. to compare runs exactly).
        val_fraction: share of train_dir held out for validation when val_dir is None (0 disables validation).
        seed: seed of the held-out split (every rank and every run holds out the same images).
    """

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        image_size: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle: bool = True,
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
        self.train_set, self.val_set = holdout_split(files, hp.val_fraction, hp.seed)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        return dataloader(
            self.train_set,
            hp.batch_size,
            hp.num_workers,
            shuffle=hp.shuffle,
            sampler=fixed_order_sampler(self, self.train_set, hp.shuffle),
            drop_last=len(self.train_set) >= hp.batch_size,
        )

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        hp = self.hparams
        return dataloader(self.val_set, hp.batch_size, hp.num_workers) if self.val_set is not None else []
