"""Learn to reverse digit strings with the encoder–decoder Transformer, trained by Lightning.

    python -m core_attention.examples.seq2seq fit --config configs/seq2seq/reverse.yaml
    python -m core_attention.examples.seq2seq test --config configs/seq2seq/reverse.yaml --ckpt_path last
    python -m core_attention.examples.seq2seq demo [OUT_DIR]   # train or reuse, then print reversals

Validation and test report exact-match accuracy of greedy decoding on strings never seen in training.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from core_attention import Seq2SeqTransformer
from core_attention.io import load_checkpoint
from core_attention.training import cli_main, fixed_order_sampler

PAD, BOS, EOS, FIRST_DIGIT = 0, 1, 2, 3
VOCAB_SIZE = FIRST_DIGIT + 10


def encode(digits: str) -> list[int]:
    return [FIRST_DIGIT + int(d) for d in digits]


def decode(ids: list[int]) -> str:
    return "".join(str(i - FIRST_DIGIT) for i in ids if i >= FIRST_DIGIT)


class ReverseDigits(Dataset):
    """Pairs (digits, reversed digits) of random length; `exclude` keeps held-out strings out of training."""

    def __init__(
        self, num_samples: int, min_len: int, max_len: int, seed: int, exclude: set[str] = frozenset()
    ) -> None:
        rng = random.Random(seed)
        self.strings: list[str] = []
        seen = set(exclude)
        while len(self.strings) < num_samples:
            s = "".join(rng.choice("0123456789") for _ in range(rng.randint(min_len, max_len)))
            if s not in exclude and (exclude or s not in seen):  # held-out sets are distinct strings
                seen.add(s)
                self.strings.append(s)

    def __len__(self) -> int:
        return len(self.strings)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        s = self.strings[i]
        return torch.tensor(encode(s)), torch.tensor([BOS, *encode(s[::-1]), EOS])


def collate(pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    pad = lambda seqs: torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=PAD)  # noqa: E731
    return pad([p[0] for p in pairs]), pad([p[1] for p in pairs])


class ReverseDigitsDataModule(pl.LightningDataModule):
    """Train on random strings; validate and test on disjoint held-out strings.

    Args:
        min_len: Shortest digit string.
        max_len: Longest digit string.
        num_train: Training strings (random, none of them a validation or test string).
        num_val: Held-out validation strings (at least 4 digits long, so training still sees every length).
        num_test: Held-out test strings (distinct, at least 4 digits long like the validation ones).
        batch_size: Training pairs per batch.
        shuffle: Shuffle the training pairs every epoch (False: a fixed order, e.g. to compare runs exactly).
        seed: Seed of the random strings (validation and test use seed + 1 and seed + 2).
    """

    def __init__(
        self,
        min_len: int = 1,
        max_len: int = 8,
        num_train: int = 20000,
        num_val: int = 256,
        num_test: int = 512,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        # Only 1,110 strings are shorter than 4 digits: hold out longer ones so training still covers every length.
        held_min = min(max(h.min_len, 4), h.max_len)
        self.val = ReverseDigits(h.num_val, held_min, h.max_len, h.seed + 1)
        self.test = ReverseDigits(h.num_test, held_min, h.max_len, h.seed + 2)
        held_out = set(self.val.strings) | set(self.test.strings)
        self.train = ReverseDigits(h.num_train, h.min_len, h.max_len, h.seed, exclude=held_out)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train,
            self.hparams.batch_size,
            shuffle=self.hparams.shuffle,
            collate_fn=collate,
            sampler=fixed_order_sampler(self, self.train, self.hparams.shuffle),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, 256, collate_fn=collate)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test, 256, collate_fn=collate)


class Seq2SeqModule(pl.LightningModule):
    """Cross-entropy with teacher forcing; AdamW with linear warmup and cosine decay.

    Args:
        dim: Model width of the encoder and decoder.
        num_layers: Blocks in the encoder and, as many, in the decoder.
        num_heads: Attention heads per block (dim must be divisible by it).
        dropout: Dropout on the embeddings, after each attention output projection and in the MLPs.
        lr: Peak AdamW learning rate, after warmup_steps of linear warmup, then cosine decay per step.
        weight_decay: AdamW weight decay.
        warmup_steps: Optimizer steps of linear learning-rate warmup.
        max_positions: Longest source or target sequence the sinusoidal position table covers (tokens).
        beam_size: Beam width of decoding in validation, test and `reverse` (1 = greedy).
    """

    def __init__(
        self,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        max_positions: int = 64,
        beam_size: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Seq2SeqTransformer(
            VOCAB_SIZE,
            VOCAB_SIZE,
            dim=dim,
            num_encoder_layers=num_layers,
            num_decoder_layers=num_layers,
            num_heads=num_heads,
            dropout=dropout,
            max_len=max_positions,
            pad_id=PAD,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        src, tgt = batch
        logits = self.model(src, tgt[:, :-1])  # (B, Lt-1, V)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def exact_match(self, src: Tensor, tgt: Tensor) -> Tensor:
        out = self.model.generate(src, tgt.shape[1] - 1, BOS, EOS, beam_size=self.hparams.beam_size)
        width = max(out.shape[1], tgt.shape[1])
        out, tgt = F.pad(out, (0, width - out.shape[1]), value=PAD), F.pad(tgt, (0, width - tgt.shape[1]), value=PAD)
        return (out == tgt).all(dim=1).float().mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/exact_match", self.exact_match(*batch), prog_bar=True, batch_size=len(batch[0]), sync_dist=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test/exact_match", self.exact_match(*batch), batch_size=len(batch[0]), sync_dist=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(self.trainer.estimated_stepping_batches, self.hparams.warmup_steps + 1)
        warmup = torch.optim.lr_scheduler.LinearLR(opt, 1e-3, 1.0, self.hparams.warmup_steps)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total - self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, cosine], [self.hparams.warmup_steps])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def reverse(self, digits: str) -> str:
        """Reverse a digit string with the trained model (greedy or beam search)."""
        if not digits.isdigit():
            raise ValueError(f"expected a string of digits 0-9, got {digits!r}")
        src = torch.tensor([encode(digits)], device=self.device)
        out = self.model.generate(src, len(digits) + 1, BOS, EOS, beam_size=self.hparams.beam_size)
        return decode(out[0].tolist())


def demo(out_dir: str = "runs/demo/seq2seq") -> float:
    """Train (or reuse) the reverse-digits model, print held-out exact match and a few reversals."""
    ckpt = Path(out_dir) / "reverse.ckpt"
    data = ReverseDigitsDataModule()
    if ckpt.is_file():
        print(f"[seq2seq] reusing {ckpt}")
        module = Seq2SeqModule(**load_checkpoint(ckpt)["hyper_parameters"])
        module.load_state_dict(load_checkpoint(ckpt)["state_dict"])
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    else:
        pl.seed_everything(0)
        module = Seq2SeqModule()
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=1500,
            limit_val_batches=0,
            gradient_clip_val=1.0,
            default_root_dir=out_dir,
            enable_checkpointing=False,
            logger=CSVLogger(out_dir),
        )
        trainer.fit(module, data)
        trainer.save_checkpoint(ckpt)
    (result,) = trainer.test(module, data, verbose=False)
    for digits in ["12345", "9081726", "31415926"]:
        print(f"[seq2seq] reverse({digits}) = {module.reverse(digits)}")
    print(f"[seq2seq] held-out exact match: {result['test/exact_match']:.1%}  (checkpoint: {ckpt})")
    return result["test/exact_match"]


def main(args: list[str] | None = None):
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["demo"]:
        return demo(*argv[1:2])
    return cli_main(
        Seq2SeqModule,
        ReverseDigitsDataModule,
        argv,
        description=__doc__,
        prog="python -m core_attention.examples.seq2seq",
    )


if __name__ == "__main__":
    main()
