"""Lightning DataModules for the dVAE and DALL·E stages: synthetic shapes, an image+caption folder, WebDataset shards.

All three give the same batches, so either model trains on any of them::

    batch["image"]    float (B, 3, H, W) in [0, 1]
    batch["caption"]  list[str] of length B
    batch["labels"]   long (B, 4)   shapes only: [shape, colour, size, position] of the first shape

Tokenisation happens in the DALL·E LightningModule, not here. ``train_captions()`` gives the training captions (no
images decoded) to train a :class:`dalle.transformer.tokenizer.BPETokenizer` before the model is built.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from core_attention.training import fixed_order_sampler
from dalle.data.caption_data import (
    CaptionFolder,
    expand_urls,
    per_worker_epoch_length,
    shard_captions,
    webdataset_pipeline,
)
from dalle.data.shapes import ShapesDataset, Split


def dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    sampler: Sampler | None = None,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def holdout_split(dataset: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset | None]:
    """(train, val): a seeded ``fraction`` of ``dataset`` held out for validation, at least one item (None when
    ``fraction`` is 0 or there is one item). Seeded, so every DDP rank (and every run) holds out the same items."""
    num_val = max(1, round(len(dataset) * fraction)) if fraction > 0 and len(dataset) > 1 else 0
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[num_val:])), Subset(dataset, sorted(order[:num_val])) if num_val else None


def _world_size(module: pl.LightningDataModule) -> int:
    trainer = getattr(module, "trainer", None)
    return trainer.world_size if trainer is not None else 1


class ShapesDataModule(pl.LightningDataModule):
    """Synthetic captioned shapes (:mod:`dalle.data.shapes`): no download, deterministic, with a held-out split.

    ``heldout_dataloader()`` serves (colour, shape) pairs never seen in training (compositional generalisation).

    Args:
        image_size: side of the rendered square images, in pixels (at least 16).
        max_shapes: shapes per scene, 1 to 4 (each scene draws 1..max_shapes); captions name every shape.
        num_train: training images per epoch (rendered on access, never stored).
        num_val: validation images.
        num_test: test images.
        num_heldout: images of the held-out colour-shape pairs (``heldout_dataloader()``).
        batch_size: images per batch (per process under DDP).
        num_workers: DataLoader worker processes (0 = render in the main process).
        shuffle: shuffle the training items every epoch (False: a fixed order, e.g. to compare runs exactly).
        seed: seed of the scenes: the same seed gives the same images and captions.
        jitter: random shift and rescale of each shape within its cell, 0 to 0.15 (0 = exact grid placement).
    """

    def __init__(
        self,
        image_size: int = 32,
        max_shapes: int = 1,
        num_train: int = 20000,
        num_val: int = 512,
        num_test: int = 512,
        num_heldout: int = 512,
        batch_size: int = 64,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.shuffle = batch_size, num_workers, shuffle

        # Datasets are lazy (items are rendered on access), so building them here is free and lets train_captions()
        # work before the Trainer calls setup().
        def make(split: Split, num_samples: int) -> ShapesDataset:
            return ShapesDataset(split, num_samples, image_size, max_shapes, seed, jitter)

        self.train_set = make("train", num_train)
        self.val_set = make("val", num_val)
        self.test_set = make("test", num_test)
        self.heldout_set = make("heldout", num_heldout)

    def train_captions(self, limit: int | None = None) -> Iterator[str]:
        return self.train_set.iter_captions(limit)

    def train_dataloader(self) -> DataLoader:
        return dataloader(
            self.train_set,
            self.batch_size,
            self.num_workers,
            shuffle=self.shuffle,
            sampler=fixed_order_sampler(self, self.train_set, self.shuffle),
            drop_last=len(self.train_set) >= self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        return dataloader(self.val_set, self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return dataloader(self.test_set, self.batch_size, self.num_workers)

    def heldout_dataloader(self) -> DataLoader:
        return dataloader(self.heldout_set, self.batch_size, self.num_workers)


class CaptionFolderDataModule(pl.LightningDataModule):
    """A folder of images with same-name ``.txt`` captions (:class:`dalle.data.caption_data.CaptionFolder`).

    Without ``val_dir``, a seeded ``val_fraction`` of ``train_dir`` is held out for validation (0 disables
    validation). The test loader is the validation loader.

    Args:
        train_dir: folder of images (searched recursively) with same-name ``.txt`` captions, one caption per line.
        val_dir: a separate validation folder of the same layout; None holds out val_fraction of train_dir.
        image_size: side of the square images: the shorter side is resized to it, then the centre cropped.
        batch_size: image-caption pairs per batch (per process under DDP).
        num_workers: DataLoader worker processes (0 = load in the main process).
        shuffle: shuffle the training items every epoch (False: a fixed order, e.g. to compare runs exactly).
        val_fraction: share of train_dir held out for validation when val_dir is None (0 disables validation).
        seed: seed of the held-out split (every rank and every run holds out the same items).
        verify: check every image with PIL when the folder is scanned, so broken files are reported up front.
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
        verify: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.train_dir, self.val_dir, self.image_size = train_dir, val_dir, image_size
        self.batch_size, self.num_workers, self.shuffle = batch_size, num_workers, shuffle
        self.val_fraction, self.seed, self.verify = val_fraction, seed, verify
        self.train_set: CaptionFolder | Subset | None = None
        self.val_set: CaptionFolder | Subset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        folder = CaptionFolder(self.train_dir, self.image_size, verify=self.verify)
        if self.val_dir is not None:
            self.train_set = folder
            self.val_set = CaptionFolder(self.val_dir, self.image_size, verify=self.verify)
            return
        self.train_set, self.val_set = holdout_split(folder, self.val_fraction, self.seed)

    def train_captions(self, limit: int | None = None) -> Iterator[str]:
        self.setup()
        assert self.train_set is not None
        if isinstance(self.train_set, Subset):
            folder, indices = self.train_set.dataset, self.train_set.indices
        else:
            folder, indices = self.train_set, range(len(self.train_set))
        assert isinstance(folder, CaptionFolder)
        for count, text in enumerate(folder.iter_captions(indices)):
            if limit is not None and count >= limit:
                return
            yield text

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None
        return dataloader(
            self.train_set,
            self.batch_size,
            self.num_workers,
            shuffle=self.shuffle,
            sampler=fixed_order_sampler(self, self.train_set, self.shuffle),
            drop_last=len(self.train_set) >= self.batch_size,
        )

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []  # Lightning skips validation
        return dataloader(self.val_set, self.batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()


class WebDatasetDataModule(pl.LightningDataModule):
    """Tar shards of ``KEY.jpg|png|jpeg|webp`` + ``KEY.txt``: the multi-GPU / multi-node path.

    Shards are split across ranks and workers. For DDP prefer ``resampled=True`` with ``epoch_length`` (total samples
    per epoch across all ranks): every rank then runs the same number of steps, which plain shard splitting cannot
    promise when shards differ in size. DataLoader workers are capped at the shards each rank gets.

    Args:
        train_urls: training shards: a brace pattern such as '/data/train-{000000..000999}.tar' or a list of paths
            (local files, ``pipe:`` or http URLs).
        val_urls: validation shards (same forms); None disables validation.
        image_size: side of the square images: the shorter side is resized to it, then the centre cropped.
        batch_size: image-caption pairs per batch (per process under DDP).
        num_workers: DataLoader worker processes per rank (each reads its own shards).
        shuffle: sample shuffle buffer size (0 keeps the shard order and the sample order).
        resampled: draw shards with replacement, forever, independently per rank and worker (needs epoch_length).
        epoch_length: samples per epoch across all ranks (what makes a resampled stream end its epochs).
    """

    def __init__(
        self,
        train_urls: str | list[str],
        val_urls: str | list[str] | None = None,
        image_size: int = 64,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle: int = 1000,
        resampled: bool = False,
        epoch_length: int | None = None,
    ) -> None:
        super().__init__()
        if resampled and epoch_length is None:
            raise ValueError("resampled=True streams shards forever: set epoch_length (samples per epoch)")
        self.save_hyperparameters()
        self.train_urls, self.val_urls, self.image_size = train_urls, val_urls, image_size
        self.batch_size, self.num_workers, self.shuffle = batch_size, num_workers, shuffle
        self.resampled, self.epoch_length = resampled, epoch_length

    def _workers(self, urls: str | list[str], resampled: bool) -> int:
        if resampled:
            return self.num_workers
        shards_per_rank = len(expand_urls(urls)) // max(1, _world_size(self))
        return min(self.num_workers, max(1, shards_per_rank))

    def train_captions(self, limit: int | None = None) -> Iterator[str]:
        return shard_captions(self.train_urls, limit)

    def train_dataloader(self) -> DataLoader:
        workers = self._workers(self.train_urls, self.resampled)
        per_worker = None
        if self.epoch_length is not None:
            per_worker = per_worker_epoch_length(self.epoch_length, _world_size(self), workers)
        dataset = webdataset_pipeline(
            self.train_urls, self.image_size, self.shuffle, self.resampled, epoch_length=per_worker
        )
        # IterableDataset: the batch size goes to the DataLoader, shuffling happens in the pipeline.
        return dataloader(dataset, self.batch_size, workers, drop_last=self.resampled)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_urls is None:
            return []
        dataset = webdataset_pipeline(self.val_urls, self.image_size, shuffle=0)
        return dataloader(dataset, self.batch_size, self._workers(self.val_urls, False))

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()
