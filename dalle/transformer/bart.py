"""DALL·E Mini / Mega (Dayma et al. 2021-22): a BART-style encoder–decoder from text tokens to VQGAN image tokens.

The text encoder reads 64 BART tokens; the image decoder predicts 256 VQGAN codes (a 16 x 16 grid in raster order)
one at a time, cross-attending to the encoder output. Both stacks are `core_attention.NormFormerBlock`s: no biases,
learned token + position embeddings followed by a LayerNorm (no √d scaling), a final LayerNorm per stack, and a
bias-free `lm_head` whose extra rows (the start token, Mega's 31 unused codes) are never sampled.

Decoder input position p holds image token p - 1 (position 0 holds the start token) and predicts token p.
"Super-conditioning" guidance runs each image twice in one batch, with its prompt and with the empty prompt, and
samples from uncond + f * (cond - uncond) (f = 16 in min-dalle and in the dalle-mini demo).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from core_attention import DecoderCache, KVCache, LearnedPositionalEmbedding, Linear, NormFormerBlock, compiled_step
from core_attention.config import ConfigMixin
from dalle.transformer.sampling import check_sampling_args, filter_logits, guide_logits

__all__ = ["ARCHITECTURE", "DalleBart", "DalleBartConfig", "sample_image_tokens"]

ARCHITECTURE = "dalle-bart"


@dataclass
class DalleBartConfig(ConfigMixin):
    """Architecture of a :class:`DalleBart`; `mini()` and `mega()` are the published checkpoints' shapes."""

    text_vocab_size: int = 50264
    image_vocab_size: int = 16384  # decoder vocabulary without the start token (Mega: 16415, the last 31 unused)
    codebook_size: int = 16384  # codes the VQGAN can draw: sampling keeps the first codebook_size logits
    text_seq_len: int = 64
    image_seq_len: int = 256
    dim: int = 1024
    encoder_depth: int = 12
    decoder_depth: int = 12
    num_heads: int = 16
    glu_dim: int = 2730
    start_token: int | None = None  # None: image_vocab_size, as dalle-mini trained (min-dalle 0.4.11 feeds 16383)
    pad_token: int = 1  # BART's <pad>: text keys with this id are masked out
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.start_token is None:
            self.start_token = self.image_vocab_size
        if not 0 <= self.start_token <= self.image_vocab_size:
            raise ValueError(f"start_token must be in [0, {self.image_vocab_size}], got {self.start_token}")
        if self.codebook_size > self.image_vocab_size:
            raise ValueError(f"codebook_size ({self.codebook_size}) > image_vocab_size ({self.image_vocab_size})")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")

    @classmethod
    def mini(cls, **overrides) -> DalleBartConfig:
        return cls(**overrides)

    @classmethod
    def mega(cls, **overrides) -> DalleBartConfig:
        mega = dict(
            text_vocab_size=50272,
            image_vocab_size=16415,
            dim=2048,
            encoder_depth=24,
            decoder_depth=24,
            num_heads=32,
            glu_dim=4096,
        )
        return cls(**{**mega, **overrides})

    def num_params(self) -> int:
        """Parameter count, for memory estimates before anything is allocated."""
        d, g = self.dim, self.glu_dim
        norms = 2 * d
        block = 4 * d * d + 3 * d * g + 3 * norms + g * 2  # attention, GLU, three norms, the GLU's mid norm
        enc = self.text_vocab_size * d + self.text_seq_len * d + 2 * norms + self.encoder_depth * block
        cross = 4 * d * d + 2 * norms
        dec_vocab = self.image_vocab_size + 1
        dec = dec_vocab * d + self.image_seq_len * d + 2 * norms + self.decoder_depth * (block + cross)
        return enc + dec + dec_vocab * d  # + lm_head


class _Stack(nn.Module):
    """Token + position embeddings -> LayerNorm -> NormFormer blocks -> final LayerNorm."""

    def __init__(self, c: DalleBartConfig, vocab_size: int, seq_len: int, depth: int, *, cross_attention: bool) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, c.dim)
        self.embed_positions = LearnedPositionalEmbedding(c.dim, seq_len)
        self.norm_embed = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.blocks = nn.ModuleList(
            NormFormerBlock(c.dim, c.num_heads, c.glu_dim, cross_attention=cross_attention, norm_eps=c.norm_eps)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)

    def embed(self, ids: Tensor, offset: int | Tensor = 0) -> Tensor:
        return self.norm_embed(self.embed_positions(self.embed_tokens(ids), offset))  # (B, L, D)


class TextEncoder(_Stack):
    def __init__(self, c: DalleBartConfig) -> None:
        super().__init__(c, c.text_vocab_size, c.text_seq_len, c.encoder_depth, cross_attention=False)

    def forward(self, text: Tensor, mask: Tensor) -> Tensor:
        """text: (B, T) ids; mask: (B, 1, 1, T), True at real tokens. Returns (B, T, D)."""
        x = self.embed(text)
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.norm(x)


