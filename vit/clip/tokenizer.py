"""CLIP's byte-level BPE tokenizer: text -> (N, 77) ids, the same ids as OpenAI's CLIP and open_clip.

The merges are OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT, shipped beside this file; see VOCAB_LICENSE).
HF `tokenizers` has a CLIP pipeline, but its normaliser is NFC + lowercase, not CLIP's ftfy + HTML unescape, so ids
differ on curly quotes, mojibake and entities; the BPE here is small and cached, and prompts are short.

    ids = CLIPTokenizer()(["a photo of a cat", "a dog"])  # (2, 77): <start> tokens <end> 0 ... 0
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch
from torch import Tensor

VOCAB_FILE = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # the vocabulary is 256 bytes x 2 (word-final or not) + merges + 2 specials = 49408
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")  # open_clip's spelling; OpenAI's is <|startoftext|>, same ids


@lru_cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (so BPE never sees whitespace).

    The order matters: it is the order of the first 256 vocabulary entries, printable bytes first.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})  # moved past U+00FF, in byte order
    return table


def clean(text: str) -> str:
    """CLIP's normalisation: ftfy's fixes, HTML entities unescaped twice, whitespace runs to one space, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Callable: a prompt or list of prompts -> (N, context_length) int64 ids, 0-padded.

    Each row is `<start_of_text>`, the BPE ids, `<end_of_text>`; a prompt too long for the context is cut and its
    last kept id replaced by `<end_of_text>`, as CLIP does (the text tower pools at the end token).
    """

    def __init__(self, context_length: int = CONTEXT_LENGTH, vocab_file: str | Path = VOCAB_FILE) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must hold at least the start and end tokens (>= 2), got {context_length}")
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : NUM_MERGES + 1]  # line 0 is a version header
        merges = [tuple(line.split()) for line in lines]
        symbols = list(byte_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.merge_rank = {pair: i for i, pair in enumerate(merges)}
        self.sot_id, self.eot_id = self.encoder[SPECIAL_TOKENS[0]], self.encoder[SPECIAL_TOKENS[1]]
        self.vocab_size = len(vocab)
        self.context_length = context_length
        self._byte_map = byte_to_unicode()
        self._cache: dict[str, list[str]] = {t: [t] for t in SPECIAL_TOKENS}
        # Words: contractions, letter runs, single digits, runs of other non-space characters. The special tokens come
        # first, so a prompt that spells one out gets its id (open_clip does the same).
        specials = "|".join(SPECIAL_TOKENS)
        self._words = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
        )

    def bpe(self, word: str) -> list[str]:
        """One pre-token (already byte-mapped) -> its BPE pieces, the last one marked word-final with `</w>`."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            best = min(zip(parts, parts[1:]), key=lambda pair: self.merge_rank.get(pair, NUM_MERGES))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids, without the start/end tokens and without truncation."""
        ids = []
        for word in self._words.findall(clean(text)):
            mapped = "".join(self._byte_map[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """One row of ids -> text, up to its end token; lossy where `clean` changed the text."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        unmap = {c: b for b, c in self._byte_map.items()}
        raw = bytearray()
        for i in ids:
            if i == self.eot_id:
                break  # the padding after it is id 0, which is also the token "!"
            if i != self.sot_id:
                token = self.decoder[i]
                raw += bytes(unmap[c] for c in token.removesuffix("</w>")) + (b" " if token.endswith("</w>") else b"")
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(self, prompts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        """Prompts -> (N, context_length) int64 ids (0 = padding)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("got an empty list of prompts: pass at least one string")
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be strings, got {sorted({type(p).__name__ for p in prompts})}")
        length = context_length or self.context_length
        out = torch.zeros(len(prompts), length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = [self.sot_id, *self.encode(prompt), self.eot_id]
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = torch.tensor(ids)
        return out
