"""The small ViT that ships inside the package: scikit-learn's 8x8 digits, upscaled to 16x16, ten classes.

`DIGITS_DIR` is a ``save_pretrained`` folder (weights in fp16, loaded as fp32) trained with
``configs/vit/digits.yaml``; ``vit.load_classifier()`` and ``python -m vit predict IMAGE`` use it when given no
checkpoint. ``scripts/ship_models.py`` reproduces it; ``docs/shipped_models.md`` has its measured accuracy.
"""

from __future__ import annotations

from pathlib import Path

DIGITS_DIR = Path(__file__).parent / "digits"

__all__ = ["DIGITS_DIR"]
