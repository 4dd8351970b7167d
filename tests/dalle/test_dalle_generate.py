"""DALL·E sampling: filters, guidance, cached == uncached, seeds, priming, reranking, validation, the CLI."""

from __future__ import annotations

import pytest
import torch

from dalle.generate import generate_main
from dalle.pipeline import generate_images, load_reranker
from dalle.transformer.model import DALLE
from dalle.transformer.sampling import filter_logits, guide_logits, sample_logits, sampling_logits
from dalle.transformer.tokenizer import BPETokenizer
from dalle.vae.dvae import DiscreteVAE

T, VI = 6, 32
CAPTIONS = ["a red circle in the top left", "a big blue square at the bottom", "a green cross on the right"] * 4


def tiny_model(**overrides) -> DALLE:
    torch.manual_seed(0)
    cfg = dict(text_vocab_size=60, text_seq_len=T, image_vocab_size=VI, image_grid_size=4, dim=32, depth=2, num_heads=4)
    return DALLE(**{**cfg, **overrides}).eval()


@pytest.fixture(scope="module")
def pipeline() -> tuple[DALLE, BPETokenizer, DiscreteVAE]:
    tokenizer = BPETokenizer.train(CAPTIONS, 200)
    torch.manual_seed(0)
    vae = DiscreteVAE(image_size=16, num_tokens=VI, downsample=4, hidden_dim=8, codebook_dim=8).eval()
    return tiny_model(text_vocab_size=tokenizer.vocab_size, text_seq_len=8), tokenizer, vae


def text_batch(b: int = 3) -> torch.Tensor:
    text = torch.randint(1, 60, (b, T), generator=torch.Generator().manual_seed(2))
    text[:, 4:] = 0
    return text


# ------------------------------------------------------------------------------------------------ filters


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, False, True, False]]
    assert torch.equal(filter_logits(logits, top_k=10), logits)


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [[True, False, False, False]]
    assert filter_logits(logits, top_p=0.79).isfinite().tolist() == [[True, True, False, False]]
    assert filter_logits(logits, top_p=0.81).isfinite().tolist() == [[True, True, True, False]]
    assert filter_logits(logits, top_p=1e-6).isfinite().sum() == 1  # the top token always survives
    shuffled = logits[:, [2, 0, 3, 1]]  # works in any vocabulary order
    assert filter_logits(shuffled, top_p=0.79).isfinite().tolist() == [[False, True, False, True]]


def test_guidance_formula_and_sampling() -> None:
    cond, uncond = torch.randn(2, 7), torch.randn(2, 7)
    torch.testing.assert_close(guide_logits(torch.cat([cond, uncond]), 3.0), uncond + 3 * (cond - uncond))
    torch.testing.assert_close(guide_logits(torch.cat([cond, uncond]), 1.0), cond)
    peaked = torch.full((4, 10), -1e4)
    peaked[:, 3] = 0
    assert sample_logits(peaked).tolist() == [3, 3, 3, 3]
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    flat = torch.zeros(4, 100)
    assert torch.equal(sample_logits(flat, generator=g1), sample_logits(flat, generator=g2))


def test_guidance_stays_within_the_conditional_filter() -> None:
    cond = torch.tensor([[4.0, 3.0, 0.0, -1.0]])
    uncond = torch.tensor([[4.0, 3.0, -9.0, 0.0]])  # token 2 is very unlikely without the prompt
    both = torch.cat([cond, uncond])
    assert guide_logits(both, 3.0).argmax().item() == 2  # unfiltered guidance boosts it above the prompt's choice
    guided = sampling_logits(both, top_k=2, guidance_scale=3.0)
    assert guided.isfinite().tolist() == [[True, True, False, False]]
    torch.testing.assert_close(guided[:, :2], guide_logits(both, 3.0)[:, :2])
    assert sampling_logits(both, top_p=0.5, guidance_scale=3.0).isfinite().sum() == 1
    torch.testing.assert_close(sampling_logits(cond, temperature=2.0), cond / 2)


