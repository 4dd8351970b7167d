"""Discrete VAE: shapes and ranges, gumbel paths, losses, schedules, bad input, save/load."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from recipes import lr_per_step

from dalle.vae.dvae import (
    DiscreteVAE,
    DVAEConfig,
    config_from_state_dict,
    gumbel_softmax,
    kl_to_uniform,
    logit_laplace_nll,
    map_pixels,
    unmap_pixels,
)
from dalle.vae.module import CodebookUsage, DVAEModule, cosine_schedule

SMALL = dict(image_size=16, num_tokens=64, hidden_dim=16, num_resblocks=1, codebook_dim=16)


def small_vae(**overrides) -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(**{**SMALL, **overrides})


# ------------------------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("downsample", [4, 8])
@pytest.mark.parametrize("architecture", ["dalle", "openai"])
def test_encode_decode_shapes_and_ranges(architecture: str, downsample: int) -> None:
    vae = small_vae(
        architecture=architecture,
        downsample=downsample,
        image_size=32,
        hidden_dim=16 if architecture == "dalle" else 64,
    )
    x = torch.rand(3, 3, 32, 32)
    g = 32 // downsample
    assert vae.grid_size == g and vae.num_tokens == 64 and vae.image_size == 32
    ids = vae.encode(x)
    assert ids.shape == (3, g, g) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < 64
    flat = vae.get_codebook_indices(x)
    assert flat.shape == (3, g * g) and torch.equal(flat, ids.flatten(1))
    images = vae.decode(ids)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert torch.equal(vae.decode(flat), images)  # (B, h*w) is accepted too
    out = vae(x, temperature=1.0)
    C = 2 * 3  # logit-Laplace: mu and log-scale per channel
    assert out.logits.shape == (3, 64, g, g) and out.codes.shape == (3, 64, g, g) and out.stats.shape == (3, C, 32, 32)


def test_decode_ids_equals_decoder_on_one_hot() -> None:
    vae = small_vae()
    ids = torch.randint(0, 64, (2, 4, 4))
    one_hot = F.one_hot(ids, 64).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(vae.decoder.forward_ids(ids), vae.decoder(one_hot), atol=1e-5, rtol=1e-5)


def test_mse_loss_option() -> None:
    vae = small_vae(loss="mse")
    x = torch.rand(2, 3, 16, 16)
    out = vae(x)
    assert out.stats.shape == (2, 3, 16, 16)
    losses = vae.loss(x, out, kl_weight=0.5)
    expected = F.mse_loss(torch.sigmoid(out.stats), map_pixels(x))
    torch.testing.assert_close(losses["recon"], expected)
    torch.testing.assert_close(losses["loss"], losses["recon"] + 0.5 * losses["kl"])


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="downsample"):
        DVAEConfig(downsample=3)
    with pytest.raises(ValueError, match="divisible"):
        DVAEConfig(image_size=30, downsample=4)
    with pytest.raises(ValueError, match="architecture"):
        DVAEConfig(architecture="vqgan")


# ------------------------------------------------------------------------------------------- gumbel-softmax


def test_gumbel_relaxed_vs_hard() -> None:
    logits = torch.randn(4, 10, 3, 3)
    torch.manual_seed(1)
    soft = gumbel_softmax(logits, temperature=1.0, hard=False)
    torch.manual_seed(1)
    hard = gumbel_softmax(logits, temperature=1.0, hard=True)
    torch.testing.assert_close(soft.sum(1), torch.ones(4, 3, 3))
    assert (soft < 0.999).any()  # relaxed: not one-hot at tau = 1
    assert torch.equal(hard.sum(1), torch.ones(4, 3, 3)) and set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard.argmax(1), soft.argmax(1))  # same noise, same winner


def test_gumbel_samples_follow_softmax_and_sharpen() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([1.0, 0.0, -1.0, 2.0])
    batch = logits.view(1, 4, 1, 1).expand(20000, 4, 1, 1)
    freq = gumbel_softmax(batch, 1.0).argmax(1).flatten().bincount(minlength=4).float() / 20000
    torch.testing.assert_close(freq, logits.softmax(0), atol=0.015, rtol=0)
    cold = gumbel_softmax(batch[:100], 1.0 / 16)
    assert float(cold.max(1).values.mean()) > 0.95  # tau -> 0: nearly one-hot


def test_straight_through_gradient_is_the_relaxed_gradient() -> None:
    logits = torch.randn(2, 8, 2, 2, requires_grad=True)
    weight = torch.randn(2, 8, 2, 2)
    grads = {}
    for hard in (False, True):
        torch.manual_seed(3)
        out = gumbel_softmax(logits, 0.5, hard=hard)
        (grad,) = torch.autograd.grad((out * weight).sum(), logits)
        grads[hard] = grad
    assert grads[True].abs().sum() > 0
    torch.testing.assert_close(grads[True], grads[False])


def test_straight_through_reaches_the_encoder() -> None:
    vae = small_vae(straight_through=True)
    x = torch.rand(2, 3, 16, 16)
    out = vae(x, temperature=0.5)
    assert set(out.codes.detach().unique().tolist()) <= {0.0, 1.0}
    vae.loss(x, out, kl_weight=0.0)["loss"].backward()
    assert vae.encoder.blocks.input.weight.grad is not None
    assert vae.encoder.blocks.input.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------- losses


def test_map_unmap_pixels() -> None:
    x = torch.rand(2, 3, 4, 4)
    y = map_pixels(x)
    assert float(y.min()) >= 0.1 - 1e-6 and float(y.max()) <= 0.9 + 1e-6
    torch.testing.assert_close(unmap_pixels(y), x)
    assert float(unmap_pixels(torch.tensor([0.0, 1.0])).min()) == 0.0  # clamped


def test_logit_laplace_is_a_density_and_peaks_at_logit_x() -> None:
    # integrates to 1 over (0, 1)
    xs = torch.linspace(1e-6, 1 - 1e-6, 400001, dtype=torch.float64)
    for mu, log_b in [(0.0, 0.0), (1.5, -1.0), (-2.0, 0.5)]:
        nll = logit_laplace_nll(xs, torch.full_like(xs, mu), torch.full_like(xs, log_b)).double()
        mass = torch.trapezoid(torch.exp(-nll), xs)
        assert abs(float(mass) - 1.0) < 2e-3, (mu, log_b, float(mass))
    # minimised over mu at mu = logit(x)
    x = torch.tensor(0.7)
    mus = torch.linspace(-3, 3, 601)
    nll = logit_laplace_nll(x.expand(601), mus, torch.zeros(601))
    assert abs(float(mus[nll.argmin()]) - math.log(0.7 / 0.3)) < 0.011
    # closed form at one point
    b = 0.5
    expected = abs(math.log(0.7 / 0.3) - 0.2) / b + math.log(2 * b) + math.log(0.7 * 0.3)
    got = logit_laplace_nll(torch.tensor([0.7]), torch.tensor([0.2]), torch.tensor([math.log(b)]))
    assert abs(float(got) - expected) < 1e-5


def test_kl_to_uniform() -> None:
    assert float(kl_to_uniform(torch.zeros(1, 16, 2, 2)).abs().max()) < 1e-6
    peaked = torch.full((1, 16, 1, 1), -1e4)
    peaked[:, 3] = 0
    torch.testing.assert_close(kl_to_uniform(peaked), torch.full((1, 1, 1), math.log(16)))


def test_loss_is_per_dimension_elbo() -> None:
    vae = small_vae()
    x = torch.rand(2, 3, 16, 16)
    out = vae(x)
    losses = vae.loss(x, out, kl_weight=2.0)
    kl = kl_to_uniform(out.logits).sum((1, 2)).mean() / (3 * 16 * 16)
    torch.testing.assert_close(losses["kl"], kl)
    torch.testing.assert_close(losses["loss"], losses["recon"] + 2.0 * kl)


# ------------------------------------------------------------------------------------------- schedules


def test_cosine_schedule_endpoints() -> None:
    assert cosine_schedule(0, 100, 1.0, 1 / 16) == 1.0
    assert cosine_schedule(100, 100, 1.0, 1 / 16) == 1 / 16
    assert cosine_schedule(10_000, 100, 1.0, 1 / 16) == 1 / 16
    assert abs(cosine_schedule(50, 100, 1.0, 1 / 16) - (1 + 1 / 16) / 2) < 1e-12
    values = [cosine_schedule(s, 100, 1.0, 1 / 16) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone
    assert abs(cosine_schedule(25, 100, 0.0, 1.0) - (1 - math.cos(math.pi / 4)) / 2) < 1e-12  # cosine shape


def test_module_schedules() -> None:
    module = DVAEModule(DVAEConfig(**SMALL), temperature_steps=100, kl_weight=6.6, kl_warmup_steps=50)
    assert module.temperature(0) == 1.0 and module.temperature(100) == 1 / 16 and module.temperature(500) == 1 / 16
    assert module.kl_weight(0) == 0.0 and module.kl_weight(50) == 6.6 and module.kl_weight(51) == 6.6
    assert 0 < module.kl_weight(25) < 6.6


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_min_lr() -> None:
    lr, min_lr, warmup_lr = 1e-3, 1e-5, 1e-4
    module = DVAEModule(DVAEConfig(**SMALL), lr=lr, min_lr=min_lr, warmup_lr=warmup_lr, warmup_steps=10)
    lrs = lr_per_step(module, total=110)
    assert lrs[0] == pytest.approx(warmup_lr) and lrs[5] == pytest.approx(warmup_lr + (lr - warmup_lr) / 2)
    assert lrs[10] == pytest.approx(lr) and max(lrs) == pytest.approx(lr)
    assert lrs[60] == pytest.approx((lr + min_lr) / 2)  # half-way through the 100 cosine steps
    assert lrs[35] == pytest.approx(min_lr + (lr - min_lr) * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[110] == pytest.approx(min_lr)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    no_warmup = lr_per_step(DVAEModule(DVAEConfig(**SMALL), lr=lr, min_lr=min_lr), total=100)
    assert no_warmup[0] == pytest.approx(lr) and no_warmup[100] == pytest.approx(min_lr)


def test_no_weight_decay_on_norms_and_biases() -> None:
    module = DVAEModule(DVAEConfig(**SMALL), weight_decay=0.1)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)
    groups = module.configure_optimizers()["optimizer"].param_groups
    decays = {p.ndim >= 2: g["weight_decay"] for g in groups for p in g["params"]}
    assert decays == {True: 0.1, False: 0.0}


def test_codebook_usage_metric() -> None:
    usage = CodebookUsage(8)
    usage.update(torch.tensor([[0, 1], [2, 3]]))
    usage.update(torch.tensor([0, 1, 2, 3]))
    out = usage.compute()
    assert float(out["codes_used"]) == 0.5
    assert abs(float(out["perplexity"]) - 4.0) < 1e-5  # uniform over 4 codes


# ------------------------------------------------------------------------------------------- bad input


def test_images_in_0_255_are_rejected() -> None:
    vae = small_vae()
    with pytest.raises(ValueError, match="0-255"):
        vae.encode(torch.rand(1, 3, 16, 16) * 255)
    with pytest.raises(ValueError, match="uint8"):
        vae.encode((torch.rand(1, 3, 16, 16) * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vae.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    with pytest.raises(ValueError, match="0-255"):
        vae(torch.rand(1, 3, 16, 16) * 255)  # the training path checks too


def test_wrong_image_size_and_layout() -> None:
    vae = small_vae()
    with pytest.raises(ValueError, match="16x16.*got 32x32"):
        vae.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="channels-last"):
        vae.encode(torch.rand(1, 16, 16, 3))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vae.encode(torch.rand(3, 16, 16))


def test_bad_token_ids() -> None:
    vae = small_vae()  # K = 64, grid 4x4
    with pytest.raises(ValueError, match=r"\[0, 63\].*\[64, 64\]"):
        vae.decode(torch.full((1, 4, 4), 64))
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        vae.decode(torch.full((1, 16), -1))
    with pytest.raises(ValueError, match="integer"):
        vae.decode(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 4, 4\)"):
        vae.decode(torch.zeros(1, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="L = 4"):
        vae.decode(torch.zeros(1, 15, dtype=torch.long))


# ------------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("architecture", ["dalle", "openai"])
def test_save_and_load_pretrained(tmp_path, architecture: str) -> None:
    vae = small_vae(architecture=architecture, hidden_dim=16 if architecture == "dalle" else 64)
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "config.json").is_file() and (tmp_path / "vae" / "model.safetensors").is_file()
    loaded = DiscreteVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == vae.config
    x = torch.rand(2, 3, 16, 16)
    ids = vae.encode(x)
    assert torch.equal(loaded.encode(x), ids)
    assert torch.equal(loaded.decode(ids), vae.decode(ids))
    # the single safetensors file carries its config too
    assert DiscreteVAE.from_pretrained(tmp_path / "vae" / "model.safetensors").config == vae.config


def test_shape_mismatch_names_key_shapes_and_matching_config(tmp_path) -> None:
    small_vae().save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError) as info:
        DiscreteVAE.from_pretrained(tmp_path / "vae", num_tokens=128)
    msg = str(info.value)
    assert "encoder.blocks.output.conv.weight" in msg
    assert "(128, 64, 1, 1)" in msg and "(64, 64, 1, 1)" in msg
    assert "'num_tokens': 64" in msg  # the config that fits the weights
    with pytest.raises(ValueError, match="hidden_dim': 16"):
        DiscreteVAE(**{**SMALL, "hidden_dim": 32}).load_weights(small_vae().state_dict())


def test_config_from_state_dict_round_trip() -> None:
    for arch, hd in (("dalle", 16), ("openai", 64)):
        vae = small_vae(architecture=arch, hidden_dim=hd, downsample=8, num_resblocks=2, loss="mse", image_size=32)
        assert config_from_state_dict(vae.state_dict(), image_size=32) == vae.config
