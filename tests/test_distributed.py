"""1 process == 2 processes: DDP (gloo, ddp_spawn) and single-process gradient accumulation reach the same weights."""

import pytest

from core_attention.examples.seq2seq import ReverseDigitsDataModule, Seq2SeqModule
from distributed import assert_same_training


@pytest.mark.slow
def test_seq2seq_ddp_matches_gradient_accumulation(tmp_path):
    assert_same_training(
        lambda: Seq2SeqModule(dim=16, num_layers=1, warmup_steps=1),
        # equal lengths: each micro-batch averages its loss over the same number of tokens in both set-ups
        lambda: ReverseDigitsDataModule(min_len=6, max_len=6, num_train=256, num_val=4, num_test=4, batch_size=8),
        tmp_path,
    )


@pytest.mark.slow
def test_vit_ddp_matches_gradient_accumulation(tmp_path):
    from vit.data import DigitsDataModule
    from vit.model import ViTConfig
    from vit.module import ViTClassifier

    arch = ViTConfig(img_size=8, patch_size=4, in_chans=1, num_classes=10, global_pool="avg", embed_dim=32, depth=2, num_heads=4)
    assert_same_training(
        lambda: ViTClassifier(arch=arch, warmup_steps=1, warmup_fraction=None),
        # no random augmentation: the two set-ups draw random numbers in different processes
        lambda: DigitsDataModule(img_size=8, batch_size=8, crop_padding=0, rotate_degrees=0, scale_range=(1.0, 1.0),
                                 rand_augment=None, re_prob=0.0),  # fmt: skip
        tmp_path,
    )
