"""ViT training: the Lightning recipe, DataModules (digits, ImageFolder, CIFAR), the CLI, predict, and the digits
bar."""

import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from core_attention.io import load_checkpoint
from vit import VisionTransformer, ViTConfig
from vit.__main__ import main
from vit.data import CIFARDataModule, DigitsDataModule, ImageFolderDataModule, load_image
from vit.module import ViTClassifier, load_classifier

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["python -m vit"])  # pytest's own arguments are not the CLI's


DIGITS_ARCH = ViTConfig(
    img_size=16,
    patch_size=4,
    in_chans=1,
    num_classes=10,
    global_pool="avg",
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=2.0,
)


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def test_fit_with_the_full_recipe(tmp_path):
    pl.seed_everything(0)
    model = ViTClassifier(
        arch=DIGITS_ARCH,
        lr=1e-3,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
        ema_decay=0.9,
        ema_warmup=True,
        layer_decay=0.75,
        warmup_steps=2,
        warmup_fraction=None,
    )
    dm = DigitsDataModule(
        img_size=16, batch_size=32, crop_padding=2, rotate_degrees=10, rand_augment="rand-m5-n1-mstd0.5", re_prob=0.25
    )
    ema_before = model.ema.module.head.weight.detach().clone()
    t = trainer(tmp_path, max_steps=6, gradient_clip_val=1.0, limit_val_batches=2, val_check_interval=3)
    t.fit(model, datamodule=dm)
    assert t.global_step == 6
    assert torch.isfinite(t.callback_metrics["train/loss"])
    assert "val/acc1" in t.callback_metrics and "val/acc5" in t.callback_metrics
    assert not torch.equal(model.ema.module.head.weight, ema_before)
    assert not torch.equal(model.ema.module.head.weight, model.model.head.weight)
    assert model.class_names == [str(i) for i in range(10)]


def test_optimizer_groups_and_schedule(tmp_path):
    model = ViTClassifier(
        arch=DIGITS_ARCH, lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_fraction=0.2, weight_decay=0.05
    )
    t = trainer(tmp_path, max_steps=20)
    model.trainer = t
    cfg = model.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    names = {id(p): n for n, p in model.model.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {
        "pos_embed",
        "cls_token",
        "blocks.0.norm1.weight",
        "blocks.0.attn.qkv.bias",
        "head.bias",
        "fc_norm.weight",
    } <= no_decay
    assert decay == {
        n for n, p in model.model.named_parameters() if p.dim() > 1 and n != "pos_embed" and n != "cls_token"
    }
    lrs = []
    for step in range(21):
        sched.step_update(num_updates=step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6) and lrs[4] == pytest.approx(1e-3)  # linear warmup over 4 steps
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5])) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[20] == pytest.approx(1e-5, rel=1e-3)  # cosine down to min_lr


def test_layer_decay_scales_lr_by_depth(tmp_path):
    model = ViTClassifier(arch=DIGITS_ARCH, layer_decay=0.5)
    model.trainer = trainer(tmp_path, max_steps=10)
    opt = model.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in model.model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.1.attn.qkv.weight"] == 0.5
    assert scale["blocks.0.attn.qkv.weight"] == 0.25 and scale["patch_embed.proj.weight"] == 0.125


def test_finetune_from_timm_weights(tmp_path, caplog):
    ref = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=4,
        in_chans=1,
        depth=2,
        embed_dim=32,
        num_heads=2,
        mlp_ratio=2.0,
        global_pool="avg",
        class_token=True,
    )
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    with caplog.at_level("INFO"):
        model = ViTClassifier(
            arch=DIGITS_ARCH, pretrained=str(tmp_path / "timm.safetensors"), layer_decay=0.65, ema_decay=0.99
        )
        assert not torch.equal(
            model.model.blocks[1].mlp.fc1.weight, ref.blocks[1].mlp.fc1.weight
        )  # loaded when a run starts
        model.load_pretrained()
    assert "dropping the checkpoint's classifier head (1000 classes)" in caplog.text
    assert "resampled pos_embed" in caplog.text and model.model.pos_embed.shape == (1, 17, 32)
    assert torch.equal(model.model.blocks[1].mlp.fc1.weight, ref.blocks[1].mlp.fc1.weight)
    assert torch.equal(model.ema.module.blocks[1].mlp.fc1.weight, ref.blocks[1].mlp.fc1.weight)
    fresh = ViTClassifier(arch=DIGITS_ARCH, pretrained=str(tmp_path / "timm.safetensors"))
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(
        fresh, datamodule=DigitsDataModule(img_size=16, batch_size=16)
    )
    assert not fresh._pretrained_pending  # fit loaded the weights before training
    t = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    t.fit(model, datamodule=DigitsDataModule(img_size=16, batch_size=16))
    assert t.global_step == 2


