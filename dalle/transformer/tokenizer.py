"""BPE text tokenizer for DALL·E, trained and saved with HuggingFace ``tokenizers`` (one ``tokenizer.json``).

Pipeline: normalise (NFKC, accents stripped, lowercase, whitespace collapsed) -> split on spaces (SentencePiece-style
"▁" word marker, so decoding restores the spaces) and isolate punctuation -> byte-pair merges. ``[PAD]`` is id 0 (the
DALL·E text padding) and ``[UNK]`` id 1 stands for any character not seen in training (consecutive ones fused).
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
_WORD_MARK = "▁"


def _empty_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            # StripAccents only removes combining marks, so decompose first and recompose after (NFKC semantics kept).
            normalizers.NFD(),
            normalizers.StripAccents(),
            normalizers.NFC(),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
        ]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_WORD_MARK, prepend_scheme="always"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=_WORD_MARK, prepend_scheme="always")
    return tokenizer


class BPETokenizer:
    """Text -> fixed-length LongTensor of ids (padded with 0 at the end), and back."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        if tokenizer.token_to_id(PAD_TOKEN) != PAD_ID or tokenizer.token_to_id(UNK_TOKEN) != UNK_ID:
            raise ValueError(f"tokenizer must have {PAD_TOKEN} = {PAD_ID} and {UNK_TOKEN} = {UNK_ID}")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 1) -> BPETokenizer:
        """Learns merges from ``texts``. The vocabulary can end up smaller than ``vocab_size`` on a small corpus:
        size embeddings from :attr:`vocab_size`, not from the argument."""
        tokenizer = _empty_tokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[PAD_TOKEN, UNK_TOKEN],
            # Every printable ASCII character is in the vocabulary even if the corpus lacks it: prompts typed later
            # never hit [UNK] for plain ASCII.
            initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation) + [_WORD_MARK],
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def _fit(self, ids: list[int], text: str, text_seq_len: int) -> torch.Tensor:
        # A literal "[PAD]" typed in a prompt must not become padding in the middle of the text.
        ids = [UNK_ID if i == PAD_ID else i for i in ids]
        if UNK_ID in ids and not any(i != UNK_ID and self.tokenizer.id_to_token(i).strip("▁ ") for i in ids):
            warnings.warn(
                f"every character of {text!r} is unknown to this tokenizer (it was trained on other text): the model "
                "reads it as [UNK] only, close to an empty prompt",
                stacklevel=3,
            )
        if len(ids) > text_seq_len:
            kept = self.tokenizer.decode(ids[:text_seq_len], skip_special_tokens=False)
            warnings.warn(
                f"prompt cut from {len(ids)} to text_seq_len={text_seq_len} tokens: {text!r} -> {kept!r}",
                stacklevel=3,
            )
            ids = ids[:text_seq_len]
        out = torch.full((text_seq_len,), PAD_ID, dtype=torch.long)
        out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def tokenize(self, text: str) -> list[int]:
        """Ids without padding or truncation."""
        return self.tokenizer.encode(text).ids

    def encode(self, text: str, text_seq_len: int) -> torch.Tensor:
        """(text_seq_len,) long: the ids, then 0s. Longer texts are truncated with a warning."""
        return self._fit(self.tokenizer.encode(text).ids, text, text_seq_len)

    def encode_batch(self, texts: Sequence[str], text_seq_len: int) -> torch.Tensor:
        """(B, text_seq_len) long."""
        texts = list(texts)
        if not texts:
            return torch.zeros(0, text_seq_len, dtype=torch.long)
        encodings = self.tokenizer.encode_batch(texts)
        return torch.stack([self._fit(e.ids, t, text_seq_len) for e, t in zip(encodings, texts)])

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Text of a 1-D id sequence; padding is dropped, unknown characters show as [UNK]."""
        if isinstance(ids, torch.Tensor):
            ids = ids.flatten().tolist()
        return self.tokenizer.decode([int(i) for i in ids if int(i) != PAD_ID], skip_special_tokens=False)

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in ids]

    @staticmethod
    def _file(path: str | Path) -> Path:
        path = Path(path)
        return path if path.suffix == ".json" else path / "tokenizer.json"

    def save(self, path: str | Path) -> Path:
        """Writes ``tokenizer.json`` (``path`` is that file, or a directory to put it in). Returns the file path."""
        file = self._file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(file))
        return file

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Reads a file written by :meth:`save` (the json file, or the directory holding ``tokenizer.json``)."""
        file = cls._file(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {file} (expected a tokenizer.json written by BPETokenizer.save)"
            )
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as error:  # the Rust side raises a plain Exception for bad json
            raise ValueError(f"{file} is not a valid tokenizer.json: {error}") from error
        return cls(tokenizer)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"
