"""The one LightningCLI every model trains with: checkpoints (last + best), non-finite loss guard, atomic writes,
and the run-folder rules that keep checkpoints from being lost or silently ignored.

`sys.argv` is never touched: Lightning's DDP launcher starts the other processes by re-running `sys.argv`, so it
must stay the command line the user typed (`python -m dalle fit-vae --trainer.devices 2 ...`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities import rank_zero_info

from ..io import check_writable, load_checkpoint
from .callbacks import FiniteLossGuard, TrainingCurves
from .checkpoint_io import AtomicCheckpointIO, remove_stale_temp_files
from .hparams import upgrade_hparams

# `--ckpt_path last-or-new`: resume from the run folder's last checkpoint when there is one, else start a new run
# (for a pre-emptible job that re-runs one command). A plain `--ckpt_path last` refuses to start from scratch.
LAST_OR_NEW = "last-or-new"


def checkpoint_dir(default_root_dir: str | None) -> str:
    # Fixed per run folder (not per logger version), so a restarted run finds `--ckpt_path last`.
    return os.path.join(default_root_dir or os.getcwd(), "checkpoints")


def last_checkpoint(dirpath: str | Path) -> Path | None:
    """The newest `last*.ckpt` in `dirpath` (Lightning's own choice for `ckpt_path="last"`), or None."""
    candidates = sorted(Path(dirpath).glob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def _flat(namespace: Namespace | None) -> dict[str, Any]:
    return dict(namespace.items(branches=False)) if namespace is not None else {}


class VitDalleCLI(LightningCLI):
    """LightningCLI with a configurable `checkpoint:` section (ModelCheckpoint, `save_last=True` by default) writing
    to `<trainer.default_root_dir>/checkpoints` unless `--checkpoint.dirpath` says otherwise.

    With `--ckpt_path` the checkpoint's model arguments are used, as in LightningCLI; an option given here that
    differs from them stops the run instead of being ignored, except the names in the LightningModule's
    `resume_options` (a class attribute), which take the value given here.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "{epoch}-{step}"})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # LightningCLI warns when `args` and sys.argv both hold arguments; here `args` is always the part of sys.argv
        # after the command's own name, kept whole for the DDP launcher.
        self.config = parser.parse_object(args) if isinstance(args, (dict, Namespace)) else parser.parse_args(args)

    def _run_config(self) -> Namespace:
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def _parse_ckpt_path(self) -> None:
        """Resolve `--ckpt_path last|last-or-new` to a file, read it without unpickling code, and take the model
        arguments it was trained with (refusing options that would silently lose to them)."""
        cfg = self._run_config()
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = checkpoint_dir(cfg.trainer.default_root_dir)
        if not self.config.get("subcommand"):
            return
        ckpt_path = cfg.get("ckpt_path")
        if ckpt_path in ("last", LAST_OR_NEW):
            found = last_checkpoint(cfg.checkpoint.dirpath)
            if found is None and ckpt_path == "last":
                raise FileNotFoundError(
                    f"--ckpt_path last: no checkpoint in {cfg.checkpoint.dirpath} to resume from. Check "
                    f"--trainer.default_root_dir (or --checkpoint.dirpath); to start a new run, leave out --ckpt_path, "
                    f"or pass --ckpt_path {LAST_OR_NEW} to resume when there is a checkpoint and start afresh when not."
                )
            cfg.ckpt_path = ckpt_path = str(found) if found else None
        if not ckpt_path or not Path(ckpt_path).is_file():
            return  # Lightning's other special values ("best", "hpc"), or a missing file Lightning reports itself
        hparams = dict(load_checkpoint(ckpt_path).get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        hparams = upgrade_hparams(self._model_class, hparams)  # an older release's names
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        given = cfg.get("model")
        given = given.clone() if given is not None else Namespace()
        yours = _flat(given)
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        cfg = self._run_config()
        keep = set(getattr(self._model_class, "resume_options", ()))
        theirs = _flat(cfg.get("model"))
        differ = [k for k in yours if k in theirs and yours[k] != theirs[k] and k.split(".")[0] not in keep]
        if differ:
            listing = "; ".join(f"--model.{k} {yours[k]!r} (checkpoint: {theirs[k]!r})" for k in differ)
            raise ValueError(
                f"--ckpt_path {ckpt_path} was trained with other model options than this command gives: {listing}. "
                "Resuming or evaluating a checkpoint uses its own options: leave these out (or set them to the "
                "checkpoint's values), or start a new run without --ckpt_path."
            )
        for name in (n for n in keep if n in given):
            cfg.model[name] = given[name]

    def before_fit(self) -> None:
        """A new run must not write into a folder that holds another run's checkpoints: its `last.ckpt` would stay
        the old model (Lightning writes `last-v1.ckpt` beside it) and nothing would say so."""
        cfg = self._run_config()
        dirpath = Path(cfg.checkpoint.dirpath)
        check_writable(dirpath, folder=True, what="checkpoint folder")  # before training, not at its first save
        export_dir = getattr(self.model, "hparams", {}).get("export_dir")
        if export_dir:
            check_writable(export_dir, folder=True, what="export folder (--model.export_dir)")
        removed = remove_stale_temp_files(dirpath)
        if removed:
            rank_zero_info(f"removed {len(removed)} unfinished checkpoint write(s) left in {dirpath} by a killed run")
        ckpt_path = cfg.get("ckpt_path")
        resuming_here = ckpt_path is not None and Path(ckpt_path).resolve().parent == dirpath.resolve()
        existing = sorted(p.name for p in dirpath.glob("*.ckpt")) if dirpath.is_dir() else []
        if existing and not resuming_here:
            raise FileExistsError(
                f"{dirpath} already holds checkpoints of another run ({', '.join(existing[:3])}"
                f"{', ...' if len(existing) > 3 else ''}). Resume that run with --ckpt_path last, or train into "
                "another folder (--trainer.default_root_dir or --checkpoint.dirpath), or delete the folder first."
            )


class SaveFitConfig(SaveConfigCallback):
    """Writes the run's config.yaml beside a fit run's logs; validate, test and predict leave folders as they were
    (a predict with logging off would otherwise drop config.yaml into the working folder)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


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

    `prog` names the command in help and errors (e.g. "python -m dalle fit-vae").
    """
    defaults = {
        "callbacks": [FiniteLossGuard(), TrainingCurves()],
        "plugins": [{"class_path": f"{AtomicCheckpointIO.__module__}.{AtomicCheckpointIO.__name__}"}],
    }
    defaults.update(trainer_defaults or {})
    parser_kwargs = {key: value for key, value in (("prog", prog), ("description", description)) if value}
    return VitDalleCLI(
        model_class,
        datamodule_class,
        subclass_mode_data=subclass_mode_data,
        args=args,
        run=run,
        trainer_defaults=defaults,
        save_config_callback=SaveFitConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs=parser_kwargs or None,
    )
