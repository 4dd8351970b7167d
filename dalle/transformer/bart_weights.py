"""DALL·E Mini / Mega weights into `DalleBart`: min-dalle's `.pt` state dicts or the original flax msgpack.

Both routes meet at min-dalle's names (`layers.3.glu.fc0.weight`, ...), which map one to one onto ours; the flax tree
is first renamed the way min-dalle's own converter did (`LayerNorm_0` -> `pre_self_attn_layer_norm`, scan-stacked
layers split, kernels transposed). q/k/v projections become one fused `qkv` weight.

Missing norm scales: dalle-mini builds every LayerNorm that feeds a projection with `use_scale=force_ln_scale`
(False in both checkpoints), so the flax files hold only a bias for those norms, and min-dalle's `.pt` files (converted
from them) lack the `.weight` key; min-dalle loads with `strict=False`, leaving torch's initial ones. We fill exactly
those (a norm whose bias is present) with ones; any other missing key is an error.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from dalle.transformer.bart import DalleBart, DalleBartConfig
from dalle.weight_files import WeightsError, flatten, read_flax_msgpack, read_torch_state_dict

__all__ = ["config_from_flax", "config_from_state", "flax_to_min_dalle", "load_dalle_bart", "min_dalle_to_ours"]

HEAD_DIM = 64  # Mini (1024 / 16) and Mega (2048 / 32); the .pt files do not record the head count


_LAYER_NAMES = {
    "pre_self_attn_layer_norm": "norm1",
    "self_attn_layer_norm": "post_norm1",
    "pre_encoder_attn_layer_norm": "norm_cross",
    "encoder_attn_layer_norm": "post_norm_cross",
    "glu.ln0": "norm2",
    "glu.ln1": "mlp.norm",
    "glu.fc0": "mlp.fc0",
    "glu.fc1": "mlp.fc1",
    "glu.fc2": "mlp.fc2",
    "self_attn.out_proj": "attn.proj",
    "encoder_attn.out_proj": "cross_attn.proj",
}
_STACK_NAMES = {
    "layernorm_embedding": "norm_embed",
    "final_ln": "norm",
    "embed_tokens": "embed_tokens",
    "embed_positions": "embed_positions",
}
_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)$")


def min_dalle_to_ours(encoder: dict[str, Tensor], decoder: dict[str, Tensor]) -> dict[str, Tensor]:
    """min-dalle's encoder.pt / decoder.pt state dicts -> a `DalleBart` state dict (norm scales not yet filled).

    Empties its inputs as it goes, so that each fused q/k/v weight replaces its three parts instead of doubling them.
    """
    out: dict[str, Tensor] = {}
    for stack, state in (("encoder", encoder), ("decoder", decoder)):
        qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
        for key in list(state):
            value = state.pop(key)
            if stack == "decoder" and key == "lm_head.weight":
                out["lm_head.weight"] = value
                continue
            m = _LAYER.match(key)
            if m is None:
                module, _, leaf = key.rpartition(".")
                if module not in _STACK_NAMES:
                    raise WeightsError(f"unexpected key {key!r} in the {stack} weights")
                out[f"{stack}.{_STACK_NAMES[module]}.{leaf}"] = value
                continue
            layer, module, leaf = int(m[1]), m[2], m[3]
            attn, _, proj = module.rpartition(".")
            if proj in ("q_proj", "k_proj", "v_proj") and attn in ("self_attn", "encoder_attn"):
                parts = qkv.setdefault((layer, attn), {})
                parts[proj] = value
                if len(parts) == 3:
                    ours = "attn" if attn == "self_attn" else "cross_attn"
                    fused = torch.cat([parts.pop("q_proj"), parts.pop("k_proj"), parts.pop("v_proj")])
                    out[f"{stack}.blocks.{layer}.{ours}.qkv.weight"] = fused
            elif module in _LAYER_NAMES:
                out[f"{stack}.blocks.{layer}.{_LAYER_NAMES[module]}.{leaf}"] = value
            else:
                raise WeightsError(f"unexpected key {key!r} in the {stack} weights")
        for (layer, attn), parts in qkv.items():
            if parts:  # fused ones were emptied
                missing = sorted({"q_proj", "k_proj", "v_proj"} - set(parts))
                raise WeightsError(f"{stack} layer {layer} {attn} lacks {missing}")
    return out


def _fill_norm_scales(state: dict[str, Tensor], expected: Iterable[str]) -> None:
    for key in expected:
        if key.endswith(".weight") and key not in state and key[: -len("weight")] + "bias" in state:
            bias = state[key[: -len("weight")] + "bias"]
            state[key] = torch.ones_like(bias)


def config_from_state(state: dict[str, Tensor], **overrides) -> DalleBartConfig:
    """Sizes read off a `DalleBart` state dict's shapes (the head count assumes 64-wide heads unless given)."""
    try:
        text_vocab, dim = state["encoder.embed_tokens.weight"].shape

        def depth(stack: str) -> int:
            return 1 + max(int(k.split(".")[2]) for k in state if k.startswith(f"{stack}.blocks."))

        found = dict(
            text_vocab_size=text_vocab,
            dim=dim,
            num_heads=dim // HEAD_DIM,
            text_seq_len=state["encoder.embed_positions.weight"].shape[0],
            image_vocab_size=state["decoder.embed_tokens.weight"].shape[0] - 1,
            codebook_size=min(2**14, state["decoder.embed_tokens.weight"].shape[0] - 1),  # the VQGAN's 16384 codes
            image_seq_len=state["decoder.embed_positions.weight"].shape[0],
            glu_dim=state["encoder.blocks.0.mlp.fc0.weight"].shape[0],
            encoder_depth=depth("encoder"),
            decoder_depth=depth("decoder"),
        )
    except (KeyError, ValueError) as err:
        raise WeightsError(f"these are not DALL·E Mini / Mega weights (cannot read their sizes: {err})") from None
    return DalleBartConfig(**{**found, **overrides})


