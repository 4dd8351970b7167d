"""The reuse examples: each learns its toy task and uses the core the documented way."""

import torch

from core_attention.examples import gpt, text_classifier


def test_text_classifier_learns_majority_and_ignores_padding():
    model, accuracy = text_classifier.train(steps=250)
    assert accuracy > 0.95
    tokens = torch.tensor([[2, 2, 1, 0, 0]])
    padded_more = torch.tensor([[2, 2, 1, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(model(tokens), model(padded_more), atol=1e-5, rtol=1e-5)


def test_gpt_learns_corpus_and_cached_generation_matches_uncached():
    model, chars = gpt.train(steps=250)
    prompt = torch.tensor([[chars.index(c) for c in "the dog sat on "]])
    cached = model.generate(prompt, 12, temperature=0)
    assert torch.equal(cached, model.generate(prompt, 12, temperature=0, use_cache=False))
    assert "".join(chars[i] for i in cached[0]).startswith("the dog sat on the log")
    sampled = [model.generate(prompt, 8, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(sampled[0], sampled[1])
