"""The encoder–decoder Transformer and its Lightning example."""

import pytest
import pytorch_lightning as pl
import torch

from core_attention import Seq2SeqTransformer
from core_attention.examples.seq2seq import BOS, EOS, ReverseDigitsDataModule, Seq2SeqModule, main


def small_model(**kwargs) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(12, 14, dim=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4, **kwargs).eval()


def test_forward_shapes_scaling_and_tied_head():
    model = small_model()
    src, tgt = torch.randint(3, 12, (2, 7)), torch.randint(3, 14, (2, 5))
    assert model(src, tgt).shape == (2, 5, 14)
    assert model.head.weight is model.tgt_embed.weight
    assert small_model(tie_embeddings=False).head.weight is not small_model().tgt_embed.weight


def test_source_padding_does_not_change_logits():
    model = small_model()
    src, tgt = torch.randint(3, 12, (1, 5)), torch.randint(3, 14, (1, 4))
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(src, tgt), model(padded, tgt), atol=1e-5, rtol=1e-5)


def test_greedy_generate_matches_argmax_of_full_forward():
    model = small_model()
    src = torch.randint(3, 12, (3, 6))
    out = model.generate(src, 6, BOS, EOS)
    for t in range(1, out.shape[1]):
        live = (out[:, :t] != EOS).all(1)  # rows still decoding at step t
        expected = model(src, out[:, :t])[:, -1].argmax(-1)
        assert torch.equal(out[live, t], expected[live])


def test_beam_one_equals_greedy_and_beams_score_at_least_as_well():
    model = small_model()
    src = torch.randint(3, 12, (4, 6))
    greedy = model.generate(src, 8, BOS, EOS)
    assert torch.equal(model.generate(src, 8, BOS, EOS, beam_size=1), greedy)

    def logprob(tgt):
        logp = model(src, tgt[:, :-1]).log_softmax(-1).gather(-1, tgt[:, 1:, None]).squeeze(-1)
        return (logp * (tgt[:, 1:] != 0)).sum(-1)

    beam = model.generate(src, 8, BOS, EOS, beam_size=4, length_penalty=0.0)
    width = max(beam.shape[1], greedy.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    assert (logprob(pad(beam)) >= logprob(pad(greedy)) - 1e-4).all()


def test_generate_rejects_bad_arguments():
    model = small_model(max_len=16)
    with pytest.raises(ValueError, match="exceeds the model's max_len 16"):
        model.generate(torch.ones(1, 3, dtype=torch.long), 20, BOS, EOS)
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        model.generate(torch.ones(1, 3, dtype=torch.long), 4, BOS, EOS, beam_size=0)


@pytest.mark.slow
def test_example_learns_to_reverse_held_out_strings(tmp_path):
    pl.seed_everything(0)
    data = ReverseDigitsDataModule(max_len=6, num_train=10000, num_test=256, batch_size=64)
    module = Seq2SeqModule(dim=64, num_layers=2, num_heads=4, warmup_steps=100)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1000,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, data)
    (result,) = trainer.test(module, data, verbose=False)
    assert result["test/exact_match"] == 1.0
    held_out = data.test.strings[0]
    assert held_out not in set(data.train.strings)
    assert module.reverse(held_out) == held_out[::-1]
    module.hparams.beam_size = 3
    assert module.reverse("9081726354"[:6]) == "9081726354"[:6][::-1]


def test_cli_fit_writes_last_checkpoint(tmp_path):
    main(
        [
            "fit",
            "--config",
            "configs/seq2seq/reverse.yaml",
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            "--data.num_train=64",
            "--data.num_val=8",
            "--data.num_test=8",
        ]
    )
    assert list(tmp_path.rglob("last.ckpt"))
