import pickle

import pytest
import torch

from dalle.data.shapes import ShapesDataset
from dalle.transformer.tokenizer import PAD_ID, UNK_ID, BPETokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return BPETokenizer.train(ShapesDataset("train", 2000, max_shapes=2).iter_captions(), vocab_size=300)


def test_train_and_special_tokens(tokenizer):
    assert 100 < tokenizer.vocab_size <= 300 and len(tokenizer) == tokenizer.vocab_size
    assert tokenizer.tokenizer.token_to_id("[PAD]") == PAD_ID == 0
    assert tokenizer.tokenizer.token_to_id("[UNK]") == UNK_ID
    # Frequent caption words become single tokens.
    assert len(tokenizer.tokenize("circle")) == 1


def test_encode_decode_round_trip(tokenizer):
    text = "top-left: a tiny crimson disk and a large blue square at the bottom"
    ids = tokenizer.encode(text, 32)
    assert ids.shape == (32,) and ids.dtype == torch.long
    n = len(tokenizer.tokenize(text))
    assert (ids[:n] != PAD_ID).all() and (ids[n:] == PAD_ID).all()
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids.tolist()) == text
    # Normalised: case, accents, runs of whitespace.
    assert tokenizer.decode(tokenizer.encode("  A  Small\tRÉD Circle ", 32)) == "a small red circle"


def test_encode_batch(tokenizer):
    texts = ["a small red circle in the top left", "", "there is a big cyan box"]
    batch = tokenizer.encode_batch(texts, 16)
    assert batch.shape == (3, 16) and batch.dtype == torch.long
    for row, text in zip(batch, texts):
        assert torch.equal(row, tokenizer.encode(text, 16))
    assert (batch[1] == PAD_ID).all()  # empty string -> all padding
    assert tokenizer.decode_batch(batch) == texts
    assert tokenizer.encode_batch([], 8).shape == (0, 8)


def test_truncation_warns(tokenizer):
    text = "a small red circle in the top left and a large blue square at the bottom"
    with pytest.warns(UserWarning, match=r"prompt cut from \d+ to text_seq_len=4 tokens"):
        ids = tokenizer.encode(text, 4)
    assert ids.shape == (4,) and (ids != PAD_ID).all()
    assert text.startswith(tokenizer.decode(ids))
    with pytest.warns(UserWarning, match="prompt cut"):
        tokenizer.encode_batch([text, "a"], 4)


def test_non_ascii(tokenizer):
    ids = tokenizer.encode("ｆｕｌｌｗｉｄｔｈ café 日本語 😀 circle", 40)  # NFKC folds fullwidth letters
    assert (ids == UNK_ID).any()
    decoded = tokenizer.decode(ids)
    assert decoded.startswith("fullwidth cafe") and decoded.endswith("circle")
    # A literal "[PAD]" in a prompt never becomes padding.
    assert (tokenizer.encode("[PAD] circle", 8)[:2] != PAD_ID).all()


def test_save_load(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tok")
    assert path.name == "tokenizer.json" and path.is_file()
    for source in (tmp_path / "tok", path):
        loaded = BPETokenizer.load(source)
        assert loaded.vocab_size == tokenizer.vocab_size
        text = "there is a huge amber plus sign on the right side"
        assert torch.equal(loaded.encode(text, 24), tokenizer.encode(text, 24))
    assert pickle.loads(pickle.dumps(tokenizer)).vocab_size == tokenizer.vocab_size  # DataLoader workers / DDP spawn
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        BPETokenizer.load(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        BPETokenizer.load(tmp_path / "bad.json")
