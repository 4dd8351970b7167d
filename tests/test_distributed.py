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

