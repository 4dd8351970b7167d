"""Load OpenAI and OpenCLIP CLIP weights into `vit.clip.CLIP`, never by running code from a file.

Sources `load_clip` takes:
- a folder from `CLIP.save_pretrained` (or its `model.safetensors`);
- an OpenCLIP checkpoint: `open_clip_model.safetensors`, or `open_clip_pytorch_model.bin` / an open_clip training
  checkpoint through `torch.load(weights_only=True)`;
- OpenAI's released `ViT-B-32.pt`-style files. They are TorchScript archives (a zip of `data.pkl` + `data/N`);
  `torch.load(weights_only=True)` refuses them and `torch.jit.load` would run the archive, so `read_torchscript`
  unpickles `data.pkl` with an unpickler that rebuilds tensors and records module attributes and nothing else;
- `hf-hub:<repo>` or a known name such as `ViT-B-32/openai` (`PRETRAINED`): the repo's open_clip files, downloaded
  once through huggingface_hub.

The architecture is read from the weights' shapes; whether the MLPs use QuickGELU cannot be, so it comes from
`variant`, an `open_clip_config.json` next to the file, or the file's origin (OpenAI's archives always do).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from core_attention.io import load_checkpoint, load_safetensors, load_state_dict_checked

from .model import CLIP, CONFIG_NAME, WEIGHTS_NAME, CLIPConfig
from .torchscript import is_torchscript, read_torchscript

log = logging.getLogger(__name__)

_B32 = CLIPConfig()
_B16 = replace(_B32, patch_size=16)
_L14 = replace(
    _B32,
    embed_dim=768,
    patch_size=14,
    vision_width=1024,
    vision_layers=24,
    vision_heads=16,
    text_width=768,
    text_heads=12,
)
_H14 = replace(
    _B32,
    embed_dim=1024,
    patch_size=14,
    vision_width=1280,
    vision_layers=32,
    vision_heads=16,
    text_width=1024,
    text_heads=16,
    text_layers=24,
)  # head width 80: the heads come from here, not shapes
# open_clip's model names; "-quickgelu" marks weights trained with QuickGELU (OpenAI's, and some LAION runs).
VARIANTS: dict[str, CLIPConfig] = {
    "ViT-B-32": _B32,
    "ViT-B-32-quickgelu": replace(_B32, quick_gelu=True),
    "ViT-B-16": _B16,
    "ViT-B-16-quickgelu": replace(_B16, quick_gelu=True),
    "ViT-L-14": _L14,
    "ViT-L-14-quickgelu": replace(_L14, quick_gelu=True),
    "ViT-H-14": _H14,
}
# "<variant>/<tag>" -> (Hugging Face repo holding open_clip_model.safetensors, variant), as open_clip names them.
PRETRAINED: dict[str, tuple[str, str]] = {
    "ViT-B-32/openai": ("timm/vit_base_patch32_clip_224.openai", "ViT-B-32-quickgelu"),
    "ViT-B-16/openai": ("timm/vit_base_patch16_clip_224.openai", "ViT-B-16-quickgelu"),
    "ViT-L-14/openai": ("timm/vit_large_patch14_clip_224.openai", "ViT-L-14-quickgelu"),
    "ViT-B-32/laion2b_s34b_b79k": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32"),
    "ViT-B-16/laion2b_s34b_b88k": ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "ViT-B-16"),
    "ViT-L-14/laion2b_s32b_b82k": ("laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "ViT-L-14"),
    "ViT-H-14/laion2b_s32b_b79k": ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "ViT-H-14"),
}
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HUB_CONFIG = "open_clip_config.json"
_NOT_WEIGHTS = ("attn_mask", "input_resolution", "context_length", "vocab_size")  # OpenAI's extras, not parameters


# ---- reading files ---------------------------------------------------------------------------------------------


def read_open_clip_state_dict(path: str | Path) -> dict[str, Tensor]:
    """{open_clip name: tensor} from a `.safetensors`, a `.bin`/`.pt`/`.pth` checkpoint or OpenAI's TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file {path} does not exist")
    if path.suffix == ".safetensors":
        sd: Mapping[str, Any] = load_safetensors(path)[0]
    elif is_torchscript(path):
        log.info("reading the tensors of TorchScript archive %s (without running it)", path)
        sd = read_torchscript(path)
    else:
        sd = load_checkpoint(path)
        sd = sd.get("state_dict", sd)  # open_clip training checkpoints: {"epoch", "state_dict", "optimizer", ...}
    sd = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("module.") for k in sd):  # saved from DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


