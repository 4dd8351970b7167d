"""Readers for foreign weight files, with no code unpickled: flax msgpack (`msgpack` + numpy, no jax) and torch
state dicts (`torch.load(weights_only=True)`), each tensor cast to the target dtype as soon as it is read.

flax's `flax_model.msgpack` (`flax.serialization.to_bytes`) is a msgpack map of maps whose leaves are msgpack
extension objects holding ``(shape, dtype name, bytes)`` (ext type 1 for arrays, 3 for numpy scalars); arrays over
flax's chunk size are stored as ``{"__msgpack_chunked_array__": True, "shape": {...}, "chunks": {"0": ..., ...}}``.
The file is read as a stream and each array becomes a torch tensor in the target dtype as soon as it is decoded, so
a 10 GB fp32 file loads in bf16 with one array's fp32 copy in flight rather than the whole file's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import torch
from torch import Tensor

__all__ = ["WeightsError", "flatten", "read_flax_msgpack", "read_torch_state_dict"]

_ARRAY_EXT, _SCALAR_EXT = 1, 3
_CHUNKED = "__msgpack_chunked_array__"


class WeightsError(ValueError):
    """A weight file that is damaged, truncated, or does not fit the model it is loaded into."""


_BIN_LENGTH = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin8 / bin16 / bin32 marker -> bytes of the payload length


def _array(data: bytes, dtype: torch.dtype | None, device: torch.device) -> Tensor:
    """One flax array from its ext payload ``packb((shape, dtype name, bytes))``. Only the small header is unpacked;
    the array's bytes are viewed where they lie and copied once, into the result (a 805 MB kernel of Mega is not
    copied three times on the way)."""
    header = msgpack.Unpacker(raw=True)
    header.feed(data[:256])  # marker, shape and dtype name: a few dozen bytes
    try:
        if header.read_array_header() != 3:
            raise ValueError("not a (shape, dtype, bytes) triple")
        shape, name = tuple(header.unpack()), header.unpack().decode()
        start = header.tell()
        width = _BIN_LENGTH[data[start]]
    except (ValueError, KeyError, IndexError, msgpack.OutOfData) as err:
        raise WeightsError(f"a flax array entry is malformed ({err!r})") from None
    size = int.from_bytes(data[start + 1 : start + 1 + width], "big")
    payload = memoryview(data)[start + 1 + width : start + 1 + width + size]
    source = torch.bfloat16 if name == "bfloat16" else torch.from_numpy(np.empty(0, dtype=np.dtype(name))).dtype
    target = dtype if dtype is not None and source.is_floating_point else None
    if not size:
        return torch.empty(shape, dtype=source).to(device, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch flags the read-only view; the copy below owns its memory
        view = torch.frombuffer(payload, dtype=source)
    return view.reshape(shape).to(device, target, copy=True)


def _unchunk(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node.get(_CHUNKED):
        shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
        chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
        return torch.cat([c.reshape(-1) for c in chunks]).reshape(shape)
    return {k: _unchunk(v) for k, v in node.items()}


def read_flax_msgpack(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """The parameter tree of a flax msgpack file as nested dicts of tensors on `device`, floats cast to `dtype`, one
    by one (a GPU load holds one array in host memory at a time)."""
    device = torch.device(device)

    def ext_hook(code: int, data: bytes) -> Any:
        if code in (_ARRAY_EXT, _SCALAR_EXT):
            return _array(data, dtype, device)
        raise WeightsError(f"{path}: msgpack extension type {code} is not a flax array")

    with open(path, "rb") as f:
        # max_buffer_size=0: up to 4 GiB per object, enough for one scan-stacked Mega kernel (805 MB in fp32).
        unpacker = msgpack.Unpacker(f, ext_hook=ext_hook, raw=False, max_buffer_size=0, strict_map_key=False)
        try:
            tree = unpacker.unpack()
        except msgpack.OutOfData:
            raise WeightsError(f"{path} ends early: the file is truncated (download it again)") from None
        except (msgpack.UnpackException, ValueError) as err:
            if isinstance(err, WeightsError):
                raise
            raise WeightsError(f"{path} is not a flax msgpack file ({err})") from None
    if not isinstance(tree, dict):
        raise WeightsError(f"{path} holds a msgpack {type(tree).__name__}, not a flax parameter tree")
    return _unchunk(tree)


def flatten(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """("a/b/c", leaf) pairs of a nested dict, removed from it as they go: a caller that converts each leaf then
    holds the converted copy instead of both."""
    for key in list(tree):
        value = tree.pop(key)
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from flatten(value, path)
        else:
            yield path, value


def read_torch_state_dict(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """A torch state dict (e.g. min-dalle's .pt files), memory-mapped rather than read whole, moved to `device` and
    floats cast to `dtype` one tensor at a time."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # damaged files raise RuntimeError, UnpicklingError or zipfile errors, depending on where
        raise WeightsError(
            f"cannot read {path}: {type(err).__name__}: {err} (the file is damaged or truncated: download it again)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a state dict of tensors")
    return {k: v.to(device, dtype if dtype is not None and v.is_floating_point() else None) for k, v in state.items()}
