"""Helpers for training in spawned DDP workers (gloo on CPU, `ddp_spawn`) from inside a test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler


class FixedOrder(pl.LightningDataModule):
    """Wraps a DataModule with an unshuffled train loader, so 2 ranks × b samples and 1 rank × 2 micro-batches of b
    see the same data (a class, not a closure: ddp_spawn pickles it)."""

    def __init__(self, inner: pl.LightningDataModule) -> None:
        super().__init__()
        self.inner = inner

    def setup(self, stage: str) -> None:
        self.inner.trainer = self.trainer
        self.inner.setup(stage)

    def train_captions(self, limit: int | None = None):
        return self.inner.train_captions(limit)  # DALL·E trains its tokenizer from these at setup

    def train_dataloader(self) -> DataLoader:
        loader = self.inner.train_dataloader()
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = DistributedSampler(loader.dataset, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn)


class RecordRanks(pl.Callback):
    """Asserts inside the workers: the run really is distributed and every rank ends with identical weights."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert trainer.world_size == self.world_size
        if self.world_size > 1:
            assert torch.distributed.is_initialized() and torch.distributed.get_backend() == "gloo"
            flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
            gathered = [torch.zeros_like(flat) for _ in range(self.world_size)]
            torch.distributed.all_gather(gathered, flat)
            for other in gathered[1:]:
                assert torch.equal(gathered[0], other), "ranks diverged"


def train_weights(
    make_module: Callable[[], pl.LightningModule],
    make_data: Callable[[], pl.LightningDataModule],
    *,
    devices: int,
    accumulate: int,
    max_steps: int,
    root: str,
    **trainer_kwargs,
) -> dict[str, torch.Tensor]:
    pl.seed_everything(0)
    module = make_module()
    # ddp_spawn with a short collective timeout: a collective that only some ranks reach fails instead of hanging 30 min
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=120)) if devices > 1 else "auto"
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        accumulate_grad_batches=accumulate,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[RecordRanks(devices)],
        default_root_dir=root,
        use_distributed_sampler=False,
        **trainer_kwargs,
    )
    trainer.fit(module, FixedOrder(make_data()))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
