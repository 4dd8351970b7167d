"""core_attention: the one place attention lives. Depends on torch only (training/: also Lightning)."""

from .attention import MultiHeadAttention, attend
from .block import TransformerBlock
from .cache import DecoderCache, KVCache
from .compiled import CompiledStep, compiled_step
from .glu import GluMlp
from .layers import DropPath, LayerScale, Linear, Mlp, QuickGELU, init_weights
from .masks import causal_mask, key_padding_mask, mask_to_text
from .normformer import NormFormerBlock
from .positions import (
    AxialRotaryEmbedding,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    grid_coords,
    resample_pos_embed,
    sincos_2d,
    sinusoidal_table,
)
from .seq2seq import Seq2SeqTransformer
from .stacks import Decoder, Encoder

__all__ = [
    "AxialRotaryEmbedding",
    "CompiledStep",
    "Decoder",
    "DecoderCache",
    "DropPath",
    "Encoder",
    "GluMlp",
    "KVCache",
    "LayerScale",
    "LearnedPositionalEmbedding",
    "Linear",
    "Mlp",
    "MultiHeadAttention",
    "NormFormerBlock",
    "QuickGELU",
    "attend",
    "RotaryEmbedding",
    "Seq2SeqTransformer",
    "SinusoidalPositionalEncoding",
    "TransformerBlock",
    "apply_rotary",
    "causal_mask",
    "compiled_step",
    "grid_coords",
    "init_weights",
    "key_padding_mask",
    "mask_to_text",
    "resample_pos_embed",
    "sincos_2d",
    "sinusoidal_table",
]