# The options of dalle-mini's DalleBartConfig that both published checkpoints use; anything else is another model.
_PUBLISHED = dict(
    ln_type="layernorm",
    ln_positions="normformer",
    use_glu=True,
    use_bias=False,
    scale_embedding=False,
    use_head_scale=False,
    use_cosine_attention=False,
    use_swin_position_embeddings=False,
    use_absolute_position_embeddings=True,
    use_final_ln_encoder=True,
    use_final_ln_decoder=True,
    use_alibi=False,
    sinkhorn_iters=1,
    activation_function="gelu",
    tie_word_embeddings=False,
)


def config_from_flax(config: dict, **overrides) -> DalleBartConfig:
    """A dalle-mini `config.json` -> our config; refuses the architecture variants the checkpoints do not use."""
    variant = {k: config.get(k, v) for k, v in _PUBLISHED.items()}
    if variant != _PUBLISHED:
        differs = {k: v for k, v in variant.items() if v != _PUBLISHED[k]}
        raise WeightsError(f"unsupported dalle-mini variant {differs}: only the published Mini / Mega layout loads")
    required = (
        "encoder_vocab_size",
        "image_vocab_size",
        "max_text_length",
        "image_length",
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
    )
    if missing := [k for k in required if k not in config]:
        raise WeightsError(f"the dalle-mini config.json lacks {missing}")
    if (
        config["encoder_ffn_dim"] != config["decoder_ffn_dim"]
        or config["encoder_attention_heads"] != config["decoder_attention_heads"]
    ):
        raise WeightsError("encoder and decoder of different widths are not supported")
    found = dict(
        text_vocab_size=config["encoder_vocab_size"],
        image_vocab_size=config["image_vocab_size"],
        text_seq_len=config["max_text_length"],
        image_seq_len=config["image_length"],
        dim=config["d_model"],
        encoder_depth=config["encoder_layers"],
        decoder_depth=config["decoder_layers"],
        num_heads=config["encoder_attention_heads"],
        glu_dim=config["encoder_ffn_dim"],
        start_token=config.get("decoder_start_token_id", config["image_vocab_size"]),
    )
    return DalleBartConfig(**{**found, **overrides})


_FLAX_LAYER = {
    "LayerNorm_0": "pre_self_attn_layer_norm",
    "LayerNorm_1": "self_attn_layer_norm",
    "FlaxBartAttention_0": "self_attn",
    "LayerNorm_2": "pre_encoder_attn_layer_norm",
    "LayerNorm_3": "encoder_attn_layer_norm",
    "FlaxBartAttention_1": "encoder_attn",
    "GLU_0/LayerNorm_0": "glu.ln0",
    "GLU_0/LayerNorm_1": "glu.ln1",
    "GLU_0/Dense_0": "glu.fc0",
    "GLU_0/Dense_1": "glu.fc1",
    "GLU_0/Dense_2": "glu.fc2",
}
_FLAX_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}
_SCANNED = re.compile(r"model/(encoder|decoder)/layers/FlaxBart(?:Encoder|Decoder)Layers/(.+)/(\w+)$")
_UNROLLED = re.compile(r"model/(encoder|decoder)/layers/FlaxBart(?:Encoder|Decoder)Layer_(\d+)/(.+)/(\w+)$")
_TOP = re.compile(r"model/(encoder|decoder)/(\w+)/(\w+)$")


