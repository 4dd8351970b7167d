"""architecture="openai": OpenAI's released dVAE (the `dall_e` package, random weights) loads strictly and agrees."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

dall_e = pytest.importorskip("dall_e", reason="dall_e is a dev dependency: pip install -e .[dev]")

from dalle.vae.convert_openai import main as convert_main  # noqa: E402
from dalle.vae.dvae import DiscreteVAE, DVAEConfig, map_pixels, unmap_pixels  # noqa: E402

# Smallest sizes dall_e's validators allow, 64 px: quick, and every code path of the full model.
N_HID, N_BLK, VOCAB, N_INIT, SIZE = 64, 1, 512, 32, 64


def dall_e_pair(seed: int = 0, n_blk: int = N_BLK):
    torch.manual_seed(seed)
    enc = dall_e.Encoder(n_hid=N_HID, n_blk_per_group=n_blk, vocab_size=VOCAB)
    dec = dall_e.Decoder(n_init=N_INIT, n_hid=N_HID, n_blk_per_group=n_blk, vocab_size=VOCAB)
    with torch.no_grad():  # dall_e initialises biases to 0; random biases test them too
        for p in list(enc.parameters()) + list(dec.parameters()):
            if p.ndim == 1:
                p.normal_(std=0.1)
    return enc.eval(), dec.eval()


def ours(n_blk: int = N_BLK) -> DiscreteVAE:
    return DiscreteVAE.from_config(
        DVAEConfig.openai(image_size=SIZE, num_tokens=VOCAB, hidden_dim=N_HID, num_resblocks=n_blk, codebook_dim=N_INIT)
    )


def reference_images(dec, ids: torch.Tensor) -> torch.Tensor:
    """OpenAI's notebook: one-hot -> decoder -> sigmoid of the first 3 channels -> unmap_pixels."""
    one_hot = F.one_hot(ids, VOCAB).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return unmap_pixels(torch.sigmoid(dec(one_hot)[:, :3].float()))


def test_pixel_mapping_matches_dall_e() -> None:
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(map_pixels(x), dall_e.map_pixels(x), atol=0, rtol=0)
    torch.testing.assert_close(unmap_pixels(x), dall_e.unmap_pixels(x), atol=0, rtol=0)


@pytest.mark.parametrize("n_blk", [1, 2])
def test_strict_load_same_ids_and_images(n_blk: int) -> None:
    enc, dec = dall_e_pair(n_blk=n_blk)
    vae = ours(n_blk).eval()
    vae.encoder.load_state_dict(enc.state_dict(), strict=True)
    vae.decoder.load_state_dict(dec.state_dict(), strict=True)
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        ref_logits = enc(dall_e.map_pixels(x))
    ids = vae.encode(x)
    assert ids.shape == (3, SIZE // 8, SIZE // 8)
    assert torch.equal(ids, ref_logits.argmax(1))
    torch.testing.assert_close(vae.encoder_logits(x), ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vae.decode(ids), reference_images(dec, ids), atol=1e-4, rtol=0)
    # relaxed codes through the decoder's conv input path agree too
    codes = torch.softmax(torch.randn(2, VOCAB, SIZE // 8, SIZE // 8), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(vae.decoder(codes), dec(codes), atol=1e-4, rtol=1e-4)


def test_released_architecture_state_dict_matches() -> None:
    """The full-size released model (n_hid 256, 2 blocks per group, K 8192): same keys and shapes, strict load."""
    torch.manual_seed(0)
    enc, dec = dall_e.Encoder(), dall_e.Decoder()
    vae = DiscreteVAE.from_config(DVAEConfig.openai(image_size=32))  # small images keep the forward pass cheap
    theirs = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    theirs.update({f"decoder.{k}": v for k, v in dec.state_dict().items()})
    mine = vae.state_dict()
    assert sorted(mine) == sorted(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)
    vae.load_weights(theirs)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vae.encode(x), enc(dall_e.map_pixels(x)).argmax(1))
    del enc, dec, vae, theirs, mine


def test_converter_round_trip(tmp_path, capsys) -> None:
    enc, dec = dall_e_pair(seed=1)
    torch.save(enc, tmp_path / "encoder.pkl")  # pickled modules, like OpenAI's release
    torch.save(dec, tmp_path / "decoder.pkl")
    out = tmp_path / "dall_e_dvae.safetensors"
    assert (
        convert_main(
            [str(tmp_path / "encoder.pkl"), str(tmp_path / "decoder.pkl"), str(out), "--image-size", str(SIZE)]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "unpickling" in captured.err.lower() and "only" in captured.err.lower()

    vae = DiscreteVAE.from_pretrained(out)  # safetensors only from here on
    assert vae.config.architecture == "openai" and vae.num_tokens == VOCAB and vae.image_size == SIZE
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ref_ids = enc(dall_e.map_pixels(x)).argmax(1)
    ids = vae.encode(x)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(vae.decode(ids), reference_images(dec, ids), atol=1e-4, rtol=0)


def test_bf16_and_channels_last_agree() -> None:
    enc, dec = dall_e_pair(seed=2)
    vae = ours().eval()
    vae.encoder.load_state_dict(enc.state_dict())
    vae.decoder.load_state_dict(dec.state_dict())
    x = torch.rand(2, 3, SIZE, SIZE)
    ids = vae.encode(x)
    ref = vae.decode(ids)
    vae = vae.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ids_bf16 = vae.encode(x.contiguous(memory_format=torch.channels_last))
        images_bf16 = vae.decode(ids)
    assert (ids_bf16 == ids).float().mean() > 0.9  # bf16 may flip near-ties of random logits
    assert (images_bf16 - ref).abs().mean() < 0.02
