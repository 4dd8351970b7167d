"""Real captioned-image data: a folder of image + caption pairs, or WebDataset tar shards (the multi-node path).

Both yield the same item as :class:`dalle.data.shapes.ShapesDataset` minus the labels::

    {"image": float32 (3, image_size, image_size) in [0, 1], "caption": str}

Folder layout (as in DALLE-pytorch), searched recursively::

    root/0001.png   root/0001.txt      # one or more caption lines; each item picks one line at random
    root/sub/cat.jpg  root/sub/cat.txt

Shard layout: tar members ``KEY.jpg|jpeg|png|webp`` + ``KEY.txt`` (what :func:`write_shards` writes).

Every image is converted to 8-bit RGB the same way (:func:`to_rgb`: grayscale, 16-bit, palette, transparency composited
on white, EXIF rotation applied), then its shorter side is resized to ``image_size`` (bicubic, antialiased) and the
centre square cropped.
"""

from __future__ import annotations

import functools
import io
import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SHARD_IMAGE_KEYS = "jpg;jpeg;png;webp"

# What PIL raises for unreadable, truncated or malicious files.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB. Transparent pixels are composited onto ``background`` (white by default)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit (and 32-bit) grayscale: PIL's own convert() clips to 255, which turns the image white.
        array = np.asarray(image, dtype=np.float64)
        if image.mode != "F":
            full_scale = 65535.0
        else:  # float images: [0, 1] or [0, 255]
            full_scale = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        array = np.clip(array / full_scale * 255.0, 0, 255).round().astype(np.uint8)
        image = Image.fromarray(array)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa") or (image.mode == "L" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def image_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """RGB PIL image -> float (3, image_size, image_size) in [0, 1]: shorter side resized, centre square cropped."""
    return v2.Compose(
        [
            v2.Resize(image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def open_image(source: str | Path | bytes, image_size: int | None = None) -> Image.Image:
    """Opens and fully decodes an image (raises on corrupt/truncated data) and converts it to RGB."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        if image_size is not None and image.format == "JPEG":
            image.draft("RGB", (2 * image_size, 2 * image_size))  # decode big JPEGs at a reduced scale: much faster
        image.load()
        return to_rgb(image)


def decode_caption(data: bytes) -> tuple[str, bool]:
    """(text, is_utf8): UTF-8 (a BOM is dropped), else Windows-1252 / Latin-1, the usual encoding of older files,
    instead of U+FFFD replacement characters the tokenizer would learn as words."""
    try:
        return data.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        try:
            return data.decode("cp1252"), False
        except UnicodeDecodeError:  # the 5 bytes cp1252 leaves undefined
            return data.decode("latin-1"), False


def _caption_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def pick_caption(text: str) -> str:
    """One random non-empty line of a caption file ("" if it has none)."""
    lines = _caption_lines(text)
    return random.choice(lines) if lines else ""


