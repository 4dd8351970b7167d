"""A tiny random DALL·E Mini-style folder (our layout) for the tests of `dalle.pretrained` and the app; nothing is
downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dalle.transformer.bart import DalleBart, DalleBartConfig
from dalle.vae.vqgan import VQGAN, VQGANConfig

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def write_tiny_pretrained(path: Path) -> Path:
    """Our folder layout: model.safetensors + config.json, vocab.json + merges.txt, vqgan/. A 32 px VQGAN with a
    16 x 16 grid keeps the real 256-token image sequence."""
    chars = [chr(c) for c in range(33, 127)] + ["Ġ"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars + ["Ġf", "ox", "Ġfox"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\nĠ f\no x\nĠf ox\n")
    torch.manual_seed(0)
    DalleBart(
        DalleBartConfig(
            text_vocab_size=len(vocab),
            image_vocab_size=64,
            codebook_size=64,
            dim=32,
            encoder_depth=1,
            decoder_depth=1,
            num_heads=2,
            glu_dim=48,
        )
    ).save_pretrained(path)
    VQGAN(
        VQGANConfig(
            ch=16, ch_mult=(1, 2), num_res_blocks=1, resolution=32, z_channels=8, embed_dim=8, n_embed=64, num_groups=4
        )
    ).save_pretrained(path / "vqgan")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """min-dalle-sized comparisons and tiny models run faster and more repeatably on one thread; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
