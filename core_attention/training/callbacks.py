"""Callbacks every training run gets."""

from __future__ import annotations

import os
import time
from typing import Any

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


class TrainingCurves(Callback):
    """Plot every logged scalar over the global step into ``<log_dir>/curves.png`` (one panel per metric), after each
    validation and at the end of fit, whatever the logger: the run's progress as a picture.

    Args:
        filename: file name of the plot inside the run's log directory.
        max_panels: plot at most this many metrics (train/ then val/ then the rest, each alphabetically).
        min_interval_s: redraw after a validation only when this many seconds passed since the last drawing (a
            plot costs ~0.5 s: short epochs would otherwise spend their time drawing); the end of fit always draws.
    """

    def __init__(self, filename: str = "curves.png", max_panels: int = 12, min_interval_s: float = 60.0) -> None:
        self.filename, self.max_panels, self.min_interval_s = filename, max_panels, min_interval_s
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._last_plot = float("-inf")

    def state_dict(self) -> dict[str, Any]:
        # Kept in the checkpoint, so the plot of a resumed run starts at step 0, not at the resume step.
        return {"history": {name: [[step, value] for step, value in points] for name, points in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        history = state_dict.get("history", {})
        self.history = {name: [(int(step), float(value)) for step, value in points] for name, points in history.items()}

    def _record(self, trainer: pl.Trainer) -> None:
        step = trainer.global_step
        for name, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1 and name not in ("epoch", "step"):
                points = self.history.setdefault(name, [])
                if not points or points[-1][0] != step:
                    points.append((step, float(value)))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.is_global_zero and (trainer.global_step % max(trainer.log_every_n_steps, 1) == 0):
            self._record(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._save(trainer, force=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer, force=True)

    def _save(self, trainer: pl.Trainer, *, force: bool) -> None:
        folder = trainer.log_dir or trainer.default_root_dir  # a broadcast: every rank asks, rank 0 writes
        if not trainer.is_global_zero:
            return
        self._record(trainer)
        if self.history and (force or time.monotonic() - self._last_plot >= self.min_interval_s):
            self.plot(folder)
            self._last_plot = time.monotonic()

    def plot(self, folder: str) -> str:
        """Write the plot now; returns its path."""
        import matplotlib  # only when a plot is drawn: keeps `import core_attention.training` light

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        order = sorted(self.history, key=lambda n: (not n.startswith("train"), not n.startswith("val"), n))
        names = [n for n in order if self.history[n]][: self.max_panels]
        cols = min(len(names), 3)
        rows = -(-len(names) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            steps, values = zip(*self.history[name])
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names) :]:
            ax.set_visible(False)
        fig.tight_layout()
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self.filename)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
