import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from jsonargparse import ArgumentParser

from dalle.data.caption_data import write_shards
from dalle.data.datamodules import CaptionFolderDataModule, ShapesDataModule, WebDatasetDataModule
from dalle.data.shapes import ShapesDataset, is_held_out, parse_caption, write_folder


def check_batch(batch, batch_size, image_size, labels=False):
    assert batch["image"].shape == (batch_size, 3, image_size, image_size)
    assert batch["image"].dtype == torch.float32
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == batch_size
    assert all(isinstance(c, str) for c in batch["caption"])
    if labels:
        assert batch["labels"].shape == (batch_size, 4) and batch["labels"].dtype == torch.long
    else:
        assert "labels" not in batch


class FormatChecker(pl.LightningModule):
    """Asserts the documented batch format inside a real Trainer loop."""

    def __init__(self, image_size):
        super().__init__()
        self.image_size = image_size
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = {"train": 0, "val": 0}

    def _step(self, batch, stage):
        assert batch["image"].shape[1:] == (3, self.image_size, self.image_size)
        assert len(batch["caption"]) == batch["image"].shape[0]
        self.seen[stage] += 1
        return (self.weight - batch["image"].mean()) ** 2

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(datamodule, image_size):
    model = FormatChecker(image_size)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    return model.seen


def test_shapes_datamodule():
    dm = ShapesDataModule(
        image_size=32, max_shapes=2, num_train=40, num_val=10, num_test=10, num_heldout=10, batch_size=8
    )
    assert dm.hparams.num_train == 40
    check_batch(next(iter(dm.train_dataloader())), 8, 32, labels=True)
    assert len(dm.train_dataloader()) == 5
    val = list(dm.val_dataloader())
    assert [len(b["caption"]) for b in val] == [8, 2]
    check_batch(next(iter(dm.test_dataloader())), 8, 32, labels=True)
    heldout = next(iter(dm.heldout_dataloader()))
    check_batch(heldout, 8, 32, labels=True)
    assert all(is_held_out(parse_caption(c)) for c in heldout["caption"])
    assert len(list(dm.train_captions(limit=7))) == 7
    assert fit(dm, 32) == {"train": 2, "val": 2}


def test_shapes_datamodule_workers():
    dm = ShapesDataModule(image_size=16, num_train=16, batch_size=4, num_workers=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    captions = sorted(c for b in batches for c in b["caption"])
    assert captions == sorted(dm.train_set.caption_for(i) for i in range(16))


def test_caption_folder_datamodule(tmp_path):
    write_folder(ShapesDataset("train", 20, image_size=24), tmp_path / "train")
    write_folder(ShapesDataset("val", 6, image_size=24), tmp_path / "val")
    dm = CaptionFolderDataModule(str(tmp_path / "train"), image_size=16, batch_size=4, val_fraction=0.25, seed=1)
    dm.setup("fit")
    assert len(dm.train_set) == 15 and len(dm.val_set) == 5
    assert not set(dm.train_set.indices) & set(dm.val_set.indices)
    check_batch(next(iter(dm.train_dataloader())), 4, 16)
    check_batch(next(iter(dm.val_dataloader())), 4, 16)
    assert len(list(dm.train_captions())) == 15
    again = CaptionFolderDataModule(str(tmp_path / "train"), image_size=16, batch_size=4, val_fraction=0.25, seed=1)
    again.setup("fit")
    assert again.val_set.indices == dm.val_set.indices

    separate = CaptionFolderDataModule(
        str(tmp_path / "train"), val_dir=str(tmp_path / "val"), image_size=16, batch_size=4
    )
    separate.setup("fit")
    assert len(separate.train_set) == 20 and len(separate.val_set) == 6
    assert fit(separate, 16) == {"train": 2, "val": 2}

    no_val = CaptionFolderDataModule(str(tmp_path / "train"), image_size=16, batch_size=4, val_fraction=0.0)
    assert no_val.val_dataloader() == []
    assert fit(no_val, 16) == {"train": 2, "val": 0}


def test_webdataset_datamodule(tmp_path):
    shards = write_shards(ShapesDataset("train", 24, image_size=24), tmp_path / "train-%04d.tar", maxcount=6)
    val = write_shards(ShapesDataset("val", 6, image_size=24), tmp_path / "val-%04d.tar", maxcount=6)
    dm = WebDatasetDataModule(shards, val_urls=val[0], image_size=16, batch_size=4, num_workers=0, shuffle=16)
    batches = list(dm.train_dataloader())
    assert sum(len(b["caption"]) for b in batches) == 24
    check_batch(batches[0], 4, 16)
    check_batch(next(iter(dm.val_dataloader())), 4, 16)
    assert len(list(dm.train_captions())) == 24

    pattern = str(tmp_path / "train-{0000..0003}.tar")
    endless = WebDatasetDataModule(pattern, image_size=16, batch_size=4, num_workers=2, resampled=True, epoch_length=40)
    batches = list(endless.train_dataloader())
    assert len(batches) == 10 and all(len(b["caption"]) == 4 for b in batches)
    assert fit(endless, 16) == {"train": 2, "val": 0}
    with pytest.raises(ValueError, match="epoch_length"):
        WebDatasetDataModule(pattern, resampled=True)


@pytest.mark.parametrize("cls", [ShapesDataModule, CaptionFolderDataModule, WebDatasetDataModule])
def test_lightning_cli_signatures(cls, tmp_path):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    required = {
        "CaptionFolderDataModule": ["--data.train_dir", "x"],
        "WebDatasetDataModule": ["--data.train_urls", "a-{0..3}.tar"],
    }.get(cls.__name__, [])
    config = parser.parse_args(required + ["--data.batch_size", "3"])
    assert config.data.batch_size == 3


class CaptionCollector(FormatChecker):
    """Gathers the captions every DDP rank trained on; rank 0 writes them to `out` (JSON: one list per rank), so the
    test process (which does not train under ddp_spawn) can check them."""

    def __init__(self, image_size, out):
        super().__init__(image_size)
        self.out = str(out)
        self.captions = []

    def training_step(self, batch, batch_idx):
        self.captions += batch["caption"]
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self):
        gathered = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, self.captions)
        if self.trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(gathered))


@pytest.mark.slow  # two spawned gloo processes: ~10 s idle, ~30 s on a busy 2-core machine
def test_webdataset_ddp_splits_shards_across_ranks(tmp_path):
    source = ShapesDataset("train", 16, image_size=16)
    shards = write_shards(source, tmp_path / "shard-%04d.tar", maxcount=4)  # 4 shards -> 2 per rank
    dm = WebDatasetDataModule(shards, image_size=16, batch_size=2, shuffle=0)
    model = CaptionCollector(16, tmp_path / "captions.json")
    trainer = pl.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=2,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    per_rank = json.loads((tmp_path / "captions.json").read_text())  # missing if the ranks never trained
    assert len(per_rank) == 2 and [len(c) for c in per_rank] == [8, 8]  # each rank its own half
    assert sorted(per_rank[0] + per_rank[1]) == sorted(source.caption_for(i) for i in range(16))
