"""Text to image: discrete image tokenizers, transformers over text and image tokens, and what judges their pictures.

    vae/          image tokenizers: the dVAE (ours and OpenAI's), the VQGAN of DALL·E Mini / Mega
    transformer/  the paper's DALL·E, DALL·E Mini / Mega's encoder-decoder, sampling, tokenizers
    data/         synthetic shapes, caption folders, WebDataset shards, their DataModules
    judges/       attribute classifier, rerankers (ours, CLIP), prompt-adherence evaluation
    pipeline.py   load_pipeline, generate_images, save_images; pretrained.py: DALL·E Mini / Mega
    __main__.py   `python -m dalle <command>`

Imports flow down that list's layers (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# Modules of release 0.1 (one flat package) and where their names live now. Importing one still works for one
# release, with a DeprecationWarning: configs with `class_path: dalle.datamodules.ShapesDataModule`, pickled
# references, `from dalle.module import load_pipeline`.
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "dalle.dvae": ("dalle.vae.dvae",),
    "dalle.dvae_module": ("dalle.vae.module",),
    "dalle.convert_openai": ("dalle.vae.convert_openai",),
    "dalle.model": ("dalle.transformer.model",),
    "dalle.module": ("dalle.transformer.module", "dalle.pipeline"),
    "dalle.tokenizer": ("dalle.transformer.tokenizer",),
    "dalle.shapes": ("dalle.data.shapes",),
    "dalle.caption_data": ("dalle.data.caption_data",),
    "dalle.datamodules": ("dalle.data.datamodules",),
    "dalle.image_folder": ("dalle.data.image_folder",),
    "dalle.attributes": ("dalle.judges.attributes",),
    "dalle.reranker": ("dalle.judges.reranker",),
    "dalle.evaluate": ("dalle.judges.evaluate",),
}


class _MovedModule(types.ModuleType):
    """Stands in for a module that moved: each name is looked up in its new homes, with a DeprecationWarning."""

    def __getattr__(self, name: str):
        for target in MOVED_MODULES[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                warnings.warn(f"{self.__name__} moved: import {name} from {target}", DeprecationWarning, stacklevel=2)
                return getattr(module, name)
        raise AttributeError(
            f"module {self.__name__!r} (moved to {', '.join(MOVED_MODULES[self.__name__])}) has no attribute {name!r}"
        )


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED_MODULES else None

    def create_module(self, spec):
        return _MovedModule(spec.name)

    def exec_module(self, module) -> None:
        pass


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())  # before any finder that could still see an old file
