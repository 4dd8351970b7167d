"""Attribute classifier: reads (shape, colour, size, position) back from a shapes image. The judge of ``evaluate``.

A small :class:`vit.VisionTransformer` backbone (``num_classes=0``, its tokens) feeds one linear head per
attribute. It is trained on uniformly drawn single-shape scenes over **all** 40 (colour, shape) pairs, the held-out
ones included: it is the measuring instrument, not the model under test, and it must know a "red triangle" to say
whether DALL·E drew one. Its test set is the project's own data (``ShapesDataset`` test + heldout splits).

    images (B, 3, H, W) in [0, 1] -> resize to 48 px -> ViT, 3x3 patches -> tokens (B, 9, D) -> flatten
        -> {"shape": (B, 5), "colour": (B, 8), "size": (B, 2), "position": (B, 9)}   (a linear head each)

``python -m dalle fit-classifier --config configs/dalle/attributes.yaml`` trains one; ``train_classifier(dir)`` runs
the same recipe from Python (what ``evaluate`` does when its ``--classifier`` folder is empty).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from core_attention import init_weights, sincos_2d
from core_attention.io import load_safetensors, load_state_dict_checked, save_safetensors
from core_attention.training import adamw_warmup_cosine, fixed_order_sampler
from dalle.data.shapes import (
    ALL_PAIRS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    Shape,
    ShapesDataset,
    canonical_caption,
    render,
)
from dalle.shipped import CLASSIFIER_DIR
from vit import VisionTransformer, ViTConfig

__all__ = [
    "ATTRIBUTES",
    "AttributeClassifier",
    "AttributeDataModule",
    "AttributeModule",
    "AllPairsShapes",
    "DEFAULT_ARCH",
    "fit_classifier_main",
    "load_classifier",
    "train_classifier",
]

# Head name -> class names, in the order of ShapesDataset's labels: [shape, colour, size, position].
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"

# One 16 px patch per cell of the 3x3 scene grid (inputs are resized to 48 px): a shape never straddles patches, so
# shape, colour and size are read from one token and the position from which token it is. 9 tokens: ~25 ms per
# 128-image training step on one CPU core.
DEFAULT_ARCH = ViTConfig(
    img_size=48,
    patch_size=16,
    num_classes=0,
    global_pool="",
    class_token=False,
    embed_dim=64,
    depth=2,
    num_heads=4,
    mlp_ratio=2.0,
)


def scene_labels(scene: Scene) -> list[int]:
    """[shape, colour, size, position] class indices of a one-shape scene (the classifier reads one shape)."""
    if len(scene) != 1:
        raise ValueError(f"the attribute classifier reads one-shape scenes, got {len(scene)} shapes: {scene}")
    return scene[0].labels()


# ------------------------------------------------------------------------------------------------------- model


class AttributeClassifier(nn.Module):
    """ViT backbone + one linear head per attribute. Takes images in [0, 1] (normalised inside).

    Args:
        arch: The backbone (timm keyword names, see ``vit.ViTConfig``); ``num_classes`` must be 0 (the heads are
            separate). Images of any size are resized to ``img_size``; keep ``img_size = 3 * patch_size`` so each
            patch covers one cell of the scene grid.
    """

    def __init__(self, arch: ViTConfig | dict[str, Any] | None = None) -> None:
        super().__init__()
        arch = DEFAULT_ARCH if arch is None else arch
        arch = ViTConfig.from_dict(arch) if isinstance(arch, dict) else arch
        if arch.num_classes != 0:
            raise ValueError(
                "the attribute classifier's backbone needs num_classes=0 (one head per attribute), "
                f"got {arch.num_classes}"
            )
        if arch.in_chans != 3:
            raise ValueError(f"shapes images are RGB: the backbone needs in_chans=3, got {arch.in_chans}")
        self.arch = arch
        self.backbone = VisionTransformer.from_config(arch)
        # global_pool='' keeps every token and the heads read them all, flattened: "which cell holds the shape" is then
        # a linear read-out. Pooled variants ('token', 'avg') must first learn to attend to the shape's token to tell
        # positions apart, and short runs can stall there with the position head at chance.
        num_tokens = self.backbone.patch_embed.num_patches + self.backbone.num_prefix_tokens
        width = arch.embed_dim * (num_tokens if arch.global_pool == "" else 1)
        self.heads = nn.ModuleDict({name: nn.Linear(width, len(classes)) for name, classes in ATTRIBUTES.items()})
        self.heads.apply(init_weights)
        self.metrics: dict[str, Any] = {}  # figures saved with the weights (filled by from_pretrained)
        if arch.embed_dim % 4 == 0 and not arch.no_embed_class:
            # MAE-style 2-D sin-cos start for the patch positions (still learned): every cell is distinct from the
            # first step instead of after the 0.02-std timm init has grown.
            with torch.no_grad():
                prefix = self.backbone.num_prefix_tokens
                self.backbone.pos_embed[0, prefix:] = sincos_2d(self.backbone.patch_embed.grid_size, arch.embed_dim)

    @property
    def img_size(self) -> tuple[int, int]:
        return self.backbone.patch_embed.img_size

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) in [0, 1], any H, W (resized to ``img_size``) -> {attribute: logits (B, num_classes)}."""
        x = (self.resize(images) - 0.5) / 0.5  # shapes on black: centre the pixel range, no dataset statistics
        features = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)  # (B, D) or (B, L, D)
        features = features.flatten(1)  # (B, D) or (B, L * D)
        return {name: head(features) for name, head in self.heads.items()}

    def resize(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != self.img_size:
            images = images if images.is_floating_point() else images.float()
            images = F.interpolate(images, size=self.img_size, mode="bilinear", antialias=True, align_corners=False)
        return images

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """(B, 3, H, W) in [0, 1], any H, W (resized to ``img_size``) -> (B, 4) long [shape, colour, size, position]."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        for chunk in images.split(batch_size):
            logits = self(chunk.to(device).float())
            out.append(torch.stack([logits[name].argmax(-1) for name in ATTRIBUTES], dim=1).cpu())  # (b, 4)
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, len(ATTRIBUTES), dtype=torch.long)

    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        """``model.safetensors`` (weights + config in the header) and a readable ``config.json`` in ``directory``."""
        directory = Path(directory)
        config = {
            "architecture": "AttributeClassifier",
            "arch": self.arch.to_dict(),
            "attributes": {name: list(classes) for name, classes in ATTRIBUTES.items()},
            "metrics": metrics or {},
        }
        save_safetensors(directory / WEIGHTS_NAME, self.state_dict(), config)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> AttributeClassifier:
        """Load a folder written by :meth:`save_pretrained` (or its ``model.safetensors``)."""
        path = Path(path)
        file = path / WEIGHTS_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no attribute classifier at {path} "
                f"(expected {WEIGHTS_NAME} written by AttributeClassifier.save_pretrained; "
                "train one with `python -m dalle fit-classifier --config configs/dalle/attributes.yaml`)"
            )
        state_dict, config = load_safetensors(file, device=str(map_location))
        if config.get("architecture") != "AttributeClassifier":
            raise ValueError(
                f"{file} is not an attribute classifier (header architecture={config.get('architecture')!r})"
            )
        saved = {name: tuple(classes) for name, classes in config.get("attributes", {}).items()}
        if saved != ATTRIBUTES:
            raise ValueError(f"{file} was trained for other attribute classes {saved}; this code reads {ATTRIBUTES}")
        model = cls(config["arch"])
        load_state_dict_checked(model, state_dict, source=str(file))
        model.metrics = config.get("metrics", {})
        return model.eval()


def load_classifier(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> AttributeClassifier:
    """A classifier from a ``save_pretrained`` folder/file or a Lightning ``.ckpt`` of ``fit-classifier``; without a
    path, the one shipped in the package (trained on 32 px images)."""
    path = Path(CLASSIFIER_DIR if path is None else path)
    if path.suffix != ".ckpt":
        return AttributeClassifier.from_pretrained(path, map_location)
    from core_attention.io import load_checkpoint

    ckpt = load_checkpoint(path, map_location=map_location)
    arch = ckpt.get("hyper_parameters", {}).get("arch")
    if arch is None or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a checkpoint written by `python -m dalle fit-classifier` (no hyper_parameters.arch)"
        )
    model = AttributeClassifier(arch)
    load_state_dict_checked(model, ckpt["state_dict"], source=f"checkpoint {path}", prefix="model.")
    return model.eval()


# -------------------------------------------------------------------------------------------------------- data


class AllPairsShapes(Dataset):
    """One-shape scenes with kind, colour, size and position each drawn uniformly (all 40 colour-shape pairs).

    Item ``i`` is a pure function of ``(seed, split, i)``, like :class:`dalle.data.shapes.ShapesDataset`, and has the
    same keys: ``{"image": (3, H, W) in [0, 1], "caption": canonical caption, "labels": (4,) long}``. ``cache=True``
    keeps every rendered image (uint8) after its first use: later epochs cost nothing (single-process loading).
    """

    def __init__(
        self,
        split: str,
        num_samples: int,
        image_size: int = 32,
        seed: int = 0,
        jitter: float = 0.0,
        cache: bool = False,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.split, self.num_samples, self.image_size = split, num_samples, image_size
        self.seed, self.jitter = seed, jitter
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if not 0.0 <= jitter <= 0.15:
            raise ValueError(f"jitter must be in [0, 0.15], got {jitter}")
        self._cache: dict[int, Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int, stream: str) -> random.Random:
        return random.Random(f"vit-dalle/attributes/{self.seed}/{self.split}/{index}/{stream}")

    def scene_for(self, index: int) -> Scene:
        rng = self._rng(index, "scene")
        colour, kind = rng.choice(ALL_PAIRS)
        return (Shape(kind, colour, rng.choice(SIZES), rng.choice(POSITIONS)),)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        scene = self.scene_for(index)
        if self._cache is not None and index in self._cache:
            image = self._cache[index].float() / 255
        else:
            image = render(scene, self.image_size, jitter=self.jitter, rng=self._rng(index, "render"))
            if self._cache is not None:
                self._cache[index] = (image * 255).round().to(torch.uint8)
                image = self._cache[index].float() / 255  # identical pixels in every epoch
        return {"image": image, "caption": canonical_caption(scene), "labels": torch.tensor(scene_labels(scene))}


class AttributeDataModule(pl.LightningDataModule):
    """Train/val: :class:`AllPairsShapes` (every colour-shape pair, optional jitter). Test: the project's own
    one-shape ``ShapesDataset`` test split plus its held-out split (exact renders, as DALL·E trains on).

    Args:
        image_size: Image side in pixels (the DALL·E model's image size).
        num_train: Training scenes (rendered once, then cached).
        num_val: Validation scenes.
        num_test: Test scenes: half from ShapesDataset 'test', half from 'heldout'.
        batch_size: Images per batch.
        num_workers: DataLoader workers (0 keeps the render cache in one process: fastest for the default sizes).
        shuffle: Shuffle the training scenes every epoch (False: a fixed order, e.g. to compare runs exactly).
        seed: Seed of the scene streams (distinct from DALL·E's data streams by construction).
        jitter: Shape position/scale jitter of the training images (0 .. 0.15): robustness to imperfect drawings.
    """

    def __init__(
        self,
        image_size: int = 32,
        num_train: int = 20000,
        num_val: int = 1000,
        num_test: int = 2000,
        batch_size: int = 128,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        jitter: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set = AllPairsShapes("train", num_train, image_size, seed, jitter, cache=True)
        self.val_set = AllPairsShapes("val", num_val, image_size, seed, jitter, cache=True)
        self.test_set = ConcatDataset(
            [
                ShapesDataset("test", num_test - num_test // 2, image_size, max_shapes=1, seed=seed),
                ShapesDataset("heldout", num_test // 2, image_size, max_shapes=1, seed=seed),
            ]
        )

    def _loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        shuffle = self.hparams.shuffle
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and shuffle,
            num_workers=self.num_workers,
            sampler=fixed_order_sampler(self, dataset, shuffle) if train else None,
            drop_last=train and len(dataset) >= self.batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)


# ------------------------------------------------------------------------------------------------ Lightning


class AttributeModule(pl.LightningModule):
    """Trains an :class:`AttributeClassifier`: the mean cross-entropy of the four heads, AdamW, warmup + cosine.

    Args:
        arch: The ViT backbone (timm keyword names; num_classes must stay 0). Images are resized to its img_size,
            so it need not match the data's.
        lr: Peak learning rate.
        min_lr: Learning rate at the end of the cosine decay.
        warmup_lr: Learning rate at the first step of the linear warmup.
        warmup_steps: Optimizer steps of linear warmup (if warmup_fraction is None).
        warmup_fraction: Warmup length as a fraction of all training steps (overrides warmup_steps).
        weight_decay: AdamW weight decay of the weight matrices (norms, biases, pos_embed get none).
        label_smoothing: Label smoothing of every head's cross-entropy.
        noise_std: Std of Gaussian pixel noise added to training images (robustness to generated images).
        brightness: Training images are scaled by a factor drawn from [1 - brightness, 1] (generated colours are
            often a little dull).
        export_dir: After fitting, save the classifier here with ``save_pretrained`` (and the test accuracy when
            a test run follows); None skips.
    """

    def __init__(
        self,
        arch: ViTConfig = DEFAULT_ARCH,
        lr: float = 3e-3,
        min_lr: float = 1e-5,
        warmup_lr: float = 3e-5,
        warmup_steps: int = 0,
        warmup_fraction: float | None = 0.05,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.0,
        noise_std: float = 0.03,
        brightness: float = 0.2,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(arch, dict):
            arch = ViTConfig.from_dict(arch)
        self.save_hyperparameters()
        self.hparams["arch"] = arch.to_dict()  # plain dict: checkpoints load with weights_only=True
        self.model = AttributeClassifier(arch)
        for split in ("val", "test"):
            for name, classes in ATTRIBUTES.items():
                setattr(self, f"{split}_acc_{name}", MulticlassAccuracy(len(classes), average="micro"))
            setattr(self, f"{split}_acc_all", MeanMetric())
        self.test_results: dict[str, float] = {}

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images)

    def _loss(self, logits: dict[str, Tensor], labels: Tensor) -> Tensor:
        losses = [
            F.cross_entropy(logits[n].float(), labels[:, i], label_smoothing=self.hparams.label_smoothing)
            for i, n in enumerate(ATTRIBUTES)
        ]
        return torch.stack(losses).mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, labels = batch["image"], batch["labels"]
        hp = self.hparams
        if hp.brightness > 0:
            images = images * (1 - hp.brightness * torch.rand(len(images), 1, 1, 1, device=images.device))
        if hp.noise_std > 0:
            images = (images + hp.noise_std * torch.randn_like(images)).clamp(0, 1)
        logits = self.model(images)
        loss = self._loss(logits, labels)
        correct = torch.stack([logits[n].argmax(-1) == labels[:, i] for i, n in enumerate(ATTRIBUTES)])  # (4, B)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/acc_all", correct.all(0).float().mean(), prog_bar=True, batch_size=len(labels))
        return loss

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        images, labels = batch["image"], batch["labels"]
        logits = self.model(images)
        n = len(labels)
        self.log(f"{split}/loss", self._loss(logits, labels), sync_dist=True, batch_size=n)
        correct = []
        for i, name in enumerate(ATTRIBUTES):
            metric = getattr(self, f"{split}_acc_{name}")
            metric(logits[name], labels[:, i])
            self.log(f"{split}/acc_{name}", metric, batch_size=n)
            correct.append(logits[name].argmax(-1) == labels[:, i])
        all_metric = getattr(self, f"{split}_acc_all")
        all_metric(torch.stack(correct).all(0).float())
        self.log(f"{split}/acc_all", all_metric, prog_bar=True, batch_size=n)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.test_results = {name: getattr(self, f"test_acc_{name}").compute().item() for name in [*ATTRIBUTES, "all"]}
        if self.trainer.is_global_zero:
            print(
                "attribute classifier test accuracy: "
                + ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.test_results.items())
            )
            if self.hparams.export_dir:
                self.model.save_pretrained(self.hparams.export_dir, {"test_accuracy": self.test_results})

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.model.save_pretrained(self.hparams.export_dir)
            print(f"saved the attribute classifier to {self.hparams.export_dir}")

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
        )

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)


def train_classifier(
    directory: str | Path,
    image_size: int = 32,
    *,
    max_steps: int = 800,
    num_train: int = 20000,
    num_test: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
    arch: ViTConfig | None = None,
    progress: bool = False,
) -> AttributeClassifier:
    """The ``configs/dalle/attributes.yaml`` recipe from Python: train on ``image_size`` px scenes, test on real
    shapes images, save to ``directory`` (``config.json`` records the test accuracy). Under a minute on 2 CPU cores."""
    pl.seed_everything(seed, verbose=False)
    module = AttributeModule(arch or DEFAULT_ARCH, export_dir=str(directory))
    data = AttributeDataModule(
        image_size,
        num_train=num_train,
        num_val=min(512, num_train),
        num_test=num_test,
        batch_size=batch_size,
        seed=seed,
    )
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    return AttributeClassifier.from_pretrained(directory)


DESCRIPTION = """\
Train the attribute classifier that `python -m dalle evaluate` scores generated images with (shape, colour, size
and position of a one-shape scene), then report its test accuracy on real shapes images (the project's test and
held-out splits). Example:

  python -m dalle fit-classifier --config configs/dalle/attributes.yaml

The classifier is saved to --model.export_dir (model.safetensors + config.json, with the test accuracy): the
folder `evaluate --classifier` takes.
"""


def fit_classifier_main(args: list[str]) -> None:
    """``python -m dalle fit-classifier [LightningCLI options]``: fit, then test (and export) the fitted weights."""
    from core_attention.training import cli_main

    cli = cli_main(
        AttributeModule,
        AttributeDataModule,
        ["fit", *args],
        description=DESCRIPTION,
        prog="python -m dalle fit-classifier",
    )
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
