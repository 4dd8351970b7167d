"""The small shapes models that ship inside the package, so that generating works right after install.

Each is a folder written by the model's ``save_pretrained`` (weights stored in fp16, loaded as fp32) and was trained
on this package's synthetic shapes with its own configs; ``scripts/ship_models.py`` reproduces them and
``docs/shipped_models.md`` lists the commands and the measured quality.

- `DALLE_DIR`: the text-to-image transformer with its tokenizer and dVAE (``load_pipeline()`` loads it).
- `RERANKER_DIR`: the contrastive reranker that picks the best of several candidates (``--rerank shapes``).
- `CLASSIFIER_DIR`: the attribute classifier `python -m dalle evaluate` scores generated images with.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DALLE_DIR = HERE / "shapes_dalle"
RERANKER_DIR = HERE / "shapes_reranker"
CLASSIFIER_DIR = HERE / "shapes_attributes"
IMAGE_SIZE = 32  # pixels: what the shipped models make and read

__all__ = ["CLASSIFIER_DIR", "DALLE_DIR", "IMAGE_SIZE", "RERANKER_DIR"]
