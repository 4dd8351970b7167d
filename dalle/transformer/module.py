"""LightningModule for DALL·E's text-to-image Transformer (stage 2), the checkpoint format and ``python -m dalle fit``.

The trained dVAE (stage 1) is an input: loaded frozen from a ``save_pretrained`` folder, it turns each batch's
images into token ids on the fly. The BPE tokenizer is loaded from ``tokenizer_path`` or, without one, trained at
``setup`` on the datamodule's ``train_captions`` (on rank 0, then shared with the other ranks). The transformer is
built once both vocabularies are known, so a checkpoint holds everything needed to generate:

    state_dict            ``model.*``: the DALLE weights
    dalle_config          DALLEConfig as a dict
    vae_state_dict        the frozen dVAE's weights    vae_config   DVAEConfig as a dict
    tokenizer_json        the tokenizer's ``tokenizer.json`` text
    hyper_parameters      this module's arguments

``dalle.pipeline.load_pipeline(path)`` reads such a checkpoint (``weights_only=True``, strict key/shape checks) or
the folder that ``fit`` exports at the end (``model.safetensors``, ``tokenizer.json``, ``vae/``).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from tokenizers import Tokenizer
from torch import Tensor

from core_attention.training import adamw_warmup_cosine
from core_attention.training.hparams import nest_arch, upgrade_lambda_lr_checkpoint
from dalle.transformer.model import DALLE, DALLEConfig
from dalle.transformer.tokenizer import BPETokenizer

from ..vae.dvae import DiscreteVAE, DVAEConfig

__all__ = ["DALLEModule", "fit_main"]

DEFAULT_SAMPLE_PROMPTS = (
    "a small red circle in the top left",
    "a large blue square in the center",
    "a small green triangle at the bottom",
    "a large yellow cross on the right",
)


class DALLEModule(pl.LightningModule):
    """Trains :class:`~dalle.transformer.model.DALLE` on image-caption batches
    (``{"image": (B,3,H,W) in [0,1], "caption": [str]}``).

    Args:
        vae_path: the trained dVAE, a ``DiscreteVAE.save_pretrained`` folder (or its ``.safetensors`` file).
        tokenizer_path: a ``tokenizer.json``; None trains a BPE tokenizer on the training captions at setup.
        tokenizer_vocab_size: requested BPE vocabulary (the trained one can be smaller on a small corpus).
        tokenizer_train_limit: train the tokenizer on at most this many captions (None: all).
        arch: the transformer's architecture (see :class:`~dalle.transformer.model.DALLEConfig`): text_seq_len (longer
            captions are truncated; the share is reported at setup), width, depth, heads, attention patterns
            ('full', or the paper's sparse 'row', 'column', 'conv'), loss_img_weight (text : image loss weights).
            Its text_vocab_size, image_vocab_size and image_grid_size are set from the tokenizer and the dVAE.
        caption_dropout: probability of replacing a caption by the empty (all-padding) text while training, so the
            model also learns the unconditional distribution that classifier-free guidance needs.
        lr: peak AdamW learning rate, reached after warmup_steps of linear warm-up from warmup_lr, then a cosine
            down to min_lr, per step (``core_attention.training.adamw_warmup_cosine``).
        min_lr: learning rate at the end of the cosine decay.
        warmup_lr: learning rate at the first step of the warm-up.
        warmup_steps: optimizer steps of linear learning-rate warm-up (if warmup_fraction is None).
        warmup_fraction: warm-up length as a fraction of all training steps (overrides warmup_steps).
        weight_decay: AdamW weight decay of the weight matrices (embeddings, norms and biases get none).
        betas: AdamW betas.
        grad_checkpointing: recompute each block's activations in the backward pass (less memory).
        sample_prompts: prompts drawn every validation epoch into ``<log_dir>/samples/*.png`` (and the logger).
        sample_images_per_prompt: images drawn per sample prompt (0 disables the samples).
        sample_guidance_scale: classifier-free guidance scale of the samples (1 = off).
        sample_temperature: sampling temperature of the samples.
        sample_top_k: keep the k most likely image tokens when sampling (None: no top-k filter).
        sample_top_p: nucleus sampling mass for the samples (None: no nucleus filter).
        sample_seed: random seed of the samples (fixed, so the grids of successive epochs are comparable).
        export_dir: where the trained model, tokenizer and dVAE are saved at the end of fit (default <log_dir>/dalle).
        replace_vae: resume (``--ckpt_path``) with the dVAE at vae_path although it is not the checkpoint's: its
            tokens mean other images, so the image loss starts over. Without it such a resume is refused.
    """

    # May differ from the checkpoint's when resuming with --ckpt_path (VitDalleCLI); the dVAE is checked on load.
    resume_options = ("vae_path", "replace_vae")

    def __init__(
        self,
        vae_path: str,
        tokenizer_path: str | None = None,
        tokenizer_vocab_size: int = 1000,
        tokenizer_train_limit: int | None = 200_000,
        arch: DALLEConfig = DALLEConfig(),  # noqa: B008 (LightningCLI reads the default from the signature)
        caption_dropout: float = 0.1,
        lr: float = 4.5e-4,
        min_lr: float = 1e-5,
        warmup_lr: float = 2.25e-6,
        warmup_steps: int = 200,
        warmup_fraction: float | None = None,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.96),
        grad_checkpointing: bool = False,
        sample_prompts: list[str] | None = None,
        sample_images_per_prompt: int = 4,
        sample_guidance_scale: float = 3.0,
        sample_temperature: float = 1.0,
        sample_top_k: int | None = None,
        sample_top_p: float | None = 0.9,
        sample_seed: int = 0,
        export_dir: str | None = None,
        replace_vae: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        if isinstance(arch, dict):
            arch = DALLEConfig.from_dict(arch)
        self.save_hyperparameters()
        self.hparams["arch"] = arch.to_dict()  # plain dict: checkpoints load with weights_only=True
        self.text_seq_len = arch.text_seq_len
        # The frozen dVAE is a tool of the module, not a submodule: kept out of the parameter tree, FSDP never shards it
        # (nor mixes its frozen weights with trainable ones in a unit) and the optimizer never sees it.
        # Its weights and config are added to every checkpoint (on_save_checkpoint), so checkpoints stay self-contained.
        object.__setattr__(self, "vae", DiscreteVAE.from_pretrained(vae_path).eval().requires_grad_(False))
        self.tokenizer: BPETokenizer | None = None
        self.model: DALLE | None = None
        if tokenizer_path is not None:
            self._build(BPETokenizer.load(tokenizer_path))
        self._val_samples: Tensor | None = None
        self._fit_start: float | None = None

    @classmethod
    def upgrade_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Release 0.1's hyper-parameters (the architecture as flat arguments) in today's names."""
        return nest_arch(hparams, DALLEConfig)

    # ------------------------------------------------------------------------------------------ building

    def model_config(self, text_vocab_size: int) -> DALLEConfig:
        """``arch`` with the vocabularies and the image grid of this tokenizer and dVAE."""
        return dataclasses.replace(
            DALLEConfig.from_dict(self.hparams.arch),
            text_vocab_size=text_vocab_size,
            image_vocab_size=self.vae.num_tokens,
            image_grid_size=self.vae.grid_size,
        )

    def _build(self, tokenizer: BPETokenizer) -> None:
        self.tokenizer = tokenizer
        self.model = DALLE(self.model_config(tokenizer.vocab_size))
        if self.hparams.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        rank_zero_info(
            f"DALLE: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters, text vocab "
            f"{tokenizer.vocab_size} x {self.text_seq_len} tokens, image vocab {self.vae.num_tokens} x "
            f"{self.vae.grid_size}x{self.vae.grid_size} tokens"
        )

    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "train_captions"):
            raise ValueError(
                "no tokenizer: give model.tokenizer_path (a tokenizer.json), or a datamodule with train_captions() "
                "(ShapesDataModule, CaptionFolderDataModule, WebDatasetDataModule) to train one on"
            )
        text = None
        if self.trainer.is_global_zero:
            hp = self.hparams
            started = time.perf_counter()
            captions = list(datamodule.train_captions(hp.tokenizer_train_limit))
            if not captions:
                raise ValueError("the datamodule returned no training captions to train the tokenizer on")
            tokenizer = BPETokenizer.train(captions, hp.tokenizer_vocab_size)
            lengths = [len(ids) for ids in tokenizer.tokenizer.encode_batch(captions)]
            cut = sum(n > self.text_seq_len for n in lengths) / len(lengths)
            rank_zero_info(
                f"tokenizer: trained BPE on {len(captions)} captions in {time.perf_counter() - started:.1f}s: vocab "
                f"{tokenizer.vocab_size}, caption length mean {sum(lengths) / len(lengths):.1f} / max {max(lengths)} "
                f"tokens; {cut:.1%} exceed text_seq_len={self.text_seq_len} and are truncated"
            )
            text = tokenizer.tokenizer.to_str()
        text = self.trainer.strategy.broadcast(text, src=0)  # every rank gets rank 0's tokenizer
        self._build(BPETokenizer(Tokenizer.from_str(text)))
        self._save_tokenizer()

    def _save_tokenizer(self) -> None:
        """The run's tokenizer.json in the log dir, next to its logs (every rank calls this: _log_dir is a
        collective)."""
        log_dir = self._log_dir()
        if self.trainer.is_global_zero:
            self.tokenizer.save(Path(log_dir) / "tokenizer.json")

    def _log_dir(self) -> str:
        # `trainer.log_dir` broadcasts rank 0's directory: a collective, so every rank must call this, never inside a
        # rank-0-only branch (one rank waiting in the broadcast while the others go on hangs multi-process runs).
        return self.trainer.log_dir or self.trainer.default_root_dir

    # ------------------------------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizer_json"] = self.tokenizer.tokenizer.to_str()
        checkpoint["dalle_config"] = self.model.config.to_dict()
        checkpoint["vae_config"] = self.vae.config.to_dict()
        checkpoint["vae_state_dict"] = {k: v.detach().cpu() for k, v in self.vae.state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True, assign: bool = False):
        if self.model is None and not strict and any(k.startswith("model.") for k in state_dict):
            # What a spawn-based strategy (ddp_spawn) does after fit: the tokenizer was trained and the model built in
            # the workers, so this process has no model to take the trained weights.
            rank_zero_warn(
                "DALLEModule: trained weights dropped, this module has no model (it was built at setup in other "
                "processes). Give tokenizer_path so the model exists before fit, or load the exported folder or a "
                "checkpoint with dalle.pipeline.load_pipeline."
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_lambda_lr_checkpoint(checkpoint)  # release 0.1's schedule
        self._check_vae(checkpoint)
        saved = BPETokenizer(Tokenizer.from_str(checkpoint["tokenizer_json"]))
        if self.model is None:
            self._build(saved)
            return
        if saved.tokenizer.to_str() == self.tokenizer.tokenizer.to_str():
            return
        # A resumed run whose data trained another tokenizer at setup (other captions, another train limit): the
        # checkpoint's tokenizer is the one its weights were trained with, so the run goes on with it.
        if saved.vocab_size == self.tokenizer.vocab_size:
            self.tokenizer = saved
        elif self._trainer is not None and self.trainer.optimizers:
            raise ValueError(
                f"the checkpoint's tokenizer (vocab {saved.vocab_size}) differs from the one built at setup (vocab "
                f"{self.tokenizer.vocab_size}) and the model is already being optimised: give the run's tokenizer.json "
                "as model.tokenizer_path"
            )
        else:  # still before the optimizers exist: rebuild at the checkpoint's vocabulary, its weights load next
            rank_zero_info(
                f"resuming with the checkpoint's tokenizer (vocab {saved.vocab_size}), not the one trained at "
                f"setup (vocab {self.tokenizer.vocab_size})"
            )
            self._build(saved)
        if self._trainer is not None:
            self._save_tokenizer()

    def _check_vae(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on another dVAE than vae_path's, unless replace_vae asks for it."""
        config, weights = checkpoint.get("vae_config"), checkpoint.get("vae_state_dict")
        if config is None or weights is None:
            return
        ours = self.vae.state_dict()
        if config == self.vae.config.to_dict() and all(torch.equal(weights[k], v.cpu()) for k, v in ours.items()):
            return
        saved = DVAEConfig.from_dict(config)
        tokens = (saved.num_tokens, saved.grid_size)
        if tokens != (self.vae.num_tokens, self.vae.grid_size):
            raise ValueError(
                f"the checkpoint was trained on a dVAE of {tokens[0]} codes x {tokens[1]}x{tokens[1]} tokens, but "
                f"model.vae_path={self.hparams.vae_path} makes {self.vae.num_tokens} codes x "
                f"{self.vae.grid_size}x{self.vae.grid_size}: this transformer cannot read its tokens. Resume with the "
                "checkpoint's dVAE, or train a new model on this one (without --ckpt_path)."
            )
        if not self.hparams.get("replace_vae", False):
            raise ValueError(
                f"the checkpoint was trained on another dVAE than model.vae_path={self.hparams.vae_path} (same token "
                "shape, other weights): its image tokens would mean other images. Resume with the checkpoint's "
                "dVAE, or pass --model.replace_vae true to go on with this one on purpose."
            )
        rank_zero_warn(f"resuming with the dVAE at {self.hparams.vae_path} instead of the checkpoint's (replace_vae)")

    # ------------------------------------------------------------------------------------------ steps

    def encode_batch(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Batch -> (text (B, T), image ids (B, N)). Truncation is reported once at setup, not per caption."""
        images, captions = batch["image"], batch["caption"]
        if next(self.vae.parameters()).device != images.device:
            self.vae.to(images.device)  # not a submodule, so Lightning does not move it
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="prompt cut from")
            text = self.tokenizer.encode_batch(captions, self.text_seq_len).to(self.device)
        with torch.no_grad():
            ids = self.vae.get_codebook_indices(images)  # (B, N); checks size and range of the images
        return text, ids

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        text, ids = self.encode_batch(batch)
        p = self.hparams.caption_dropout
        if p > 0:
            keep = torch.rand(text.shape[0], 1, device=text.device) >= p
            text = text * keep  # dropped captions become all padding: the unconditional prompt
        out = self.model(text, ids)
        n = text.shape[0]
        # synced: every rank holds (and checkpoint/early-stopping callbacks monitor) the mean over all ranks
        self.log("train/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log_dict(
            {"train/text_loss": out.text_loss, "train/image_loss": out.image_loss}, sync_dist=True, batch_size=n
        )
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        text, ids = self.encode_batch(batch)
        out = self.model(text, ids)
        n = text.shape[0]
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log_dict({"val/text_loss": out.text_loss, "val/image_loss": out.image_loss}, sync_dist=True, batch_size=n)
        if batch_idx == 0 and self.hparams.sample_images_per_prompt > 0:
            # Inside the step (not at epoch end), on every rank: under FSDP every rank must join each forward.
            self._val_samples = self.sample_grid()

    def sample_grid(self) -> Tensor:
        """(P * n, 3, H, W) images for the fixed sample prompts, in [0, 1]."""
        hp = self.hparams
        prompts = list(hp.sample_prompts or DEFAULT_SAMPLE_PROMPTS)
        text = self.tokenizer.encode_batch(prompts, self.text_seq_len).repeat_interleave(hp.sample_images_per_prompt, 0)
        ids = self.model.generate(
            text,
            temperature=hp.sample_temperature,
            top_k=hp.sample_top_k,
            top_p=hp.sample_top_p,
            guidance_scale=hp.sample_guidance_scale,
            generator=torch.Generator(self.model.device).manual_seed(hp.sample_seed),
        )  # (P * n, image_seq_len)
        return self.vae.decode(ids.to(next(self.vae.parameters()).device)).float().cpu()

    def on_validation_epoch_end(self) -> None:
        images, self._val_samples = self._val_samples, None
        if self.trainer.sanity_checking or self.hparams.sample_images_per_prompt <= 0:
            return
        folder = Path(self._log_dir()) / "samples"  # on every rank, also one that drew no samples (a collective)
        if images is not None:
            self._save_samples(images, folder)

    @rank_zero_only
    def _save_samples(self, images: Tensor, folder: Path) -> None:
        from torchvision.utils import make_grid, save_image

        grid = make_grid(images, nrow=self.hparams.sample_images_per_prompt, padding=2, pad_value=1.0)
        folder.mkdir(parents=True, exist_ok=True)
        save_image(grid, folder / f"epoch={self.current_epoch:03d}-step={self.global_step}.png")
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image("val/samples", grid, self.global_step)
            elif hasattr(logger, "log_image"):  # e.g. Weights & Biases
                logger.log_image(key="val/samples", images=[grid], step=self.global_step)

    # ------------------------------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(
            self.model,  # its no_weight_decay() embedding tables, norms and biases get no weight decay
            self.trainer.estimated_stepping_batches,
            lr=hp.lr,
            min_lr=hp.min_lr,
            weight_decay=hp.weight_decay,
            warmup_lr=hp.warmup_lr,
            warmup_steps=hp.warmup_steps,
            warmup_fraction=hp.warmup_fraction,
            betas=tuple(hp.betas),
        )

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)

    # ------------------------------------------------------------------------------------------ export

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self) -> None:
        folder = self.hparams.export_dir or os.path.join(self._log_dir(), "dalle")  # on every rank: a collective
        if not self.trainer.is_global_zero:
            return
        folder = self.export(folder)
        elapsed = (time.perf_counter() - (self._fit_start or time.perf_counter())) / 60
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        figures = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        print(
            f"DALLE after {self.global_step} steps ({elapsed:.1f} min): {figures or 'no validation'}. "
            f"Exported to {folder}",
            flush=True,
        )

    def export(self, folder: str | os.PathLike) -> Path:
        """Save model.safetensors + tokenizer.json + vae/ into `folder` (what `load_pipeline(folder)` reads)."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save(folder / "tokenizer.json")
        self.vae.save_pretrained(folder / "vae")
        return folder


def fit_main(args: list[str]) -> None:
    """``python -m dalle fit --config configs/dalle/shapes.yaml [LightningCLI options]``."""
    from core_attention.training import cli_main

    cli_main(
        DALLEModule,
        pl.LightningDataModule,
        args=["fit", *args],
        subclass_mode_data=True,
        description="Train DALL·E's text-to-image transformer (stage 2) on top of a trained dVAE.",
        prog="python -m dalle fit",
    )
