"""The VQGAN of DALL·E Mini / Mega against min-dalle's `VQGanDetokenizer` (random weights, no downloads), and its
flax weights (a file written in flax's layout by this test)."""

from __future__ import annotations

import msgpack
import pytest
import torch

from dalle.vae.vqgan import VQGAN, Resample, VQGANConfig
from dalle.vae.vqgan_weights import load_vqgan
from dalle.weight_files import WeightsError

TINY = dict(
    ch=32,
    ch_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(16,),
    resolution=32,
    z_channels=8,
    embed_dim=8,
    n_embed=64,
    num_groups=8,
)


@pytest.fixture(scope="module", autouse=True)
def threads():
    grad, n = torch.is_grad_enabled(), torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_grad_enabled(grad)
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """min-dalle's detokenizer (its sizes are fixed: the full 16384 x 256 codebook, 128..512 channels), random
    weights with perturbed norms, saved as its `detoker.pt`."""
    from min_dalle.models import VQGanDetokenizer

    torch.manual_seed(0)
    detok = VQGanDetokenizer().eval()
    with torch.no_grad():
        for name, p in detok.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("vqgan")
    torch.save(detok.state_dict(), path / "detoker.pt")
    return detok, path


def test_decoder_matches_min_dalle(reference):
    """A 4 x 4 code grid (64 px, the attention over 16 positions) rather than 16 x 16: the convolutions and
    attention are the same at every size, at 1/16 of the cost."""
    detok, path = reference
    ours = load_vqgan(path)
    assert not ours.config.has_encoder and ours.config.norm_eps == 1e-5
    ids = torch.randint(0, 2**14, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = detok.post_quant_conv(detok.embedding(ids).permute(0, 3, 1, 2))
        expected = detok.decoder(z).clamp(0.0, 1.0)
        got = ours.decoder(ours.post_quant_conv(ours.quantize.embedding(ids).permute(0, 3, 1, 2))).clamp(0.0, 1.0)
    # ~35 convolutions over up to 512 channels summed in another order (SDPA vs bmm attention): outputs of range ~2
    # differ by ~2e-5; a wrong weight or eps moves them by far more.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_full_size_decode_layout():
    """`decode` at the real grid: (B, 256) raster-order ids -> (B, 3, 256, 256) in [0, 1] (tiny widths, full grid)."""
    vq = VQGAN(VQGANConfig(**{**TINY, "ch_mult": (1, 1, 1, 1, 2), "resolution": 256})).eval()
    assert vq.grid_size == 16 and vq.image_size == 256
    images = vq.decode(torch.randint(0, 64, (2, 256)))
    assert images.shape == (2, 3, 256, 256) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(ValueError, match="ids must be in"):
        vq.decode(torch.full((1, 256), 64))


def test_encoder_quantizes_to_nearest_code():
    vq = VQGAN(VQGANConfig(**TINY)).eval()
    images = torch.rand(2, 3, 32, 32)
    ids = vq.encode(images)
    assert ids.shape == (2, 16, 16) and ids.dtype == torch.long
    with torch.no_grad():
        z = vq.quant_conv(vq.encoder(images))  # (B, D, h, w)
        dist = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, 8), vq.quantize.embedding.weight)
    assert torch.equal(ids.flatten(), dist.argmin(-1))
    codes = vq.quantize.embedding.weight[ids].permute(0, 3, 1, 2)
    assert torch.equal(vq.quantize(codes), ids)  # a code vector quantizes to itself


def test_downsampling_pads_right_and_bottom():
    """taming's stride-2 conv pads one row / column after the image, none before: output row 0 sees input rows
    0..2 (padding before it would make it see rows -1..1)."""
    down = Resample(4, up=False)
    x = torch.randn(1, 4, 8, 8)
    y = x.clone()
    y[:, :, 2] += 1.0
    with torch.no_grad():
        assert down(x).shape == (1, 4, 4, 4)
        assert not torch.allclose(down(x)[:, :, 0], down(y)[:, :, 0])


def _pack(t: torch.Tensor) -> msgpack.ExtType:
    a = t.detach().float().numpy()
    return msgpack.ExtType(1, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes()), use_bin_type=True))


def test_flax_weights_load_the_same_model(tmp_path):
    """Write our random VQGAN (encoder included) in flax's layout, as vqgan-jax names it, and load it back."""
    torch.manual_seed(2)
    ours = VQGAN(VQGANConfig(**TINY))
    tree: dict = {}
    for key, value in ours.state_dict().items():
        parts = key.split(".")
        if parts[-2] in ("qkv", "proj") and parts[-3] == "attn":  # back to the q / k / v / proj_out 1x1 convs
            convs = dict(zip("qkv", value.chunk(3))) if parts[-2] == "qkv" else {"proj_out": value}
            base = parts[:-3]
        else:
            convs, base = {parts[-2]: value}, parts[:-2]
        for conv, v in convs.items():
            path = [*base, conv]
            flax_path = []
            for p in path:  # ModuleList items "up.4" become flax's "up_4"
                if p.isdigit():
                    flax_path[-1] += f"_{p}"
                else:
                    flax_path.append(p)
            if parts[-1] == "bias":
                leaf = "bias"
            elif "norm" in path[-1]:
                leaf = "scale"
            elif path[-1] == "embedding":
                leaf = "embedding"
            else:
                leaf = "kernel"
                v = v.reshape(*v.shape, 1, 1) if v.dim() == 2 else v
                v = v.permute(2, 3, 1, 0)  # OIHW -> HWIO
            node = tree
            for p in flax_path:
                node = node.setdefault(p, {})
            node[leaf] = _pack(v)
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb(tree, use_bin_type=True))
    loaded = load_vqgan(tmp_path, **TINY)
    assert loaded.config.has_encoder
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    loaded.save_pretrained(tmp_path / "ours")
    again = load_vqgan(tmp_path / "ours")
    assert again.config == loaded.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), again.state_dict().values()))


def test_vqgan_weight_errors(reference, tmp_path):
    _, path = reference
    with pytest.raises(FileNotFoundError, match="detoker.pt"):
        load_vqgan(tmp_path)
    state = torch.load(path / "detoker.pt")
    state["decoder.conv_out.weight"] = state["decoder.conv_out.weight"][:2]
    torch.save(state, tmp_path / "detoker.pt")
    with pytest.raises(WeightsError, match="decoder.conv_out.weight"):
        load_vqgan(tmp_path)
    (tmp_path / "detoker.pt").write_bytes((path / "detoker.pt").read_bytes()[:1000])
    with pytest.raises(WeightsError, match="damaged or truncated"):
        load_vqgan(tmp_path)