def test_model_and_data_must_agree(tmp_path):
    model = ViTClassifier(arch=ViTConfig(**{**DIGITS_ARCH.to_dict(), "num_classes": 5}))
    with pytest.raises(ValueError, match="the data has 10 classes but model.arch.num_classes=5"):
        trainer(tmp_path, max_steps=1).fit(model, datamodule=DigitsDataModule(img_size=16))
    model = ViTClassifier(arch=DIGITS_ARCH)
    with pytest.raises(ValueError, match="the data yields 32x32 images but model.arch.img_size=16"):
        trainer(tmp_path, max_steps=1).fit(model, datamodule=DigitsDataModule(img_size=32))


def test_digits_split_is_stratified_and_fixed():
    dm = DigitsDataModule(img_size=16, val_fraction=0.1, test_fraction=0.2)
    _, labels = dm.images_and_labels()
    train, val, test = dm.split_indices(labels)
    assert len(set(train) | set(val) | set(test)) == len(labels) == 1797
    assert len(test) == 360 and len(val) == 180
    counts = np.bincount(labels[test], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    assert np.array_equal(test, DigitsDataModule(img_size=16).split_indices(labels)[2])
    dm.setup("fit")
    x, y = dm.train_set[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)


def _image_folder(root: Path, classes=("cat", "dog"), n=6, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
                (img.convert("L") if i == 0 else img).save(root / split / c / f"{i}.png")  # one grayscale file
    return root


def test_image_folder_fit_and_test(tmp_path):
    root = _image_folder(tmp_path / "data")
    dm = ImageFolderDataModule(
        train_dir=str(root / "train"), val_dir=str(root / "val"), img_size=32, batch_size=4, num_workers=0
    )
    dm.setup("fit")
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2
    arch = ViTConfig(img_size=32, patch_size=8, num_classes=2, embed_dim=32, depth=1, num_heads=2)
    model = ViTClassifier(arch=arch, mixup_alpha=0.8, cutmix_alpha=1.0)
    t = trainer(tmp_path, max_steps=3)
    t.fit(model, datamodule=dm)
    assert t.global_step == 3
    (result,) = t.test(model, datamodule=dm, verbose=False)
    assert 0.0 <= result["test/acc1"] <= 1.0 and result["test/acc5"] == 1.0  # top-5 of 2 classes
    with pytest.raises(FileNotFoundError, match="expected .*/<class name>/<image files>"):
        ImageFolderDataModule(train_dir=str(tmp_path / "nope"), val_dir=str(root / "val")).setup("fit")


def _fake_cifar(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8), "labels": list(range(10)) * 2}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]},
            f,
        )


def test_cifar_datamodule_reads_a_local_root(tmp_path, monkeypatch):
    import torchvision.datasets
    import torchvision.datasets.cifar

    with pytest.raises(FileNotFoundError, match="cifar10 not found under .*--data.download true"):
        CIFARDataModule(root=str(tmp_path / "empty")).setup("fit")
    _fake_cifar(tmp_path / "c")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)  # md5s of the real files
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    dm = CIFARDataModule(root=str(tmp_path / "c"), val_size=10, batch_size=8, num_workers=0)
    dm.setup("fit")
    assert dm.classes[0] == "airplane" and len(dm.train_set) == 90 and len(dm.val_set) == 10 and len(dm.test_set) == 20
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)


def test_load_image_modes(tmp_path):
    Image.new("RGBA", (8, 8)).save(tmp_path / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "g.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    Image.new("I;16", (8, 8)).save(tmp_path / "g16.png")
    assert load_image(tmp_path / "c.png", 3).mode == "RGB"
    assert load_image(tmp_path / "g.png", 1).mode == "L" and load_image(tmp_path / "g16.png", 1).mode == "L"
    with pytest.raises(ValueError, match=r"a.png is a RGBA \(with an alpha channel\) image .* expects 3-channel RGB"):
        load_image(tmp_path / "a.png", 3)
    with pytest.raises(ValueError, match=r"c.png is a RGB image .* expects 1-channel grayscale images \(in_chans=1\)"):
        load_image(tmp_path / "c.png", 1)
    assert load_image(tmp_path / "a.png", 1, convert=True).mode == "L"
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "bad.png", 3)


