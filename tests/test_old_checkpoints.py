"""Checkpoints written by release 0.1 (the flat `dalle/` package) still load and give the outputs they gave then.

tests/fixtures/*_v0.1.ckpt and reference_outputs.safetensors were made by that release's code (tiny models, one
training step each) and are committed; nothing here may rewrite them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file

from core_attention.io import load_checkpoint
from dalle.pipeline import load_pipeline
from dalle.vae.module import DVAEModule
from vit import load_classifier

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "reference_outputs.safetensors")


def test_dalle_checkpoint_of_release_0_1_loads(reference):
    model, tokenizer, vae = load_pipeline(FIXTURES / "dalle_v0.1.ckpt")
    assert torch.equal(tokenizer.encode_batch(["a red circle"], 8), reference["text"][:1])
    torch.testing.assert_close(model(reference["text"], reference["ids"]).loss[None], reference["dalle_logits_sum"])
    assert torch.equal(vae.get_codebook_indices(reference["images"]), reference["ids"])


def test_dvae_module_checkpoint_of_release_0_1_loads(reference):
    ckpt = load_checkpoint(FIXTURES / "dvae_v0.1.ckpt")
    assert "lr_end" in ckpt["hyper_parameters"] and "arch" not in ckpt["hyper_parameters"]  # release 0.1's names
    module = DVAEModule(**DVAEModule.upgrade_hparams(ckpt["hyper_parameters"]))  # what --ckpt_path does
    assert module.hparams.min_lr == 1e-5 and module.vae.config.num_tokens == 16
    module.load_state_dict(ckpt["state_dict"])
    assert torch.equal(module.vae.get_codebook_indices(reference["images"]), reference["ids"])


def test_vit_checkpoint_of_release_0_1_loads(reference):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing about it is deprecated
        ema, live = load_classifier(FIXTURES / "vit_v0.1.ckpt"), load_classifier(FIXTURES / "vit_v0.1.ckpt", ema=False)
    torch.testing.assert_close(ema.eval()(reference["digits"]), reference["vit_ema_logits"])
    torch.testing.assert_close(live.eval()(reference["digits"]), reference["vit_logits"])


def test_old_module_paths_still_import_with_a_deprecation_warning():
    import importlib

    with pytest.warns(DeprecationWarning, match="dalle.datamodules moved: import ShapesDataModule from dalle.data"):
        cls = importlib.import_module("dalle.datamodules").ShapesDataModule
    from dalle.data.datamodules import ShapesDataModule

    assert cls is ShapesDataModule
    with pytest.warns(DeprecationWarning, match="import load_pipeline from dalle.pipeline"):
        assert importlib.import_module("dalle.module").load_pipeline is load_pipeline


def _resume(module: pl.LightningModule, ckpt: str | Path, root: Path, steps: int) -> pl.Trainer:
    from dalle.data.datamodules import ShapesDataModule

    run = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    data = ShapesDataModule(image_size=16, max_shapes=1, num_train=16, num_val=4, batch_size=4)  # as the fixtures'
    run.fit(module, data, ckpt_path=ckpt)
    return run


@pytest.mark.parametrize("name", ["dvae", "dalle"])
def test_training_resumes_from_a_checkpoint_of_release_0_1(name, tmp_path):
    """Its flat hyper-parameters, and the hand-written LambdaLR schedule's optimizer and scheduler state, carry over to
    today's `arch` and `adamw_warmup_cosine` (what `--ckpt_path` does)."""
    from dalle.transformer.module import DALLEModule
    from dalle.vae.dvae import DiscreteVAE

    path = FIXTURES / f"{name}_v0.1.ckpt"
    ckpt = load_checkpoint(path)
    if name == "dvae":
        module = DVAEModule(**DVAEModule.upgrade_hparams(ckpt["hyper_parameters"]))
    else:
        vae = DiscreteVAE.from_config(ckpt["vae_config"])
        vae.load_state_dict(ckpt["vae_state_dict"])
        hparams = DALLEModule.upgrade_hparams(ckpt["hyper_parameters"])
        vae.save_pretrained(tmp_path / "vae")  # the checkpoint's own dVAE (its vae_path was a temporary folder)
        module = DALLEModule(**{**hparams, "vae_path": str(tmp_path / "vae")})
    saved = ckpt["optimizer_states"][0]
    saved_decay = [g["weight_decay"] for g in saved["param_groups"]]
    run = _resume(module, path, tmp_path, steps=ckpt["global_step"] + 2)
    assert module.global_step == ckpt["global_step"] + 2
    groups = run.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == saved_decay[::-1]  # timm's order: no decay first
    assert all(p.ndim >= 2 for p in groups[1]["params"])  # norms and biases never decay (nor DALL·E's tables)
    assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in saved["param_groups"][::-1]]
    assert all(torch.isfinite(p).all() for p in module.parameters())