# ---- names and shapes ------------------------------------------------------------------------------------------

_BLOCK_NAMES = {
    "ln_1": "norm1",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj": "attn.proj",
    "ln_2": "norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ls_1.gamma": "ls1.gamma",
    "ls_2.gamma": "ls2.gamma",
}
_TOP_NAMES = {
    "visual.conv1.weight": "visual.patch_embed.proj.weight",
    "visual.ln_pre": "visual.norm_pre",
    "visual.ln_post": "visual.norm",
    "token_embedding.weight": "text.token_embedding.weight",
    "ln_final": "text.norm",
    "logit_scale": "logit_scale",
}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def _rename(key: str) -> str | None:
    if m := _BLOCK.match(key):
        tower, index, rest = "visual" if m[1] else "text", m[2], m[3]
        for old, new in _BLOCK_NAMES.items():
            if rest == old or rest.startswith(old + "."):
                return f"{tower}.blocks.{index}.{new}{rest[len(old) :]}"
        return None
    for old, new in _TOP_NAMES.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def convert_open_clip_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """open_clip / OpenAI CLIP names and layouts -> ours (fp32); raises on anything this CLIP does not have."""
    out, unknown = {}, []
    for key, value in sd.items():
        if key in _NOT_WEIGHTS:
            continue
        value = value.float() if value.is_floating_point() else value  # OpenAI's archives are mostly fp16
        if key == "visual.class_embedding":
            out["visual.cls_token"] = value.reshape(1, 1, -1)
        elif key == "visual.positional_embedding":
            out["visual.pos_embed"] = value[None]  # (1, 1 + N, D)
        elif key == "positional_embedding":
            out["text.pos_embed"] = value[None]  # (1, 77, W)
        elif key == "visual.proj":
            out["visual_proj.weight"] = value.T.contiguous()  # open_clip multiplies x @ proj: (D, E)
        elif key in ("text_projection", "text_projection.weight"):
            out["text.proj.weight"] = value.T.contiguous() if key == "text_projection" else value
        elif (new := _rename(key)) is not None:
            out[new] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"these weights are not a ViT CLIP this package implements (unknown keys: {', '.join(unknown[:6])}"
            f"{' ...' if len(unknown) > 6 else ''}); supported: OpenAI / OpenCLIP ViTs such as {', '.join(VARIANTS)}"
        )
    return out


def config_from_state_dict(
    sd: Mapping[str, Tensor], *, quick_gelu: bool, vision_heads: int | None = None, text_heads: int | None = None
) -> CLIPConfig:
    """The `CLIPConfig` an open_clip-named state dict was trained with. Head counts are not in the shapes: without
    them given (from an open_clip_config.json), width // 64 as in every OpenAI and ViT-B/L OpenCLIP model."""
    try:
        patch = sd["visual.conv1.weight"]  # (Dv, 3, P, P)
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_width, text_width = patch.shape[0], sd["ln_final.weight"].shape[0]
        count = lambda prefix: len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})  # noqa: E731
        return CLIPConfig(
            embed_dim=sd["text_projection"].shape[-1] if "text_projection" in sd else sd["visual.proj"].shape[1],
            image_size=grid * patch.shape[-1],
            patch_size=patch.shape[-1],
            vision_width=vision_width,
            vision_layers=count("visual.transformer.resblocks."),
            vision_heads=vision_heads or vision_width // 64,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            text_width=text_width,
            text_heads=text_heads or text_width // 64,
            text_layers=count("transformer.resblocks."),
            mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width,
            quick_gelu=quick_gelu,
        )
    except KeyError as err:
        raise ValueError(f"not an OpenAI / OpenCLIP ViT CLIP state dict: no {err} (a ResNet CLIP, or another model?)")


