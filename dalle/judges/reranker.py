r"""A small CLIP-style contrastive text-image model that reranks DALL·E's candidates (the paper reranks with CLIP).

    text ids (B, T)  -> embedding + learned positions -> core Encoder (padding masked) -> mean over tokens -> proj
    images (B, 3, H, W) in [0, 1] -> vit.VisionTransformer (num_classes=0, pooled)          -> proj
    both L2-normalised to (B, E); logits = exp(logit_scale) * text @ image.T; symmetric InfoNCE (CLIP's loss)

The temperature is learned (``logit_scale``, initialised to 1 / 0.07 and clamped at 100, as in CLIP). The text side
has its own BPE tokenizer, trained on the training captions when fitting starts and shipped with the weights.

Train: ``python -m dalle fit-reranker --config configs/dalle/reranker.yaml``. Use while generating::

    python -m dalle generate PROMPT --candidates 32 -n 4 \
        --rerank dalle.judges.reranker:load_scorer --rerank-checkpoint DIR

(``DIR``: the ``export_dir`` the training wrote, or its Lightning ``.ckpt``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from core_attention import Encoder, LearnedPositionalEmbedding, init_weights, key_padding_mask
from core_attention.config import ConfigMixin
from core_attention.io import load_safetensors, load_state_dict_checked, save_safetensors
from core_attention.training import adamw_warmup_cosine
from core_attention.training.hparams import nest_arch
from dalle.data.shapes import parse_caption
from dalle.transformer.tokenizer import BPETokenizer
from vit import VisionTransformer, ViTConfig

__all__ = [
    "ContrastiveReranker",
    "RerankerConfig",
    "RerankerModule",
    "clip_loss",
    "fit_reranker_main",
    "load_reranker",
    "load_scorer",
]

WEIGHTS_NAME, CONFIG_NAME, TOKENIZER_NAME = "model.safetensors", "config.json", "tokenizer.json"


def _default_image_arch() -> ViTConfig:
    # As the attribute classifier's: one 16 px patch per cell of the shapes' 3x3 grid (inputs resized to 48 px), and
    # no pooling: the projection reads all 9 tokens, so where a shape is stays a linear read-out.
    return ViTConfig(
        img_size=48,
        patch_size=16,
        num_classes=0,
        global_pool="",
        class_token=False,
        embed_dim=96,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
    )


@dataclass
class RerankerConfig(ConfigMixin):
    """Architecture of a :class:`ContrastiveReranker`; saved with the weights.

    Args:
        text_vocab_size: Rows of the token embedding; the tokenizer's vocabulary must fit (id 0 = padding).
        text_seq_len: Tokens per caption (longer captions are cut, with a warning).
        text_dim: Width of the text Transformer.
        text_depth: Blocks of the text Transformer.
        text_heads: Attention heads of the text Transformer.
        image_arch: The image ViT (timm keyword names); num_classes must be 0. global_pool '' (default) projects all
            tokens flattened, 'avg' / 'token' the pooled vector. Images of any size are resized to its img_size.
        embed_dim: Width of the shared text-image embedding space.
        init_temperature: Initial softmax temperature of the logits (learned; CLIP's 0.07).
    """

    text_vocab_size: int = 512
    text_seq_len: int = 32
    text_dim: int = 96
    text_depth: int = 2
    text_heads: int = 4
    image_arch: ViTConfig = field(default_factory=_default_image_arch)
    embed_dim: int = 96
    init_temperature: float = 0.07

    def __post_init__(self) -> None:
        if isinstance(self.image_arch, dict):
            self.image_arch = ViTConfig.from_dict(self.image_arch)
        if self.image_arch.num_classes != 0:
            raise ValueError(
                "image_arch must have num_classes=0 (the reranker projects the features itself), "
                f"got {self.image_arch.num_classes}"
            )
        for name in ("text_vocab_size", "text_seq_len", "text_dim", "text_depth", "text_heads", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim ({self.text_dim}) must be divisible by text_heads ({self.text_heads})")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {self.init_temperature}")


def clip_loss(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE of (B, B) text-to-image logits whose diagonal holds the matching pairs."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.float().T, target)) / 2


class ContrastiveReranker(nn.Module):
    """Text and image encoders into one space. ``score(prompts, images)`` is the reranker callable DALL·E takes.

    ``tokenizer`` (a :class:`BPETokenizer`) turns prompts into ids; it may be attached later (``.tokenizer = ...``)
    when it is trained after the model is built.
    """

    MAX_LOGIT_SCALE = 100.0  # CLIP's clamp: keeps the learned temperature from collapsing to 0

    def __init__(self, config: RerankerConfig | None = None, tokenizer: BPETokenizer | None = None) -> None:
        super().__init__()
        self.config = c = config or RerankerConfig()
        self.token_emb = nn.Embedding(c.text_vocab_size, c.text_dim)
        self.text_pos = LearnedPositionalEmbedding(c.text_dim, c.text_seq_len)
        self.text_encoder = Encoder(c.text_dim, c.text_depth, c.text_heads, mlp_ratio=2.0)
        self.text_proj = nn.Linear(c.text_dim, c.embed_dim, bias=False)
        self.image_encoder = VisionTransformer.from_config(c.image_arch)
        num_tokens = self.image_encoder.patch_embed.num_patches + self.image_encoder.num_prefix_tokens
        width = c.image_arch.embed_dim * (num_tokens if c.image_arch.global_pool == "" else 1)
        self.image_proj = nn.Linear(width, c.embed_dim, bias=False)
        for module in (self.token_emb, self.text_encoder, self.text_proj, self.image_proj):
            module.apply(init_weights)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / c.init_temperature)))
        self.tokenizer = tokenizer
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        self.metrics: dict[str, Any] = {}  # figures saved with the weights (filled by from_pretrained)

    def check_tokenizer(self, tokenizer: BPETokenizer) -> None:
        if tokenizer.vocab_size > self.config.text_vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the reranker embeds only text_vocab_size="
                f"{self.config.text_vocab_size}: raise text_vocab_size or use a smaller tokenizer"
            )

    @property
    def img_size(self) -> tuple[int, int]:
        return self.image_encoder.patch_embed.img_size

    def no_weight_decay(self) -> set[str]:
        return {"token_emb.weight", "text_pos.weight", "logit_scale"} | {
            f"image_encoder.{n}" for n in self.image_encoder.no_weight_decay()
        }

    # ---- encoders ----------------------------------------------------------------------------------------------

    def encode_text(self, ids: Tensor) -> Tensor:
        """(B, T) token ids, 0 = padding -> (B, E) unit vectors."""
        c = self.config
        if ids.dim() != 2 or ids.shape[1] != c.text_seq_len or ids.is_floating_point():
            raise ValueError(
                f"text must be (B, text_seq_len={c.text_seq_len}) integer ids, got {tuple(ids.shape)} {ids.dtype}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.text_vocab_size):
            raise ValueError(
                f"text ids must be in [0, {c.text_vocab_size - 1}], got [{int(ids.min())}, {int(ids.max())}]"
            )
        is_pad = ids == 0
        is_pad[:, 0] = False  # an empty prompt keeps one (padding) token to attend to instead of an all-masked row
        x = self.text_encoder(self.text_pos(self.token_emb(ids)), mask=key_padding_mask(is_pad))  # (B, T, D)
        keep = (~is_pad).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * keep).sum(1) / keep.sum(1)  # mean over the real tokens
        return F.normalize(self.text_proj(pooled), dim=-1)

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] at the image encoder's img_size (see :meth:`prepare_images`) -> (B, E) unit
        vectors."""
        x = (self.prepare_images(images) - 0.5) / 0.5
        features = self.image_encoder.forward_head(
            self.image_encoder.forward_features(x), pre_logits=True
        )  # (B, [L,] D)
        return F.normalize(self.image_proj(features.flatten(1)), dim=-1)

    def forward(self, text: Tensor, images: Tensor) -> Tensor:
        """(B, T) ids and (B, 3, H, W) images -> (B, B) logits, text i against image j."""
        scale = self.logit_scale.clamp(max=math.log(self.MAX_LOGIT_SCALE)).exp()
        return scale * self.encode_text(text) @ self.encode_image(images).T

    # ---- the reranker callable ---------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError(
                "this reranker has no tokenizer: load it with load_reranker(...) or attach one (.tokenizer = ...)"
            )
        return self.tokenizer.encode_batch(list(prompts), self.config.text_seq_len)

    def prepare_images(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be an RGB tensor (N, 3, H, W) in [0, 1], got {got}")
        images = images if images.is_floating_point() else images.float()  # uint8 -> float; keeps float64 training
        if tuple(images.shape[-2:]) != self.img_size:  # DALL·E may draw at another size than the reranker reads
            images = F.interpolate(images, size=self.img_size, mode="bilinear", antialias=True, align_corners=False)
        return images

    @torch.no_grad()
    def score(self, prompts: Sequence[str], images: Tensor, batch_size: int = 256) -> Tensor:
        """Cosine similarity of each prompt with its image: prompts[i] vs images[i] -> (N,) in [-1, 1], higher is
        better."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) != images.shape[0]:
            raise ValueError(
                f"score pairs prompts[i] with images[i]: got {len(prompts)} prompts for {images.shape[0]} images"
            )
        was_training = self.training
        self.eval()
        device = self.logit_scale.device
        ids = self.tokenize(prompts)
        out = []
        for start in range(0, len(prompts), batch_size):
            t = self.encode_text(ids[start : start + batch_size].to(device))
            v = self.encode_image(images[start : start + batch_size].to(device))
            out.append((t * v).sum(-1).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def similarity(self, prompts: Sequence[str], images: Tensor) -> Tensor:
        """(P, N) cosine similarities of every prompt with every image (retrieval)."""
        was_training = self.training
        self.eval()
        device = self.logit_scale.device
        t = self.encode_text(self.tokenize(prompts).to(device))
        v = self.encode_image(images.to(device))
        self.train(was_training)
        return (t @ v.T).float().cpu()

    # ---- weights -----------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        """``model.safetensors`` (config in the header), ``tokenizer.json`` and a readable ``config.json``."""
        if self.tokenizer is None:
            raise RuntimeError("save_pretrained needs the tokenizer (a reranker without one cannot read prompts)")
        directory = Path(directory)
        meta = {"architecture": "ContrastiveReranker", "config": self.config.to_dict(), "metrics": metrics or {}}
        save_safetensors(directory / WEIGHTS_NAME, self.state_dict(), meta)
        self.tokenizer.save(directory / TOKENIZER_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> ContrastiveReranker:
        directory = Path(directory)
        if not (directory / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"no reranker in {directory} (expected {WEIGHTS_NAME} + {TOKENIZER_NAME} written by save_pretrained; "
                "train one with `python -m dalle fit-reranker --config configs/dalle/reranker.yaml`)"
            )
        state_dict, meta = load_safetensors(directory / WEIGHTS_NAME, device=str(map_location))
        if meta.get("architecture") != "ContrastiveReranker":
            raise ValueError(
                f"{directory / WEIGHTS_NAME} is not a reranker (header architecture={meta.get('architecture')!r})"
            )
        model = cls(RerankerConfig.from_dict(meta["config"]), BPETokenizer.load(directory / TOKENIZER_NAME))
        load_state_dict_checked(model, state_dict, source=str(directory / WEIGHTS_NAME))
        model.metrics = meta.get("metrics", {})
        return model.eval()


def load_reranker(path: str | Path, map_location: str | torch.device = "cpu") -> ContrastiveReranker:
    """A reranker from a ``save_pretrained`` folder or a Lightning ``.ckpt`` written by ``fit-reranker``."""
    path = Path(path)
    if path.suffix != ".ckpt":
        return ContrastiveReranker.from_pretrained(path, map_location)
    from core_attention.io import load_checkpoint

    ckpt = load_checkpoint(path, map_location=map_location)
    hp, tok = RerankerModule.upgrade_hparams(ckpt.get("hyper_parameters", {})), ckpt.get("tokenizer_json")
    if "arch" not in hp or tok is None or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint written by `python -m dalle fit-reranker` (no arch/tokenizer)")
    from tokenizers import Tokenizer

    model = ContrastiveReranker(RerankerConfig.from_dict(hp["arch"]), BPETokenizer(Tokenizer.from_str(tok)))
    load_state_dict_checked(model, ckpt["state_dict"], source=f"checkpoint {path}", prefix="model.")
    return model.eval()


def load_scorer(path: str | Path) -> Callable[[list[str], Tensor], Tensor]:
    """Factory for ``generate --rerank dalle.judges.reranker:load_scorer --rerank-checkpoint PATH``: the ``score``
    callable of the reranker at PATH (on the GPU when there is one)."""
    model = load_reranker(path)
    if torch.cuda.is_available():
        model = model.cuda()
    return model.score


# ------------------------------------------------------------------------------------------------ Lightning


class RerankerModule(pl.LightningModule):
    """Trains a :class:`ContrastiveReranker` on any DALL·E datamodule (batches with ``image`` and ``caption``).

    Args:
        arch: The architecture (see :class:`RerankerConfig`).
        tokenizer: A ``tokenizer.json`` (or its folder) to use; None trains a BPE tokenizer of
            ``arch.text_vocab_size`` tokens on the datamodule's training captions when fitting starts.
        tokenizer_captions: How many training captions the BPE tokenizer learns from.
        lr: Peak learning rate.
        min_lr: Learning rate at the end of the cosine decay.
        warmup_lr: Learning rate at the first step of the linear warmup.
        warmup_steps: Optimizer steps of linear warmup (if warmup_fraction is None).
        warmup_fraction: Warmup length as a fraction of all training steps (overrides warmup_steps).
        weight_decay: AdamW weight decay of the weight matrices.
        export_dir: After fitting, save the reranker here (``save_pretrained``: weights, tokenizer, config); this
            folder is what ``--rerank-checkpoint`` and ``evaluate --reranker`` take. None skips.
    """

    def __init__(
        self,
        arch: RerankerConfig = RerankerConfig(),  # noqa: B008 (LightningCLI reads the default from the signature)
        tokenizer: str | None = None,
        tokenizer_captions: int = 20000,
        lr: float = 2e-3,
        min_lr: float = 1e-5,
        warmup_lr: float = 2e-5,
        warmup_steps: int = 0,
        warmup_fraction: float | None = 0.05,
        weight_decay: float = 0.05,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(arch, dict):
            arch = RerankerConfig.from_dict(arch)
        self.save_hyperparameters()
        self.hparams["arch"] = arch.to_dict()  # plain dict: checkpoints load with weights_only=True
        self.model = ContrastiveReranker(arch, BPETokenizer.load(tokenizer) if tokenizer else None)
        self.last_metrics: dict[str, float] = {}
        self._val_sums: dict[str, float] = {}

    @classmethod
    def upgrade_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Checkpoints of release 0.1 named the architecture ``config``."""
        return nest_arch(hparams, (), renamed={"config": "arch"})

    # ---- tokenizer lifecycle: trained at fit start, carried inside the checkpoint -----------------------------

    def setup(self, stage: str) -> None:
        if self.model.tokenizer is not None:
            return
        dm = self.trainer.datamodule if self._trainer is not None else None
        if stage != "fit" or dm is None or not hasattr(dm, "train_captions"):
            raise RuntimeError(
                "the reranker has no tokenizer: fit it on a datamodule with train_captions() (it trains one), pass "
                "--model.tokenizer PATH, or validate/test from a checkpoint (--ckpt_path), which carries its tokenizer"
            )
        captions = dm.train_captions(self.hparams.tokenizer_captions)
        tokenizer = BPETokenizer.train(captions, vocab_size=self.model.config.text_vocab_size)
        self.model.check_tokenizer(tokenizer)
        self.model.tokenizer = tokenizer
        rank_zero_info(f"reranker: trained a BPE tokenizer of {tokenizer.vocab_size} tokens on the training captions")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model.tokenizer is not None:
            checkpoint["tokenizer_json"] = self.model.tokenizer.tokenizer.to_str()  # a str: weights_only-safe

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "tokenizer_json" in checkpoint:
            from tokenizers import Tokenizer

            self.model.tokenizer = BPETokenizer(Tokenizer.from_str(checkpoint["tokenizer_json"]))

    # ---- steps -------------------------------------------------------------------------------------------------

    def _logits(self, batch: dict[str, Any]) -> Tensor:
        ids = self.model.tokenize(batch["caption"]).to(self.device)
        return self.model(ids, batch["image"])  # (B, B)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        logits = self._logits(batch)
        loss = clip_loss(logits)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/temperature", 1 / self.model.logit_scale.exp().clamp(max=self.model.MAX_LOGIT_SCALE))
        return loss

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        logits = self._logits(batch)
        target = torch.arange(logits.shape[0], device=logits.device)
        n = float(logits.shape[0])
        # Retrieval inside the batch: is the true image the best for its caption (and vice versa)?
        values = {
            "loss": clip_loss(logits),
            "text_to_image_top1": (logits.argmax(1) == target).float().mean(),
            "image_to_text_top1": (logits.argmax(0) == target).float().mean(),
            "chance": torch.tensor(1.0 / n),
        }
        # Shapes captions parse back to their scene: then a retrieved image showing the same scene as the true one
        # (a duplicate drawn elsewhere in the batch, which no model can tell apart) counts as right too.
        scenes = [parse_caption(c) for c in batch["caption"]]
        if all(s is not None for s in scenes):
            same = torch.tensor([[a == b for b in scenes] for a in scenes], device=logits.device)  # (B, B)
            values["text_to_image_scene_top1"] = same[target, logits.argmax(1)].float().mean()
            values["duplicate_fraction"] = (same.sum(1) > 1).float().mean()
        for name, value in values.items():
            self.log(f"{split}/{name}", value, prog_bar=name == "text_to_image_top1", batch_size=int(n), sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            metrics = self.trainer.callback_metrics
            self.last_metrics = {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.startswith("val/")}

    def on_fit_end(self) -> None:
        if self.hparams.export_dir and self.trainer.is_global_zero:
            self.model.save_pretrained(self.hparams.export_dir, {"val": self.last_metrics})
            figures = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.last_metrics.items()))
            print(f"saved the reranker to {self.hparams.export_dir}" + (f" (val: {figures})" if figures else ""))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(
            self.model,
            self.trainer.estimated_stepping_batches,
            lr=hp.lr,
            min_lr=hp.min_lr,
            weight_decay=hp.weight_decay,
            warmup_lr=hp.warmup_lr,
            warmup_steps=hp.warmup_steps,
            warmup_fraction=hp.warmup_fraction,
        )

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)


DESCRIPTION = """\
Train the contrastive text-image reranker (a small CLIP) on a DALL·E datamodule, then use it to keep the best of N
generated candidates. Example:

  python -m dalle fit-reranker --config configs/dalle/reranker.yaml
  python -m dalle generate "a small red circle in the top left" -n 4 --candidates 32 \\
      --checkpoint DALLE_CKPT --rerank dalle.judges.reranker:load_scorer --rerank-checkpoint runs/reranker/export

After fitting, the model is saved to --model.export_dir (weights, tokenizer, config) and evaluated on the
datamodule's test split (text-to-image / image-to-text top-1 retrieval inside a batch, against chance 1/batch).
"""


def fit_reranker_main(args: list[str]) -> None:
    """``python -m dalle fit-reranker [LightningCLI options]``: fit, then test the fitted weights."""
    from core_attention.training import cli_main

    cli = cli_main(
        RerankerModule,
        pl.LightningDataModule,
        ["fit", *args],
        subclass_mode_data=True,
        description=DESCRIPTION,
        prog="python -m dalle fit-reranker",
    )
    if cli.datamodule is not None and hasattr(cli.datamodule, "test_dataloader"):
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=True)
