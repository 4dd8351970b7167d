"""Synthetic captioned shapes: the embedded default dataset of the DALL·E part (nothing to download).

A scene is one or two coloured shapes on a **black background**, each in its own cell of a 3×3 grid:

    "a small red circle in the top left"  ->  32×32 image, red disk of radius 0.3 cell in the top-left cell

Everything is a pure function of its inputs: ``render(scene, size)`` always draws the same pixels, and item ``i`` of
``ShapesDataset(split, seed=s)`` is generated from ``(s, split, i)`` alone, so it is identical on every call, in every
DataLoader worker and on every DDP rank.

Compositional generalisation: the (colour, shape) pairs in ``HELD_OUT_PAIRS`` (7 of the 40, about 1 in 6) never occur
in the train/val/test splits; the ``heldout`` split contains only scenes whose first shape is such a pair. Every colour
and every shape still occurs in training, only these combinations are new at test time.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)  # row-major: POSITIONS.index(p) == 3 * row + col

# Saturated colours, pairwise >= 127 apart in RGB (orange sits halfway between red and yellow).
RGB: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "orange": (255, 128, 0),
}
BACKGROUND: tuple[int, int, int] = (0, 0, 0)

# Half-extent of a shape's bounding box, in units of one grid cell (a cell is 1/3 of the image side).
# 0.45 leaves a small black gap between large shapes in neighbouring cells.
SIZE_RADIUS: dict[str, float] = {"small": 0.3, "large": 0.45}

# Every word/phrase a caption may use for an attribute; the first entry is the canonical one. No phrase is shared
# between two attributes and none contains the word "and" (it joins the shapes of a scene), so captions parse back.
SYNONYMS: dict[str, tuple[str, ...]] = {
    # shapes
    "circle": ("circle", "disk", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "cross": ("cross", "plus", "plus sign"),
    # colours
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "lime", "emerald"),
    "blue": ("blue", "cobalt", "sapphire"),
    "yellow": ("yellow", "lemon", "golden"),
    "magenta": ("magenta", "fuchsia"),
    "cyan": ("cyan", "aqua", "turquoise"),
    "white": ("white", "snowy", "ivory"),
    "orange": ("orange", "amber", "tangerine"),
    # sizes
    "small": ("small", "tiny", "little"),
    "large": ("large", "big", "huge"),
    # positions
    "top left": ("top left", "top-left", "upper left"),
    "top": ("top", "top middle", "upper middle"),
    "top right": ("top right", "top-right", "upper right"),
    "left": ("left", "left side", "middle left"),
    "center": ("center", "centre", "middle"),
    "right": ("right", "right side", "middle right"),
    "bottom left": ("bottom left", "bottom-left", "lower left"),
    "bottom": ("bottom", "bottom middle", "lower middle"),
    "bottom right": ("bottom right", "bottom-right", "lower right"),
}

# (colour, shape) combinations never seen in train/val/test. Each colour at most once (white never), each shape
# once or twice, so every colour and every shape is still trained on.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "square"),
    ("blue", "diamond"),
    ("yellow", "circle"),
    ("magenta", "cross"),
    ("cyan", "circle"),
    ("orange", "triangle"),
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple(itertools.product(COLOURS, SHAPES))
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)

Split = Literal["train", "val", "test", "heldout"]
SPLITS: tuple[str, ...] = ("train", "val", "test", "heldout")


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for value, allowed, name in (
            (self.kind, SHAPES, "kind"),
            (self.colour, COLOURS, "colour"),
            (self.size, SIZES, "size"),
            (self.position, POSITIONS, "position"),
        ):
            if value not in allowed:
                raise ValueError(f"Shape {name}={value!r} is not one of {allowed}")

    def labels(self) -> list[int]:
        """[shape_idx, colour_idx, size_idx, position_idx]."""
        return [
            SHAPES.index(self.kind),
            COLOURS.index(self.colour),
            SIZES.index(self.size),
            POSITIONS.index(self.position),
        ]


Scene = tuple[Shape, ...]  # one or two shapes (up to 4 supported), never two in the same cell


def check_scene(scene: Scene) -> None:
    if not 1 <= len(scene) <= len(POSITIONS):
        raise ValueError(f"a scene has 1..{len(POSITIONS)} shapes, got {len(scene)}")
    cells = [s.position for s in scene]
    if len(set(cells)) != len(cells):
        raise ValueError(f"two shapes share a grid cell in {scene}")


def is_held_out(scene: Scene) -> bool:
    """True if any shape of the scene is a held-out (colour, shape) pair."""
    return any((s.colour, s.kind) in HELD_OUT_PAIRS for s in scene)


# --------------------------------------------------------------------------------------------------------- rendering
# Each shape is an "inside" test in local coordinates (x, y) in [-1, 1] (y points down), evaluated on a supersampled
# grid and box-filtered down: the pixel value is the fraction of the pixel the shape covers (antialiasing).

# Drawn with numpy: these small element-wise ops are single-threaded there, so rendering stays fast in DataLoader
# workers and on busy machines (torch's intra-op thread pool costs more than the work at these sizes).


def _circle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x * x + y * y <= 1.0


def _square(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(x), np.abs(y)) <= 0.85  # slightly smaller than the circle so areas are alike


def _triangle(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # Apex (0, -0.95), base corners (+-1, 0.85): pointing up, bounding box centred.
    return (y <= 0.85) & (y >= -0.95 + 1.8 * np.abs(x))


def _diamond(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(x) / 0.8 + np.abs(y) <= 1.0  # taller than wide, so it never looks like a rotated square at 32 px


def _cross(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    t = 0.34  # half arm thickness: arms stay >= 2 px thick for a small cross at 32 px
    ax, ay = np.abs(x), np.abs(y)
    return ((ax <= t) & (ay <= 1.0)) | ((ay <= t) & (ax <= 1.0))


_INSIDE = {"circle": _circle, "square": _square, "triangle": _triangle, "diamond": _diamond, "cross": _cross}


def _supersample(image_size: int) -> int:
    # >= 4x4 samples per pixel, and at least a 256-sample canvas, so 32 px edges get 64 coverage levels.
    return max(4, math.ceil(256 / image_size))


def shape_geometry(shape: Shape, jitter: float = 0.0, rng: random.Random | None = None) -> tuple[float, float, float]:
    """(cx, cy, r) of a shape in image-fraction units: centre and half-extent of its bounding box."""
    index = POSITIONS.index(shape.position)
    row, col = divmod(index, 3)
    cx, cy, r = (col + 0.5) / 3, (row + 0.5) / 3, SIZE_RADIUS[shape.size] / 3
    if jitter > 0:
        rng = rng or random.Random(0)
        # Jitter never moves a shape out of its cell: shift <= jitter * cell, scale in [1 - jitter, 1 + jitter].
        cx += rng.uniform(-jitter, jitter) / 3
        cy += rng.uniform(-jitter, jitter) / 3
        r *= rng.uniform(1 - jitter, 1 + jitter)
    return cx, cy, r


def render(scene: Scene, image_size: int, *, jitter: float = 0.0, rng: random.Random | None = None) -> torch.Tensor:
    """Draws ``scene`` on a black background. Returns float32 (3, image_size, image_size) in [0, 1].

    ``jitter`` (0 <= jitter <= 0.15, default 0 = exact grid placement) shifts and rescales each shape a little,
    drawn from ``rng``; the attributes stay unambiguous.
    """
    check_scene(scene)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 (3x3 grid of recognisable shapes), got {image_size}")
    if not 0.0 <= jitter <= 0.15:
        raise ValueError(f"jitter must be in [0, 0.15], got {jitter}")
    ss = _supersample(image_size)
    n = image_size * ss
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n  # sample centres in (0, 1)
    u, v = grid[None, :], grid[:, None]  # (1, n) x, (n, 1) y
    image = np.zeros((3, image_size, image_size), dtype=np.float32)
    for shape in scene:
        cx, cy, r = shape_geometry(shape, jitter, rng)
        inside = _INSIDE[shape.kind]((u - cx) / r, (v - cy) / r)  # (n, n) bool
        coverage = inside.reshape(image_size, ss, image_size, ss).mean((1, 3), dtype=np.float32)  # (H, W) box filter
        colour = np.asarray(RGB[shape.colour], dtype=np.float32) / 255
        image += coverage[None] * colour[:, None, None]  # shapes sit in distinct cells: no overlap to resolve
    return torch.from_numpy(np.clip(image, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------------------- captions


def _preposition(position_phrase: str) -> str:
    if position_phrase in ("top", "bottom"):
        return "at"
    if position_phrase in ("left", "right", "left side", "right side"):
        return "on"
    return "in"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Each template renders one shape from (size, colour, kind, position phrase, preposition). None contains "and".
_TEMPLATES: tuple[str, ...] = (
    "a {s} {c} {k} {p} the {pos}",
    "{pos}: a {s} {c} {k}",
    "there is a {s} {c} {k} {p} the {pos}",
    "{p} the {pos}, a {s} {c} {k}",
    "a {s} {k} coloured {c} {p} the {pos}",
    "{s} {c} {k}, {pos}",
    "{a} {c} {k} that is {s}, {p} the {pos}",
)


def _describe(shape: Shape, rng: random.Random) -> str:
    s, c, k, pos = (rng.choice(SYNONYMS[v]) for v in (shape.size, shape.colour, shape.kind, shape.position))
    template = rng.choice(_TEMPLATES)
    return template.format(s=s, c=c, k=k, pos=pos, p=_preposition(pos), a=_article(c))


def caption(scene: Scene, rng: random.Random) -> str:
    """A random caption of ``scene`` (random template and synonyms per shape), shapes joined with "and"."""
    check_scene(scene)
    return " and ".join(_describe(shape, rng) for shape in scene)


def canonical_caption(scene: Scene) -> str:
    """The one fixed template, e.g. "a small red circle in the top left and a large blue square at the bottom"."""
    check_scene(scene)
    return " and ".join(f"a {s.size} {s.colour} {s.kind} {_preposition(s.position)} the {s.position}" for s in scene)


def _phrase_table() -> list[tuple[tuple[str, ...], str, str]]:
    category = {
        **{k: "kind" for k in SHAPES},
        **{c: "colour" for c in COLOURS},
        **{s: "size" for s in SIZES},
        **{p: "position" for p in POSITIONS},
    }
    table = [
        (tuple(phrase.replace("-", " ").split()), category[value], value)
        for value, phrases in SYNONYMS.items()
        for phrase in phrases
    ]
    return sorted(set(table), key=lambda t: -len(t[0]))  # longest first: "top left" before "top"


_PHRASES = _phrase_table()


def parse_caption(text: str) -> Scene | None:
    """Best-effort inverse of :func:`caption` / :func:`canonical_caption`.

    Returns the scene if every "and"-separated part names exactly one shape, colour, size and position (any synonym,
    longest phrase wins) and no two parts share a cell; otherwise None.
    """
    words = re.sub(r"[^a-z ]+", " ", text.lower().replace("-", " ")).split()
    parts: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            parts.append([])
        else:
            parts[-1].append(w)
    shapes = []
    for part in parts:
        found: dict[str, list[str]] = {"kind": [], "colour": [], "size": [], "position": []}
        i = 0
        while i < len(part):
            for phrase, cat, value in _PHRASES:
                if tuple(part[i : i + len(phrase)]) == phrase:
                    found[cat].append(value)
                    i += len(phrase)
                    break
            else:
                i += 1
        if any(len(v) != 1 for v in found.values()):
            return None
        shapes.append(Shape(found["kind"][0], found["colour"][0], found["size"][0], found["position"][0]))
    scene = tuple(shapes)
    try:
        check_scene(scene)
    except ValueError:
        return None
    return scene


# ----------------------------------------------------------------------------------------------------------- dataset


class ShapesDataset(Dataset):
    """Deterministic synthetic captioned shapes.

    Item ``i`` is ``{"image": float (3, H, W) in [0, 1], "caption": str, "labels": long (4,)}`` where labels are
    ``[shape_idx, colour_idx, size_idx, position_idx]`` of the first (or only) shape; :meth:`scene_for` gives the whole
    scene. Scenes have 1..max_shapes shapes (uniformly). train/val/test use distinct random streams and only
    non-held-out pairs; ``heldout`` puts a held-out pair first (any pair for further shapes).
    """

    def __init__(
        self,
        split: Split = "train",
        num_samples: int = 10000,
        image_size: int = 32,
        max_shapes: int = 1,
        seed: int = 0,
        jitter: float = 0.0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 1 <= max_shapes <= 4:
            raise ValueError(f"max_shapes must be in 1..4, got {max_shapes}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.split, self.num_samples, self.image_size = split, num_samples, image_size
        self.max_shapes, self.seed, self.jitter = max_shapes, seed, jitter

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int, stream: str) -> random.Random:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        # String seeds are hashed with SHA-512 by `random`: stable across processes, unlike hash().
        return random.Random(f"vit-dalle/shapes/{self.seed}/{self.split}/{index}/{stream}")

    def scene_for(self, index: int) -> Scene:
        rng = self._rng(index, "scene")
        n = rng.randint(1, self.max_shapes)
        cells = rng.sample(POSITIONS, n)
        shapes = []
        for j, cell in enumerate(cells):
            if self.split == "heldout":
                pool = HELD_OUT_PAIRS if j == 0 else ALL_PAIRS
            else:
                pool = TRAIN_PAIRS
            colour, kind = rng.choice(pool)
            shapes.append(Shape(kind, colour, rng.choice(SIZES), cell))
        return tuple(shapes)

    def caption_for(self, index: int) -> str:
        return caption(self.scene_for(index), self._rng(index, "caption"))

    def iter_captions(self, limit: int | None = None) -> Iterator[str]:
        """Captions only (no rendering): fast input for tokenizer training."""
        for i in range(self.num_samples if limit is None else min(limit, self.num_samples)):
            yield self.caption_for(i)

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.num_samples
        scene = self.scene_for(index)
        image = render(scene, self.image_size, jitter=self.jitter, rng=self._rng(index, "render"))
        return {
            "image": image,
            "caption": caption(scene, self._rng(index, "caption")),
            "labels": torch.tensor(scene[0].labels(), dtype=torch.long),
        }


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """Saves a float (3, H, W) tensor in [0, 1] as an 8-bit RGB png."""
    from PIL import Image

    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)


def write_folder(dataset, root: str | Path, limit: int | None = None) -> int:
    """Writes ``00000.png`` + ``00000.txt`` (caption) pairs: the common DALL·E folder layout. Returns the count.

    Works for any dataset whose items are ``{"image": (3, H, W) in [0, 1], "caption": str, ...}``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    width = max(5, len(str(n - 1)))
    for i in range(n):
        item = dataset[i]
        save_png(item["image"], root / f"{i:0{width}d}.png")
        (root / f"{i:0{width}d}.txt").write_text(item["caption"] + "\n", encoding="utf-8")
    return n
