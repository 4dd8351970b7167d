"""Image classification data: scikit-learn's 8x8 digits (embedded), ImageFolder trees, CIFAR-10/100.

Every DataModule yields (images (B, C, H, W) float, labels (B,) long) and, for `predict`, (images, paths) for the
image files listed in `predict_paths`. Augmentation comes from timm (RandAugment, RandomErasing, create_transform).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2 as T

from core_attention.training import fixed_order_sampler

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_MODES = {1: "L", 3: "RGB"}
# What PIL raises for a file it cannot decode: corrupt, truncated, empty, not an image, or a decompression bomb
# (more pixels than Image.MAX_IMAGE_PIXELS allows, which is not an OSError).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
# Modes that hold the same kind of picture as the target mode and convert losslessly enough to do so silently.
_COMPATIBLE = {"RGB": {"RGB", "P", "CMYK", "YCbCr"}, "L": {"L", "I", "I;16", "I;16B", "I;16L", "F", "1"}}


def load_image(path: str | Path, in_chans: int, *, convert: bool = False) -> Image.Image:
    """Open an image file as a PIL image with `in_chans` channels (1 -> 'L', 3 -> 'RGB').

    A file that holds another kind of picture (grayscale for an RGB model, RGBA with transparency, colour for a
    grayscale model) raises a ValueError naming what was expected, unless `convert=True` (alpha is dropped).
    """
    path = Path(path)
    if in_chans not in _MODES:
        raise ValueError(
            "only 1-channel (grayscale) and 3-channel (RGB) images can be read from files, "
            f"the model has in_chans={in_chans}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        img = Image.open(path)
        img.load()
    except Image.DecompressionBombError as err:
        raise ValueError(
            f"{path} is too large to open safely ({err}). If you trust the file, shrink it first, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS in your own script."
        ) from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path} is not a readable image: {err}") from None
    want = _MODES[in_chans]
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        mode = "RGBA"  # a palette with a transparent colour carries alpha
    if mode in ("I;16", "I", "F", "I;16B", "I;16L") and want == "L":
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray((arr / hi * 255.0).round().clip(0, 255).astype(np.uint8))
    if mode not in _COMPATIBLE[want] and not convert:
        kind = {
            "L": "grayscale",
            "LA": "grayscale with alpha",
            "RGBA": "RGBA (with an alpha channel)",
            "RGB": "RGB",
        }.get(mode, mode)
        expected = "3-channel RGB" if want == "RGB" else "1-channel grayscale"
        raise ValueError(
            f"{path} is a {kind} image (PIL mode {mode!r}, {len(img.getbands())} channels) but the model expects "
            f"{expected} images (in_chans={in_chans}). Convert the file, or pass convert=True "
            "(CLI: --data.convert_images true, or --convert for `attention`) to convert it (alpha is dropped)."
        )
    return img.convert(want) if img.mode != want else img


class ImageFiles(Dataset):
    """Image files for `predict`: yields (pixels, path)."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        in_chans: int,
        transform: Callable[[Image.Image], Tensor],
        *,
        convert: bool = False,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.in_chans, self.transform, self.convert = in_chans, transform, convert
        for p in self.paths:  # fail before any work is done, naming the file
            load_image(p, in_chans, convert=convert)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        return self.transform(load_image(self.paths[i], self.in_chans, convert=self.convert)), self.paths[i]


class SkipUnreadable(Dataset):
    """A (PIL image, label) dataset whose unreadable files (see IMAGE_ERRORS) are replaced by the next one, with a
    warning naming each file and a running count in `num_failed`: one bad file never ends the epoch."""

    def __init__(self, base: Any, max_consecutive: int = 10) -> None:
        self.base, self.max_consecutive, self.num_failed = base, max_consecutive, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for attempt in range(min(len(self), self.max_consecutive)):
            i = (index + attempt) % len(self)
            try:
                return self.base[i]
            except IMAGE_ERRORS as error:
                self.num_failed += 1
                warnings.warn(
                    f"could not load {self.base.samples[i][0]} ({error}); using the next image instead "
                    f"({self.num_failed} failure(s) so far in this process)",
                    stacklevel=2,
                )
        raise RuntimeError(
            f"{self.max_consecutive} consecutive images from {self.base.samples[index][0]} on failed to "
            "load: is this a folder of images?"
        )