# ------------------------------------------------------------------------------------------------ model.generate


def test_incremental_logits_equal_teacher_forced_logits() -> None:
    model = tiny_model(attn_types=("row", "full", "column"), depth=3)
    text, image = text_batch(2), torch.randint(0, VI, (2, 16))
    full = model(text, image).image_logits  # (B, N, V)
    cache = model.decoder.init_cache(2, model.config.seq_len)
    with torch.no_grad():
        h = model.decoder(model.embed_text(text), mask=model.layer_masks(0, T + 1), cache=cache)
        steps = [model.image_head(h[:, -1])]
        for j in range(15):
            p = T + 1 + j
            h = model.decoder(model.embed_image(image[:, j : j + 1], j), mask=model.layer_masks(p, p + 1), cache=cache)
            steps.append(model.image_head(h[:, -1]))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_types", [("full",), ("row", "column", "conv")])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("prime_len", [0, 4])
def test_cached_generation_equals_uncached(attn_types, guidance_scale, prime_len) -> None:
    model = tiny_model(attn_types=attn_types, conv_kernel_size=3, depth=3)
    text = text_batch()
    prime = torch.randint(0, VI, (3, prime_len)) if prime_len else None
    kwargs = dict(seed=7, guidance_scale=guidance_scale, prime=prime, top_k=20, top_p=0.95, temperature=0.9)
    cached = model.generate(text, **kwargs)
    uncached = model.generate(text, use_cache=False, **kwargs)
    assert cached.shape == (3, 16) and cached.dtype == torch.long
    assert torch.equal(cached, uncached)
    if prime is not None:
        assert torch.equal(cached[:, :prime_len], prime)


def test_seeds_and_inputs_untouched() -> None:
    model = tiny_model()
    text, prime = text_batch(), torch.randint(0, VI, (3, 4))
    text_copy, prime_copy = text.clone(), prime.clone()
    a = model.generate(text, seed=1, guidance_scale=2.0, prime=prime)
    b = model.generate(text, seed=1, guidance_scale=2.0, prime=prime)
    c = model.generate(text, seed=2, guidance_scale=2.0, prime=prime)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(text, text_copy) and torch.equal(prime, prime_copy)
    assert torch.equal(
        model.generate(text, generator=torch.Generator().manual_seed(1), guidance_scale=2.0, prime=prime), a
    )


def test_bf16_generation_runs() -> None:
    model = tiny_model().to(torch.bfloat16)
    ids = model.generate(text_batch(), seed=0, guidance_scale=3.0)
    assert ids.shape == (3, 16) and 0 <= int(ids.min()) and int(ids.max()) < VI


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(temperature=-1.0), "temperature must be > 0"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=0), "top_k must be an integer >= 1"),
        (dict(guidance_scale=-1.0), "guidance_scale must be >= 0"),
        (dict(prime=torch.zeros(3, 16, dtype=torch.long)), r"n <= 15"),
        (dict(prime=torch.zeros(2, 4, dtype=torch.long)), "prime holds 2 images but text holds 3"),
    ],
)
def test_generate_rejects_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_model().generate(text_batch(), **kwargs)


def test_too_many_rows_fail_before_allocating(monkeypatch) -> None:
    import dalle.transformer.model

    model = tiny_model()
    monkeypatch.setattr(dalle.transformer.model, "available_memory", lambda device: 1 << 20)  # 1 MiB free
    assert model.cache_bytes(4096) > 1 << 20
    with pytest.raises(MemoryError, match=r"GiB is free.*--batch-size"):
        model.generate(torch.zeros(4096, T, dtype=torch.long), guidance_scale=3.0)


def test_too_many_images_fail_before_generating(pipeline, monkeypatch) -> None:
    import dalle.pipeline
    import dalle.transformer.model

    model, tokenizer, vae = pipeline
    for module in (dalle.transformer.model, dalle.pipeline):  # the model's batch check and the pipeline's output check
        monkeypatch.setattr(module, "available_memory", lambda device: 64 << 20)  # 64 MiB free
    with pytest.raises(MemoryError, match=r"ask for fewer images \(-n\)"):
        generate_images(model, tokenizer, vae, "a red circle", num_images=100_000, batch_size=8)


