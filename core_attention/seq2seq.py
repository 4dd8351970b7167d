"""The encoder–decoder Transformer of "Attention Is All You Need", with greedy and beam-search decoding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .layers import Linear, init_weights
from .masks import key_padding_mask
from .positions import SinusoidalPositionalEncoding
from .stacks import Decoder, Encoder


class Seq2SeqTransformer(nn.Module):
    """Token embeddings scaled by √dim + sinusoidal positions -> Encoder; same for the target -> Decoder -> logits.

    Blocks are pre-norm (more stable than the paper's post-norm at the same settings). `tie_embeddings` shares
    the target embedding with the output projection, as the paper does.
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        *,
        dim: int = 512,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        max_len: int = 512,
        pad_id: int = 0,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        self.dim, self.pad_id, self.max_len = dim, pad_id, max_len
        self.src_embed = nn.Embedding(src_vocab_size, dim)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, dim)
        self.pos = SinusoidalPositionalEncoding(dim, max_len)
        self.drop = nn.Dropout(dropout)
        stack = dict(num_heads=num_heads, mlp_ratio=mlp_ratio, dropout=dropout)
        self.encoder = Encoder(dim, num_encoder_layers, **stack)
        self.decoder = Decoder(dim, num_decoder_layers, cross_attention=True, **stack)
        self.head = Linear(dim, tgt_vocab_size, bias=False)
        self.apply(init_weights)
        if tie_embeddings:
            self.head.weight = self.tgt_embed.weight

    def _embed(self, embed: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        return self.drop(self.pos(embed(tokens) * math.sqrt(self.dim), offset))

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src: (B, Ls) token ids -> memory (B, Ls, dim) and its padding mask (B, 1, 1, Ls)."""
        src_mask = key_padding_mask(src == self.pad_id)
        return self.encoder(self._embed(self.src_embed, src), mask=src_mask), src_mask

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """src: (B, Ls), tgt: (B, Lt) token ids (teacher forcing) -> logits (B, Lt, tgt_vocab_size).

        Padded source keys are hidden; target padding needs no mask under causality (its loss is ignored).
        """
        memory, src_mask = self.encode(src)
        x = self.decoder(self._embed(self.tgt_embed, tgt), memory, context_mask=src_mask)
        return self.head(x)

    @torch.no_grad()
    def generate(
        self,
        src: Tensor,
        max_new_tokens: int,
        bos_id: int,
        eos_id: int,
        *,
        beam_size: int = 1,
        length_penalty: float = 1.0,
    ) -> Tensor:
        """Decode (B, Ls) sources -> (B, 1 + n) target ids starting with bos; finished rows are padded with pad_id.

        beam_size 1 is greedy decoding. Beams are ranked by log-probability / length**length_penalty.
        Decoding uses the KV cache: each step feeds one token per beam.
        """
        if max_new_tokens + 1 > self.max_len:
            raise ValueError(f"max_new_tokens + 1 = {max_new_tokens + 1} exceeds the model's max_len {self.max_len}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        b, k, device = src.shape[0], beam_size, src.device
        memory, src_mask = self.encode(src)
        memory, src_mask = memory.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0)  # (B*k, Ls, dim)
        cache = self.decoder.init_cache(b * k, max_new_tokens + 1, context_len=memory.shape[1], dtype=memory.dtype)

        tokens = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)
        scores = torch.zeros(b, k, device=device)
        scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
        finished = torch.zeros(b * k, dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            x = self._embed(self.tgt_embed, tokens[:, -1:], offset=cache.length)
            logp = self.head(self.decoder(x, memory, context_mask=src_mask, cache=cache))[:, -1].log_softmax(-1)
            vocab = logp.shape[-1]
            # a finished beam only extends with pad at no cost, so its score stays fixed
            logp = torch.where(finished[:, None], torch.full_like(logp, float("-inf")), logp)
            logp[finished, self.pad_id] = 0.0
            candidates = (scores.view(-1, 1) + logp).view(b, k * vocab)
            scores, flat = candidates.topk(k, dim=-1)  # (B, k)
            beam = (flat // vocab + torch.arange(b, device=device)[:, None] * k).view(-1)
            next_token = (flat % vocab).view(-1, 1)
            tokens = torch.cat([tokens[beam], next_token], dim=1)
            if k > 1:
                cache.reorder(beam)
            finished = finished[beam] | (next_token.squeeze(1) == eos_id)
            if finished.all():
                break
        lengths = (tokens != self.pad_id).sum(-1).float().view(b, k)
        best = (scores / lengths.clamp(min=1) ** length_penalty).argmax(-1)
        return tokens.view(b, k, -1)[torch.arange(b, device=device), best]
