"""Vision Transformer classifier on the shared attention core: timm-compatible weights, Lightning training, maps.

    from vit import VisionTransformer, from_timm
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)  # ViT-S/16
    model = from_timm("vit_small_patch16_224")          # config + pretrained weights through timm (online)
    model.save_pretrained("out/vit_s16"); VisionTransformer.from_pretrained("out/vit_s16")

Training: `python -m vit fit --config configs/vit/digits.yaml` (see `python -m vit --help`).
"""

from .attention_maps import attention_maps, attention_rollout, save_attention_overlay
from .model import PatchEmbed, VisionTransformer, ViTConfig
from .weights import config_from_timm, from_timm, load_timm_weights, read_state_dict

__all__ = [
    "PatchEmbed",
    "ViTConfig",
    "VisionTransformer",
    "attention_maps",
    "attention_rollout",
    "config_from_timm",
    "from_timm",
    "load_timm_weights",
    "read_state_dict",
    "save_attention_overlay",
]


def __getattr__(name: str):
    # Lightning-dependent names load on first use so `import vit` stays light.
    if name in ("ViTClassifier", "load_classifier"):
        from . import module

        return getattr(module, name)
    if name in ("DigitsDataModule", "ImageFolderDataModule", "CIFARDataModule", "ImageDataModule", "load_image"):
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module 'vit' has no attribute {name!r}")