# ------------------------------------------------------------------------------------------------ text level


def test_generate_images_prompts_batches_and_seeds(pipeline) -> None:
    model, tokenizer, vae = pipeline
    result = generate_images(
        model, tokenizer, vae, ["a red circle", "a blue square"], num_images=3, batch_size=4, seed=3
    )
    assert result.images.shape == (2, 3, 3, 16, 16) and result.ids.shape == (2, 3, 16) and result.seed == 3
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0
    again = generate_images(
        model, tokenizer, vae, ["a red circle", "a blue square"], num_images=3, batch_size=4, seed=3
    )
    assert torch.equal(again.ids, result.ids)
    torch.testing.assert_close(vae.decode(result.ids[0]), result.images[0])


def test_prompt_validation(pipeline) -> None:
    model, tokenizer, vae = pipeline
    with pytest.raises(ValueError, match="unconditional=True"):
        generate_images(model, tokenizer, vae, ["a red circle", ""])
    with pytest.raises(TypeError, match="str or a list of str"):
        generate_images(model, tokenizer, vae, 3)
    with pytest.raises(TypeError, match=r"prompts\[1\] is None \(NoneType\): every prompt must be a str"):
        generate_images(model, tokenizer, vae, ["a red circle", None])
    with pytest.warns(UserWarning, match="every character of '日本語 😀' is unknown to this tokenizer"):
        generate_images(model, tokenizer, vae, "日本語 😀", seed=0)
    with pytest.raises(ValueError, match="no prompts"):
        generate_images(model, tokenizer, vae, [])
    # the empty prompt is fine where guidance runs the unconditional pass anyway, or when asked for explicitly
    assert generate_images(model, tokenizer, vae, "", guidance_scale=2.0, top_p=0.9, seed=0).images.shape[:2] == (1, 1)
    assert generate_images(model, tokenizer, vae, "", unconditional=True, seed=0).images.shape[:2] == (1, 1)
    with pytest.warns(UserWarning, match="prompt cut from"):
        generate_images(
            model, tokenizer, vae, "a red circle in the top left and a big blue square on the right", seed=0
        )


def test_priming_keeps_the_top_rows(pipeline) -> None:
    model, tokenizer, vae = pipeline
    image = torch.rand(3, 16, 16)
    result = generate_images(
        model, tokenizer, vae, "a red circle", num_images=2, prime_image=image, prime_rows=2, seed=0
    )
    assert torch.equal(result.ids[0, :, :8], vae.encode(image[None])[:, :2].flatten(1).expand(2, -1))
    with pytest.raises(ValueError, match="prime image is 32x32 but this model makes 16x16"):
        generate_images(model, tokenizer, vae, "a red circle", prime_image=torch.rand(3, 32, 32), prime_rows=2)
    with pytest.raises(ValueError, match=r"prime_rows must be in \[1, 3\]"):
        generate_images(model, tokenizer, vae, "a red circle", prime_image=image, prime_rows=4)


def test_progress_counts_every_sampled_image_token(pipeline) -> None:
    model, tokenizer, vae = pipeline
    n, calls = model.config.image_seq_len, []  # 16 tokens per image
    kwargs = dict(num_images=3, batch_size=4, seed=0, guidance_scale=2.0, top_k=8)
    result = generate_images(
        model, tokenizer, vae, ["a red circle", "a blue square"], **kwargs, progress=lambda *a: calls.append(a)
    )
    assert len(calls) == 2 * n and calls[-1] == (6 * n, 6 * n)  # two batches (4 + 2 images), a call per position
    assert all(a[0] < b[0] for a, b in zip(calls, calls[1:]))
    assert torch.equal(
        result.ids, generate_images(model, tokenizer, vae, ["a red circle", "a blue square"], **kwargs).ids
    )
    calls.clear()
    image = torch.rand(3, 16, 16)
    generate_images(
        model,
        tokenizer,
        vae,
        "a red circle",
        num_images=2,
        prime_image=image,
        prime_rows=1,
        progress=lambda *a: calls.append(a),
    )
    rest = n - 4  # the first of 4 token rows is kept
    assert len(calls) == rest and calls[-1] == (2 * rest, 2 * rest)
    calls.clear()
    generate_images(model, tokenizer, vae, "a red circle", use_cache=False, progress=lambda *a: calls.append(a))
    assert calls == [(j, n) for j in range(1, n + 1)]


