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


def _dalle_setup(tmp_path, *, tokenizer: bool):
    """A tiny random dVAE (and a tokenizer, or None to train one at setup) and factories for the module and data."""
    import torch

    from dalle.datamodules import ShapesDataModule
    from dalle.dvae import DiscreteVAE
    from dalle.module import DALLEModule
    from dalle.tokenizer import BPETokenizer

    torch.manual_seed(0)
    DiscreteVAE(image_size=16, num_tokens=32, downsample=4, hidden_dim=8, codebook_dim=8).save_pretrained(tmp_path / "vae")

    def make_data():
        return ShapesDataModule(image_size=16, num_train=64, num_val=8, num_test=8, num_heldout=8, batch_size=8)

    tokenizer_path = None
    if tokenizer:
        tokenizer_path = str(BPETokenizer.train(make_data().train_captions(), 200).save(tmp_path / "tokenizer.json"))

    def make_module():
        # caption_dropout=0: the two set-ups draw random numbers in different processes
        return DALLEModule(vae_path=str(tmp_path / "vae"), tokenizer_path=tokenizer_path, tokenizer_vocab_size=200,
                           text_seq_len=12, dim=32, depth=2, num_heads=4, attn_types=["row", "full"], warmup_steps=1,
                           lr=3e-3, caption_dropout=0.0, sample_images_per_prompt=0)  # fmt: skip

    return make_module, make_data


@pytest.mark.slow
def test_dalle_ddp_matches_gradient_accumulation(tmp_path):
    # With a tokenizer given, the model is built (and initialised) here, before the workers are spawned, and the same
    # way in both set-ups; trained at setup, it would be built inside each run (see the next test).
    make_module, make_data = _dalle_setup(tmp_path, tokenizer=True)
    assert_same_training(make_module, make_data, tmp_path)
    for run in ("ddp", "one"):
        assert (tmp_path / run / "dalle" / "model.safetensors").is_file()  # exported at the end of fit, by rank 0


@pytest.mark.slow
def test_dalle_ddp_trains_the_tokenizer_on_rank_zero_at_setup(tmp_path):
    from dalle.module import load_pipeline
    from dalle.tokenizer import BPETokenizer
    from distributed import train_weights

    make_module, make_data = _dalle_setup(tmp_path, tokenizer=False)
    # rank 0 trains and saves the tokenizer, every rank builds the model from it; RecordRanks checks the ranks agree
    with pytest.warns(UserWarning, match="trained weights dropped"):  # ddp_spawn: the model lived in the workers only
        train_weights(make_module, make_data, devices=2, accumulate=1, max_steps=2, root=str(tmp_path / "ddp"))
    model, tokenizer, _ = load_pipeline(tmp_path / "ddp" / "dalle")
    assert BPETokenizer.load(tmp_path / "ddp" / "tokenizer.json").tokenizer.to_str() == tokenizer.tokenizer.to_str()
    assert model.config.text_vocab_size == tokenizer.vocab_size
