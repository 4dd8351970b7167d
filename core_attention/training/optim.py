"""The optimisation recipe every LightningModule shares: timm's AdamW, warmup + cosine, one set of option names."""

from __future__ import annotations

from typing import Any

from torch import nn


def adamw_warmup_cosine(
    model: nn.Module,
    total_steps: float,
    *,
    lr: float,
    min_lr: float,
    weight_decay: float,
    warmup_lr: float,
    warmup_steps: int = 0,
    warmup_fraction: float | None = None,
    **optimizer_kwargs: Any,
) -> dict[str, Any]:
    """A ``configure_optimizers`` result: AdamW without weight decay on norms, biases and the model's
    ``no_weight_decay()`` names, then ``warmup_lr`` -> ``lr`` linearly and a cosine down to ``min_lr``, per step.

    ``total_steps`` is ``trainer.estimated_stepping_batches``; ``warmup_fraction`` (of it), when given, overrides
    ``warmup_steps``. ``optimizer_kwargs`` go to timm's ``create_optimizer_v2`` (``betas``, ``layer_decay``, ...).
    timm schedulers step by update count: the LightningModule needs
    ``def lr_scheduler_step(self, scheduler, metric): scheduler.step_update(num_updates=self.global_step)``.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    opt = create_optimizer_v2(
        model, opt="adamw", lr=lr, weight_decay=weight_decay, filter_bias_and_bn=True, **optimizer_kwargs
    )
    if total_steps == float("inf"):
        raise ValueError("the LR schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
    total = int(total_steps)
    warmup = int(round(warmup_fraction * total)) if warmup_fraction is not None else warmup_steps
    warmup = min(warmup, max(total - 1, 0))
    sched = CosineLRScheduler(
        opt,
        t_initial=max(total - warmup, 1),
        lr_min=min_lr,
        warmup_t=warmup,
        warmup_lr_init=warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
