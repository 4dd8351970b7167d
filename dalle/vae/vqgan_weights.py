"""VQGAN weights into `VQGAN`: min-dalle's `detoker.pt` (decoder only) or dalle-mini's flax `flax_model.msgpack`.

Both are first brought to taming's torch names (`decoder.up.4.attn.0.q.weight`, `quantize.embedding.weight`); from
there the only renames are the attention blocks' 1x1 q / k / v convolutions into one `attn.qkv` linear and
`proj_out` into `attn.proj`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from dalle.vae.vqgan import VQGAN, VQGANConfig
from dalle.weight_files import WeightsError, flatten, read_flax_msgpack, read_torch_state_dict

__all__ = ["flax_to_taming", "load_vqgan", "taming_to_ours"]

_ATTN = re.compile(r"(.+\.(?:attn\.\d+|attn_1))\.(q|k|v|proj_out)\.(weight|bias)$")


def taming_to_ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """taming / min-dalle names -> `VQGAN` names (attention convolutions fused; min-dalle's `embedding` renamed)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key == "embedding.weight":  # min-dalle keeps the codebook at the top level
            key = "quantize.embedding.weight"
        m = _ATTN.match(key)
        if m is None:
            out[key] = value
        elif m[2] == "proj_out":
            out[f"{m[1]}.attn.proj.{m[3]}"] = value.flatten(1) if m[3] == "weight" else value
        else:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value.flatten(1) if m[3] == "weight" else value
    for (block, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"attention block {block} lacks {sorted({'q', 'k', 'v'} - set(parts))} {leaf}")
        out[f"{block}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def flax_to_taming(tree: dict) -> dict[str, Tensor]:
    """The flax VQGAN's parameter tree -> taming's torch state dict (conv kernels HWIO -> OIHW)."""
    out: dict[str, Tensor] = {}
    for path, value in flatten(tree.get("params", tree)):
        *modules, leaf = path.split("/")
        name = ".".join(modules)
        # flax names list items "up_4", "block_0", "attn_2"; taming's ModuleLists are "up.4", "block.0", "attn.2"
        # (the mid block keeps its attributes block_1 / attn_1 / block_2).
        if not name.startswith(("encoder.mid", "decoder.mid")):
            name = re.sub(r"\b(up|down|block|attn)_(\d+)\b", r"\1.\2", name)
        if leaf == "kernel":
            value = value.permute(3, 2, 0, 1).contiguous() if value.dim() == 4 else value.t().contiguous()
        elif leaf not in ("bias", "scale", "embedding"):
            raise WeightsError(f"unexpected parameter {path!r} in the flax VQGAN weights")
        out[f"{name}.{'bias' if leaf == 'bias' else 'weight'}"] = value
    return out


def build(state: dict[str, Tensor], config: VQGANConfig, source: str) -> VQGAN:
    with torch.device("meta"):
        model = VQGAN(config)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{source} does not fit the VQGAN {config}: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}, wrong shapes {wrong[:3]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_vqgan(path: str | os.PathLike, device: str | torch.device = "cpu", **overrides) -> VQGAN:
    """A VQGAN (fp32: it runs once per image) from a folder holding our `config.json` + `model.safetensors`,
    dalle-mini's flax `flax_model.msgpack`, or min-dalle's `detoker.pt`."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return VQGAN.from_pretrained(path, device=device)
    if (path / "flax_model.msgpack").is_file():
        config = VQGANConfig(**overrides)
        config_file = path / "config.json"
        if config_file.is_file():
            flax = json.loads(config_file.read_text())
            names = (
                "ch",
                "ch_mult",
                "num_res_blocks",
                "attn_resolutions",
                "resolution",
                "z_channels",
                "embed_dim",
                "n_embed",
            )
            config = VQGANConfig(**{**{k: flax[k] for k in names if k in flax}, **overrides})
        tree = read_flax_msgpack(path / "flax_model.msgpack", torch.float32, device)
        return build(taming_to_ours(flax_to_taming(tree)), config, str(path / "flax_model.msgpack"))
    if (path / "detoker.pt").is_file():
        # min-dalle's port: GroupNorm at torch's default eps, no encoder.
        config = VQGANConfig(**{"norm_eps": 1e-5, "has_encoder": False, **overrides})
        state = read_torch_state_dict(path / "detoker.pt", torch.float32, device)
        return build(taming_to_ours(state), config, str(path / "detoker.pt"))
    raise FileNotFoundError(
        f"no VQGAN weights in {path}: expected model.safetensors + config.json (ours), flax_model.msgpack "
        "(huggingface.co/dalle-mini/vqgan_imagenet_f16_16384) or detoker.pt (min-dalle's)"
    )