_NOT_IN_SHAPES = ("quick_gelu", "vision_heads", "text_heads")  # what a variant says and the weights cannot


def _shapes_only(config: CLIPConfig) -> CLIPConfig:
    return replace(config, quick_gelu=False, vision_heads=0, text_heads=0)


def check_variant(config: CLIPConfig, variant: str, source: str) -> CLIPConfig:
    """The variant's config, if the weights' config matches it; else a ValueError naming every difference."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown CLIP variant {variant!r}; known: {', '.join(VARIANTS)}")
    expected = VARIANTS[variant]
    diffs = [
        f"{k} {v} (variant: {getattr(expected, k)})"
        for k, v in asdict(config).items()
        if k not in _NOT_IN_SHAPES and v != getattr(expected, k)
    ]
    if diffs:
        plain = _shapes_only(config)
        guess = [n for n, c in VARIANTS.items() if _shapes_only(c) == plain]
        raise ValueError(
            f"{source} is not a {variant} checkpoint: its weights have {', '.join(diffs)}"
            + (f"; it looks like {' or '.join(guess)}" if guess else "")
        )
    return expected


# ---- loading ---------------------------------------------------------------------------------------------------


def load_open_clip_weights(model: CLIP, source: str | Path | Mapping[str, Tensor]) -> CLIP:
    """Copy OpenAI / OpenCLIP weights (a file or an open_clip `state_dict()`) into `model`, strictly."""
    sd = source if isinstance(source, Mapping) else read_open_clip_state_dict(source)
    name = "open_clip state dict" if isinstance(source, Mapping) else f"CLIP checkpoint {source}"
    load_state_dict_checked(model, convert_open_clip_state_dict(sd), source=name)
    return model.eval()


def _saved_architecture(path: Path) -> str | None:
    """The `architecture` that save_pretrained wrote into a safetensors header (read without the tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("config", "{}")).get("architecture")
    except Exception:  # not readable as safetensors: the full read that follows says why
        return None


# open_clip model_cfg options: those read here, and the rest with the only value this CLIP implements.
_READ = {
    "embed_dim",
    "quick_gelu",
    "vision_cfg",
    "text_cfg",
    "init_logit_scale",
    "image_size",
    "layers",
    "width",
    "patch_size",
    "head_width",
    "heads",
    "mlp_ratio",
    "context_length",
    "vocab_size",
    "patch_dropout",
}
_FIXED = {
    "custom_text": False,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "final_ln_after_pool": False,
    "pool_type": ("tok", "argmax"),
    "output_tokens": False,
    "ls_init_value": None,
    "embed_cls": False,
    "pad_id": 0,
    "no_causal_mask": False,
    "proj_bias": False,
    "proj_type": "linear",
    "qk_norm": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "init_logit_bias": None,
}


def _hub_config(path: Path) -> dict[str, Any] | None:
    """quick_gelu and the head counts from the open_clip_config.json beside `path`; refuses options not built here."""
    config_file = path.parent / HUB_CONFIG
    if not config_file.is_file():
        return None
    cfg = json.loads(config_file.read_text())
    cfg = cfg.get("model_cfg", cfg)
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    allowed = {k: v if isinstance(v, tuple) else (v,) for k, v in _FIXED.items()}
    other = [
        f"{k}={v!r}"
        for k, v in (*cfg.items(), *vision.items(), *text.items())
        if k not in _READ and (k not in allowed or v not in allowed[k])
    ]
    if other:
        raise ValueError(f"{config_file}: this OpenCLIP model has options vit.clip lacks: {', '.join(other)}")
    return {
        "quick_gelu": bool(cfg.get("quick_gelu", False)),
        "vision_heads": vision["width"] // vision.get("head_width", 64) if "width" in vision else None,
        "text_heads": text.get("heads"),
    }


