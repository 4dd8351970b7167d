"""LightningModule for the discrete VAE: DALL·E's schedules, codebook health, reconstruction grids.

Schedules follow the DALL·E paper's appendix A.2, all cosine: the gumbel-softmax temperature tau goes
1 -> 1/16, the KL weight beta 0 -> its target, and the learning rate from ``lr`` down to ``min_lr``.
Training uses relaxed codes; validation measures what the text-to-image model will see: argmax codes
(``encode`` -> ``decode``), as PSNR, plus perplexity and the fraction of the codebook in use.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only
from torchmetrics import Metric
from torchmetrics.image import PeakSignalNoiseRatio

from core_attention.training import adamw_warmup_cosine
from core_attention.training.hparams import nest_arch, upgrade_lambda_lr_checkpoint
from dalle.vae.dvae import DiscreteVAE, DVAEConfig, kl_to_uniform, logit_laplace_nll, map_pixels

__all__ = ["CodebookUsage", "DVAEModule", "CodebookCollapseWarning", "cosine_schedule", "batch_images", "fit_vae_main"]


class CodebookCollapseWarning(UserWarning):
    """Fewer than ``collapse_threshold`` of the codebook's tokens were used in an epoch."""


def cosine_schedule(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step >= total)."""
    if total <= 0 or step >= total:
        return end
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * step / total))


class CodebookUsage(Metric):
    """Histogram of token ids over an epoch (summed across processes): perplexity and fraction of codes used."""

    full_state_update = False

    def __init__(self, num_tokens: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_tokens = num_tokens
        self.add_state("counts", default=torch.zeros(num_tokens, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ids: torch.Tensor) -> None:
        self.counts += torch.bincount(ids.flatten().long(), minlength=self.num_tokens)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = self.counts.double()
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        return {
            "perplexity": torch.exp(entropy).float(),
            "codes_used": (self.counts > 0).float().mean(),
        }


def batch_images(batch: Any) -> torch.Tensor:
    """Images from the batch formats the project's datamodules yield: ``{"image": ...}``, ``(image, ...)`` or a
    tensor."""
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


class DVAEModule(pl.LightningModule):
    """Trains :class:`~dalle.vae.dvae.DiscreteVAE`.

    Args:
        arch: the dVAE's architecture (see :class:`~dalle.vae.dvae.DVAEConfig`): 'dalle' (this project's compact
            encoder/decoder) or 'openai' (the layout of OpenAI's released dall_e dVAE, so its converted weights
            load), image size, codebook size, downsampling, widths, reconstruction loss, straight-through codes.
        init_weights: a ``save_pretrained`` directory or ``.safetensors`` file to start from (fine-tuning,
            e.g. OpenAI's converted dVAE). Its shapes must match ``arch``.
        lr: peak learning rate, reached after ``warmup_steps`` of linear warm-up from ``warmup_lr``, then a cosine
            down to ``min_lr`` over the remaining training steps (``core_attention.training.adamw_warmup_cosine``).
        min_lr: learning rate at the end of the cosine schedule.
        warmup_lr: learning rate at the first step of the warm-up.
        warmup_steps: optimizer steps of linear learning-rate warm-up (0: none; if warmup_fraction is None).
        warmup_fraction: warm-up length as a fraction of all training steps (overrides warmup_steps).
        weight_decay: AdamW weight decay of the weight matrices (norms and biases get none).
        betas: AdamW betas.
        temperature_start: gumbel-softmax temperature at the first step (cosine schedule to temperature_end).
        temperature_end: gumbel-softmax temperature at the end of its schedule.
        temperature_steps: length of the temperature schedule in steps; None spreads it over all training steps.
        kl_weight: target weight beta of the KL term; beta goes 0 -> ``kl_weight`` (cosine) over ``kl_warmup_steps``.
        kl_warmup_steps: steps over which the KL weight rises from 0 to kl_weight.
        collapse_threshold: warn (``CodebookCollapseWarning``) when fewer than this fraction of codes is used.
        num_recon_images: images in the per-validation-epoch reconstruction grid (input | reconstruction).
        export_dir: where ``save_pretrained`` writes the trained dVAE at the end of ``fit``
            (default: ``<log_dir>/dvae``).
    """

    def __init__(
        self,
        arch: DVAEConfig = DVAEConfig(),  # noqa: B008 (LightningCLI reads the default from the signature)
        init_weights: str | None = None,
        lr: float = 1e-3,
        min_lr: float = 1.25e-6,
        warmup_lr: float = 1e-6,
        warmup_steps: int = 0,
        warmup_fraction: float | None = None,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        temperature_start: float = 1.0,
        temperature_end: float = 1.0 / 16,
        temperature_steps: int | None = None,
        kl_weight: float = 6.6,
        kl_warmup_steps: int = 5000,
        collapse_threshold: float = 0.1,
        num_recon_images: int = 8,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(arch, dict):
            arch = DVAEConfig.from_dict(arch)
        self.save_hyperparameters()
        self.hparams["arch"] = arch.to_dict()  # plain dict: checkpoints load with weights_only=True
        self.vae = DiscreteVAE.from_config(arch)
        if init_weights:
            self.vae.load_weights(DiscreteVAE.from_pretrained(init_weights).state_dict())
            rank_zero_info(f"dVAE: initialised from {init_weights}")
        self.train_usage = CodebookUsage(arch.num_tokens)
        self.val_usage = CodebookUsage(arch.num_tokens)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self._val_grid_batch: torch.Tensor | None = None
        self._fit_start: float | None = None
        self._total_steps_cache: int | None = None
        self.last_figures: dict[str, float] = {}

    @classmethod
    def upgrade_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Release 0.1's hyper-parameters (flat architecture, ``lr_end``) in today's names."""
        return nest_arch(hparams, DVAEConfig, renamed={"lr_end": "min_lr"})

    # ------------------------------------------------------------------------------ schedules

    def _total_steps(self) -> int:
        """Optimizer steps of the whole fit (cached: Lightning's estimate may rebuild the train dataloader)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return 1
        if self._total_steps_cache is None:
            total = trainer.estimated_stepping_batches
            self._total_steps_cache = int(total) if math.isfinite(total) else 1
        return self._total_steps_cache

    def temperature(self, step: int | None = None) -> float:
        hp = self.hparams
        total = hp.temperature_steps if hp.temperature_steps is not None else self._total_steps()
        return cosine_schedule(
            self.global_step if step is None else step, total, hp.temperature_start, hp.temperature_end
        )

    def kl_weight(self, step: int | None = None) -> float:
        hp = self.hparams
        return cosine_schedule(self.global_step if step is None else step, hp.kl_warmup_steps, 0.0, hp.kl_weight)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(
            self.vae,
            self.trainer.estimated_stepping_batches,
            lr=hp.lr,
            min_lr=hp.min_lr,
            weight_decay=hp.weight_decay,
            warmup_lr=hp.warmup_lr,
            warmup_steps=hp.warmup_steps,
            warmup_fraction=hp.warmup_fraction,
            betas=tuple(hp.betas),
        )

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_lambda_lr_checkpoint(checkpoint)  # release 0.1's schedule

    # ------------------------------------------------------------------------------ steps

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch_images(batch)
        tau, beta = self.temperature(), self.kl_weight()
        out = self.vae(images, temperature=tau, check=batch_idx == 0)
        losses = self.vae.loss(images, out, kl_weight=beta)
        self.train_usage.update(out.logits.detach().argmax(1))
        if self._trainer is None:  # called directly, outside a Trainer
            return losses["loss"]
        B = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, on_step=True, on_epoch=False, batch_size=B)
        self.log_dict(
            {"train/recon": losses["recon"], "train/kl": losses["kl"]}, on_step=True, on_epoch=False, batch_size=B
        )
        self.log_dict({"train/temperature": tau, "train/kl_weight": beta}, on_step=True, on_epoch=False, batch_size=B)
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        usage = self.train_usage.compute()
        self.log_dict({f"train/{k}": v for k, v in usage.items()}, sync_dist=False)
        self.train_usage.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images = batch_images(batch)
        vae = self.vae
        logits = vae.encoder_logits(images, check=batch_idx == 0)  # (B, K, h, w)
        ids = logits.argmax(1)  # (B, h, w): hard codes, as encode() gives them
        stats = vae.decoder.forward_ids(ids)
        recon = vae.stats_to_images(stats)
        C = vae.channels
        if vae.config.loss == "logit_laplace":
            nll = logit_laplace_nll(map_pixels(images), stats[:, :C], stats[:, C : 2 * C]).mean()
        else:
            nll = F.mse_loss(torch.sigmoid(stats[:, :C].float()), map_pixels(images).float())
        kl = kl_to_uniform(logits).sum((1, 2)).mean() / images[0].numel()
        self.val_psnr.update(recon, images.float())
        self.val_usage.update(ids)
        self.log_dict(
            {"val/recon": nll, "val/kl": kl, "val/mse": F.mse_loss(recon, images.float())},
            sync_dist=True,
            batch_size=images.shape[0],
        )
        if batch_idx == 0:
            n = self.hparams.num_recon_images
            self._val_grid_batch = torch.stack([images[:n].float(), recon[:n]], dim=1).flatten(0, 1).detach().cpu()

    def on_validation_epoch_end(self) -> None:
        usage = self.val_usage.compute()
        psnr = self.val_psnr.compute()
        self.val_usage.reset()
        self.val_psnr.reset()
        self.log("val/psnr", psnr, prog_bar=True)
        self.log("val/perplexity", usage["perplexity"])
        self.log("val/codes_used", usage["codes_used"], prog_bar=True)
        if self.trainer.sanity_checking:
            return
        self.last_figures = {
            "psnr": float(psnr),
            "codes_used": float(usage["codes_used"]),
            "perplexity": float(usage["perplexity"]),
        }
        self.check_codebook(float(usage["codes_used"]))
        if self._val_grid_batch is not None:
            self._save_recon_grid(self._val_grid_batch)

    def check_codebook(self, codes_used: float) -> bool:
        """Warns (once per call) when the codebook has collapsed; returns True if healthy."""
        if codes_used >= self.hparams.collapse_threshold:
            return True
        K = self.vae.num_tokens
        msg = (
            f"dVAE codebook collapse at epoch {self.current_epoch}: only {codes_used:.1%} of the {K} codes "
            f"({round(codes_used * K)}) were used (threshold {self.hparams.collapse_threshold:.0%}). "
            "Try a lower KL weight or a slower temperature schedule, a lower learning rate, or fewer tokens."
        )
        if self.trainer.is_global_zero:
            warnings.warn(msg, CodebookCollapseWarning, stacklevel=2)
        return False

    @rank_zero_only
    def _save_recon_grid(self, pairs: torch.Tensor) -> None:
        from torchvision.utils import make_grid, save_image

        grid = make_grid(pairs, nrow=8, padding=2, pad_value=1.0)  # 4 (input | reconstruction) pairs per row
        out_dir = os.path.join(self.trainer.log_dir or self.trainer.default_root_dir, "recon")
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"epoch={self.current_epoch:03d}-step={self.global_step}.png")
        save_image(grid, path)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("val/reconstruction", grid, self.global_step)
            elif hasattr(logger, "log_image"):  # e.g. Weights & Biases
                logger.log_image(key="val/reconstruction", images=[grid], step=self.global_step)

    # ------------------------------------------------------------------------------ fit hooks

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self) -> None:
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        elapsed = time.perf_counter() - (self._fit_start or time.perf_counter())
        export_dir = self.hparams.export_dir or os.path.join(
            self.trainer.log_dir or self.trainer.default_root_dir, "dvae"
        )
        self.vae.save_pretrained(export_dir)
        f = self.last_figures
        if f:
            print(
                f"dVAE after {self.global_step} steps ({elapsed / 60:.1f} min): val PSNR {f['psnr']:.2f} dB, "
                f"codes used {f['codes_used']:.1%} of {self.vae.num_tokens}, perplexity {f['perplexity']:.1f}. "
                f"Saved to {export_dir}",
                flush=True,
            )
        else:
            print(f"dVAE after {self.global_step} steps ({elapsed / 60:.1f} min), saved to {export_dir}", flush=True)


def fit_vae_main(args: list[str]) -> None:
    """``python -m dalle fit-vae [LightningCLI options]``: ``fit`` for :class:`DVAEModule` with any datamodule."""
    from core_attention.training import cli_main

    cli_main(
        DVAEModule,
        pl.LightningDataModule,
        args=["fit", *args],
        subclass_mode_data=True,
        description="Train DALL·E's discrete VAE (stage 1).",
        prog="python -m dalle fit-vae",
    )
