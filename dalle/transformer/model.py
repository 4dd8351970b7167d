"""DALL·E's text-to-image Transformer (stage 2): one causal decoder over ``[text tokens | image tokens]``.

Sequence layout (length T + N, with T = ``text_seq_len`` and N = h * w image tokens in raster order)::

    input    <bos> t_0 ... t_{T-1}  i_0 ... i_{N-2}
    target   t_0   t_1 ... i_0      i_1 ... i_{N-1}

Position p holds token p - 1 and predicts token p. Text padding (id 0) at text position k is embedded with its own
learned vector ``text_pad_emb[k]`` (the paper's trick: the model can tell how long the caption was and where it is),
so embedding row 0 ([PAD]) is never an input and serves as the start token. Images get learned row + column
embeddings. Text and image tokens have separate embeddings and separate output heads, so text positions can only
predict text tokens and image positions only image tokens. The loss weighs text : image = 1 : ``loss_img_weight``
(1 : 7 in the paper). Layers may use the paper's sparse masks (row, column, convolutional), cycled over depth.

``generate`` samples image tokens one at a time with a preallocated KV cache: the text is run once, then each step
feeds one token per row (two rows per image with classifier-free guidance, conditional and unconditional in one batch).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core_attention import Decoder, DecoderCache, LearnedPositionalEmbedding, Linear, compiled_step, init_weights
from core_attention.config import ConfigMixin
from dalle.transformer.masks import dalle_mask
from dalle.transformer.sampling import check_sampling_args, sample_logits

__all__ = ["ATTN_TYPES", "DALLE", "DALLEConfig", "DALLEOutput", "paper_attn_types"]

ATTN_TYPES = ("full", "row", "column", "conv")


def paper_attn_types(depth: int) -> tuple[str, ...]:
    """The DALL·E paper's layer pattern (appendix B.1): row attention, column attention in every layer i with
    (i - 2) % 4 == 0, and convolutional attention in the last layer."""
    types = ["column" if (i - 2) % 4 == 0 else "row" for i in range(depth)]
    types[-1] = "conv"
    return tuple(types)


@dataclass
class DALLEConfig(ConfigMixin):
    """Architecture of a :class:`DALLE`; saved with the weights, so a checkpoint rebuilds its own model.

    Args:
        text_vocab_size: rows of the text embedding: the tokenizer's vocab_size (id 0 is padding). Set from the
            tokenizer when training (DALLEModule).
        text_seq_len: text tokens per caption; longer captions are cut.
        image_vocab_size: the dVAE's codebook size (num_tokens). Set from the dVAE when training.
        image_grid_size: the dVAE's grid side, h = w = image_size / downsample. Set from the dVAE when training.
        dim: transformer width (the token embedding size); must be divisible by num_heads.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        num_kv_heads: key/value heads for grouped-query attention (must divide num_heads); None: one per head.
        mlp_ratio: MLP hidden width as a multiple of dim.
        qk_norm: normalise queries and keys before the attention product (steadier training at large widths).
        dropout: dropout after the attention output projection and in the MLP.
        attn_drop: dropout on the attention weights.
        drop_path_rate: stochastic depth of the last block (growing linearly from 0 over the blocks).
        attn_types: attention pattern per layer, cycled over the depth: 'full' (causal), or the paper's sparse
            image masks 'row', 'column' and 'conv' (see paper_attn_types()).
        conv_kernel_size: window side of the 'conv' layers, in image tokens (the paper: 11 on a 32 x 32 grid).
        loss_img_weight: the loss weighs text : image tokens as 1 : loss_img_weight (the paper: 7).
    """

    text_vocab_size: int = 1000  # the tokenizer's vocab_size; id 0 is padding
    text_seq_len: int = 32
    image_vocab_size: int = 512  # the dVAE's codebook size (num_tokens)
    image_grid_size: int = 8  # the dVAE's grid side: h = w = image_size / downsample
    dim: int = 512
    depth: int = 12
    num_heads: int = 8
    num_kv_heads: int | None = None
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    dropout: float = 0.0
    attn_drop: float = 0.0
    drop_path_rate: float = 0.0
    attn_types: tuple[str, ...] = ("full",)  # cycled over the layers; see paper_attn_types()
    conv_kernel_size: int = 11  # window side of "conv" layers (the paper's 11 on a 32 x 32 grid)
    loss_img_weight: float = 7.0

    def __post_init__(self) -> None:
        self.attn_types = tuple(self.attn_types)
        bad = [t for t in self.attn_types if t not in ATTN_TYPES]
        if not self.attn_types or bad:
            raise ValueError(f"attn_types must be a non-empty list of {ATTN_TYPES}, got {list(self.attn_types)}")
        for name in ("text_vocab_size", "image_vocab_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        for name in ("text_seq_len", "image_grid_size", "dim", "depth", "num_heads", "conv_kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.loss_img_weight <= 0:
            raise ValueError(f"loss_img_weight must be > 0, got {self.loss_img_weight}")

    @property
    def image_seq_len(self) -> int:
        return self.image_grid_size**2

    @property
    def seq_len(self) -> int:
        """Input length of a training sequence: <bos> + text + all image tokens but the last."""
        return self.text_seq_len + self.image_seq_len

    def layer_attn_types(self) -> list[str]:
        return [self.attn_types[i % len(self.attn_types)] for i in range(self.depth)]


@dataclass
class DALLEOutput:
    text_logits: Tensor  # (B, T, text_vocab_size)
    image_logits: Tensor  # (B, N, image_vocab_size)
    loss: Tensor | None = None  # (text_loss + w * image_loss) / (1 + w)
    text_loss: Tensor | None = None
    image_loss: Tensor | None = None


class DALLE(nn.Module):
    def __init__(self, config: DALLEConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = DALLEConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a DALLEConfig or keyword arguments, not both")
        self.config = c = config
        T, g = c.text_seq_len, c.image_grid_size

        self.text_emb = nn.Embedding(c.text_vocab_size, c.dim)  # row 0 ([PAD]) doubles as <bos>
        self.text_pad_emb = nn.Parameter(torch.zeros(T, c.dim))  # padding at text position k -> its own vector
        self.text_pos = LearnedPositionalEmbedding(c.dim, T + 1)  # <bos> + T text positions
        self.image_emb = nn.Embedding(c.image_vocab_size, c.dim)
        self.image_row_emb = nn.Parameter(torch.zeros(g, c.dim))
        self.image_col_emb = nn.Parameter(torch.zeros(g, c.dim))
        self.decoder = Decoder(
            c.dim,
            c.depth,
            c.num_heads,
            cross_attention=False,
            mlp_ratio=c.mlp_ratio,
            num_kv_heads=c.num_kv_heads,
            qk_norm=c.qk_norm,
            dropout=c.dropout,
            attn_drop=c.attn_drop,
            drop_path_rate=c.drop_path_rate,
        )
        self.text_head = Linear(c.dim, c.text_vocab_size)
        self.image_head = Linear(c.dim, c.image_vocab_size)

        # One (L, L) mask per sparse kind in use; "full" layers pass None and take SDPA's causal path.
        # Built over the full [<bos> | text | image] grid and cut to the input length L = T + N (last token dropped).
        self.layer_types = c.layer_attn_types()
        for kind in sorted(set(self.layer_types) - {"full"}):
            mask = dalle_mask(T + 1, g, kind, kernel_size=c.conv_kernel_size)[: c.seq_len, : c.seq_len]
            self.register_buffer(f"mask_{kind}", mask, persistent=False)

        self.apply(init_weights)
        for table in (self.text_pad_emb, self.image_row_emb, self.image_col_emb):
            nn.init.trunc_normal_(table, std=0.02)

    # ------------------------------------------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        return self.image_head.weight.device

    def no_weight_decay(self) -> set[str]:
        """Embedding tables (timm convention): norms and biases are excluded by the optimizer on ndim < 2."""
        return {
            "text_emb.weight",
            "text_pad_emb",
            "text_pos.weight",
            "image_emb.weight",
            "image_row_emb",
            "image_col_emb",
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.decoder.set_grad_checkpointing(enable)

    def layer_masks(self, start: int, end: int) -> list[Tensor | None]:
        """Per-layer masks for the queries at input positions [start, end) over keys [0, end) (cache-friendly rows)."""
        return [None if kind == "full" else getattr(self, f"mask_{kind}")[start:end, :end] for kind in self.layer_types]

    def image_pos(self) -> Tensor:
        """(N, dim): row + column embedding of each image position in raster order."""
        g, d = self.config.image_grid_size, self.config.dim
        return (self.image_row_emb[:, None] + self.image_col_emb[None, :]).reshape(g * g, d)

    def check_text(self, text: Tensor) -> None:
        c = self.config
        if not isinstance(text, Tensor) or text.dim() != 2 or text.shape[1] != c.text_seq_len:
            shape = tuple(text.shape) if isinstance(text, Tensor) else type(text).__name__
            raise ValueError(f"text must be a (B, text_seq_len={c.text_seq_len}) LongTensor of token ids, got {shape}")
        if text.is_floating_point() or text.dtype == torch.bool:
            raise ValueError(f"text must hold integer token ids, got dtype {text.dtype}")
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= c.text_vocab_size):
            raise ValueError(
                f"text ids must be in [0, {c.text_vocab_size - 1}] (text_vocab_size), "
                f"got [{int(text.min())}, {int(text.max())}]: "
                "was the text encoded with another tokenizer than the model's?"
            )

    def check_image_ids(self, ids: Tensor, *, max_len: int | None = None) -> Tensor:
        """(B, h, w) or (B, n) ids -> (B, n) long, checked against the image vocabulary."""
        c = self.config
        max_len = c.image_seq_len if max_len is None else max_len
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError("image token ids must be an integer tensor (B, h, w) or (B, n)")
        ids = ids.flatten(1) if ids.dim() == 3 else ids
        if ids.dim() != 2 or ids.shape[1] > max_len:
            raise ValueError(
                f"image token ids must be (B, n) with n <= {max_len} or (B, {c.image_grid_size}, {c.image_grid_size}), "
                f"got {tuple(ids.shape)}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= c.image_vocab_size):
            raise ValueError(
                f"image ids must be in [0, {c.image_vocab_size - 1}] (the dVAE's num_tokens), "
                f"got [{int(ids.min())}, {int(ids.max())}]"
            )
        return ids.long()

    # ------------------------------------------------------------------------------------------------ forward

    def embed_text(self, text: Tensor) -> Tensor:
        """(B, T) ids with 0 = padding -> (B, T + 1, dim) embeddings of <bos>, t_0 ... t_{T-1}."""
        tokens = self.text_emb(text)  # (B, T, dim)
        tokens = torch.where((text == 0)[..., None], self.text_pad_emb.to(tokens.dtype), tokens)
        bos = self.text_emb.weight[0].expand(text.shape[0], 1, -1)  # (B, 1, dim)
        return self.text_pos(torch.cat([bos, tokens], dim=1))

    def embed_image(self, ids: Tensor, start: int = 0) -> Tensor:
        """(B, n) image ids at image positions [start, start + n) -> (B, n, dim)."""
        pos = self.image_pos()[start : start + ids.shape[1]]
        return self.image_emb(ids) + pos

    def forward(self, text: Tensor, image: Tensor, *, return_loss: bool = True) -> DALLEOutput:
        """text: (B, T) ids (0 = padding); image: (B, h, w) or (B, N) dVAE ids. Teacher-forced logits (and loss)."""
        self.check_text(text)
        image = self.check_image_ids(image).flatten(1)
        c = self.config
        if image.shape[1] != c.image_seq_len or image.shape[0] != text.shape[0]:
            raise ValueError(
                f"expected {text.shape[0]} images of {c.image_seq_len} tokens, got image ids {tuple(image.shape)}"
            )
        x = torch.cat([self.embed_text(text), self.embed_image(image[:, :-1])], dim=1)  # (B, T + N, dim)
        h = self.decoder(x, mask=self.layer_masks(0, x.shape[1]))
        out = DALLEOutput(self.text_head(h[:, : c.text_seq_len]), self.image_head(h[:, c.text_seq_len :]))
        if return_loss:
            out.text_loss = F.cross_entropy(out.text_logits.flatten(0, 1).float(), text.flatten())
            out.image_loss = F.cross_entropy(out.image_logits.flatten(0, 1).float(), image.flatten())
            w = c.loss_img_weight
            out.loss = (out.text_loss + w * out.image_loss) / (1 + w)
        return out

    # ------------------------------------------------------------------------------------------------ sampling

    def cache_bytes(self, rows: int, dtype: torch.dtype | None = None) -> int:
        """Bytes of the KV cache for `rows` sequences (keys + values of every layer, full length)."""
        c = self.config
        itemsize = torch.empty((), dtype=dtype or self.image_head.weight.dtype).element_size()
        kv_heads = c.num_kv_heads or c.num_heads
        return 2 * c.depth * rows * kv_heads * c.seq_len * (c.dim // c.num_heads) * itemsize

    def generation_bytes(self, rows: int, dtype: torch.dtype | None = None, *, use_cache: bool = True) -> int:
        """Rough peak memory of `generate` for `rows` sequences: the cache plus the widest activations."""
        c = self.config
        itemsize = torch.empty((), dtype=dtype or self.image_head.weight.dtype).element_size()
        acts = rows * c.seq_len * c.dim * (4 + c.mlp_ratio) * itemsize  # residual, qkv, MLP hidden of one layer
        scores = rows * c.num_heads * c.seq_len * c.seq_len * 4  # attention scores if SDPA falls back to the math path
        return (self.cache_bytes(rows, dtype) if use_cache else 0) + int(acts) + scores

    def _dtype(self) -> torch.dtype:
        dev = self.device.type
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
        return self.image_head.weight.dtype

    @torch.inference_mode()
    def generate(
        self,
        text: Tensor,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        prime: Tensor | None = None,
        use_cache: bool = True,
        compile: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> Tensor:
        """Sample image token ids for each text row.

        Args:
            text: (B, T) token ids (0 = padding; an all-padding row is the unconditional prompt).
            temperature, top_k, top_p: logits / temperature, then keep the top_k tokens and the smallest set whose
                probability reaches top_p (None = no filter).
            guidance_scale: classifier-free guidance s: logits = uncond + s * (cond - uncond) within the conditional
                top_k / top_p set (see `dalle.generate.sampling_logits`), the unconditional pass (all-padding text)
                running in the same batch. 1 = no guidance (and no extra pass). Use it with top_p or top_k.
            generator / seed: the random stream (same seed -> same ids). Neither: torch's global generator.
            prime: (B, n) or (B, rows, w) image ids to keep as the first n tokens (image priming).
            use_cache: decode incrementally with a preallocated KV cache (same ids as recomputing every prefix).
            compile: run the decoding step compiled (`core_attention.compiled`; the same ids as eager). The first
                call per process and batch size compiles, about a minute on a CPU; later calls decode faster.
            on_step: called with j after image token j of every row is sampled (a progress bar).
        Returns:
            (B, N) image token ids in raster order.
        """
        c = self.config
        self.check_text(text)
        check_sampling_args(temperature, top_k, top_p, guidance_scale)
        B, N, T = text.shape[0], c.image_seq_len, c.text_seq_len
        prime = self.check_image_ids(prime, max_len=N - 1) if prime is not None else text.new_zeros(B, 0)
        if prime.shape[0] != B:
            raise ValueError(f"prime holds {prime.shape[0]} images but text holds {B} prompts")
        if generator is None and seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        guided = guidance_scale != 1.0
        rows = 2 * B if guided else B
        dtype = self._dtype()
        self.check_memory(rows, dtype, use_cache=use_cache)

        # Conditional rows first, then the unconditional ones (all padding): one batch, inputs left untouched.
        text = text.to(self.device)
        text_in = torch.cat([text, torch.zeros_like(text)]) if guided else text
        prime = prime.to(self.device)
        n = prime.shape[1]
        out = torch.empty(B, N, dtype=torch.long, device=self.device)
        out[:, :n] = prime

        def sample(logits: Tensor) -> Tensor:  # (rows, V) -> (B,)
            return sample_logits(logits, temperature, top_k, top_p, generator, guidance_scale)

        def rows_of(ids: Tensor) -> Tensor:  # (B, k) -> (rows, k)
            return torch.cat([ids, ids]) if guided else ids

        prefix = self.embed_text(text_in)  # (rows, T + 1, dim)
        if n:
            prefix = torch.cat([prefix, self.embed_image(rows_of(prime))], dim=1)
        if not use_cache:
            for j in range(n, N):
                x = torch.cat([prefix, self.embed_image(rows_of(out[:, n:j]), n)], dim=1) if j > n else prefix
                h = self.decoder(x, mask=self.layer_masks(0, x.shape[1]))
                out[:, j] = sample(self.image_head(h[:, -1]))
                if on_step is not None:
                    on_step(j)
            return out

        cache = self.decoder.init_cache(rows, c.seq_len, dtype=dtype, device=self.device)
        h = self.decoder(prefix, mask=self.layer_masks(0, prefix.shape[1]), cache=cache)
        logits = self.image_head(h[:, -1])  # (rows, V): predicts image token n
        step = compiled_step(self, "decode_step") if compile else self.decode_step
        for j in range(n, N):
            token = sample(logits)  # (B,)
            out[:, j] = token
            if on_step is not None:
                on_step(j)
            if j < N - 1:
                position = torch.tensor([T + 1 + j], device=self.device)  # the input position of image token j
                logits = step(rows_of(token), position, cache)
        return out

    def decode_step(self, token: Tensor, position: Tensor, cache: DecoderCache) -> Tensor:
        """One cached decoding step with fixed shapes (what `generate(compile=True)` compiles).

        token: (rows,) image ids at input position `position` (a (1,) tensor: T + 1 + image index); cache: the
        decoder's, filled up to that position. Returns (rows, image_vocab_size) logits of the next image token.
        """
        g = self.config.image_grid_size
        j = position - (self.config.text_seq_len + 1)  # (1,): image index
        pos = self.image_row_emb.index_select(0, j // g) + self.image_col_emb.index_select(0, j % g)  # (1, dim)
        x = (self.image_emb(token[:, None]) + pos).to(self._dtype())  # (rows, 1, dim)
        masks = [
            None if kind == "full" else getattr(self, f"mask_{kind}").index_select(0, position)
            for kind in self.layer_types
        ]
        h = self.decoder(x, mask=masks, cache=cache, cache_position=position)
        return self.image_head(h[:, -1])

    def check_memory(self, rows: int, dtype: torch.dtype, *, use_cache: bool = True) -> None:
        """Raise before allocating when `rows` sequences would not fit in the device's free memory."""
        need = self.generation_bytes(rows, dtype, use_cache=use_cache)
        free = available_memory(self.device)
        if free is not None and need > 0.9 * free:
            cache_gib = self.cache_bytes(rows, dtype) / 2**30
            suggested_batch = max(1, int(rows * 0.9 * free / need) // 2)
            raise MemoryError(
                f"generating {rows} sequences at once needs about {need / 2**30:.2f} GiB "
                f"(KV cache {cache_gib:.2f} GiB) but only {free / 2**30:.2f} GiB is free on "
                f"{self.device}. Generate fewer images per batch (e.g. --batch-size {suggested_batch})."
            )

    # ------------------------------------------------------------------------------------------------ weights

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Writes ``model.safetensors`` (weights, config in the metadata) into ``directory``."""
        from core_attention.io import save_safetensors

        return save_safetensors(Path(directory) / "model.safetensors", self.state_dict(), self.config.to_dict())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DALLE:
        """Loads a ``save_pretrained`` directory (or its ``model.safetensors``) strictly; nothing is unpickled."""
        from core_attention.io import load_safetensors, load_state_dict_checked

        path = Path(path)
        file = path / "model.safetensors" if path.is_dir() else path
        state_dict, config = load_safetensors(file, device=str(map_location))
        if not config:
            raise ValueError(f"{file} has no DALLE config in its metadata: was it written by DALLE.save_pretrained?")
        model = cls(DALLEConfig.from_dict(config))
        load_state_dict_checked(model, state_dict, source=f"DALLE weights {file}")
        return model.to(map_location).eval()


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device` (CUDA: the driver's count; CPU: MemAvailable), or None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None
