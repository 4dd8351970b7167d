"""Callbacks every training run gets."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class FiniteLossGuard(Callback):
    """Stop training on a NaN/inf loss before its gradients touch the weights, saying where it happened."""

    def __init__(self) -> None:
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite training loss ({loss.detach().float().item()}) at global step {trainer.global_step}, "
                f"epoch {trainer.current_epoch}, batch {self._batch_idx}: stopped before the weights were updated. "
                "Lower the learning rate, enable gradient clipping (trainer.gradient_clip_val) or check the data; "
                "resume from the last good checkpoint with `--ckpt_path last`."
            )