def _flax_module(local: str) -> str:
    """A layer-local flax path ("FlaxBartAttention_1/q_proj", "GLU_0/Dense_2") -> min-dalle's module name."""
    if local.startswith("FlaxBartAttention_"):
        attn, _, proj = local.partition("/")
        return f"{_FLAX_LAYER[attn]}.{proj}"
    return _FLAX_LAYER[local]


def _own(t: Tensor, kernel: bool, copy: bool = False) -> Tensor:
    """flax Dense kernels are (in, out), torch weights (out, in). A layer split off a scan-stacked array is copied so
    that it owns its memory (safetensors refuses shared storage, and the stack can then be freed)."""
    if kernel:
        return t.transpose(-1, -2).contiguous()
    return t.clone() if copy else t


def flax_to_min_dalle(tree: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A dalle-mini flax parameter tree -> min-dalle's (encoder, decoder) state dicts (kernels transposed)."""
    stacks: dict[str, dict[str, Tensor]] = {"encoder": {}, "decoder": {}}
    params = tree.get("params", tree)  # flax checkpoints sometimes keep the "params" collection level
    for path, value in flatten(params):  # empties the tree: each converted tensor replaces its original
        kernel = path.endswith("/kernel")
        try:
            if path == "lm_head/kernel":
                stacks["decoder"]["lm_head.weight"] = _own(value, kernel)
            elif m := _SCANNED.match(path):
                name = f"{_flax_module(m[2])}.{_FLAX_LEAF[m[3]]}"
                for i, layer in enumerate(value.unbind(0)):  # scan stacks the layers on a leading axis
                    stacks[m[1]][f"layers.{i}.{name}"] = _own(layer, kernel, copy=True)
            elif m := _UNROLLED.match(path):
                stacks[m[1]][f"layers.{m[2]}.{_flax_module(m[3])}.{_FLAX_LEAF[m[4]]}"] = _own(value, kernel)
            elif m := _TOP.match(path):
                stacks[m[1]][f"{m[2]}.{_FLAX_LEAF[m[3]]}"] = _own(value, kernel)
            else:
                raise KeyError(path)
        except KeyError:
            raise WeightsError(f"unexpected parameter {path!r} in the flax weights") from None
    return stacks["encoder"], stacks["decoder"]


def build(state: dict[str, Tensor], config: DalleBartConfig, source: str) -> DalleBart:
    """A `DalleBart` holding `state` (ours), checked key by key and shape by shape, built without a second copy."""
    with torch.device("meta"):
        model = DalleBart(config)
    expected = model.state_dict()
    _fill_norm_scales(state, expected)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        details = "; ".join(
            filter(
                None,
                [
                    f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "",
                    f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}" if unexpected else "",
                    f"wrong shapes {wrong[:3]}{' ...' if len(wrong) > 3 else ''}" if wrong else "",
                ],
            )
        )
        raise WeightsError(
            f"{source} does not fit a DALL·E {config.dim}-wide, {config.encoder_depth}+"
            f"{config.decoder_depth}-layer model: {details}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_dalle_bart(
    path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu", **overrides
) -> DalleBart:
    """A `DalleBart` from a folder holding our `config.json` + `model.safetensors`, min-dalle's `encoder.pt` +
    `decoder.pt` (or `encoder_mini.pt` + `decoder_mini.pt`), or dalle-mini's `config.json` + `flax_model.msgpack`."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return DalleBart.from_pretrained(path, dtype=dtype, device=device)
    if (path / "flax_model.msgpack").is_file():
        config = config_from_flax(json.loads((path / "config.json").read_text()), **overrides)
        encoder, decoder = flax_to_min_dalle(read_flax_msgpack(path / "flax_model.msgpack", dtype, device))
        return build(min_dalle_to_ours(encoder, decoder), config, str(path / "flax_model.msgpack"))
    for suffix in ("", "_mini"):
        enc, dec = path / f"encoder{suffix}.pt", path / f"decoder{suffix}.pt"
        if enc.is_file() and dec.is_file():
            read = lambda f: read_torch_state_dict(f, dtype, device)  # noqa: E731
            state = min_dalle_to_ours(read(enc), read(dec))
            return build(state, config_from_state(state, **overrides), f"{enc} + {dec}")
    raise FileNotFoundError(
        f"no DALL·E Mini / Mega weights in {path}: expected model.safetensors + config.json (ours), "
        "flax_model.msgpack + config.json (huggingface.co/dalle-mini/dalle-mini or dalle-mega), or encoder.pt + "
        "decoder.pt (min-dalle's files, also encoder_mini.pt + decoder_mini.pt)"
    )
