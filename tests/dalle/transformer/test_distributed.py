"""DDP through `ddp_spawn` (the strategy Lightning uses in notebooks): the DALL·E tokenizer trained at setup.

The command-line launch of every training CLI, and 2 processes == 1 process with 2x accumulation, are in
test_cli_ddp.py."""

import pytest


def _dalle_setup(tmp_path):
    """A tiny random dVAE and factories for a module that trains its tokenizer at setup, and its data."""
    import torch

    from dalle.data.datamodules import ShapesDataModule
    from dalle.transformer.model import DALLEConfig
    from dalle.transformer.module import DALLEModule
    from dalle.vae.dvae import DiscreteVAE

    torch.manual_seed(0)
    DiscreteVAE(image_size=16, num_tokens=32, downsample=4, hidden_dim=8, codebook_dim=8).save_pretrained(
        tmp_path / "vae"
    )

    def make_data():
        return ShapesDataModule(image_size=16, num_train=64, num_val=8, num_test=8, num_heldout=8, batch_size=8)

    def make_module():
        # caption_dropout=0: the two set-ups draw random numbers in different processes
        return DALLEModule(
            vae_path=str(tmp_path / "vae"),
            tokenizer_path=None,
            tokenizer_vocab_size=200,
            arch=DALLEConfig(text_seq_len=12, dim=32, depth=2, num_heads=4, attn_types=("row", "full")),
            warmup_steps=1,
            lr=3e-3,
            caption_dropout=0.0,
            sample_images_per_prompt=0,
        )

    return make_module, make_data


@pytest.mark.slow
def test_dalle_ddp_trains_the_tokenizer_on_rank_zero_at_setup(tmp_path):
    from distributed import train_weights

    from dalle.pipeline import load_pipeline
    from dalle.transformer.tokenizer import BPETokenizer

    make_module, make_data = _dalle_setup(tmp_path)
    # rank 0 trains and saves the tokenizer, every rank builds the model from it; RecordRanks checks the ranks agree
    with pytest.warns(UserWarning, match="trained weights dropped"):  # ddp_spawn: the model lived in the workers only
        train_weights(make_module, make_data, devices=2, accumulate=1, max_steps=2, root=str(tmp_path / "ddp"))
    model, tokenizer, _ = load_pipeline(tmp_path / "ddp" / "dalle")
    assert BPETokenizer.load(tmp_path / "ddp" / "tokenizer.json").tokenizer.to_str() == tokenizer.tokenizer.to_str()
    assert model.config.text_vocab_size == tokenizer.vocab_size
