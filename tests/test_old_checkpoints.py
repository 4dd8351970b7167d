"""Checkpoints written by release 0.1 (the flat `dalle/` package) still load and give the outputs they gave then.

tests/fixtures/*_v0.1.ckpt and reference_outputs.safetensors were made by that release's code (tiny models, one
training step each) and are committed; nothing here may rewrite them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
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
    with pytest.warns(DeprecationWarning, match="lr_end=...\\) is now min_lr"):  # its hyperparameters use the old name
        module = DVAEModule(**ckpt["hyper_parameters"])
    assert module.hparams.min_lr == 1e-5
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
