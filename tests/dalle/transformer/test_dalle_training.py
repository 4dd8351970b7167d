"""DALL·E stage 2 training: tokenizer at setup, self-contained checkpoints, strict loading, samples, resume, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from recipes import lr_per_step

from core_attention.io import load_checkpoint
from dalle.data.datamodules import ShapesDataModule
from dalle.pipeline import generate_images, load_pipeline
from dalle.transformer.model import DALLEConfig
from dalle.transformer.module import DALLEModule, fit_main
from dalle.transformer.tokenizer import BPETokenizer
from dalle.vae.dvae import DiscreteVAE

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "dalle"


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    """A small random dVAE: the images' token ids are still a fixed function of the pixels, so they can be learned."""
    folder = tmp_path_factory.mktemp("dvae")
    torch.manual_seed(0)
    DiscreteVAE(image_size=16, num_tokens=32, downsample=4, hidden_dim=8, codebook_dim=8).save_pretrained(folder)
    return folder


def tiny_module(vae_dir: Path, arch: dict | None = None, **overrides) -> DALLEModule:
    kwargs = dict(
        vae_path=str(vae_dir),
        tokenizer_vocab_size=200,
        arch=DALLEConfig(
            **{**dict(text_seq_len=12, dim=32, depth=2, num_heads=4, attn_types=["row", "full"]), **(arch or {})}
        ),
        warmup_steps=2,
        lr=3e-3,
        sample_prompts=["a red circle", "a blue square"],
        sample_images_per_prompt=2,
    )
    return DALLEModule(**{**kwargs, **overrides})


def test_learning_rate_follows_warmup_cosine(vae_dir, tmp_path) -> None:
    tokenizer = BPETokenizer.train(["a red circle", "a blue square at the top"] * 10, 100).save(tmp_path / "tok.json")
    module = tiny_module(vae_dir, tokenizer_path=str(tokenizer), lr=1e-3, min_lr=1e-5, warmup_lr=1e-5, warmup_steps=4)
    lrs = lr_per_step(module, total=24)
    assert lrs[0] == pytest.approx(1e-5) and lrs[2] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lrs[4] == pytest.approx(1e-3) == max(lrs)
    assert lrs[14] == pytest.approx((1e-3 + 1e-5) / 2) and lrs[24] == pytest.approx(1e-5)


def trainer(root: Path, **overrides) -> pl.Trainer:
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        max_steps=4,
        val_check_interval=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        default_root_dir=str(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(save_last=True)],
    )
    return pl.Trainer(**{**kwargs, **overrides})


def shapes(**overrides) -> ShapesDataModule:
    return ShapesDataModule(**{**dict(image_size=16, num_train=256, num_val=32, batch_size=16), **overrides})


def test_fit_checkpoint_and_generation_from_checkpoint_alone(vae_dir, tmp_path) -> None:
    module, data = tiny_module(vae_dir), shapes()
    run = trainer(tmp_path)
    run.fit(module, data)
    log_dir = Path(run.log_dir)

    # the tokenizer was trained at setup on the captions and saved next to the run
    assert module.tokenizer.vocab_size == module.model.config.text_vocab_size > 30
    assert BPETokenizer.load(log_dir / "tokenizer.json").vocab_size == module.tokenizer.vocab_size
    # a sample grid for the fixed prompts per validation epoch
    assert len(list((log_dir / "samples").glob("*.png"))) == 2

    ckpt_path = run.checkpoint_callback.last_model_path
    ckpt = load_checkpoint(ckpt_path)  # weights_only=True
    assert {"tokenizer_json", "dalle_config", "vae_config", "vae_state_dict"} <= set(ckpt)
    assert ckpt["hyper_parameters"]["arch"]["dim"] == 32
    assert not any(k.startswith("vae.") for k in ckpt["state_dict"])  # the frozen dVAE travels beside the weights

    model, tokenizer, vae = load_pipeline(ckpt_path)
    text = tokenizer.encode_batch(["a red circle"], 12)
    ids = torch.randint(0, 32, (1, 16))
    module.model.eval()
    torch.testing.assert_close(model(text, ids).loss, module.model(text, ids).loss)
    out = generate_images(model, tokenizer, vae, "a red circle", num_images=2, guidance_scale=2.0, top_p=0.9, seed=0)
    assert out.images.shape == (1, 2, 3, 16, 16)

    exported = load_pipeline(log_dir / "dalle")  # the folder written at the end of fit
    torch.testing.assert_close(exported[0](text, ids).loss, module.model(text, ids).loss)

    # a checkpoint whose weights do not match its config is refused, naming the problem
    ckpt["state_dict"]["model.image_head.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="image_head.weight"):
        load_pipeline(tmp_path / "bad.ckpt")

    # resuming restores the checkpoint's tokenizer and continues
    resumed = tiny_module(vae_dir)
    trainer(tmp_path / "resume", max_steps=6).fit(resumed, shapes(), ckpt_path=ckpt_path)
    assert resumed.tokenizer.tokenizer.to_str() == tokenizer.tokenizer.to_str() and resumed.global_step == 6
    # ... also when the resumed run trains another tokenizer at setup: other captions, another vocabulary size
    other = tiny_module(vae_dir, tokenizer_vocab_size=150)
    again = trainer(tmp_path / "other_data", max_steps=6)
    again.fit(other, shapes(max_shapes=2, seed=1), ckpt_path=ckpt_path)
    assert other.tokenizer.tokenizer.to_str() == tokenizer.tokenizer.to_str() and other.global_step == 6
    assert other.model.config.text_vocab_size == tokenizer.vocab_size
    assert BPETokenizer.load(Path(again.log_dir) / "tokenizer.json").tokenizer.to_str() == tokenizer.tokenizer.to_str()


def test_given_tokenizer_and_caption_dropout(vae_dir, tmp_path) -> None:
    tokenizer = BPETokenizer.train(["a red circle", "a blue square at the top"] * 10, 100)
    tokenizer.save(tmp_path / "tok.json")
    module = tiny_module(
        vae_dir, tokenizer_path=str(tmp_path / "tok.json"), caption_dropout=0.5, sample_images_per_prompt=0
    )
    assert module.model is not None and module.model.config.text_vocab_size == tokenizer.vocab_size
    seen = []
    forward = module.model.forward
    module.model.forward = lambda text, image, **kw: (seen.append(text.clone()), forward(text, image, **kw))[1]
    trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, shapes(batch_size=64))
    dropped = torch.cat(seen).eq(0).all(dim=1).float().mean()
    assert 0.2 < dropped < 0.8  # about half the captions replaced by the empty prompt


