"""vit.clip.CLIPTokenizer gives open_clip's ids (the reference, dev extra) on text that exercises every step."""

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from vit.clip import CLIPTokenizer
from vit.clip.tokenizer import clean

TEXTS = [
    "a photo of a cat",
    "A Photo OF  a   DOG!!!",  # case, whitespace runs, punctuation runs
    "“curly” quotes – and ‘more’…",  # ftfy straightens the quotes
    "café naïve über straße",  # non-ASCII letters: multi-byte BPE
    "日本語のテキスト",
    "emoji 🐱🐶👍🏽 and ZWJ 👩‍👩‍👧",
    "&amp;lt;b&amp;gt; html &quot;x&quot;",  # unescaped twice
    "numbers 12345 and 3.14",  # digits are one token each
    "it's they're we'll I'd",  # contractions
    "mojibake: Ã©tÃ©",  # ftfy repairs it to "été"
    "tab\tnew\nline\r\n end",
    "<end_of_text> spelled out",
    "Ĳ ligature ﬁ",
    "",
    "   ",
    "x" * 500,  # one over-long word
    " ".join(["word"] * 100),  # over-long prompt: cut, last id replaced by the end token
]


@pytest.fixture(scope="module")
def tokenizers():
    return CLIPTokenizer(), SimpleTokenizer()


def test_ids_equal_open_clip(tokenizers):
    ours, ref = tokenizers
    ids = ours(TEXTS)
    assert ids.shape == (len(TEXTS), 77) and ids.dtype == torch.long
    for text, row, expected in zip(TEXTS, ids, ref(TEXTS)):
        assert row.tolist() == expected.tolist(), text


def test_truncation_keeps_the_end_token_and_context_length(tokenizers):
    ours, _ = tokenizers
    row = ours(" ".join(["word"] * 100))[0]
    assert row[0] == ours.sot_id and row[-1] == ours.eot_id and (row != 0).all()
    assert ours("a cat", context_length=8).shape == (1, 8)
    assert ours.vocab_size == 49408


def test_decode_and_clean(tokenizers):
    ours, _ = tokenizers
    assert ours.decode(ours("A Photo of a CAT!")[0]) == "a photo of a cat !"
    assert ours.decode(ours("café 🐱")[0]) == "café 🐱"
    assert clean("  “Hi”&amp;amp;  there ") == '"hi"& there'


def test_bad_inputs_are_clear(tokenizers):
    ours, _ = tokenizers
    with pytest.raises(ValueError, match="empty list of prompts"):
        ours([])
    with pytest.raises(TypeError, match="prompts must be strings"):
        ours(["ok", 3])


def test_random_mixed_script_text_matches(tokenizers):
    """Seeded random strings over scripts, emoji, combining marks, entities, mojibake and odd whitespace (5000 of
    these matched when this was written; 300 keep the test quick)."""
    import random

    ours, ref = tokenizers
    rng = random.Random(0)
    pools = [
        "abcXYZ",
        "0123456789",
        " \t\n\u00a0\u2003",
        "!\"#$%&'()*+,-./:;<=>?@[]^_`{|}~",
        "éßÆøĲﬁ",
        "日本語한국어",
        "😀🐱🏽👩‍👧🇯🇵",
        "“”‘’–—…«»",
        "&amp;&lt;&quot;&#39;",
        "Ã©â€™",
        "\u0301\u200b\u200d\ufeff",
        "αβЖЗ",
    ]
    texts = ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    assert torch.equal(ours(texts), ref(texts))
