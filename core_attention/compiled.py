"""A decoding step compiled once: `torch.compile` over fixed shapes (a static KV cache), with frozen weights.

A cached decoding step multiplies a handful of rows by every weight matrix, so it is bound by reading the weights,
and in eager mode a third of it is spent outside the matrix products (norms, GELU, residual adds, dispatch).
Compiled as one graph, inductor fuses that element-wise work. With `freezing` the weights are constants of the graph,
and on CPU `max_autotune` times inductor's own C++ GEMM kernels against ATen's for each product's shape and keeps
the faster: the choice of kernel is measured on the machine at hand, not hard-coded.

Compiling takes a minute or so for a 12-layer step (the autotuning); it is paid once per process and per input
shape, and logged. Freezing captures the weights as they are at that moment: compile a model for generation after
its weights are loaded (`compiled_step` recompiles when its dtype or device changes, not when its values do).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def compile_options(device: torch.device) -> dict[str, object]:
    """Inductor options for a decoding step on `device`."""
    options: dict[str, object] = {"freezing": True, "max_autotune": True}
    if device.type == "cpu":
        options["max_autotune_gemm_backends"] = "CPP,ATEN"  # inductor's C++ GEMM templates beside MKL / oneDNN
    return options


class _Method(nn.Module):
    """One method of a model as a module's forward: `torch.compile` freezes the weights of the module it compiles."""

    def __init__(self, owner: nn.Module, method: str) -> None:
        super().__init__()
        self.owner = owner
        self.method = method

    def forward(self, *args: object) -> Tensor:
        return getattr(self.owner, self.method)(*args)


class CompiledStep:
    """`model.<method>(*args)` compiled with fixed shapes; the first call for each input shape compiles (logged)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.name = f"{type(model).__name__}.{method}"
        self.device = next(model.parameters()).device
        self.fn = torch.compile(_Method(model, method), fullgraph=True, dynamic=False)
        self.options = compile_options(self.device)
        self.compile_seconds: dict[tuple, float] = {}

    def run(self, *args: object) -> Tensor:
        # The options as a config patch around every call (any call may compile): passed as
        # torch.compile(options=...), `freezing` stays off and the step runs no faster than eager.
        with torch._inductor.config.patch(self.options):
            return self.fn(*args)

    def __call__(self, *args: object) -> Tensor:
        # The tensor arguments' shapes: a step's cache and weights follow from them and the model's dtype.
        key = tuple((tuple(a.shape), a.dtype) for a in args if isinstance(a, Tensor))
        if key in self.compile_seconds:
            return self.run(*args)
        log.info("compiling %s for inputs %s (once per process and shape; autotuning the products) ...", self.name, key)
        start = time.perf_counter()
        try:
            out = self.run(*args)
        except torch._dynamo.exc.BackendCompilerFailed as err:  # e.g. no C++ compiler for inductor's CPU kernels
            raise RuntimeError(
                f"compiling {self.name} failed ({str(err).splitlines()[0][:200]}): decode without compiling "
                "(leave out --compile / compile=True): same images, slower steps"
            ) from err
        self.compile_seconds[key] = seconds = time.perf_counter() - start
        log.info("compiled %s in %.1f s", self.name, seconds)
        return out


def compiled_step(model: nn.Module, method: str) -> Callable[..., Tensor]:
    """The model's compiled `method`, built on first use and kept on the model (per dtype and device)."""
    ref = next(model.parameters())
    key = (method, ref.dtype, ref.device)
    steps: dict = model.__dict__.setdefault("_compiled_steps", {})  # not a submodule: no state-dict entries
    if key not in steps:
        steps[key] = CompiledStep(model, method)
    return steps[key]
