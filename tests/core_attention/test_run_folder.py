"""The run folder and `--ckpt_path` through the project's LightningCLI: no checkpoint is lost, stale or silently
ignored, and a bad checkpoint file gets the project's clear refusal."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from core_attention.examples.seq2seq import ReverseDigitsDataModule, Seq2SeqModule
from core_attention.io import load_checkpoint
from core_attention.training import TrainingCurves, cli_main

REPO = Path(__file__).resolve().parents[2]


def seq2seq(subcommand: str, root: Path, *extra: str, steps: int = 2):
    return cli_main(
        Seq2SeqModule,
        ReverseDigitsDataModule,
        [
            subcommand,
            "--config",
            str(REPO / "configs/seq2seq/reverse.yaml"),
            f"--trainer.default_root_dir={root}",
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            "--model.dim=16",
            "--model.num_layers=1",
            "--data.num_train=64",
            "--data.batch_size=8",
            "--checkpoint.monitor=null",
            *extra,
        ],
    )


def global_step(path: Path) -> int:
    return load_checkpoint(path)["global_step"]


def test_a_second_fit_into_a_folder_with_checkpoints_refuses_and_a_resume_updates_last(tmp_path):
    seq2seq("fit", tmp_path)
    with pytest.raises(
        FileExistsError, match=r"already holds checkpoints of another run \(.*last.ckpt.*--ckpt_path last"
    ):
        seq2seq("fit", tmp_path, steps=4)
    seq2seq("fit", tmp_path, "--ckpt_path", "last", steps=4)
    assert global_step(tmp_path / "checkpoints" / "last.ckpt") == 4
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))


def test_ckpt_path_last_in_a_folder_without_checkpoints_refuses_unless_asked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--ckpt_path last: no checkpoint in .*checkpoints.*last-or-new"):
        seq2seq("fit", tmp_path, "--ckpt_path", "last")
    seq2seq("fit", tmp_path, "--ckpt_path", "last-or-new")  # nothing to resume: a new run
    seq2seq("fit", tmp_path, "--ckpt_path", "last-or-new", steps=4)  # resumes it
    assert global_step(tmp_path / "checkpoints" / "last.ckpt") == 4


def test_model_options_that_differ_from_the_checkpoint_are_refused(tmp_path):
    seq2seq("fit", tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"--model.num_layers 2 \(checkpoint: 1\).*leave these out"):
        seq2seq("validate", tmp_path, "--model.num_layers=2", "--ckpt_path", str(last))
    seq2seq("validate", tmp_path, "--ckpt_path", str(last))  # the same options: accepted


def test_nested_vit_architecture_option_with_a_checkpoint_is_refused(tmp_path):
    from vit.__main__ import main

    common = [
        "--config",
        str(REPO / "configs/vit/digits.yaml"),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--trainer.logger=false",
        "--model.arch.embed_dim=32",
        "--model.arch.depth=1",
        "--data.init_args.batch_size=8",
    ]
    main(["fit", *common])
    with pytest.raises(ValueError, match=r"--model.arch.depth 2 \(checkpoint: 1\)"):
        main(["test", *common[:-2], "--model.arch.depth=2", "--ckpt_path", "last"])


@pytest.mark.parametrize("kind", ["code", "truncated", "text"])
def test_a_bad_ckpt_path_gets_the_project_refusal(tmp_path, kind):
    bad = tmp_path / "bad.ckpt"
    if kind == "code":
        marker = tmp_path / "pwned"

        class RunsCode:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        bad.write_bytes(pickle.dumps({"hyper_parameters": {}, "payload": RunsCode()}))
    elif kind == "truncated":
        torch.save({"hyper_parameters": {"dim": 16}, "w": torch.zeros(1000)}, bad)
        bad.write_bytes(bad.read_bytes()[:500])
    else:
        bad.write_text("not a checkpoint")
    with pytest.raises(
        ValueError, match=r"(refused to load|is not a readable checkpoint).*bad.ckpt|bad.ckpt.*(refused|not a readable)"
    ):
        seq2seq("validate", tmp_path, "--ckpt_path", str(bad))
    if kind == "code":
        assert not (tmp_path / "pwned").exists()


def test_stale_temp_files_are_removed_and_checkpoints_follow_the_umask(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"x" * 100)  # what a write killed mid-way leaves
    old = os.umask(0o022)
    try:
        seq2seq("fit", tmp_path)
    finally:
        os.umask(old)
    assert not stale.exists()
    assert stat.S_IMODE((folder / "last.ckpt").stat().st_mode) == 0o644


def test_checkpoint_dirpath_can_be_set(tmp_path):
    seq2seq("fit", tmp_path / "run", "--checkpoint.dirpath", str(tmp_path / "elsewhere"))
    assert global_step(tmp_path / "elsewhere" / "last.ckpt") == 2
    seq2seq(
        "fit", tmp_path / "run", "--checkpoint.dirpath", str(tmp_path / "elsewhere"), "--ckpt_path", "last", steps=3
    )
    assert global_step(tmp_path / "elsewhere" / "last.ckpt") == 3


def test_training_curves_keep_their_history_across_a_resume(tmp_path):
    seq2seq("fit", tmp_path, steps=3)
    cli = seq2seq("fit", tmp_path, "--ckpt_path", "last", steps=6)
    (curves,) = [c for c in cli.trainer.callbacks if isinstance(c, TrainingCurves)]
    steps = [s for s, _ in curves.history["train/loss"]]
    assert steps[0] <= 1 and steps[-1] >= 5, steps


def test_predict_checks_its_output_file_before_predicting(tmp_path, capsys):
    from PIL import Image

    from vit.__main__ import main

    common = [
        "--config",
        str(REPO / "configs/vit/digits.yaml"),
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--model.arch.embed_dim=32",
        "--model.arch.depth=1",
    ]
    main(["fit", *common, "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--data.init_args.batch_size=8"])
    Image.new("L", (16, 16)).save(tmp_path / "digit.png")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PermissionError, match=r"cannot write the predictions file .*a_file/preds.csv"):
        main(
            [
                "predict",
                str(tmp_path / "digit.png"),
                *common,
                "--ckpt_path",
                "last",
                "--model.predict_output",
                str(tmp_path / "a_file" / "preds.csv"),
            ]
        )
    assert "digit.png:" not in capsys.readouterr().out  # refused before the work, not after


def test_fit_vae_checks_its_export_folder_before_training(tmp_path):
    from dalle.vae.module import fit_vae_main

    (tmp_path / "a_file").write_text("")
    with pytest.raises(PermissionError, match=r"cannot write the export folder .*a_file/dvae"):
        fit_vae_main(
            [
                "--config",
                str(REPO / "configs/dalle/shapes_vae.yaml"),
                f"--trainer.default_root_dir={tmp_path / 'run'}",
                "--trainer.max_steps=1",
                "--model.arch.image_size=16",
                "--model.arch.hidden_dim=8",
                "--model.arch.num_tokens=32",
                "--data.init_args.image_size=16",
                f"--model.export_dir={tmp_path / 'a_file' / 'dvae'}",
            ]
        )
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # refused before any training
