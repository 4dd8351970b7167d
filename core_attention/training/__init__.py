"""Training conventions shared by every model: one CLI, checkpoints that survive crashes, data-loading rules.

Imports Lightning; only the modules that train import this subpackage (`import core_attention`, `import vit` and
the models do not). Reading and writing weights lives in `core_attention.io`.
"""

from .callbacks import CompileBlocks, FiniteLossGuard, TrainingCurves
from .checkpoint_io import AtomicCheckpointIO
from .cli import VitDalleCLI, cli_main
from .data import fixed_order_sampler
from .optim import adamw_warmup_cosine
from .strategies import TransformerFSDPStrategy

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
]
