"""Hyper-parameters of checkpoints written by older releases, in today's names (for `--ckpt_path` and loaders).

Every LightningModule takes its model's architecture as one `arch` argument (a dataclass config); release 0.1's
DALL·E and dVAE modules took it as flat arguments. A module that changed names defines
`upgrade_hparams(hparams) -> hparams` (a classmethod); `VitDalleCLI` applies it to a `--ckpt_path` checkpoint's
hyper-parameters before reading them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


def nest_arch(
    hparams: Mapping[str, Any], arch_fields: Iterable[str], renamed: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """`hparams` with the flat `arch_fields` moved under `arch` (unless it already has one) and old names renamed.

    `arch_fields` are a config dataclass's field names (or a dataclass). Already-upgraded hparams come back equal.
    """
    if dataclasses.is_dataclass(arch_fields):
        arch_fields = [f.name for f in dataclasses.fields(arch_fields)]
    out = dict(hparams)
    for old, new in (renamed or {}).items():
        value = out.pop(old, None)
        if value is not None:
            out[new] = value
    if "arch" not in out:
        flat = {name: out.pop(name) for name in arch_fields if name in out}
        if flat:
            out["arch"] = flat
    return out


def upgrade_hparams(module_class: type, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """`module_class.upgrade_hparams(hparams)` when the class defines it, else `hparams` unchanged."""
    upgrade = getattr(module_class, "upgrade_hparams", None)
    return dict(upgrade(hparams) if upgrade is not None else hparams)


def upgrade_lambda_lr_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Resume a checkpoint of the hand-written warm-up + cosine (a ``LambdaLR``, AdamW groups [decay, no decay]) with
    ``adamw_warmup_cosine`` (timm: groups [no decay, decay]): the saved optimizer groups are swapped to match, and
    the scheduler's state is dropped (timm's recomputes its learning rate from the step count). In place."""
    schedulers = checkpoint.get("lr_schedulers") or []
    if not any("lr_lambdas" in state for state in schedulers):
        return
    checkpoint["lr_schedulers"] = [{} if "lr_lambdas" in state else state for state in schedulers]
    for state in checkpoint.get("optimizer_states") or []:
        state["param_groups"] = state["param_groups"][::-1]
