"""Training conventions shared by every model: one CLI, checkpoints that survive crashes, safe loading.

Imports Lightning; `import core_attention` alone does not import this subpackage.
"""

from .callbacks import CompileBlocks, FiniteLossGuard, TrainingCurves
from .checkpoint_io import AtomicCheckpointIO, load_checkpoint
from .data import fixed_order_sampler
from .cli import VitDalleCLI, cli_main
from .optim import adamw_warmup_cosine
from .strategies import TransformerFSDPStrategy
from .weights import load_safetensors, load_state_dict_checked, save_safetensors

__all__ = [
    "AtomicCheckpointIO",
    "CompileBlocks",
    "FiniteLossGuard",
    "TrainingCurves",
    "TransformerFSDPStrategy",
    "VitDalleCLI",
    "adamw_warmup_cosine",
    "cli_main",
    "fixed_order_sampler",
    "load_checkpoint",
    "load_safetensors",
    "load_state_dict_checked",
    "save_safetensors",
]
