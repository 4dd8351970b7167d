"""DALL·E Mini / Mega's text tokenizer: BART's BPE (`vocab.json` + `merges.txt`) through HF `tokenizers`, with
min-dalle's normalisation.

min-dalle spells emoji out as words (`emoji.demojize`, no delimiters), lower-cases, drops every non-ASCII character,
splits on spaces (runs of spaces count as one) and encodes each word as "Ġ" + its characters, then frames the ids as
``<s> ... </s>``, cuts them to 64 and pads with ``<pad>``. The characters stay as they are (no byte-level remapping),
so a tab or a newline, absent from BART's vocabulary in that form, becomes ``<unk>``, as in the reference.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import emoji
import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

__all__ = ["BartTokenizer"]

WORD_START = "Ġ"  # BART's marker for "preceded by a space": chr(ord(" ") + 256)


class BartTokenizer:
    """`encode_batch(prompts, 64) -> (P, 64)` ids; `""` gives the unconditional prompt ``<s> </s> <pad> ...``."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> None:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Sequence(
            [
                normalizers.Lowercase(),  # before dropping non-ASCII, as min-dalle does ("İ".lower() keeps an "i")
                normalizers.Replace(Regex(r"[^\x00-\x7F]"), ""),
                normalizers.Replace(Regex(" +"), " "),
                normalizers.Replace(Regex("^ | $"), ""),
                normalizers.Replace(" ", WORD_START),
                normalizers.Prepend(WORD_START),
            ]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Split(WORD_START, behavior="merged_with_next")
        self.tokenizer = tokenizer
        self.bos, self.pad, self.eos = (vocab[t] for t in ("<s>", "<pad>", "</s>"))
        self.vocab_size = len(vocab)

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> BartTokenizer:
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf8"))
        lines = Path(merges_file).read_text(encoding="utf8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> BartTokenizer:
        """`vocab.json` + `merges.txt` (dalle-mini's repos, min-dalle's Mega files), min-dalle's `*_mini` pair, or
        the vocabulary and merges inside a HF `tokenizer.json`."""
        folder = Path(folder)
        for suffix in ("", "_mini"):
            vocab, merges = folder / f"vocab{suffix}.json", folder / f"merges{suffix}.txt"
            if vocab.is_file() and merges.is_file():
                return cls.from_files(vocab, merges)
        if (folder / "tokenizer.json").is_file():
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf8")).get("model", {})
            if model.get("type") == "BPE":  # merges as "a b" strings (older files) or [a, b] pairs
                pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
                return cls(model["vocab"], pairs)
        raise FileNotFoundError(f"no BART tokenizer in {folder}: expected vocab.json + merges.txt (or tokenizer.json)")

    def tokenize(self, text: str) -> list[int]:
        """``<s>`` + the BPE ids of `text` + ``</s>``, unpadded and uncut."""
        words = emoji.demojize(text, delimiters=("", ""))
        return [self.bos, *self.tokenizer.encode(words).ids, self.eos]

    def encode(self, text: str, length: int = 64) -> torch.Tensor:
        ids = self.tokenize(text)
        if len(ids) > length:
            warnings.warn(
                f"prompt cut from {len(ids)} to {length} tokens (as min-dalle does, its </s> too): {text!r}",
                stacklevel=2,
            )
            ids = ids[:length]
        return torch.tensor(ids + [self.pad] * (length - len(ids)), dtype=torch.long)

    def encode_batch(self, texts: Sequence[str], length: int = 64) -> torch.Tensor:
        return torch.stack([self.encode(t, length) for t in texts])  # (P, length)
