"""Small model settings that more than one test trains or builds, and a reader of learning-rate schedules (a helper
module, not a test file)."""

from __future__ import annotations

from types import SimpleNamespace

import pytorch_lightning as pl

from dalle.judges.reranker import RerankerConfig
from dalle.vae.dvae import DVAEConfig
from vit import ViTConfig

# The reduced version of configs/dalle/shapes_vae.yaml: tests/dalle/vae/test_dvae_training.py holds it to a quality
# bar, tests/dalle/judges/test_prompt_adherence.py builds its 16 px pipeline on it.
REDUCED_DVAE = dict(
    arch=DVAEConfig(
        image_size=32,
        num_tokens=512,
        downsample=2,
        hidden_dim=32,
        num_resblocks=1,
        codebook_dim=64,
        loss="mse",
        straight_through=True,
    ),
    lr=3e-3,
    min_lr=1e-5,
    kl_weight=0.01,
    kl_warmup_steps=100,
)
REDUCED_DVAE_STEPS = 400

TINY_RERANKER_IMAGE = ViTConfig(
    img_size=16, patch_size=8, num_classes=0, global_pool="avg", embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0
)


def tiny_reranker_config(**overrides) -> RerankerConfig:
    kwargs = dict(
        text_vocab_size=200,
        text_seq_len=24,
        text_dim=16,
        text_depth=1,
        text_heads=2,
        image_arch=TINY_RERANKER_IMAGE,
        embed_dim=16,
    )
    return RerankerConfig(**{**kwargs, **overrides})


def lr_per_step(module: pl.LightningModule, total: int) -> list[float]:
    """The learning rate of every optimizer step of a ``total``-step run, as the module's scheduler sets it."""
    module._trainer = SimpleNamespace(estimated_stepping_batches=total, global_step=0)  # what the module reads
    optim = module.configure_optimizers()
    scheduler, lrs = optim["lr_scheduler"]["scheduler"], []
    for step in range(total + 1):
        module._trainer.global_step = step
        module.lr_scheduler_step(scheduler, None)
        lrs.append(optim["optimizer"].param_groups[0]["lr"])
    module._trainer = None
    return lrs
