"""What the machine can do fast: its CPU's vector extensions, and whether bf16 arithmetic is native there."""

from __future__ import annotations

import platform

import torch

# CPU flags (Linux /proc/cpuinfo names) that give bf16 matrix products in hardware; without them bf16 is emulated
# (converted to fp32 and back around every product), several times slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flag_set() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo is not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_flags() -> str:
    """The CPU's model and its vector-extension flags (avx*, amx*, fma, f16c): printed beside every benchmark."""
    flags = cpu_flag_set()
    wanted = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}; flags: {' '.join(wanted) or 'none of avx*/amx*'}; native bf16: {native_bf16('cpu')}"


def native_bf16(device: torch.device | str) -> bool:
    """True where bf16 matrix products run in hardware: CUDA GPUs that support bf16, CPUs with AVX-512-BF16 / AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(flag in cpu_flag_set() for flag in NATIVE_BF16_FLAGS)
    return False


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The dtype to run a model in: "fp32", "bf16", "fp16" as asked, or "auto": bf16 where it is native on `device`
    (`native_bf16`), fp32 elsewhere, since emulated bf16 is slower than fp32 and only saves memory."""
    if name == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


def emulated_bf16_note(dtype: torch.dtype, device: torch.device | str) -> str | None:
    """A line for a user who asked for bf16 where it is emulated (it halves the memory, but runs slower), or None."""
    if dtype != torch.bfloat16 or native_bf16(device):
        return None
    return (
        f"note: bf16 on this {torch.device(device).type} is emulated (no AVX-512-BF16 / AMX): it halves the weights' "
        "memory but runs several times slower than fp32; leave out --dtype bf16 to run in fp32"
    )
