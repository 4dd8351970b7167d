"""The one LightningCLI every model trains with: checkpoints (last + best), non-finite loss guard, atomic writes."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from .callbacks import FiniteLossGuard, TrainingCurves
from .checkpoint_io import AtomicCheckpointIO


def checkpoint_dir(default_root_dir: str | None) -> str:
    # Fixed per run folder (not per logger version), so a restarted run finds `--ckpt_path last`.
    return os.path.join(default_root_dir or os.getcwd(), "checkpoints")


class VitDalleCLI(LightningCLI):
    """LightningCLI with a configurable `checkpoint:` section (ModelCheckpoint, `save_last=True` by default)
    writing to `<trainer.default_root_dir>/checkpoints`."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "{epoch}-{step}"})
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)


def cli_main(
    model_class: type[pl.LightningModule],
    datamodule_class: type[pl.LightningDataModule] | None = None,
    args: list[str] | None = None,
    *,
    subclass_mode_data: bool = False,
    run: bool = True,
    description: str | None = None,
    trainer_defaults: dict[str, Any] | None = None,
    prog: str | None = None,
) -> VitDalleCLI:
    """Run `fit|validate|test|predict` for a model with the project's defaults. `args=None` reads sys.argv.

    `prog` names the command in help and errors (e.g. "python -m dalle fit-vae") when `args` is its whole command line.
    """
    defaults = {
        "callbacks": [FiniteLossGuard(), TrainingCurves()],
        "plugins": [{"class_path": f"{AtomicCheckpointIO.__module__}.{AtomicCheckpointIO.__name__}"}],
    }
    defaults.update(trainer_defaults or {})
    argv = sys.argv
    if prog is not None:
        sys.argv = [prog]  # LightningCLI takes its name from sys.argv[0], and warns when sys.argv has args besides `args`
    try:
        return VitDalleCLI(
            model_class,
            datamodule_class,
            subclass_mode_data=subclass_mode_data,
            args=args,
            run=run,
            trainer_defaults=defaults,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": description} if description else None,
        )
    finally:
        sys.argv = argv