def _digit_pngs(tmp_path: Path) -> list[str]:
    images, labels = DigitsDataModule.images_and_labels()
    paths = []
    for i in (0, 1):
        paths.append(str(tmp_path / f"digit{i}_label{labels[i]}.png"))
        images[i].resize((24, 24)).save(paths[-1])
    return paths


def test_cli_fit_predict_test_attention(tmp_path, capsys):
    root = tmp_path / "run"
    common = [
        "--config",
        str(REPO / "configs/vit/digits.yaml"),
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_model_summary=false",
        "--model.arch.embed_dim=32",
        "--model.arch.depth=1",
        "--model.arch.num_heads=2",
    ]
    main(["fit", *common, "--trainer.max_steps=3", "--trainer.limit_val_batches=1"])
    last = next(root.rglob("last.ckpt"))
    ckpt = load_checkpoint(last)  # weights_only=True: the checkpoint holds only plain data
    assert ckpt["class_names"] == [str(d) for d in range(10)] and ckpt["hyper_parameters"]["arch"]["embed_dim"] == 32
    capsys.readouterr()

    paths = _digit_pngs(tmp_path)
    out_csv = tmp_path / "preds.csv"
    main(["predict", *paths, *common, "--ckpt_path", str(last), "--model.top_k=3", f"--model.predict_output={out_csv}"])
    printed = capsys.readouterr().out
    for p in paths:
        line = next(ln for ln in printed.splitlines() if ln.startswith(p + ":"))
        assert len(line.split(":", 1)[1].split(",")) == 3  # three labels with probabilities
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "path,rank,label,index,prob" and len(rows) == 1 + 3 * len(paths)

    main(["test", *common, "--ckpt_path", str(last)])
    assert "test top-1 accuracy:" in capsys.readouterr().out

    model = load_classifier(last)
    assert isinstance(model, VisionTransformer) and model.pretrained_cfg["mean"] == [0.5]
    assert main(["attention", paths[0], "--checkpoint", str(last), "--out", str(tmp_path / "a.png")]).is_file()


def test_cli_predict_rejects_rgb_for_a_grayscale_model(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="expects 1-channel grayscale images"):
        main(
            [
                "predict",
                str(tmp_path / "rgb.png"),
                "--config",
                str(REPO / "configs/vit/digits.yaml"),
                f"--trainer.default_root_dir={tmp_path}",
                "--trainer.enable_model_summary=false",
            ]
        )


def test_cli_help_explains_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "attention" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for opt in (
        "--model.arch.embed_dim",
        "--model.arch.reg_tokens",
        "--model.layer_decay",
        "--model.ema_decay",
        "--checkpoint.monitor",
    ):
        assert opt in text
    assert "Layer-wise LR decay" in text and "register tokens" in text
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", "vit.data.DigitsDataModule"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--data.crop_padding" in text and "Training augmentation: pad by this many" in text


@pytest.mark.parametrize("name", ["digits", "cifar10", "imagenet_vit_s16", "finetune_timm"])
def test_configs_parse(name, capsys):
    import yaml

    with pytest.raises(SystemExit) as exit_info:  # --print_config parses and type-checks everything, then exits
        main(["fit", "--config", str(REPO / f"configs/vit/{name}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    arch = ViTConfig.from_dict(cfg["model"]["arch"])
    assert cfg["data"]["class_path"].startswith("vit.data.")
    assert cfg["data"]["init_args"]["img_size"] == arch.img_size


@pytest.mark.slow
def test_digits_reduced_recipe_reaches_90_percent(tmp_path):
    """A shortened digits.yaml run (same recipe, 16 of its 100 epochs) must be far above chance (10%) in about 20 s.

    Measured: 95.0% at 16 epochs (the full recipe: 99.2%); 8 epochs gave only 73-78%, too close to any bar.
    """
    import yaml

    cfg = yaml.safe_load((REPO / "configs/vit/digits.yaml").read_text())
    pl.seed_everything(0)
    model = ViTClassifier(**{**cfg["model"], "arch": ViTConfig(**cfg["model"]["arch"])})
    dm = DigitsDataModule(**cfg["data"]["init_args"])
    start = time.time()
    t = trainer(tmp_path, max_epochs=16, gradient_clip_val=1.0, limit_val_batches=0)
    t.fit(model, datamodule=dm)
    (result,) = t.test(model, datamodule=dm, verbose=False)
    print(f"reduced digits run: test top-1 {100 * result['test/acc1']:.2f}% in {time.time() - start:.0f}s")
    assert result["test/acc1"] >= 0.90
