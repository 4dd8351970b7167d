"""Read the tensors of a TorchScript archive (OpenAI's released CLIP `.pt` files) without loading or running it.

An archive is a zip: `<name>/data.pkl` pickles the module tree, `<name>/data/N` hold the storages, `<name>/code/`
the TorchScript. `torch.load(weights_only=True)` refuses archives and `torch.jit.load` would run their code, so
`data.pkl` goes through an unpickler that rebuilds tensors and records module attributes, and refuses anything else.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptModule:
    """Stands in for every `__torch__.*` class of a TorchScript archive: keeps the pickled attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> Tensor:
    return storage.as_strided(size, stride, offset)


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__."):
            return _ScriptModule
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
            return list  # TorchScript's typed lists of ints / floats / bools
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Tensor:
        _, dtype, key, _location, numel = pid  # ("storage", dtype, file name under data/, device, element count)
        raw = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        return torch.frombuffer(raw, dtype=dtype, count=numel) if numel else torch.empty(0, dtype=dtype)


def is_torchscript(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def read_torchscript(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a TorchScript archive as {dotted.attribute.name: tensor}, without loading or running it."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            raise ValueError(f"{path} is a zip file but not a TorchScript archive (no <name>/data.pkl)")
        root = pickles[0].split("/")[0]
        with archive.open(pickles[0]) as f:
            try:
                top = _TensorsOnlyUnpickler(f, archive, root).load()
            except pickle.UnpicklingError as err:
                raise ValueError(
                    f"refused to read {path}: its data.pkl needs {err}, which is neither a tensor nor a module "
                    "attribute. Convert it where you trust the file: open_clip.create_model(name, pretrained=PATH), "
                    "then safetensors.torch.save_file(model.state_dict(), 'open_clip_model.safetensors')"
                ) from None
    tensors: dict[str, Tensor] = {}

    def walk(obj: Any, prefix: str) -> None:
        for name, value in obj.attributes.items():
            if isinstance(value, Tensor):
                tensors[prefix + name] = value.clone()  # own memory, not a view of the zip's bytes
            elif isinstance(value, _ScriptModule):
                walk(value, f"{prefix}{name}.")

    if not isinstance(top, _ScriptModule):
        raise ValueError(f"{path}: the archive's data.pkl does not hold a module")
    walk(top, "")
    return tensors
