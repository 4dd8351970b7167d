"""Shared training conventions: crash + resume, atomic checkpoints, non-finite loss guard, safe loading."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from core_attention import TransformerBlock
from core_attention.examples.seq2seq import ReverseDigitsDataModule, Seq2SeqModule
from core_attention.io import load_checkpoint, load_safetensors, load_state_dict_checked, save_safetensors
from core_attention.training import (
    AtomicCheckpointIO,
    CompileBlocks,
    FiniteLossGuard,
    TrainingCurves,
    TransformerFSDPStrategy,
    cli_main,
)

REPO = Path(__file__).resolve().parents[2]


class RunsCode:
    """A pickle payload that would create a file if unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": RunsCode(marker)}, f)
    return path


def test_every_loader_refuses_a_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    bad = write_malicious(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ValueError, match="refused to load .* would run arbitrary code"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="refused to load"):
        AtomicCheckpointIO().load_checkpoint(bad)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_safetensors(bad)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="refused to load"):
        trainer.fit(
            Seq2SeqModule(dim=16, num_layers=1),
            ReverseDigitsDataModule(num_train=16, num_val=4, num_test=4),
            ckpt_path=bad,
        )
    assert not marker.exists()


def test_safetensors_round_trip_and_checked_loading(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    path = save_safetensors(tmp_path / "w.safetensors", model.state_dict(), {"width": 4})
    state, config = load_safetensors(path)
    assert config == {"width": 4}
    load_state_dict_checked(model, state)
    wrong = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.LayerNorm(5))
    with pytest.raises(ValueError, match=r"0.weight: model expects \(5, 3\), weights file has \(4, 3\)"):
        load_state_dict_checked(wrong, state, source="weights file")
    with pytest.raises(ValueError, match=r"missing keys \(1\): 2.weight"):
        load_state_dict_checked(
            torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1, bias=False)), state
        )
    (tmp_path / "trunc.safetensors").write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_safetensors(tmp_path / "trunc.safetensors")


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


class NaNAfterTwoSteps(Seq2SeqModule):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= 2 else loss


def test_non_finite_loss_stops_before_the_weights_change(tmp_path):
    module = NaNAfterTwoSteps(dim=16, num_layers=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=10,
        logger=False,
        enable_checkpointing=False,
        callbacks=[FiniteLossGuard()],
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    snapshot = {}

    class Snapshot(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            snapshot.update({k: v.clone() for k, v in pl_module.state_dict().items()})

    trainer.callbacks.append(Snapshot())
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss \(nan\) at global step 2, epoch 0, batch 2"
    ):
        trainer.fit(module, ReverseDigitsDataModule(num_train=640, num_val=4, num_test=4, batch_size=8))
    for k, v in module.state_dict().items():
        assert torch.equal(v, snapshot[k]) and torch.isfinite(v).all(), k


def test_training_curves_plot_every_logged_metric(tmp_path):
    curves = TrainingCurves()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=12,
        val_check_interval=6,
        limit_val_batches=1,
        log_every_n_steps=2,
        callbacks=[curves],
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(
        Seq2SeqModule(dim=16, num_layers=1, warmup_steps=1),
        ReverseDigitsDataModule(num_train=256, num_val=8, num_test=4, batch_size=8),
    )
    png = Path(trainer.log_dir) / "curves.png"
    assert png.is_file() and png.stat().st_size > 5000
    from PIL import Image

    assert Image.open(png).size[0] >= 400
    train = [n for n in curves.history if n.startswith("train")]
    assert train and any(n.startswith("val") for n in curves.history)
    steps = [s for s, _ in curves.history[train[0]]]
    assert steps == sorted(steps) and len(steps) >= 5  # every log_every_n_steps, once per step


def test_cli_runs_get_the_default_callbacks():
    cli = cli_main(
        Seq2SeqModule, ReverseDigitsDataModule, ["--config", str(REPO / "configs/seq2seq/reverse.yaml")], run=False
    )
    kinds = {type(c) for c in cli.trainer.callbacks}
    assert {FiniteLossGuard, TrainingCurves} <= kinds


def fit_command(root: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "core_attention.examples.seq2seq",
        "fit",
        "--config",
        str(REPO / "configs/seq2seq/reverse.yaml"),
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={max_steps}",
        "--trainer.enable_progress_bar=false",
        "--trainer.val_check_interval=50",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=10",
        "--model.dim=16",
        "--model.num_layers=1",
        "--data.num_train=4000",
        "--data.batch_size=8",
        "--checkpoint.every_n_train_steps=10",
        "--checkpoint.save_top_k=-1",
        "--checkpoint.monitor=null",
        *extra,
    ]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_last(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ckpts = tmp_path / "checkpoints"
    first = subprocess.Popen(fit_command(tmp_path, 400), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
        if len(list(ckpts.glob("epoch=*.ckpt"))) >= 3:
            break
        time.sleep(0.2)
    assert first.poll() is None, f"training ended before it could be killed: {first.stderr.read().decode()[-2000:]}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = load_checkpoint(ckpts / "last.ckpt")["global_step"]
    assert 0 < killed_at < 400

    second = subprocess.run(
        fit_command(tmp_path, 400, "--ckpt_path", "last"), env=env, capture_output=True, text=True, timeout=600
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {ckpts / 'last.ckpt'}" in second.stderr
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 400
    for path in ckpts.iterdir():  # every file on disk is a complete, loadable checkpoint
        assert path.suffix == ".ckpt", f"stray file {path.name}"
        assert "state_dict" in load_checkpoint(path)


def test_fsdp_strategy_from_the_command_line_wraps_and_checkpoints_transformer_blocks():
    cli = cli_main(
        Seq2SeqModule,
        ReverseDigitsDataModule,
        [
            "--config",
            str(REPO / "configs/seq2seq/reverse.yaml"),
            "--trainer.devices=2",
            "--trainer.num_nodes=1",
            "--trainer.strategy=core_attention.training.TransformerFSDPStrategy",
            "--trainer.strategy.activation_checkpointing=true",
            "--trainer.strategy.sharding_strategy=SHARD_GRAD_OP",
            "--trainer.precision=bf16-mixed",
            "--trainer.accumulate_grad_batches=4",
        ],
        run=False,
    )
    strategy = cli.trainer.strategy
    assert isinstance(strategy, TransformerFSDPStrategy) and strategy.num_processes == 2
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {TransformerBlock}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {TransformerBlock}
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP"
    assert cli.trainer.accumulate_grad_batches == 4 and cli.trainer.precision == "bf16-mixed"


def test_compile_blocks_callback_compiles_every_transformer_block(tmp_path):
    module = Seq2SeqModule(dim=16, num_layers=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        callbacks=[CompileBlocks(backend="eager")],
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, ReverseDigitsDataModule(num_train=32, num_val=4, num_test=4, batch_size=8))
    blocks = [m for m in module.modules() if isinstance(m, TransformerBlock)]
    assert len(blocks) == 2 and all(b._compiled_call_impl is not None for b in blocks)
    assert trainer.global_step == 2
