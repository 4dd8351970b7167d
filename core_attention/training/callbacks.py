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


class CompileBlocks(Callback):
    """`torch.compile` every core_attention `TransformerBlock` in place before fitting (regional compilation:
    each block compiles once and is reused, so start-up stays short). Enable with
    `--trainer.callbacks+=core_attention.training.CompileBlocks`.

    Args:
        backend: torch.compile backend ('inductor' generates fused kernels; 'eager' only traces, for debugging).
        mode: torch.compile mode: None (default), 'reduce-overhead' (CUDA graphs) or 'max-autotune'.
        dynamic: compile for dynamic shapes: True, False, or None to let torch decide after a shape changes.
    """

    def __init__(self, backend: str = "inductor", mode: str | None = None, dynamic: bool | None = None) -> None:
        self.backend, self.mode, self.dynamic = backend, mode, dynamic

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from core_attention.block import TransformerBlock

        blocks = [m for m in pl_module.modules() if isinstance(m, TransformerBlock)]
        if not blocks:
            raise ValueError(f"CompileBlocks found no core_attention TransformerBlock in {type(pl_module).__name__}")
        for block in blocks:
            block.compile(backend=self.backend, mode=self.mode, dynamic=self.dynamic)