class ImageDecoder(_Stack):
    def __init__(self, c: DalleBartConfig) -> None:
        super().__init__(c, c.image_vocab_size + 1, c.image_seq_len, c.decoder_depth, cross_attention=True)

    def forward(
        self,
        ids: Tensor,
        context: Tensor | None,
        context_mask: Tensor,
        *,
        cache: DecoderCache | None = None,
        cache_position: Tensor | None = None,
    ) -> Tensor:
        """ids: (B, L) decoder inputs at positions cache.length.. (0 without a cache), or at `cache_position` (L,)
        (a compiled step's fixed shapes); context: (B, T, D) encoder output (None once the cache's cross-attention
        keys/values are filled). Returns (B, L, D)."""
        if cache_position is not None:
            x = self.embed(ids, cache_position[0])
        else:
            x = self.embed(ids, cache.length if cache is not None else 0)
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                context,
                is_causal=True,
                context_mask=context_mask,
                cache=cache.self_attn[i] if cache is not None else None,
                cross_cache=cache.cross_attn[i] if cache is not None else None,
                cache_position=cache_position,
            )
        return self.norm(x)


class DalleBart(nn.Module):
    """Text encoder + image decoder + lm_head. `forward(text, image_in)` gives teacher-forced logits."""

    def __init__(self, config: DalleBartConfig | None = None, **kwargs) -> None:
        super().__init__()
        self.config = config = config if config is not None else DalleBartConfig(**kwargs)
        self.encoder = TextEncoder(config)
        self.decoder = ImageDecoder(config)
        self.lm_head = Linear(config.dim, config.image_vocab_size + 1, bias=False)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def text_mask(self, text: Tensor) -> Tensor:
        return (text != self.config.pad_token)[:, None, None, :]  # (B, 1, 1, T): True = may attend

    def encode(self, text: Tensor) -> Tensor:
        """(B, T) BART ids, padded with pad_token -> (B, T, D)."""
        c = self.config
        if text.dim() != 2 or text.shape[1] != c.text_seq_len:
            raise ValueError(f"text must be (B, {c.text_seq_len}) token ids, got {tuple(text.shape)}")
        if text.min() < 0 or text.max() >= c.text_vocab_size:
            raise ValueError(
                f"text ids must be in [0, {c.text_vocab_size}), got [{text.min()}, {text.max()}]: was the "
                "tokenizer made for another checkpoint?"
            )
        return self.encoder(text, self.text_mask(text))

    def forward(self, text: Tensor, image_in: Tensor) -> Tensor:
        """text: (B, T); image_in: (B, L) decoder inputs (start token, then image tokens). Returns (B, L, V + 1)."""
        return self.lm_head(self.decoder(image_in, self.encode(text), self.text_mask(text)))

    def init_cache(self, rows: int, context_rows: int | None = None, dtype: torch.dtype | None = None) -> DecoderCache:
        """Self-attention keys/values for every image position of `rows` sequences, cross-attention ones for the
        text of `context_rows` contexts (default: one per row; fewer when consecutive rows share a prompt)."""
        c = self.config
        make = lambda b, n, static: KVCache(  # noqa: E731
            b, n, c.num_heads, c.dim // c.num_heads, dtype=dtype or self.dtype, device=self.device, static=static
        )
        return DecoderCache(
            [make(rows, c.image_seq_len, False) for _ in range(c.decoder_depth)],
            [make(context_rows or rows, c.text_seq_len, True) for _ in range(c.decoder_depth)],
        )

    def generation_bytes(self, rows: int) -> int:
        """Rough memory of decoding `rows` sequences at once (the self-attention cache dominates) beside the weights."""
        c = self.config
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        cache = 2 * c.decoder_depth * rows * (c.image_seq_len + c.text_seq_len) * c.dim * itemsize
        return cache + rows * (c.image_vocab_size + 4 * c.glu_dim + 8 * c.dim) * 4  # + logits and one layer's work

    @torch.inference_mode()
    def generate(
        self,
        text: Tensor,
        uncond: Tensor | None = None,
        *,
        num_images: int = 1,
        temperature: float = 1.0,
        top_k: int | None = 256,
        guidance_scale: float = 16.0,
        generator: torch.Generator | None = None,
        prime: Tensor | None = None,
        on_step: Callable[[int], None] | None = None,
        top_p: float | None = None,
        compile: bool = False,
    ) -> Tensor:
        """Sample `num_images` image token sequences per prompt.

        Args:
            text: (P, T) prompts' ids. uncond: (1, T) the empty prompt's ids, needed when guidance_scale != 1.
            num_images: images per prompt; rows of a prompt are adjacent in the output. Repeated prompts are
                encoded once.
            temperature, top_k, guidance_scale, top_p: see `sample_image_tokens` (min-dalle's: 1, 256, 16, none).
            generator: the random stream (same seed -> same ids). prime: (P * num_images, n) ids kept as the first
                n tokens (the top n / 16 rows of an image), the rest is completed.
            on_step: called after each sampled token position (a progress bar).
            compile: run the decoding step compiled (`core_attention.compiled`; the same ids as eager). The first
                call per process and batch shape compiles (minutes on a CPU at the Mini size); later ones are faster.
        Returns:
            (P * num_images, N) image ids in [0, codebook_size).
        """
        c = self.config
        guided = guidance_scale != 1.0
        check_sampling_args(temperature, top_k, top_p, guidance_scale)
        if guided and uncond is None:
            raise ValueError("guidance (guidance_scale != 1) needs the empty prompt's ids: pass uncond")
        text = text.to(self.device).repeat_interleave(num_images, dim=0)  # (B, T)
        B, N = text.shape[0], c.image_seq_len
        prime = text.new_zeros(B, 0) if prime is None else prime.to(self.device)
        if prime.shape[0] != B or prime.shape[1] >= N:
            raise ValueError(f"prime must be ({B}, n < {N}) image ids, got {tuple(prime.shape)}")

        # Rows run conditional first, then unconditional. Each run of g identical prompts shares one context (its
        # cross-attention keys/values computed and cached once); each distinct prompt is encoded once.
        g = math.gcd(*torch.unique_consecutive(text, dim=0, return_counts=True)[1].tolist())
        contexts = text[::g]  # (B / g, T)
        if guided:
            contexts = torch.cat([contexts, uncond.to(self.device).expand(B // g, -1)])
        distinct, index = torch.unique(contexts, dim=0, return_inverse=True)
        context, context_mask = self.encode(distinct)[index], self.text_mask(contexts)  # (C, T, D), (C, 1, 1, T)
        rows = 2 * B if guided else B

        cache = self.init_cache(rows, len(contexts))
        n = prime.shape[1]
        start = torch.full((B, 1), c.start_token, dtype=torch.long, device=self.device)
        inputs = torch.cat([start, prime], dim=1)  # (B, 1 + n): start token and the kept tokens, in one pass
        h = self.decoder(inputs.repeat(rows // B, 1), context, context_mask, cache=cache)
        logits = self.lm_head(h[:, -1])  # (R, V + 1): predicts image token n
        out = torch.empty(B, N, dtype=torch.long, device=self.device)
        out[:, :n] = prime
        step = compiled_step(self, "decode_step") if compile else self.decode_step
        for j in range(n, N):
            token = sample_image_tokens(logits, c.codebook_size, temperature, top_k, guidance_scale, generator, top_p)
            out[:, j] = token
            if on_step is not None:
                on_step(j)
            if j < N - 1:  # image token j is the decoder's input at position j + 1 (after the start token)
                position = torch.tensor([j + 1], device=self.device)
                logits = step(token.repeat(rows // B), position, context_mask, cache)
        return out

    def decode_step(self, token: Tensor, position: Tensor, context_mask: Tensor, cache: DecoderCache) -> Tensor:
        """One cached decoding step with fixed shapes (what `generate(compile=True)` compiles): token (R,) image ids
        at decoder position `position` (1,), the cache filled before it. Returns (R, V + 1) logits of the next."""
        h = self.decoder(token[:, None], None, context_mask, cache=cache, cache_position=position)
        return self.lm_head(h[:, -1])

    # ------------------------------------------------------------------------------------------------ weights

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes ``config.json`` (with ``architecture``) and ``model.safetensors`` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"architecture": ARCHITECTURE, **self.config.to_dict()}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> DalleBart:
        """Reads a ``save_pretrained`` folder strictly; builds on the meta device so nothing is allocated twice."""
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        if config.get("architecture") != ARCHITECTURE:
            raise ValueError(
                f"{directory}/config.json is not a {ARCHITECTURE} config (architecture {config.get('architecture')!r})"
            )
        with torch.device("meta"):
            model = cls(DalleBartConfig.from_dict(config))
        state = load_file(directory / "model.safetensors", device=str(device))
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()


def sample_image_tokens(
    logits: Tensor,
    codebook_size: int,
    temperature: float = 1.0,
    top_k: int | None = 256,
    guidance_scale: float = 16.0,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> Tensor:
    """One image token per image from (R, V) logits: R = B rows, or 2B = [conditional; unconditional] with guidance.

    min-dalle's order: drop the logits past the codebook, guide (uncond + f * (cond - uncond)), keep the top_k
    guided logits, divide by the temperature, sample. (The shapes model's `sampling_logits` filters by the
    conditional logits instead; these checkpoints were tuned with this order.) `top_p` (not in min-dalle) keeps the
    nucleus of the guided, tempered distribution.
    """
    logits = logits[:, :codebook_size].float()
    if guidance_scale != 1.0:
        logits = guide_logits(logits, guidance_scale)  # (B, V)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
