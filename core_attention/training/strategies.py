"""Lightning strategies preconfigured for transformers built from core_attention."""

from __future__ import annotations

import atexit
from typing import Any, Literal

import torch
from pytorch_lightning.strategies import FSDPStrategy

from core_attention.block import TransformerBlock


def destroy_process_group_at_exit() -> None:
    """Tear the default process group down in order before the interpreter exits.

    Lightning does this for NCCL only. A gloo process group left to the interpreter's shutdown can abort a worker
    after training has finished ("terminate called without an active exception", SIGABRT under `ddp_spawn`), so every
    process that imports the training code destroys it too (registered below; a no-op without a process group).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


atexit.register(destroy_process_group_at_exit)


class TransformerFSDPStrategy(FSDPStrategy):
    """FSDP that shards every `TransformerBlock` as its own unit and can recompute its activations in backward.

    Select it from a config or the command line:
        --trainer.strategy=core_attention.training.TransformerFSDPStrategy
        --trainer.strategy.activation_checkpointing=true

    Args:
        activation_checkpointing: Recompute every `TransformerBlock`'s activations in the backward pass instead of
            storing them (less memory, about a third more compute).
        sharding_strategy: What FSDP shards: 'FULL_SHARD' (parameters, gradients and optimizer states),
            'SHARD_GRAD_OP' (gradients and optimizer states), 'NO_SHARD' (like DDP) or 'HYBRID_SHARD' (full sharding
            within a node, replication across nodes).
        state_dict_type: 'full' (one checkpoint file assembled on rank 0) or 'sharded' (a folder, one file per rank).
        **kwargs: Any other `FSDPStrategy` argument (`cpu_offload`, `mixed_precision`, `device_mesh`, ...).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        state_dict_type: Literal["full", "sharded"] = "full",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            auto_wrap_policy={TransformerBlock},
            activation_checkpointing_policy={TransformerBlock} if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            state_dict_type=state_dict_type,
            **kwargs,
        )
