"""A GPT-style language model in a page: `Decoder` (causal, no cross-attention) + rotary positions + KV cache.

python -m core_attention.examples.gpt     # learns a tiny character corpus and samples from it
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attention import Decoder, RotaryEmbedding, init_weights


class GPT(nn.Module):
    def __init__(
        self, vocab_size: int, *, dim: int = 64, depth: int = 2, num_heads: int = 4, max_len: int = 256
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.rope = RotaryEmbedding(dim // num_heads)
        self.decoder = Decoder(dim, depth, num_heads, cross_attention=False)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.apply(init_weights)
        self.head.weight = self.embed.weight  # weight tying, as GPT-2

    def forward(self, tokens: Tensor, *, cache=None) -> Tensor:
        """tokens: (B, L) -> logits (B, L, vocab). With a cache, tokens are the new positions only."""
        start = cache.length if cache is not None else 0
        rope = self.rope(torch.arange(start, start + tokens.shape[1], device=tokens.device))
        return self.head(self.decoder(self.embed(tokens), rope=rope, cache=cache))

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample continuations of prompt (B, L); temperature 0 is greedy. Returns (B, L + max_new_tokens)."""
        if prompt.shape[1] + max_new_tokens > self.max_len:
            raise ValueError(
                f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds max_len {self.max_len}"
            )
        cache = self.decoder.init_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens) if use_cache else None
        tokens, step_input = prompt, prompt
        for _ in range(max_new_tokens):
            logits = self(step_input if use_cache else tokens, cache=cache)[:, -1]
            if temperature == 0:
                next_token = logits.argmax(-1, keepdim=True)
            else:
                next_token = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)
            tokens = torch.cat([tokens, next_token], dim=1)
            step_input = next_token
        return tokens


CORPUS = "the cat sat on the mat. the dog sat on the log. " * 20


def train(steps: int = 300, seed: int = 0) -> tuple[GPT, list[str]]:
    torch.manual_seed(seed)
    chars = sorted(set(CORPUS))
    data = torch.tensor([chars.index(c) for c in CORPUS])
    model = GPT(len(chars))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 65, (32,))
        batch = torch.stack([data[s : s + 65] for s in starts])
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), chars


if __name__ == "__main__":
    model, chars = train()
    prompt = torch.tensor([[chars.index(c) for c in "the dog"]])
    print("".join(chars[i] for i in model.generate(prompt, 40, temperature=0)[0]))