def load_clip(source: str | Path, variant: str | None = None) -> CLIP:
    """A `CLIP` in eval mode from any source in this module's docstring.

    `variant` (a key of `VARIANTS`, e.g. "ViT-B-32-quickgelu") is checked against the weights' shapes and says
    whether the MLPs use QuickGELU; an OpenCLIP file without an `open_clip_config.json` beside it needs it.
    """
    text = str(source)
    if text in PRETRAINED:
        repo, default_variant = PRETRAINED[text]
        return load_clip(f"hf-hub:{repo}", variant or default_variant)
    if text.startswith("hf-hub:"):
        repo = text[len("hf-hub:") :]
        # A known repo's variant wins over its open_clip_config.json: open_clip keeps OpenAI's QuickGELU in its
        # pretrained tags, so a hub config alone may not say it.
        known = {r: v for r, v in PRETRAINED.values()}
        return load_clip(download_from_hub(repo), variant or known.get(repo))
    path = Path(source)
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file() and (path / CONFIG_NAME).is_file():
            return CLIP.from_pretrained(path)
        files = [path / f for f in HUB_FILES if (path / f).is_file()]
        if not files:
            raise FileNotFoundError(
                f"{path} holds no CLIP weights: expected {WEIGHTS_NAME} + {CONFIG_NAME} (CLIP.save_pretrained) or "
                f"one of {', '.join(HUB_FILES)}"
            )
        path = files[0]
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights {source} not found: give a file or folder, 'hf-hub:<repo>' or one of {', '.join(PRETRAINED)}"
        )
    if path.suffix == ".safetensors" and _saved_architecture(path) == "CLIP":
        return CLIP.from_pretrained(path)
    openai = is_torchscript(path)
    sd = read_open_clip_state_dict(path)
    hub = _hub_config(path)
    if variant is not None:
        config = check_variant(config_from_state_dict(sd, quick_gelu=False), variant, str(path))
        if openai and not config.quick_gelu:
            log.warning("%s is OpenAI's, trained with QuickGELU, but variant %r uses GELU", path, variant)
    elif hub is not None:
        config = config_from_state_dict(sd, **{**hub, "quick_gelu": openai or hub["quick_gelu"]})
    elif openai:
        config = config_from_state_dict(sd, quick_gelu=True)
    else:
        config = config_from_state_dict(sd, quick_gelu=False)
        names = [n for n, c in VARIANTS.items() if _shapes_only(c) == _shapes_only(config)]
        hint = f"'{names[0]}' or '{names[1]}'" if len(names) == 2 else "a variant of " + ", ".join(VARIANTS)
        raise ValueError(
            f"{path}: cannot tell from the weights whether this CLIP was trained with QuickGELU (OpenAI's weights and "
            f"open_clip's '-quickgelu' models) or GELU; pass variant={hint} (CLI: --variant), or put the "
            f"checkpoint's {HUB_CONFIG} next to it"
        )
    return load_open_clip_weights(CLIP.empty(config), sd)


def download_from_hub(repo: str) -> Path:
    """The local path of `repo`'s open_clip weights (and its config beside them), downloaded once by huggingface_hub.

    Offline or unreachable: a FileNotFoundError that names the file and the ways to give it by path.
    """
    from huggingface_hub import hf_hub_download

    errors = []
    for filename in HUB_FILES:
        try:
            weights = Path(hf_hub_download(repo, filename))
        except Exception as err:  # offline, missing file, gated repo: all end in the same advice
            errors.append(f"{filename}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        try:
            hf_hub_download(repo, HUB_CONFIG)  # lands next to the weights in the cache
        except Exception as err:
            log.warning("no %s in %s (%s); pass variant= to say whether it uses QuickGELU", HUB_CONFIG, repo, err)
        return weights
    raise FileNotFoundError(
        f"could not download CLIP weights from the Hugging Face Hub repo {repo!r} ({errors[0]}). Offline? "
        f"On a machine with network, download https://huggingface.co/{repo}/resolve/main/{HUB_FILES[0]} (and "
        f"{HUB_CONFIG}) into one folder and pass that folder instead (or the file, with variant=...)"
    )
