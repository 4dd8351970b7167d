"""Files the package reads and writes, with torch and safetensors only (no Lightning): weights as safetensors with
their config in the header, strictly checked state-dict loading, checkpoints read without unpickling code, and a
check that an output can be written before the work that produces it starts."""

from __future__ import annotations

import json
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn


def check_writable(path: str | Path, *, folder: bool = False, what: str = "output") -> Path:
    """Raise `PermissionError` now, naming `path`, if it cannot be written (a file, or a `folder` to fill).

    Creates the missing parent folders and writes (then removes) a probe file where the output will go, so a long
    run cannot finish its work and then lose it at the last step.
    """
    path = Path(path)
    where = path if folder else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=where, prefix=".write-check-"):
            pass
        if not folder and path.is_dir():
            raise IsADirectoryError(f"{path} is a folder")
    except OSError as err:
        raise PermissionError(
            f"cannot write the {what} {path} ({err.strerror or err}): choose a writable location before the work starts"
        ) from None
    return path


def save_safetensors(
    path: str | Path, state_dict: Mapping[str, Tensor], config: Mapping[str, Any] | None = None
) -> Path:
    """Save tensors (shared storage made contiguous copies) with `config` as JSON in the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"config": json.dumps(dict(config or {}))})
    return path


def load_safetensors(path: str | Path, device: str = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load (state_dict, config) from a file written by `save_safetensors` (config {} if the file has none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state_dict = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a valid safetensors file (corrupt, truncated or another format?): {err}"
        ) from None
    return state_dict, json.loads(metadata.get("config", "{}"))


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "checkpoint", prefix: str = ""
) -> None:
    """`load_state_dict(strict=True)` whose error lists missing/unexpected keys and shape mismatches by name.

    With a `prefix` only the entries under it load, with it removed: `prefix="model."` reads a LightningModule's
    `self.model` out of its checkpoint's state_dict.
    """
    if prefix:
        state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: model expects {tuple(own[k].shape)}, {source} has {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        lines = [f"the {source} does not match this model's configuration:"]
        if shapes:
            lines += ["  shape mismatches:"] + [f"    {s}" for s in shapes[:10]]
        if missing:
            lines.append(
                f"  missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
            )
        if unexpected:
            lines.append(
                f"  unexpected keys ({len(unexpected)}): "
                f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}"
            )
        lines.append(
            "Build the model with the config the weights were saved with (see the config stored next to them)."
        )
        raise ValueError("\n".join(lines))
    with torch.no_grad():
        model.load_state_dict(state_dict, strict=True)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning/torch checkpoint with `weights_only=True`: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # Not torch's long advice to retry with weights_only=False: that is exactly what must not happen here.
        reason = str(err).split("WeightsUnpickler error:")[-1].split("\n\n")[0].strip()
        raise ValueError(
            f"refused to load {path}: it is corrupt or another format, or it holds objects other than tensors and "
            "plain containers, and loading those would run arbitrary code. Only load checkpoints written by this "
            "package or converted to safetensors." + (f" ({reason})" if reason else "")
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable checkpoint (truncated or corrupt?): {err}") from None
