"""Data-loading conventions every DataModule shares."""

from __future__ import annotations

import pytorch_lightning as pl
from torch.utils.data import Dataset, DistributedSampler, Sampler


def fixed_order_sampler(datamodule: pl.LightningDataModule, dataset: Dataset, shuffle: bool) -> Sampler | None:
    """The sampler of a training loader that must keep its order (`shuffle=False`) under DDP, else None.

    Lightning re-shuffles every training loader when it shards it across processes; a `DistributedSampler` given
    here is kept as it is, so rank r reads items r, r + world, ... in order: together the ranks see the same items
    per step as one process with gradient accumulation.
    """
    trainer = getattr(datamodule, "trainer", None)
    if shuffle or trainer is None or trainer.world_size == 1:
        return None
    return DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
