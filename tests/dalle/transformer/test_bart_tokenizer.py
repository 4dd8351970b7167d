"""DALL·E Mini / Mega's tokenizer against min-dalle's `TextTokenizer` on a synthetic BART-style vocabulary."""

from __future__ import annotations

import json

import pytest

from dalle.transformer.bart_tokenizer import BartTokenizer

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "f"),
    ("o", "x"),
    ("Ġf", "ox"),
    ("Ġ", "a"),
    ("i", "n"),
    ("Ġ", "s"),
    ("n", "o"),
    ("no", "w"),
    ("Ġs", "now"),
    ("Ġ", "r"),
    ("e", "d"),
    ("Ġr", "ed"),
    ("a", "t"),
    ("c", "at"),
    ("Ġ", "cat"),
    ("Ġ", "h"),
    ("e", "a"),
    ("r", "t"),
    ("ea", "rt"),
    ("Ġh", "eart"),
]
PROMPTS = [
    "a painting of a fox in the snow",
    "The RED  fox   ",  # upper case, runs of spaces, trailing spaces
    "  Le café à Paris",  # leading spaces, accents dropped (not transliterated)
    "a 🦊 in the ❄️ snow ❤",  # emoji spelled out as words
    "İstanbul çay",  # "İ".lower() is "i" + a combining dot, which is then dropped
    "tab\there and new\nline",  # raw control characters are not in BART's vocabulary: <unk>
    "",
    "x " * 80,  # longer than 64 tokens: cut after framing, </s> lost
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    chars = [chr(c) for c in range(32, 127) if chr(c) != " "] + ["Ġ"]
    vocab = {t: i for i, t in enumerate(SPECIALS + chars + ["".join(m) for m in MERGES])}
    path = tmp_path_factory.mktemp("bart_tok")
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    return path, vocab


def test_ids_equal_min_dalle(files):
    from min_dalle.text_tokenizer import TextTokenizer  # imports emoji only: no torch state changes

    path, vocab = files
    merges = (path / "merges.txt").read_text().split("\n")[1:-1]  # min-dalle's own reading of merges.txt
    ref = TextTokenizer(vocab, merges)
    ours = BartTokenizer.from_folder(path)
    for prompt in PROMPTS:
        assert ours.tokenize(prompt) == ref.tokenize(prompt), prompt
    assert ours.tokenize("the fox") == [0, vocab["Ġthe"], vocab["Ġfox"], 2]


def test_encode_pads_and_cuts_like_the_reference(files):
    path, vocab = files
    tok = BartTokenizer.from_folder(path)
    empty = tok.encode("")
    assert empty[:2].tolist() == [0, 2] and (empty[2:] == 1).all() and empty.shape == (64,)
    with pytest.warns(UserWarning, match="prompt cut from 162 to 64 tokens"):
        long = tok.encode("x " * 80)
    assert long.shape == (64,) and long[0] == 0 and 2 not in long.tolist()  # no </s>: cut like min-dalle
    assert tok.encode_batch(["the fox", ""]).shape == (2, 64)


def test_tokenizer_json_gives_the_same_ids(files, tmp_path):
    """HF's tokenizer.json (dalle-mini's repos ship one) holds the same vocabulary and merges."""
    path, vocab = files
    merges = [line for line in (path / "merges.txt").read_text().split("\n")[1:] if line]
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges}}))
    ours, from_json = BartTokenizer.from_folder(path), BartTokenizer.from_folder(tmp_path)
    for prompt in PROMPTS:
        assert from_json.tokenize(prompt) == ours.tokenize(prompt)


def test_missing_files_name_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json \\+ merges.txt"):
        BartTokenizer.from_folder(tmp_path)
