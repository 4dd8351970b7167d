"""CLIP ("Learning Transferable Visual Models From Natural Language Supervision") on the shared core.

    images (B, 3, S, S) -> vit.VisionTransformer (norm_pre, class token, norm) -> (B, Dv) -> visual_proj -> (B, E)
    ids (B, 77)         -> embedding + positions -> causal TransformerBlocks -> norm -> end token -> proj -> (B, E)
    logits (B_img, B_txt) = exp(logit_scale) * normalise(image) @ normalise(text).T

The image tower is our ViT in CLIP's layout (`pre_norm=True`: LayerNorm before the blocks, no patch bias; LayerNorm
eps 1e-5; QuickGELU for OpenAI's weights); the text tower is `core_attention.TransformerBlock`s with causal
attention. OpenAI / OpenCLIP checkpoints load through `vit.clip.weights`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2 as T

from core_attention import TransformerBlock
from core_attention.config import ConfigMixin
from core_attention.io import load_safetensors, load_state_dict_checked, save_safetensors

from ..model import ACT_LAYERS, VisionTransformer, ViTConfig
from .tokenizer import CLIPTokenizer

WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"
# The normalisation every OpenAI and OpenCLIP ViT checkpoint was trained with.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPConfig(ConfigMixin):
    """Architecture of a `CLIP` model; defaults are ViT-B/32. Field names follow open_clip's model configs.

    Args:
        embed_dim: Width of the shared image-text embedding space.
        image_size: Side of the square input images.
        patch_size: Side of the square image patches.
        vision_width: Token width of the image tower.
        vision_layers: Blocks of the image tower.
        vision_heads: Attention heads of the image tower (open_clip: width // 64).
        context_length: Text positions (77: start token, up to 75 BPE tokens, end token).
        vocab_size: Rows of the token embedding (CLIP's BPE: 49408).
        text_width: Token width of the text tower.
        text_heads: Attention heads of the text tower.
        text_layers: Blocks of the text tower.
        mlp_ratio: MLP hidden width as a multiple of the tower width (both towers).
        quick_gelu: QuickGELU instead of GELU in every MLP: OpenAI's weights (and open_clip's "-quickgelu" models)
            were trained with it, and with the wrong one the embeddings drift.
    """

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    mlp_ratio: float = 4.0
    quick_gelu: bool = False

    @property
    def act_layer(self) -> str:
        return "quick_gelu" if self.quick_gelu else "gelu"

    def vision_config(self) -> ViTConfig:
        """The image tower as a ViT: class-token pooling, no classifier head (the projection follows)."""
        return ViTConfig(
            img_size=self.image_size,
            patch_size=self.patch_size,
            num_classes=0,
            global_pool="token",
            embed_dim=self.vision_width,
            depth=self.vision_layers,
            num_heads=self.vision_heads,
            mlp_ratio=self.mlp_ratio,
            pre_norm=True,
            act_layer=self.act_layer,
            norm_eps=1e-5,
        )


class TextTransformer(nn.Module):
    """CLIP's text tower: ids (B, L) -> the end token's features, projected (B, embed_dim).

    Attention is causal, so the end token has read the whole prompt and none of the padding after it; the end
    token has the largest id in CLIP's vocabulary, which is how it is found (argmax), as in CLIP.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        width = config.text_width
        self.context_length = config.context_length
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.context_length, width))
        self.blocks = nn.ModuleList(
            TransformerBlock(
                width,
                config.text_heads,
                mlp_ratio=config.mlp_ratio,
                norm_eps=1e-5,
                act_layer=ACT_LAYERS[config.act_layer],
            )
            for _ in range(config.text_layers)
        )
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Linear(width, config.embed_dim, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        b = ids.shape[0]
        end = ids.argmax(dim=-1)  # (B,) end-token positions
        # Causal attention: nothing after the last end token reaches any end token, so the padding is not computed
        # (a 10-token prompt costs 11 positions, not 77; the result is the same up to float rounding).
        ids = ids[:, : int(end.max()) + 1]
        x = self.token_embedding(ids) + self.pos_embed[:, : ids.shape[1]]  # (B, L, W)
        for block in self.blocks:
            x = block(x, is_causal=True)
        x = self.norm(x)
        x = x[torch.arange(b, device=ids.device), end]  # (B, W): the end token
        return self.proj(x)  # (B, E)


class CLIP(nn.Module):
    """Image and text towers whose normalised embeddings are compared by a learned temperature (`logit_scale`)."""

    def __init__(self, config: CLIPConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CLIPConfig()
        self.visual = VisionTransformer.from_config(config.vision_config())
        self.visual_proj = nn.Linear(config.vision_width, config.embed_dim, bias=False)
        self.text = TextTransformer(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07
        self._tokenizer: CLIPTokenizer | None = None

    @classmethod
    def empty(cls, config: CLIPConfig) -> CLIP:
        """A CLIP with allocated but uninitialised weights, to load a checkpoint into (ViT-L/14's random init is
        seconds of CPU for nothing). Every weight must then be loaded, which the strict loaders check."""
        with torch.device("meta"):
            model = cls(config)
        return model.to_empty(device="cpu")

    @property
    def image_size(self) -> tuple[int, int]:
        return self.visual.patch_embed.img_size

    @property
    def tokenizer(self) -> CLIPTokenizer:
        """CLIP's BPE tokenizer at this model's context length (every ViT CLIP shares one vocabulary)."""
        if self._tokenizer is None:
            self._tokenizer = CLIPTokenizer(self.config.context_length)
        return self._tokenizer

    def encode_image(self, images: Tensor, normalize: bool = False) -> Tensor:
        """Preprocessed images (B, 3, S, S) -> embeddings (B, E); see `preprocess`."""
        size = self.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, *size):
            raise ValueError(
                f"expected images of shape (B, 3, {size[0]}, {size[1]}), got {tuple(images.shape)}: run them through "
                "model.preprocess (CLIP's resize, centre crop and normalisation)"
            )
        x = self.visual_proj(self.visual(images))  # (B, E)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: Tensor, normalize: bool = False) -> Tensor:
        """Token ids (B, L <= context_length) from `tokenizer` -> embeddings (B, E)."""
        max_len = self.text.context_length
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32) or not ids.numel() or ids.shape[1] > max_len:
            raise ValueError(
                f"expected token ids of shape (B, L <= {max_len}) and an integer dtype, got "
                f"{tuple(ids.shape)} {ids.dtype}: tokenize prompts with model.tokenizer(prompts)"
            )
        x = self.text(ids)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_prompts(self, prompts: str | Sequence[str], normalize: bool = True) -> Tensor:
        """Prompts -> (N, E) text embeddings, L2-normalised by default."""
        ids = self.tokenizer(prompts).to(self.logit_scale.device)
        return self.encode_text(ids, normalize=normalize)

    def forward(self, images: Tensor, ids: Tensor) -> Tensor:
        """Logits (B_img, B_txt): exp(logit_scale) times the cosine similarity of every image with every text."""
        image = self.encode_image(images, normalize=True)
        text = self.encode_text(ids, normalize=True)
        return self.logit_scale.exp() * image @ text.T

    def preprocess(self, images: Any) -> Tensor:
        """A PIL image, or images (B, 3, H, W) / (3, H, W) with values in [0, 1] -> model input (B, 3, S, S).

        CLIP's evaluation transform: bicubic resize of the shorter side to S, centre crop, CLIP's mean/std. PIL
        images go through PIL's resize as in open_clip; tensors through torchvision's (antialiased), which differs
        from it by interpolation rounding only.
        """
        transform = image_transform(self.image_size[0])
        if isinstance(images, Tensor):
            batch = images[None] if images.dim() == 3 else images
            if batch.dim() != 4 or batch.shape[1] != 3:
                raise ValueError(f"expected RGB images (B, 3, H, W) or (3, H, W) in [0, 1], got {tuple(images.shape)}")
            pixels = transform(batch.float())
        else:
            pixels = transform(images.convert("RGB"))[None]
        weight = self.visual_proj.weight  # the model's device and dtype (e.g. after model.to("cuda", torch.float16))
        return pixels.to(weight.device, weight.dtype)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `model.safetensors` (weights + config in the header) and `config.json` to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"architecture": "CLIP", "config": self.config.to_dict()}
        save_safetensors(directory / WEIGHTS_NAME, self.state_dict(), config)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CLIP:
        """Load a model written by `save_pretrained` (the directory or its `model.safetensors`)."""
        path = Path(path)
        file = path / WEIGHTS_NAME if path.is_dir() else path
        state_dict, meta = load_safetensors(file)
        if meta.get("architecture") != "CLIP":
            raise ValueError(
                f"{file} was not written by CLIP.save_pretrained (architecture {meta.get('architecture')!r}); for "
                "OpenAI / OpenCLIP checkpoints use vit.clip.load_clip(path)"
            )
        model = cls.empty(CLIPConfig.from_dict(meta["config"]))
        load_state_dict_checked(model, state_dict, source=str(file))
        return model.eval()


def image_transform(size: int) -> T.Compose:
    """CLIP's evaluation preprocessing at `size` px for PIL images or float tensors in [0, 1]."""
    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(size),
            T.ToImage(),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
