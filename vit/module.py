"""The Lightning recipe for training and fine-tuning `VisionTransformer` classifiers.

AdamW without weight decay on norms, biases, position embeddings and tokens (timm's `create_optimizer_v2`, optional
layer-wise LR decay), linear warmup then cosine (timm's `CosineLRScheduler`, per step), label smoothing,
mixup/cutmix (timm's `Mixup`), optional EMA weights (timm's `ModelEmaV3`), top-1/top-5 accuracy (torchmetrics).
Gradient clipping, precision and devices are Trainer settings (`trainer.gradient_clip_val`, ...).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from core_attention.io import check_writable, load_checkpoint, load_state_dict_checked
from core_attention.training import adamw_warmup_cosine

from .model import VisionTransformer, ViTConfig
from .shipped import DIGITS_DIR

log = logging.getLogger(__name__)


class ViTClassifier(pl.LightningModule):
    """Image classification with a `VisionTransformer`.

    Args:
        arch: The ViT architecture (timm's keyword names; see `vit.ViTConfig`). num_classes, in_chans and
            img_size must agree with the data.
        pretrained: Start from these weights: a timm ViT checkpoint file (.safetensors / .pth), a directory
            written by `save_pretrained`, or 'timm:<model name>' (timm.create_model(..., pretrained=True), needs
            network access). A head of another size is dropped; another img_size resamples pos_embed. Loaded when
            fit/validate/test/predict starts, and skipped when a checkpoint (--ckpt_path) is restored instead.
        lr: Peak learning rate (after warmup).
        min_lr: Learning rate at the end of the cosine decay.
        warmup_lr: Learning rate at the first step of the linear warmup.
        warmup_steps: Optimizer steps of linear warmup (if warmup_fraction is None).
        warmup_fraction: Warmup length as a fraction of all training steps (overrides warmup_steps).
        weight_decay: AdamW weight decay of the matrices (norms, biases, pos_embed and tokens get none).
        betas: AdamW betas.
        layer_decay: Layer-wise LR decay for fine-tuning (e.g. 0.65): block i gets lr * layer_decay^(depth - i);
            None disables.
        label_smoothing: Label smoothing of the cross-entropy (also applied to mixup targets).
        mixup_alpha: Mixup Beta(alpha, alpha); 0 disables.
        cutmix_alpha: CutMix Beta(alpha, alpha); 0 disables.
        mixup_prob: Probability of mixing a batch at all.
        mixup_switch_prob: Probability of CutMix instead of mixup when both are enabled.
        ema_decay: Keep an exponential moving average of the weights with this decay (e.g. 0.9998); None disables.
        ema_warmup: Ramp the EMA decay up from 0 (useful for short runs).
        ema_eval: Validate/test/predict with the EMA weights (when ema_decay is set).
        grad_checkpointing: Recompute activations in the backward pass (less memory, ~30% slower).
        top_k: How many labels `predict` prints per image (not saved in checkpoints: set it when predicting).
        predict_output: Also write predictions to this file (.csv or .json; not saved in checkpoints).
    """

    def __init__(
        self,
        arch: ViTConfig = ViTConfig(),  # noqa: B008 (LightningCLI reads the default from the signature)
        pretrained: str | None = None,
        lr: float = 1e-3,
        min_lr: float = 1e-5,
        warmup_lr: float = 1e-6,
        warmup_steps: int = 0,
        warmup_fraction: float | None = 0.05,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float | None = None,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        ema_decay: float | None = None,
        ema_warmup: bool = False,
        ema_eval: bool = True,
        grad_checkpointing: bool = False,
        top_k: int = 5,
        predict_output: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(arch, dict):
            arch = ViTConfig.from_dict(arch)
        # Predict-time options stay out of the checkpoint: LightningCLI lets checkpoint hparams override the config.
        self.save_hyperparameters(ignore=["top_k", "predict_output"])
        self.hparams["arch"] = arch.to_dict()  # plain dict: checkpoints load with weights_only=True
        self.top_k, self.predict_output = top_k, predict_output
        self.model = VisionTransformer.from_config(arch)
        self._pretrained_pending = bool(pretrained)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.class_names: list[str] = [str(i) for i in range(arch.num_classes)]
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=mixup_prob,
                switch_prob=mixup_switch_prob,
                label_smoothing=label_smoothing,
                num_classes=arch.num_classes,
            )
        self.ema = None
        if ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=ema_decay, use_warmup=ema_warmup)
            # Saved and restored with the module, but never trained: DDP must not wait for gradients of the copy.
            self.ema.module.requires_grad_(False)
            self.ema.module.train()  # its mode is set where it is used (eval_model); train keeps Lightning quiet
        k = min(5, arch.num_classes)
        for split in ("val", "test"):
            setattr(self, f"{split}_acc1", MulticlassAccuracy(arch.num_classes, top_k=1, average="micro"))
            setattr(self, f"{split}_acc5", MulticlassAccuracy(arch.num_classes, top_k=k, average="micro"))
        self._predictions: list[dict[str, Any]] = []

    def load_pretrained(self) -> None:
        """Load the `pretrained` weights now (fit/validate/test/predict call this unless a checkpoint was restored)."""
        from .weights import load_timm_weights

        source = self.hparams.pretrained
        self._pretrained_pending = False
        if not source:
            return
        path = Path(source)
        with torch.no_grad():
            if path.is_dir():
                loaded = VisionTransformer.from_pretrained(path, **self.hparams["arch"])
                self.model.load_state_dict(loaded.state_dict())
                self.model.pretrained_cfg.update(loaded.pretrained_cfg)
            else:
                load_timm_weights(self.model, source)
            if self.ema is not None:
                self.ema.module.load_state_dict(self.model.state_dict())
        log.info("initialised the ViT from %s", source)

    def _start(self) -> None:
        if self._pretrained_pending:
            self.load_pretrained()

    def on_fit_start(self) -> None:
        self._start()

    def on_validation_start(self) -> None:
        self._start()

    def on_test_start(self) -> None:
        self._start()

    def on_predict_start(self) -> None:
        if self.predict_output:
            check_writable(self.predict_output, what="predictions file (--model.predict_output)")
        self._start()

    # ---- data agreement --------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "info"):
            return
        cfg = self.model.config
        img = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else tuple(cfg.img_size)
        problems = []
        if stage != "predict" and dm.num_classes and dm.num_classes != cfg.num_classes:
            problems.append(f"the data has {dm.num_classes} classes but model.arch.num_classes={cfg.num_classes}")
        if dm.in_chans != cfg.in_chans:
            problems.append(f"the data has {dm.in_chans}-channel images but model.arch.in_chans={cfg.in_chans}")
        if (dm.img_size, dm.img_size) != img:
            problems.append(
                f"the data yields {dm.img_size}x{dm.img_size} images but model.arch.img_size={cfg.img_size}"
            )
        if stage == "fit" and self.mixup is not None and getattr(dm, "batch_size", 0) % 2:
            problems.append(f"mixup/cutmix needs an even batch size, data.batch_size={dm.batch_size}")
        if problems:
            raise ValueError(
                "model and data disagree: "
                + "; ".join(problems)
                + ". Make the config's model.arch and data sections match."
            )
        if stage != "predict" and dm.classes:
            self.class_names = list(dm.classes)
        self.model.pretrained_cfg.update({k: v for k, v in dm.info().items() if k != "class_names"})
        self.model.pretrained_cfg["class_names"] = self.class_names

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["class_names"] = list(self.class_names)
        checkpoint["pretrained_cfg"] = json.loads(json.dumps(self.model.pretrained_cfg))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pretrained_pending = False  # the checkpoint's weights win
        self.class_names = list(checkpoint.get("class_names", self.class_names))
        self.model.pretrained_cfg.update(checkpoint.get("pretrained_cfg", {}))

    # ---- steps -----------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def eval_model(self) -> VisionTransformer:
        """The weights used for validation, test and predict: the EMA copy when enabled, else the live model."""
        if self.ema is not None and self.hparams.ema_eval:
            self.ema.module.eval()
            return self.ema.module
        return self.model

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.mixup is not None:
            x, soft = self.mixup(x, y)
            logits = self.model(x)
            loss = torch.sum(-soft * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.hparams.label_smoothing)
            self.log("train/acc1", (logits.argmax(-1) == y).float().mean(), on_step=True, prog_bar=True)
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else 0.0, on_step=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _eval_step(self, batch: tuple[Tensor, Tensor], split: str) -> None:
        x, y = batch
        logits = self.eval_model()(x)
        loss = F.cross_entropy(logits.float(), y)
        acc1, acc5 = getattr(self, f"{split}_acc1"), getattr(self, f"{split}_acc5")
        acc1(logits, y)
        acc5(logits, y)
        self.log(f"{split}/loss", loss, prog_bar=split == "val", sync_dist=True)
        self.log(f"{split}/acc1", acc1, prog_bar=True)
        self.log(f"{split}/acc5", acc5)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        acc = self.test_acc1.compute().item()  # every rank computes (synchronised), rank 0 prints
        if self.trainer.is_global_zero:
            print(f"test top-1 accuracy: {100 * acc:.2f}%")

    def predict_step(self, batch: tuple[Tensor, list[str]], batch_idx: int) -> list[dict[str, Any]]:
        x, paths = batch
        probs = self.eval_model()(x).float().softmax(-1)
        k = min(self.top_k, probs.shape[-1])
        top_p, top_i = probs.topk(k, dim=-1)
        out = []
        for path, ps, ids in zip(paths, top_p.tolist(), top_i.tolist()):
            labels = [self.class_names[i] if i < len(self.class_names) else str(i) for i in ids]
            out.append({"path": path, "labels": labels, "probs": ps, "indices": ids})
        return out

    def on_predict_epoch_start(self) -> None:
        self._predictions = []

    def on_predict_batch_end(
        self, outputs: list[dict[str, Any]], batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        for p in outputs:
            self._predictions.append(p)
            print(f"{p['path']}: " + ", ".join(f"{lab} ({prob:.3f})" for lab, prob in zip(p["labels"], p["probs"])))

    def on_predict_epoch_end(self) -> None:
        out = self.predict_output
        if not out or not self.trainer.is_global_zero:
            return
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            path.write_text(json.dumps(self._predictions, indent=2) + "\n")
        else:
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "rank", "label", "index", "prob"])
                for p in self._predictions:
                    for r, (lab, i, pr) in enumerate(zip(p["labels"], p["indices"], p["probs"]), 1):
                        w.writerow([p["path"], r, lab, i, f"{pr:.6f}"])
        print(f"wrote {len(self._predictions)} predictions to {path}")

    # ---- optimisation ----------------------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(
            self.model,
            self.trainer.estimated_stepping_batches,
            lr=hp.lr,
            min_lr=hp.min_lr,
            weight_decay=hp.weight_decay,
            warmup_lr=hp.warmup_lr,
            warmup_steps=hp.warmup_steps,
            warmup_fraction=hp.warmup_fraction,
            betas=tuple(hp.betas),
            layer_decay=hp.layer_decay,
        )

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)

    # ---- export ----------------------------------------------------------------------------------------------

    def export_model(self, *, ema: bool = True) -> VisionTransformer:
        """The trained ViT (EMA weights when kept and `ema`), with class names and normalisation in pretrained_cfg."""
        model = self.ema.module if (ema and self.ema is not None) else self.model
        model.pretrained_cfg = {**self.model.pretrained_cfg, "class_names": list(self.class_names)}
        return model


def load_classifier(path: str | Path | None = None, *, ema: bool = True) -> VisionTransformer:
    """A `VisionTransformer` from a Lightning checkpoint written by `python -m vit fit`, or a `save_pretrained`
    dir/file; without a path, the digits ViT shipped in the package (`vit.shipped.DIGITS_DIR`).

    Lightning checkpoints are read with `weights_only=True`; EMA weights are used when the run kept them and `ema`.
    """
    path = Path(DIGITS_DIR if path is None else path)
    if path.is_dir() or path.suffix == ".safetensors":
        return VisionTransformer.from_pretrained(path).eval()
    ckpt = load_checkpoint(path)
    hp = ckpt.get("hyper_parameters", {})
    if "arch" not in hp or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a checkpoint written by `python -m vit fit` (no hyper_parameters.arch / state_dict)"
        )
    arch = hp["arch"]
    arch = arch if isinstance(arch, dict) else dataclasses.asdict(arch)
    model = VisionTransformer.from_config(arch)
    sd = ckpt["state_dict"]
    prefix = "ema.module." if ema and any(k.startswith("ema.module.") for k in sd) else "model."
    load_state_dict_checked(model, sd, source=f"checkpoint {path}", prefix=prefix)
    model.pretrained_cfg = dict(ckpt.get("pretrained_cfg", {}))
    if "class_names" in ckpt:
        model.pretrained_cfg["class_names"] = list(ckpt["class_names"])
    return model.eval()
