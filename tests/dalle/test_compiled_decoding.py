"""The compiled decoding step (`generate(compile=True)`, `--compile`): the same ids as eager decoding for the same
seed, for our DALL·E (sparse layers, guidance, priming) and for DALL·E Mini / Mega; compiled once per process and
shape, and the compile time shown once. Slow ones: each compile autotunes the products (tens of seconds here)."""

from __future__ import annotations

import logging

import pytest
import torch
from pretrained_fixtures import write_tiny_pretrained

from dalle.generate import generate_main
from dalle.pretrained import load_pretrained
from dalle.transformer.model import DALLE

LOGGER = "core_attention.compiled"


def compile_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("compiled ")]


@pytest.mark.slow
def test_dalle_compiled_ids_equal_eager(caplog) -> None:
    torch.manual_seed(0)
    sizes = dict(text_vocab_size=60, text_seq_len=6, image_vocab_size=32, image_grid_size=4, dim=32, num_heads=4)
    model = DALLE(**sizes, depth=3, attn_types=["full", "row", "conv"], conv_kernel_size=3).eval()
    text = torch.randint(1, 60, (3, 6), generator=torch.Generator().manual_seed(2))
    kwargs = dict(seed=7, guidance_scale=3.0, top_k=20, top_p=0.95, prime=torch.randint(0, 32, (3, 2)))
    eager = model.generate(text, **kwargs)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        compiled = model.generate(text, compile=True, **kwargs)
        assert torch.equal(compiled, eager)
        assert len(compile_lines(caplog)) == 1  # compiled, and said how long it took
        for seed in (8, 9):  # later calls of the same shape reuse the graph: no second compile
            again = {**kwargs, "seed": seed}
            assert torch.equal(model.generate(text, compile=True, **again), model.generate(text, **again))
        assert len(compile_lines(caplog)) == 1
    assert torch.equal(model.generate(text, **kwargs), eager)  # eager decoding is untouched by compiling


@pytest.mark.slow
def test_dalle_bart_compiled_ids_equal_eager(tmp_path) -> None:
    pipe = load_pretrained(write_tiny_pretrained(tmp_path))
    text = pipe.tokenizer.encode_batch(["a fox", "fox"], pipe.model.config.text_seq_len)
    uncond = pipe.tokenizer.encode_batch([""], pipe.model.config.text_seq_len)
    kwargs = dict(num_images=2, top_k=8, guidance_scale=4.0)
    eager = pipe.model.generate(text, uncond, generator=torch.Generator().manual_seed(3), **kwargs)
    compiled = pipe.model.generate(text, uncond, generator=torch.Generator().manual_seed(3), compile=True, **kwargs)
    assert compiled.shape == (4, 256) and torch.equal(compiled, eager)


@pytest.mark.slow
def test_cli_compile_writes_the_same_images_and_says_how_long_it_took(tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    argv = ["a large red circle in the top left", "-n", "2", "--seed", "3", "--device", "cpu", "--out", str(out)]
    assert generate_main(argv) == 0  # the shipped model
    eager = out.read_bytes()
    assert generate_main([*argv, "--compile"]) == 0
    assert out.read_bytes() == eager
    assert "compiled DALLE.decode_step in" in capsys.readouterr().err


def test_cli_bf16_where_emulated_says_so(tmp_path, capsys, monkeypatch) -> None:
    from core_attention import hardware

    monkeypatch.setattr(hardware, "cpu_flag_set", lambda: {"avx2"})
    out = tmp_path / "grid.png"
    assert generate_main(["a red circle", "-n", "1", "--device", "cpu", "--out", str(out), "--bf16"]) == 0
    assert "bf16 on this cpu is emulated" in capsys.readouterr().err
    assert generate_main(["a red circle", "-n", "1", "--device", "cpu", "--out", str(out)]) == 0  # auto: fp32
    assert "emulated" not in capsys.readouterr().err


def test_a_failed_compile_says_to_decode_without_it(monkeypatch) -> None:
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/g++",))  # no C++ compiler for inductor's CPU kernels
    monkeypatch.setattr(inductor, "force_disable_caches", True)  # compile, rather than load an earlier test's graph
    torch.manual_seed(0)
    model = DALLE(text_vocab_size=60, text_seq_len=6, image_vocab_size=32, image_grid_size=4, dim=32, depth=1).eval()
    with pytest.raises(RuntimeError, match=r"compiling DALLE.decode_step failed .*leave out --compile"):
        model.generate(torch.ones(1, 6, dtype=torch.long), seed=0, compile=True)
    assert model.generate(torch.ones(1, 6, dtype=torch.long), seed=0).shape == (1, 16)  # eager still works
