"""Every training CLI with `--trainer.devices 2` through Lightning's own launcher, as users start it.

Lightning's DDP launcher starts rank 1 by re-running `sys.argv`, so these run the real command lines in a subprocess
(with a timeout: a rank that hangs fails the test instead of CI). Where training is deterministic, the 2-process
checkpoint must equal a 1-process run with 2x gradient accumulation: unshuffled data (`shuffle: false`), no random
augmentation or dropout, float64 (float32 rounding differs between the two summation orders and Adam magnifies it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300

COMMON = [
    "--seed_everything",
    "0",
    "--trainer.accelerator",
    "cpu",
    "--trainer.max_steps",
    "2",
    "--trainer.max_epochs",
    "-1",
    "--trainer.precision",
    "64-true",
    "--trainer.limit_val_batches",
    "0",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.val_check_interval",
    "null",
    "--trainer.check_val_every_n_epoch",
    "1",
    "--trainer.max_time",
    "null",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(command: list[str], root: Path, *, devices: int, accumulate: int = 1, torchrun: bool = False) -> str:
    """`python -m <command> ... --trainer.devices N` in its own process group (started by `torchrun` when asked);
    returns its output."""
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={devices}", f"--master_port={free_port()}"]
    launcher = launcher if torchrun else []
    args = [
        sys.executable,
        *launcher,
        "-m",
        *command,
        *COMMON,
        "--trainer.default_root_dir",
        str(root),
        "--trainer.devices",
        str(devices),
        "--trainer.accumulate_grad_batches",
        str(accumulate),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = root.parent / f"{root.name}.log"  # a file, not a pipe: a stray rank cannot keep the test waiting for EOF
    with open(log, "w") as sink:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            # torchrun starts its workers in sessions of their own: find them by the run folder in their arguments
            subprocess.run(["pkill", "-KILL", "-f", str(root)], check=False)
            proc.wait()
            pytest.fail(f"hung for {TIMEOUT_S} s: {' '.join(args)}\n{log.read_text()[-4000:]}")
    out = log.read_text()
    assert proc.returncode == 0, f"rc {proc.returncode}: {' '.join(args)}\n{out[-4000:]}"
    return out


def trained_checkpoint(root: Path) -> dict:
    ckpt = torch.load(root / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    moments = [s["exp_avg"] for s in ckpt["optimizer_states"][0]["state"].values()]
    assert moments and any(m.abs().sum() > 0 for m in moments), "the optimizer never saw a gradient"
    return ckpt


def assert_same_checkpoints(two: Path, one: Path) -> None:
    a, b = trained_checkpoint(two)["state_dict"], trained_checkpoint(one)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-3, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(a[key], b[key]), key


def assert_ddp_equals_accumulation(command: list[str], tmp_path: Path) -> None:
    out = run_cli(command, tmp_path / "two", devices=2)
    assert "GLOBAL_RANK: 1" in out or "MEMBER: 2/2" in out, out[-2000:]  # rank 1 really joined
    run_cli(command, tmp_path / "one", devices=1, accumulate=2)
    assert_same_checkpoints(tmp_path / "two", tmp_path / "one")


def tiny_dvae(folder: Path) -> Path:
    from dalle.vae.dvae import DiscreteVAE

    torch.manual_seed(0)
    DiscreteVAE(image_size=16, num_tokens=32, downsample=4, hidden_dim=8, codebook_dim=8).save_pretrained(folder)
    return folder


SHAPES_16 = [
    "--data.init_args.image_size",
    "16",
    "--data.init_args.num_train",
    "64",
    "--data.init_args.num_val",
    "8",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.shuffle",
    "false",
]


@pytest.mark.slow
def test_vit_fit_two_processes_equal_accumulation(tmp_path):
    # The recipe keeps EMA weights: with them registered as trainable, DDP failed at the first step.
    command = [
        "vit",
        "fit",
        "--config",
        "configs/vit/digits.yaml",
        "--model.arch.img_size",
        "8",
        "--model.arch.embed_dim",
        "32",
        "--model.arch.depth",
        "2",
        "--model.arch.drop_path_rate",
        "0",
        "--model.mixup_alpha",
        "0",
        "--data.init_args.img_size",
        "8",
        "--data.init_args.batch_size",
        "8",
        "--data.init_args.crop_padding",
        "0",
        "--data.init_args.rotate_degrees",
        "0",
        "--data.init_args.shuffle",
        "false",
    ]
    assert_ddp_equals_accumulation(command, tmp_path)
    ckpt = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"]), "EMA weights are saved"
    run_cli(command, tmp_path / "torchrun", devices=2, torchrun=True)  # the README's other launch path
    assert_same_checkpoints(tmp_path / "torchrun", tmp_path / "two")


@pytest.mark.slow
def test_dalle_fit_two_processes_equal_accumulation(tmp_path):
    from dalle.data.datamodules import ShapesDataModule
    from dalle.transformer.tokenizer import BPETokenizer

    # With a tokenizer given, the model is built (and initialised) before fit, the same way in both set-ups; one
    # trained at setup is built inside fit, where DDP's set-up has drawn other random numbers (rank 0's weights
    # then reach every rank, but they are not the 1-process run's).
    captions = ShapesDataModule(image_size=16, num_train=64).train_captions()
    tokenizer = BPETokenizer.train(captions, 200).save(tmp_path / "tokenizer.json")
    command = [
        "dalle",
        "fit",
        "--config",
        "configs/dalle/shapes.yaml",
        "--model.vae_path",
        str(tiny_dvae(tmp_path / "vae")),
        "--model.tokenizer_path",
        str(tokenizer),
        "--model.tokenizer_vocab_size",
        "200",
        "--model.arch.dim",
        "32",
        "--model.arch.depth",
        "2",
        "--model.caption_dropout",
        "0",
        "--model.sample_images_per_prompt",
        "0",
        "--model.export_dir",
        "null",
        "--data.init_args.batch_size",
        "4",
        *SHAPES_16,
    ]
    assert_ddp_equals_accumulation(command, tmp_path)


@pytest.mark.slow
def test_fit_classifier_two_processes_equal_accumulation(tmp_path):
    command = [
        "dalle",
        "fit-classifier",
        "--config",
        "configs/dalle/attributes.yaml",
        "--model.arch.embed_dim",
        "32",
        "--model.noise_std",
        "0",
        "--model.brightness",
        "0",
        "--model.export_dir",
        "null",
        "--data.image_size",
        "16",
        "--data.num_train",
        "64",
        "--data.num_val",
        "8",
        "--data.num_test",
        "8",
        "--data.batch_size",
        "4",
        "--data.jitter",
        "0",
        "--data.shuffle",
        "false",
    ]
    assert_ddp_equals_accumulation(command, tmp_path)


@pytest.mark.slow
def test_seq2seq_two_processes_equal_accumulation(tmp_path):
    command = [
        "core_attention.examples.seq2seq",
        "fit",
        "--config",
        "configs/seq2seq/reverse.yaml",
        "--model.dim",
        "16",
        "--model.num_layers",
        "1",
        "--model.warmup_steps",
        "1",
        # equal lengths: each micro-batch averages its loss over the same number of tokens in both set-ups
        "--data.min_len",
        "6",
        "--data.max_len",
        "6",
        "--data.num_train",
        "64",
        "--data.batch_size",
        "8",
        "--data.shuffle",
        "false",
    ]
    assert_ddp_equals_accumulation(command, tmp_path)


@pytest.mark.slow
def test_fit_vae_two_processes(tmp_path):
    # Not compared with accumulation: each process draws its own gumbel noise, so the two set-ups relax the codes
    # differently by design. DDP keeps the ranks' weights identical; this checks the launch, the run and the export.
    command = [
        "dalle",
        "fit-vae",
        "--config",
        "configs/dalle/shapes_vae.yaml",
        "--model.arch.image_size",
        "16",
        "--model.arch.num_tokens",
        "32",
        "--model.arch.hidden_dim",
        "8",
        "--model.arch.codebook_dim",
        "8",
        "--model.num_recon_images",
        "0",
        "--model.export_dir",
        str(tmp_path / "dvae"),
        "--data.init_args.batch_size",
        "4",
        *SHAPES_16,
    ]
    run_cli(command, tmp_path / "two", devices=2)
    trained_checkpoint(tmp_path / "two")
    assert (tmp_path / "dvae" / "model.safetensors").is_file()


@pytest.mark.slow
def test_fit_reranker_two_processes(tmp_path):
    # Not compared with accumulation: the contrastive loss takes its negatives from the process's own batch, and
    # DDP's batches interleave the samples that accumulation sees in two consecutive micro-batches.
    command = [
        "dalle",
        "fit-reranker",
        "--config",
        "configs/dalle/reranker.yaml",
        "--model.arch.text_vocab_size",
        "200",
        "--model.arch.text_dim",
        "32",
        "--model.arch.text_depth",
        "1",
        "--model.arch.image_arch.img_size",
        "16",
        "--model.arch.image_arch.patch_size",
        "8",
        "--model.arch.image_arch.embed_dim",
        "32",
        "--model.arch.image_arch.depth",
        "1",
        "--model.arch.embed_dim",
        "32",
        "--model.tokenizer_captions",
        "64",
        "--model.export_dir",
        str(tmp_path / "export"),
        "--data.init_args.batch_size",
        "4",
        *SHAPES_16,
    ]
    run_cli(command, tmp_path / "two", devices=2)
    trained_checkpoint(tmp_path / "two")
    assert (tmp_path / "export").is_dir()
