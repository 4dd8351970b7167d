"""Convert OpenAI's released dVAE (pickled ``dall_e`` modules, ``encoder.pkl`` / ``decoder.pkl``) to safetensors, once.

    python -m dalle.vae.convert_openai encoder.pkl decoder.pkl dall_e_dvae.safetensors

WARNING: the released files are whole pickled Python modules. Reading them UNPICKLES, which runs code from the
file: do this only for the files you downloaded from OpenAI yourself. It needs the ``dall_e`` package installed
(``pip install dall-e==0.1``). The result is a plain ``.safetensors`` file (config in its metadata) that
``DiscreteVAE.from_pretrained(path)`` loads without unpickling anything, with ``architecture="openai"``.
If OUT does not end in ``.safetensors`` it is a directory written by ``save_pretrained``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from dalle.vae.dvae import DiscreteVAE, config_from_state_dict

UNPICKLE_WARNING = (
    "WARNING: unpickling {path}. Pickle files run code when loaded; only convert the dall_e files you "
    "downloaded from OpenAI (https://cdn.openai.com/dall-e/encoder.pkl, decoder.pkl) or made yourself."
)


def _load_pickled_module(path: str) -> torch.nn.Module:
    try:
        import dall_e  # noqa: F401  - the pickles reference dall_e.encoder.Encoder / dall_e.decoder.Decoder
    except ImportError as err:
        raise SystemExit("converting the released dVAE needs the dall_e package: pip install dall-e==0.1") from err
    print(UNPICKLE_WARNING.format(path=path), file=sys.stderr, flush=True)
    obj = torch.load(path, map_location="cpu", weights_only=False)  # trusted input only, see the warning
    if isinstance(obj, torch.nn.Module):
        return obj
    raise SystemExit(f"{path} does not hold a torch module (got {type(obj).__name__})")


def convert(encoder_path: str, decoder_path: str, out: str, image_size: int = 256) -> DiscreteVAE:
    """Loads the pickled modules, checks they give a strict ``DiscreteVAE(architecture='openai')``, writes ``out``."""
    encoder = _load_pickled_module(encoder_path)
    decoder = _load_pickled_module(decoder_path)
    state = {f"encoder.{k}": v.detach().float() for k, v in encoder.state_dict().items()}
    state.update({f"decoder.{k}": v.detach().float() for k, v in decoder.state_dict().items()})
    if "encoder.blocks.input.w" not in state:
        raise SystemExit(f"{encoder_path} is not a dall_e Encoder (no 'blocks.input.w' parameter)")
    config = config_from_state_dict(state, image_size=image_size)
    vae = DiscreteVAE.from_config(config)
    vae.load_weights(state, strict=True)
    if out.endswith(".safetensors"):
        from core_attention.io import save_safetensors

        save_safetensors(out, vae.state_dict(), config.to_dict())
    else:
        vae.save_pretrained(out)
    return vae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dalle.vae.convert_openai",
        description="Convert OpenAI's pickled dall_e Encoder/Decoder to safetensors. "
        "UNPICKLES its inputs: trusted files only.",
    )
    parser.add_argument("encoder", help="encoder.pkl from OpenAI's release")
    parser.add_argument("decoder", help="decoder.pkl from OpenAI's release")
    parser.add_argument("out", help="output .safetensors file (or a directory for save_pretrained)")
    parser.add_argument("--image-size", type=int, default=256, help="image size to record in the config (default 256)")
    args = parser.parse_args(argv)
    vae = convert(args.encoder, args.decoder, args.out, image_size=args.image_size)
    n = sum(p.numel() for p in vae.parameters())
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters, config {vae.config.to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