class _Transformed(Dataset):
    """(PIL image, label) dataset -> (transform(image), label)."""

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], Tensor]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.base[i]
        return self.transform(img), int(label)


class ImageDataModule(pl.LightningDataModule):
    """What every image DataModule shares: loaders, normalisation and the `predict` file list.

    Args:
        img_size: Side of the square images the model sees.
        batch_size: Images per batch (per process under DDP).
        num_workers: DataLoader worker processes (0 = load in the main process).
        shuffle: Shuffle the training images every epoch (False: a fixed order, e.g. to compare runs exactly).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after subtracting the mean.
        predict_paths: Image files for `predict` (also given as positional paths:
            `python -m vit predict a.png b.png ...`).
        convert_images: Convert predict files of another mode (grayscale, RGBA, ...) instead of raising an error.
    """

    in_chans: int = 3

    def __init__(
        self,
        *,
        img_size: int,
        batch_size: int,
        num_workers: int,
        shuffle: bool = True,
        mean: Sequence[float],
        std: Sequence[float],
        predict_paths: list[str] | None = None,
        convert_images: bool = False,
    ) -> None:
        super().__init__()
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(
                f"mean and std need {self.in_chans} values (one per channel), got mean={list(mean)} std={list(std)}"
            )
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.mean, self.std = tuple(mean), tuple(std)
        self.predict_paths = list(predict_paths or [])
        self.convert_images = convert_images
        self.classes: list[str] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> dict[str, Any]:
        """What a model trained on this data needs to preprocess new images (saved next to its weights)."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "img_size": self.img_size,
            "in_chans": self.in_chans,
            "class_names": list(self.classes),
        }

    def _to_tensor(self) -> list[Callable]:
        return [T.PILToTensor(), T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)]

    def eval_transform(self) -> Callable[[Image.Image], Tensor]:
        """Resize to img_size x img_size (no crop), scale to [0, 1], normalise."""
        return T.Compose([T.Resize((self.img_size, self.img_size), antialias=True), *self._to_tensor()])

    def _loader(self, dataset: Dataset | None, *, train: bool = False, name: str = "") -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"no {name} data: call setup() first or configure the {name} split")
        sampler = fixed_order_sampler(self, dataset, self.shuffle) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train and self.shuffle,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True, name="training")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, name="validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, name="test")

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_paths:
            raise ValueError(
                "predict needs image files: `python -m vit predict IMG [IMG ...] --config ...` "
                "or --data.predict_paths '[a.png, b.png]'"
            )
        files = ImageFiles(self.predict_paths, self.in_chans, self.eval_transform(), convert=self.convert_images)
        return DataLoader(files, batch_size=self.batch_size, num_workers=0)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, shipped inside scikit-learn: no download).

    The 0..16 pixel values become 8-bit grayscale images, upscaled to `img_size`; the split is stratified and
    fixed by `split_seed`.

    Args:
        img_size: Side the 8x8 digits are upscaled to (bilinear) before the model sees them.
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
        shuffle: Shuffle the training images every epoch (False: a fixed order).
        val_fraction: Fraction of the images held out for validation (stratified).
        test_fraction: Fraction of the images held out for the test split (stratified).
        split_seed: Seed of the stratified split (keep it fixed to compare runs).
        crop_padding: Training augmentation: pad by this many (upscaled) pixels and crop back at a random offset
            (small translations); 0 disables.
        rotate_degrees: Training augmentation: random rotation in [-rotate_degrees, rotate_degrees]; 0 disables.
        scale_range: Training augmentation: random zoom range [min, max] applied with the rotation; [1, 1] disables.
        rand_augment: timm RandAugment config string for training (e.g. 'rand-m5-n1-mstd0.5'); None disables.
        re_prob: Probability of timm's RandomErasing on a training image; 0 disables.
        mean: Normalisation mean of the single channel.
        std: Normalisation std of the single channel.
        predict_paths: Grayscale image files for `predict` (white digit on black, like the training data).
        convert_images: Convert predict files that are not grayscale instead of raising an error.
    """

    in_chans = 1

    def __init__(
        self,
        img_size: int = 32,
        batch_size: int = 64,
        num_workers: int = 0,
        shuffle: bool = True,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        crop_padding: int = 0,
        rotate_degrees: float = 0.0,
        scale_range: tuple[float, float] = (1.0, 1.0),
        rand_augment: str | None = None,
        re_prob: float = 0.0,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        predict_paths: list[str] | None = None,
        convert_images: bool = False,
    ) -> None:
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle=shuffle,
            mean=mean,
            std=std,
            predict_paths=predict_paths,
            convert_images=convert_images,
        )
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) "
                "must be in (0, 1) and sum to less than 1"
            )
        self.save_hyperparameters()
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.crop_padding, self.rotate_degrees, self.scale_range = crop_padding, rotate_degrees, tuple(scale_range)
        self.rand_augment, self.re_prob = rand_augment, re_prob
        self.classes = [str(d) for d in range(10)]

    @staticmethod
    def images_and_labels() -> tuple[list[Image.Image], np.ndarray]:
        """All 1797 digits as 8x8 'L' images (0..16 scaled to 0..255) and their labels."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        return [Image.fromarray(p) for p in pixels], digits.target.astype(np.int64)

    def split_indices(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        idx = np.arange(len(labels))
        held = self.val_fraction + self.test_fraction
        train, rest = train_test_split(idx, test_size=held, stratify=labels, random_state=self.split_seed)
        val, test = train_test_split(
            rest, test_size=self.test_fraction / held, stratify=labels[rest], random_state=self.split_seed
        )
        return train, val, test

    def train_transform(self) -> Callable[[Image.Image], Tensor]:
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        ops: list[Callable] = [T.Resize((self.img_size, self.img_size), antialias=True)]
        if self.rotate_degrees or self.scale_range != (1.0, 1.0):
            ops.append(
                T.RandomAffine(self.rotate_degrees, scale=self.scale_range, interpolation=T.InterpolationMode.BILINEAR)
            )
        if self.crop_padding:
            ops.append(T.RandomCrop(self.img_size, padding=self.crop_padding))
        if self.rand_augment:
            ops.append(
                rand_augment_transform(
                    self.rand_augment, {"img_mean": 0, "translate_const": max(1, self.img_size // 8)}
                )
            )
        ops += self._to_tensor()
        if self.re_prob > 0:
            ops.append(RandomErasing(self.re_prob, mode="const", device="cpu"))
        return T.Compose(ops)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or stage == "predict":
            return
        images, labels = self.images_and_labels()
        base = list(zip(images, labels.tolist()))
        train, val, test = self.split_indices(labels)
        self.train_set = _Transformed(Subset(base, train.tolist()), self.train_transform())
        self.val_set = _Transformed(Subset(base, val.tolist()), self.eval_transform())
        self.test_set = _Transformed(Subset(base, test.tolist()), self.eval_transform())


class ImageFolderDataModule(ImageDataModule):
    """`train_dir/<class>/<image>` and `val_dir/<class>/<image>` trees (torchvision ImageFolder), timm augmentation.

    Training images get timm's `create_transform` (RandomResizedCrop, flip, RandAugment, RandomErasing: the DeiT
    recipe); validation/test images are resized to img_size / crop_pct and center-cropped. Files of any mode
    are converted to RGB (torchvision's loader).

    Args:
        train_dir: Folder with one sub-folder of images per class (the sub-folder names are the class names).
        val_dir: Validation folder with the same class sub-folders.
        test_dir: Test folder with the same class sub-folders; None tests on val_dir.
        img_size: Side of the square crops the model sees.
        batch_size: Images per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        shuffle: Shuffle the training images every epoch (False: a fixed order).
        auto_augment: timm auto-augment config, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment); None disables.
        re_prob: Probability of timm's RandomErasing per training image.
        color_jitter: Colour-jitter strength (timm ignores it when auto_augment is set).
        scale: RandomResizedCrop area range [min, max].
        hflip: Probability of a horizontal flip.
        interpolation: Resize interpolation ('bicubic', 'bilinear', ...).
        crop_pct: Center-crop fraction for evaluation (resize to img_size / crop_pct, crop img_size).
        mean: Normalisation mean per channel.
        std: Normalisation std per channel.
        predict_paths: RGB image files for `predict`.
        convert_images: Convert predict files that are not RGB (grayscale, RGBA) instead of raising an error.
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        img_size: int = 224,
        batch_size: int = 128,
        num_workers: int = 8,
        shuffle: bool = True,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        color_jitter: float = 0.3,
        scale: tuple[float, float] = (0.08, 1.0),
        hflip: float = 0.5,
        interpolation: str = "bicubic",
        crop_pct: float = 0.875,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        predict_paths: list[str] | None = None,
        convert_images: bool = False,
    ) -> None:
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle=shuffle,
            mean=mean,
            std=std,
            predict_paths=predict_paths,
            convert_images=convert_images,
        )
        self.save_hyperparameters()
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir
        self.auto_augment, self.re_prob, self.color_jitter = auto_augment, re_prob, color_jitter
        self.scale, self.hflip, self.interpolation, self.crop_pct = tuple(scale), hflip, interpolation, crop_pct
        self._roots = [d for d in (train_dir, val_dir, test_dir) if d is not None]

    @staticmethod
    def _folder_classes(root: str) -> list[str]:
        path = Path(root)
        if not path.is_dir():
            raise FileNotFoundError(f"image folder {path} does not exist (expected {path}/<class name>/<image files>)")
        classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ValueError(f"{path} has no class sub-folders (expected {path}/<class name>/<image files>)")
        return classes

    def train_transform(self) -> Callable[[Image.Image], Tensor]:
        from timm.data import create_transform

        return create_transform(
            self.img_size,
            is_training=True,
            auto_augment=self.auto_augment,
            re_prob=self.re_prob,
            color_jitter=self.color_jitter,
            scale=self.scale,
            hflip=self.hflip,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )

    def eval_transform(self) -> Callable[[Image.Image], Tensor]:
        from timm.data import create_transform

        return create_transform(
            self.img_size,
            is_training=False,
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            mean=self.mean,
            std=self.std,
        )

    def _folder(self, root: str, transform: Callable) -> Dataset:
        from torchvision.datasets import ImageFolder

        classes = self._folder_classes(root)
        if classes != self.classes:
            raise ValueError(
                f"{root} has classes {classes[:5]}... but the training folder has {self.classes[:5]}...; "
                "every split needs the same class sub-folders"
            )
        return SkipUnreadable(ImageFolder(root, transform=transform))

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            return
        if not self._roots:
            raise ValueError(
                "no image folders configured: set --data.train_dir and --data.val_dir (and optionally --data.test_dir)"
            )
        self.classes = self._folder_classes(self._roots[0])
        if stage in (None, "fit"):
            if self.train_dir is None or self.val_dir is None:
                raise ValueError("fit needs --data.train_dir and --data.val_dir")
            self.train_set = self._folder(self.train_dir, self.train_transform())
        if stage in (None, "fit", "validate") and self.val_dir is not None:
            self.val_set = self._folder(self.val_dir, self.eval_transform())
        if stage in (None, "test"):
            root = self.test_dir or self.val_dir
            if root is None:
                raise ValueError("test needs --data.test_dir (or --data.val_dir)")
            self.test_set = self._folder(root, self.eval_transform())


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 or CIFAR-100 through torchvision, read from a local `root` (or downloaded with `download=True`).

    The last `val_size` training images (after a seeded shuffle) are held out for validation; `test` uses the
    official test set.

    Args:
        root: Folder holding (or receiving) `cifar-10-batches-py` / `cifar-100-python`.
        dataset: 'cifar10' or 'cifar100'.
        download: Download the dataset into root if it is not there (needs network access).
        img_size: Side the 32x32 images are resized to (32 keeps them as they are).
        batch_size: Images per batch.
        num_workers: DataLoader worker processes.
        shuffle: Shuffle the training images every epoch (False: a fixed order).
        val_size: Training images held out for validation (0 validates on the test set).
        split_seed: Seed of the held-out split.
        crop_padding: Pad by this many pixels and crop back at a random offset (0 disables).
        hflip: Probability of a horizontal flip.
        rand_augment: timm RandAugment config string, e.g. 'rand-m9-n2-mstd0.5-inc1'; None disables.
        re_prob: Probability of timm's RandomErasing per training image.
        mean: Normalisation mean per channel.
        std: Normalisation std per channel.
        predict_paths: RGB image files for `predict`.
        convert_images: Convert predict files that are not RGB instead of raising an error.
    """

    def __init__(
        self,
        root: str = "data",
        dataset: str = "cifar10",
        download: bool = False,
        img_size: int = 32,
        batch_size: int = 128,
        num_workers: int = 4,
        shuffle: bool = True,
        val_size: int = 5000,
        split_seed: int = 0,
        crop_padding: int = 4,
        hflip: float = 0.5,
        rand_augment: str | None = "rand-m9-n2-mstd0.5-inc1",
        re_prob: float = 0.25,
        mean: Sequence[float] = CIFAR_MEAN,
        std: Sequence[float] = CIFAR_STD,
        predict_paths: list[str] | None = None,
        convert_images: bool = False,
    ) -> None:
        super().__init__(
            img_size=img_size,
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle=shuffle,
            mean=mean,
            std=std,
            predict_paths=predict_paths,
            convert_images=convert_images,
        )
        if dataset not in ("cifar10", "cifar100"):
            raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {dataset!r}")
        self.save_hyperparameters()
        self.root, self.dataset, self.download = root, dataset, download
        self.val_size, self.split_seed = val_size, split_seed
        self.crop_padding, self.hflip, self.rand_augment, self.re_prob = crop_padding, hflip, rand_augment, re_prob
        from torchvision.datasets import CIFAR10, CIFAR100

        self._cls = CIFAR10 if dataset == "cifar10" else CIFAR100
        n = 10 if dataset == "cifar10" else 100
        self.classes = [str(i) for i in range(n)]  # replaced by the real names once the data is read

    def prepare_data(self) -> None:
        if self.download:
            self._cls(self.root, train=True, download=True)
            self._cls(self.root, train=False, download=True)

    def _open(self, train: bool):
        try:
            return self._cls(self.root, train=train, download=False)
        except RuntimeError as err:
            folder = "cifar-10-batches-py" if self.dataset == "cifar10" else "cifar-100-python"
            raise FileNotFoundError(
                f"{self.dataset} not found under {self.root!r} (expected {self.root}/{folder}): "
                "pass --data.download true "
                f"(needs network access) or point --data.root at the folder that holds it ({err})"
            ) from None

    def train_transform(self) -> Callable[[Image.Image], Tensor]:
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.random_erasing import RandomErasing

        ops: list[Callable] = []
        if self.img_size != 32:
            ops.append(T.Resize((self.img_size, self.img_size), antialias=True))
        if self.crop_padding:
            ops.append(T.RandomCrop(self.img_size, padding=self.crop_padding, padding_mode="reflect"))
        if self.hflip:
            ops.append(T.RandomHorizontalFlip(self.hflip))
        if self.rand_augment:
            fill = tuple(round(255 * m) for m in self.mean)
            ops.append(
                rand_augment_transform(self.rand_augment, {"img_mean": fill, "translate_const": self.img_size // 8})
            )
        ops += self._to_tensor()
        if self.re_prob > 0:
            ops.append(RandomErasing(self.re_prob, mode="pixel", device="cpu"))
        return T.Compose(ops)

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict" or self.train_set is not None:
            return
        train_full, test = self._open(True), self._open(False)
        self.classes = list(train_full.classes)
        order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        train_idx, val_idx = order[: len(order) - self.val_size], order[len(order) - self.val_size :]
        self.train_set = _Transformed(Subset(train_full, train_idx), self.train_transform())
        self.test_set = _Transformed(test, self.eval_transform())
        self.val_set = (
            _Transformed(Subset(train_full, val_idx), self.eval_transform()) if self.val_size else self.test_set
        )