def test_reranking_keeps_the_best_candidates(pipeline) -> None:
    model, tokenizer, vae = pipeline
    seen = {}

    def brightness(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        seen["prompts"] = prompts
        return images.mean(dim=(1, 2, 3))

    result = generate_images(
        model, tokenizer, vae, ["a red circle", "a cross"], num_images=2, candidates=5, rerank=brightness, seed=0
    )
    assert seen["prompts"] == ["a red circle"] * 5 + ["a cross"] * 5
    assert result.images.shape[:2] == (2, 2) and result.scores.shape == (2, 2)
    everything = generate_images(model, tokenizer, vae, ["a red circle", "a cross"], num_images=5, seed=0)
    best = everything.images.mean(dim=(2, 3, 4)).topk(2, dim=1).values
    torch.testing.assert_close(result.scores, best)
    assert (result.scores[:, 0] >= result.scores[:, 1]).all()
    with pytest.raises(ValueError, match="needs a reranker"):
        generate_images(model, tokenizer, vae, "a cross", num_images=2, candidates=4)
    with pytest.raises(ValueError, match="one score per image"):
        generate_images(
            model, tokenizer, vae, "a cross", num_images=1, candidates=2, rerank=lambda p, im: torch.zeros(3)
        )


def test_load_reranker_by_name() -> None:
    assert load_reranker("torch:ones_like") is torch.ones_like
    with pytest.raises(ValueError, match="module:function"):
        load_reranker("no_colon")
    with pytest.raises(ValueError, match="cannot load reranker"):
        load_reranker("torch:no_such_function")


def test_cli_writes_grid_and_single_images(pipeline, tmp_path, capsys) -> None:
    from PIL import Image

    model, tokenizer, vae = pipeline
    folder = tmp_path / "export"
    model.save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    vae.save_pretrained(folder / "vae")
    out = tmp_path / "grid.png"
    argv = [
        "a red circle",
        "a blue square",
        "-n",
        "3",
        "--checkpoint",
        str(folder),
        "--out",
        str(out),
        "--seed",
        "4",
        "--guidance-scale",
        "2",
        "--top-k",
        "8",
        "--device",
        "cpu",
    ]
    assert generate_main(argv) == 0
    assert "seed 4" in capsys.readouterr().out
    grid = Image.open(out)
    assert grid.size == (3 * 18 + 2, 2 * 18 + 2)  # 16 px images, 2 px padding
    singles = sorted((tmp_path / "grid").glob("*.png"))
    assert [p.name for p in singles][:2] == ["grid_00_00.png", "grid_00_01.png"] and len(singles) == 6
    first = singles[0].read_bytes()
    assert generate_main(argv) == 0  # same seed -> the same images
    assert singles[0].read_bytes() == first
    prime = tmp_path / "prime.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(prime)
    with pytest.raises(ValueError, match="pass --prime-resize"):
        generate_main([*argv, "--prime-image", str(prime), "--prime-rows", "1"])
    assert generate_main([*argv, "--prime-image", str(prime), "--prime-rows", "1", "--prime-resize"]) == 0
    (tmp_path / "a_file").write_text("")
    capsys.readouterr()
    with pytest.raises(PermissionError, match="cannot write the grid image .*a_file/grid.png"):
        generate_main([*argv[:-6], "--out", str(tmp_path / "a_file" / "grid.png")])
    assert "seed" not in capsys.readouterr().out  # refused before generating