class CaptionFolder(Dataset):
    """Images with a same-name ``.txt`` caption, searched recursively under ``root``.

    Images without a caption file are skipped (one warning with the count and an example path). With ``verify=True``
    every image is checked at scan time with PIL's cheap ``verify()``; anything that still fails to decode at load time
    is replaced by the next item, with a warning and a running count in ``self.num_failed``. ``transform`` (PIL RGB
    image -> tensor) replaces the default resize + centre crop.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int = 64,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        self.image_size = image_size
        self.transform = transform or image_transform(image_size)
        self.num_failed = 0
        if not self.root.is_dir():
            raise FileNotFoundError(f"CaptionFolder: {self.root} is not a directory")
        images = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        uncaptioned = [p for p in images if not p.with_suffix(".txt").is_file()]
        if uncaptioned:
            warnings.warn(
                f"CaptionFolder({self.root}): skipped {len(uncaptioned)} image(s) without a same-name .txt caption, "
                f"e.g. {uncaptioned[0]}",
                stacklevel=2,
            )
        self.paths = [p for p in images if p.with_suffix(".txt").is_file()]
        if verify:
            corrupt = []
            for p in self.paths:
                try:
                    with Image.open(p) as image:
                        image.verify()
                except IMAGE_ERRORS as error:
                    corrupt.append((p, error))
            if corrupt:
                warnings.warn(
                    f"CaptionFolder({self.root}): skipped {len(corrupt)} unreadable image(s), "
                    f"e.g. {corrupt[0][0]} ({corrupt[0][1]})",
                    stacklevel=2,
                )
                bad = {p for p, _ in corrupt}
                self.paths = [p for p in self.paths if p not in bad]
        self._check_captions()
        if not self.paths:
            raise ValueError(
                f"CaptionFolder: no captioned images found in {self.root}. Expected image files "
                f"({', '.join(IMAGE_EXTENSIONS)}) each with a caption file of the same name, e.g. "
                f"{self.root / '0001.png'} + {self.root / '0001.txt'} (one caption per line)."
            )

    def _check_captions(self) -> None:
        """One warning each for caption files that are not UTF-8 and for empty ones, with the count and an example."""
        not_utf8, empty = [], []
        for path in self.paths:
            text, is_utf8 = decode_caption(path.with_suffix(".txt").read_bytes())
            if not is_utf8:
                not_utf8.append(path.with_suffix(".txt"))
            if not _caption_lines(text):
                empty.append(path.with_suffix(".txt"))
        if not_utf8:
            warnings.warn(
                f"CaptionFolder({self.root}): {len(not_utf8)} caption file(s) are not UTF-8 and were read as "
                f"Windows-1252 / Latin-1, e.g. {not_utf8[0]}: check their accents, or save them as UTF-8",
                stacklevel=3,
            )
        if empty:
            warnings.warn(
                f"CaptionFolder({self.root}): {len(empty)} caption file(s) are empty, e.g. {empty[0]}: their images "
                "train as the unconditional (empty) prompt. Write a caption, or remove the pair.",
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.paths)

    def captions_of(self, index: int) -> list[str]:
        """All caption lines of item ``index``."""
        return _caption_lines(decode_caption(self.paths[index].with_suffix(".txt").read_bytes())[0])

    def iter_captions(self, indices: Iterable[int] | None = None) -> Iterator[str]:
        """Every caption line of the given items (all by default): input for tokenizer training."""
        for i in range(len(self)) if indices is None else indices:
            yield from self.captions_of(i)

    def _load(self, index: int) -> dict:
        path = self.paths[index]
        image = self.transform(open_image(path, self.image_size))
        lines = self.captions_of(index)
        return {"image": image, "caption": random.choice(lines) if lines else ""}

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(
                f"CaptionFolder index {index} out of range for {len(self)} items"
            )  # ends `for item in ...`
        index %= len(self)
        attempts = min(len(self), 10)
        for attempt in range(attempts):
            i = (index + attempt) % len(self)
            try:
                return self._load(i)
            except IMAGE_ERRORS as error:
                self.num_failed += 1
                warnings.warn(
                    f"CaptionFolder: could not load {self.paths[i]} ({error}); using the next item instead "
                    f"({self.num_failed} failure(s) so far in this process)",
                    stacklevel=2,
                )
        raise RuntimeError(f"CaptionFolder: {attempts} consecutive images from index {index} failed to load")


# ------------------------------------------------------------------------------------------------------- WebDataset


def _shard_caption(data: bytes) -> str:
    text, is_utf8 = decode_caption(data)
    if not is_utf8:  # one message per process (Python shows a repeated warning once)
        warnings.warn("a caption in the shards is not UTF-8: read as Windows-1252 / Latin-1", stacklevel=2)
    return text


def _shard_item(sample: tuple[bytes, bytes], image_size: int, transform: Callable) -> dict:
    image_bytes, text_bytes = sample
    return {
        "image": transform(open_image(image_bytes, image_size)),
        "caption": pick_caption(_shard_caption(text_bytes)),
    }


def webdataset_pipeline(
    urls: str | list[str],
    image_size: int,
    shuffle: int = 1000,
    resampled: bool = False,
    *,
    epoch_length: int | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    seed: int | None = None,
):
    """An iterable ``webdataset.WebDataset`` of ``{"image", "caption"}`` dicts from tar shards.

    ``urls``: a list, or a brace pattern ``"data/shard-{000000..000099}.tar"`` (local paths, ``pipe:`` or http URLs).
    Shards are split across DDP ranks (``split_by_node``) and then DataLoader workers (``split_by_worker``), so every
    (rank, worker) reads different shards: give at least ranks × workers shards. ``shuffle`` is the sample shuffle
    buffer (0: keep order, no shard shuffling either). Corrupt samples are skipped with a warning.

    ``resampled=True`` draws shards with replacement forever, independently per rank and worker: the recommended
    training mode for multi-node DDP, because every rank then yields the same number of batches. Pair it with
    ``epoch_length`` (samples per epoch *per worker*, via ``with_epoch``) so epochs end.
    """
    import webdataset as wds

    transform = transform or image_transform(image_size)
    dataset = wds.WebDataset(
        urls,
        resampled=resampled,
        shardshuffle=False if (resampled or not shuffle) else 100,
        nodesplitter=wds.split_by_node,
        workersplitter=wds.split_by_worker,
        handler=wds.warn_and_continue,
        empty_check=False,  # a worker without shards simply yields nothing (e.g. 1 val shard, 4 workers)
        seed=seed,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle)
    # functools.partial, not a lambda: the pipeline must pickle for spawned DataLoader workers.
    to_item = functools.partial(_shard_item, image_size=image_size, transform=transform)
    dataset = dataset.to_tuple(SHARD_IMAGE_KEYS, "txt", handler=wds.warn_and_continue).map(
        to_item, handler=wds.warn_and_continue
    )
    if epoch_length is not None:
        dataset = dataset.with_epoch(epoch_length)
    return dataset


def shard_captions(urls: str | list[str], limit: int | None = None) -> Iterator[str]:
    """Every caption line in the shards, in order, without decoding images (for tokenizer training)."""
    import webdataset as wds

    dataset = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    count = 0
    for (text,) in dataset.to_tuple("txt"):
        for line in _caption_lines(_shard_caption(text)):
            if limit is not None and count >= limit:
                return
            count += 1
            yield line


def expand_urls(urls: str | list[str]) -> list[str]:
    """The shard list a url pattern stands for (brace expansion, ``::``-separated lists)."""
    from webdataset.shardlists import expand_urls as _expand

    if isinstance(urls, str):
        return list(_expand(urls))
    return [u for pattern in urls for u in _expand(pattern)]


def _png_bytes(image: torch.Tensor) -> bytes:
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(dataset: Iterable[dict], pattern: str | Path, maxcount: int = 10000) -> list[str]:
    """Writes ``{"image", "caption"}`` items into tar shards (``pattern`` like ``"out/shard-%06d.tar"``).

    Each sample is ``KEY.png`` + ``KEY.txt``; at most ``maxcount`` samples per shard. Returns the shard paths.
    """
    import webdataset as wds

    pattern = str(pattern)
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for i, item in enumerate(dataset):
            sink.write({"__key__": f"{i:09d}", "png": _png_bytes(item["image"]), "txt": item["caption"]})
            if not shards or shards[-1] != sink.fname:
                shards.append(sink.fname)
    return shards


def per_worker_epoch_length(epoch_length: int, world_size: int, num_workers: int) -> int:
    """Samples each (rank, worker) pipeline must yield so that all of them together give ``epoch_length``."""
    return math.ceil(epoch_length / (max(1, world_size) * max(1, num_workers)))
