"""Names and modules of release 0.1 that moved: still importable for one release, with a DeprecationWarning.

A module that gave up names sets ``__getattr__ = moved_names(__name__, {name: new_module})``; whole modules that moved
are listed in ``MOVED_MODULES`` (configs with ``class_path: dalle.datamodules.ShapesDataModule``, pickled
references, ``from dalle.module import load_pipeline``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["MOVED_MODULES", "install_moved_modules", "moved_names"]

# Modules of release 0.1 (one flat package) and where their names live now.
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


def _moved(old: str, name: str, targets: tuple[str, ...]) -> Any:
    """``name`` from the first of ``targets`` that has it, warning that ``old`` moved; AttributeError if none has it."""
    for target in targets:
        module = importlib.import_module(target)
        if hasattr(module, name):
            warnings.warn(f"{old} moved: import {name} from {target}", DeprecationWarning, stacklevel=3)
            return getattr(module, name)
    raise AttributeError(f"module {old!r} (moved to {', '.join(targets)}) has no attribute {name!r}")


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that finds each name of ``moved`` in its new module, with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        return _moved(f"{module}.{name}", name, (moved[name],))

    return __getattr__


class _MovedModule(types.ModuleType):
    """Stands in for a module that moved: each name is looked up in its new homes."""

    def __getattr__(self, name: str) -> Any:
        return _moved(self.__name__, name, MOVED_MODULES[self.__name__])


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED_MODULES else None

    def create_module(self, spec):
        return _MovedModule(spec.name)

    def exec_module(self, module) -> None:
        pass


def install_moved_modules() -> None:
    """Make ``MOVED_MODULES`` importable (``import dalle`` does this)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())  # before any finder that could still see an old file
