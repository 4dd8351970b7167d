"""Which dtype runs fast where: bf16 only where the device computes it natively, fp32 elsewhere (said so)."""

import pytest
import torch

from core_attention import hardware


@pytest.mark.parametrize(
    ("flags", "native"),
    [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True), (set(), False)],
)
def test_auto_dtype_is_bf16_only_where_it_is_native(monkeypatch, flags, native):
    monkeypatch.setattr(hardware, "cpu_flag_set", lambda: flags)
    assert hardware.native_bf16("cpu") is native
    assert hardware.resolve_dtype("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert hardware.resolve_dtype("bf16", "cpu") == torch.bfloat16  # asked for: kept, with a note where emulated
    note = hardware.emulated_bf16_note(torch.bfloat16, "cpu")
    assert (note is None) is native
    assert native or "emulated" in note
    assert hardware.emulated_bf16_note(torch.float32, "cpu") is None
    assert ("native bf16: True" in hardware.cpu_flags()) is native


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        hardware.resolve_dtype("float8", "cpu")