def test_wrong_image_size_is_a_clear_error(vae_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match="built for 16x16 images; got 32x32"):
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(tiny_module(vae_dir), shapes(image_size=32))


@pytest.mark.parametrize("name", ["shapes", "folder_pairs", "webdataset_multinode"])
def test_configs_parse(name, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fit_main(["--config", str(CONFIGS / f"{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "dalle.data.datamodules" in capsys.readouterr().out


@pytest.mark.slow
def test_training_lowers_the_loss_and_generates_from_the_checkpoint(vae_dir, tmp_path) -> None:
    torch.manual_seed(0)
    module = tiny_module(vae_dir, dict(dim=64, depth=2), lr=3e-3, warmup_steps=10, sample_images_per_prompt=0)
    run = trainer(tmp_path, max_steps=150, val_check_interval=None, check_val_every_n_epoch=1, limit_val_batches=2)
    data = shapes(num_train=150 * 32, num_val=64, batch_size=32)
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    run.callbacks.append(Record())
    run.fit(module, data)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, f"training loss fell only from {first:.3f} to {last:.3f}"
    model, tokenizer, vae = load_pipeline(run.checkpoint_callback.last_model_path)
    out = generate_images(model, tokenizer, vae, ["a small red circle in the top left"], num_images=2, seed=0)
    assert out.images.shape == (1, 2, 3, 16, 16)


def test_resuming_with_another_dvae_is_refused_unless_asked(vae_dir, tmp_path) -> None:
    run = trainer(tmp_path / "first", max_steps=2, limit_val_batches=0)
    run.fit(tiny_module(vae_dir, sample_images_per_prompt=0), shapes())
    ckpt_path = run.checkpoint_callback.last_model_path

    torch.manual_seed(1)  # the same token shape, other weights: a retrained dVAE at the same path, say
    DiscreteVAE(image_size=16, num_tokens=32, downsample=4, hidden_dim=8, codebook_dim=8).save_pretrained(
        tmp_path / "b"
    )
    DiscreteVAE(image_size=16, num_tokens=64, downsample=4, hidden_dim=8, codebook_dim=8).save_pretrained(
        tmp_path / "c"
    )
    with pytest.raises(ValueError, match="another dVAE than model.vae_path=.*--model.replace_vae true"):
        trainer(tmp_path / "b_run", max_steps=3).fit(tiny_module(tmp_path / "b"), shapes(), ckpt_path=ckpt_path)
    with pytest.raises(ValueError, match="32 codes x 4x4 tokens, but model.vae_path=.* makes 64 codes x 4x4"):
        trainer(tmp_path / "c_run", max_steps=3).fit(
            tiny_module(tmp_path / "c", replace_vae=True), shapes(), ckpt_path=ckpt_path
        )
    replaced = tiny_module(tmp_path / "b", replace_vae=True, sample_images_per_prompt=0)
    with pytest.warns(UserWarning, match="instead of the checkpoint's"):
        trainer(tmp_path / "b_ok", max_steps=3, limit_val_batches=0).fit(replaced, shapes(), ckpt_path=ckpt_path)
    assert replaced.global_step == 3
