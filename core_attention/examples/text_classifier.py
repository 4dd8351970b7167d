"""A text classifier in a page: token embeddings + learned positions -> `Encoder` -> masked mean pool -> linear.

python -m core_attention.examples.text_classifier     # trains on a toy task and prints accuracy
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attention import Encoder, LearnedPositionalEmbedding, init_weights, key_padding_mask


class TextClassifier(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        max_len: int = 128,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = LearnedPositionalEmbedding(dim, max_len)
        self.encoder = Encoder(dim, depth, num_heads)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_weights)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (B, L) ids, `pad_id` at padding -> logits (B, num_classes)."""
        is_pad = tokens == self.pad_id
        x = self.encoder(self.pos(self.embed(tokens)), mask=key_padding_mask(is_pad))  # (B, L, dim)
        keep = (~is_pad).unsqueeze(-1).float()
        return self.head((x * keep).sum(1) / keep.sum(1).clamp(min=1))  # mean over real tokens


def majority_batch(batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Toy task: sequences of tokens 1 ("a") and 2 ("b") of random length, padded with 0; label = which is more
    frequent."""
    lengths = torch.randint(5, 32, (batch_size,), generator=generator) | 1  # odd: no ties
    tokens = torch.randint(1, 3, (batch_size, 32), generator=generator)
    tokens[torch.arange(32)[None] >= lengths[:, None]] = 0
    labels = ((tokens == 2).sum(1) > (tokens == 1).sum(1)).long()
    return tokens, labels


def train(steps: int = 300, seed: int = 0) -> tuple[TextClassifier, float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TextClassifier(vocab_size=3, num_classes=2)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        tokens, labels = majority_batch(64, gen)
        loss = F.cross_entropy(model(tokens), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        tokens, labels = majority_batch(1000, torch.Generator().manual_seed(seed + 1))
        accuracy = (model(tokens).argmax(-1) == labels).float().mean().item()
    return model, accuracy


if __name__ == "__main__":
    print(f"held-out accuracy: {train()[1]:.1%}")
