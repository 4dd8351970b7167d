"""DALL·E Mini / Mega end to end on a tiny random model: folder -> load -> prompts -> images, the CLI, priming,
conversion, and the clear errors for a missing download and for too little memory. Nothing is downloaded."""

from __future__ import annotations

import json

import pytest
import torch
from pretrained_fixtures import one_thread, write_tiny_pretrained  # noqa: F401 (one_thread: a fixture)
from safetensors import safe_open

from dalle.generate import generate_main
from dalle.pretrained import convert_main, generate_pretrained, load_pretrained
from dalle.transformer.bart import DalleBart, DalleBartConfig
from dalle.vae.vqgan import VQGAN, VQGANConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/pretrained_fixtures.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_pretrained(tmp_path_factory.mktemp("pretrained"))


def test_prompts_to_images(folder):
    pipe = load_pretrained(folder)
    result = generate_pretrained(pipe, ["a fox", "the snow"], num_images=2, batch_size=3, seed=3)
    assert result.images.shape == (2, 2, 3, 32, 32) and result.ids.shape == (2, 2, 256) and result.seed == 3
    assert 0 <= result.images.min() and result.images.max() <= 1
    again = generate_pretrained(pipe, ["a fox", "the snow"], num_images=2, batch_size=3, seed=3)
    assert torch.equal(result.ids, again.ids)  # same seed and batch size: same images
    assert not torch.equal(result.ids[0], result.ids[1])  # a batch of different prompts
    torch.testing.assert_close(pipe.vqgan.decode(result.ids[1, 0][None]), result.images[1, 0][None])


def test_priming_keeps_the_images_top_rows(folder):
    pipe = load_pretrained(folder)
    image = torch.rand(3, 32, 32)
    result = generate_pretrained(pipe, "a fox", num_images=2, seed=0, prime_image=image, prime_rows=12)
    kept = pipe.vqgan.encode(image[None])[:, :12].flatten(1)  # 12 token rows = 192 tokens
    assert torch.equal(result.ids[0, :, :192], kept.expand(2, -1))


def test_cli_writes_grid_and_images(folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert (
        generate_main(
            [
                "a fox",
                "",
                "--pretrained",
                str(folder),
                "-n",
                "2",
                "--out",
                str(out),
                "--seed",
                "5",
                "--guidance-scale",
                "4",
                "--top-k",
                "8",
            ]
        )
        == 0
    )
    assert out.is_file() and len(list((tmp_path / "grid").glob("*.png"))) == 4
    assert "seed 5" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--no-cache"):
        generate_main(["a fox", "--pretrained", str(folder), "--no-cache", "--out", str(out)])
    assert generate_main(["a fox", "--pretrained", str(folder), "-n", "1", "--top-p", "0.5", "--out", str(out)]) == 0


def test_convert_to_our_folder(folder, tmp_path):
    out = tmp_path / "converted"
    assert convert_main([str(folder), str(out)]) == 0  # fp16 by default
    assert safe_open(out / "model.safetensors", "pt").get_tensor("lm_head.weight").dtype == torch.float16
    pipe = load_pretrained(out, dtype=torch.bfloat16)  # loads in the asked dtype whatever the stored one
    assert pipe.model.dtype == torch.bfloat16 and (out / "vocab.json").is_file() and (out / "vqgan").is_dir()


def test_offline_download_names_the_files(monkeypatch):
    def offline(repo_id, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr("dalle.pretrained.snapshot_download", offline)
    with pytest.raises(FileNotFoundError) as err:
        load_pretrained("mini")
    message = str(err.value)
    for needed in (
        "huggingface.co/dalle-mini/dalle-mini",
        "flax_model.msgpack",
        "vocab.json",
        "merges.txt",
        "dalle-mini/vqgan_imagenet_f16_16384",
        "DIR/vqgan/",
        "--pretrained DIR",
        "no internet",
    ):
        assert needed in message


def test_too_little_memory_fails_before_loading(monkeypatch, tmp_path):
    (tmp_path / "vqgan").mkdir()
    mega = {"architecture": "dalle-bart", **DalleBartConfig.mega().to_dict()}
    (tmp_path / "config.json").write_text(json.dumps(mega))
    monkeypatch.setattr("dalle.pretrained.available_memory", lambda device: 4 * 2**30)
    with pytest.raises(MemoryError, match=r"2\.\d\d B parameters: 1\d\.\d GiB to run in fp32, [67]\.\d GiB in fp16"):
        load_pretrained(tmp_path)  # no weights in the folder: the check must come first


def test_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="mini, mega or a folder"):
        load_pretrained(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no VQGAN folder"):
        load_pretrained(tmp_path)


def test_priming_needs_the_vqgan_encoder(folder, tmp_path):
    pipe = load_pretrained(folder)
    decoder_only = VQGAN(VQGANConfig(**{**pipe.vqgan.config.to_dict(), "has_encoder": False}))
    pipe.vqgan = decoder_only  # what min-dalle's detoker.pt gives
    with pytest.raises(ValueError, match="no encoder .*dalle-mini/vqgan_imagenet_f16_16384"):
        generate_pretrained(pipe, "a fox", prime_image=torch.rand(3, 32, 32), prime_rows=4)


def test_ids_outside_the_text_vocabulary_are_named(folder):
    pipe = load_pretrained(folder)
    text = torch.ones(1, 64, dtype=torch.long)
    text[0, 1] = pipe.model.config.text_vocab_size
    with pytest.raises(ValueError, match="text ids must be in .*another checkpoint"):
        pipe.model.encode(text)


def test_too_many_images_at_once_names_the_batch_size(folder, monkeypatch):
    pipe = load_pretrained(folder)
    need = pipe.model.generation_bytes(2 * 8)
    monkeypatch.setattr("dalle.pretrained.available_memory", lambda device: need)  # 8 images + guidance: 16 rows
    with pytest.raises(MemoryError, match=r"decoding 16 rows .* smaller --batch-size \(e\.g\. 7\)"):
        generate_pretrained(pipe, "a fox", num_images=8, batch_size=8)


def test_min_dalle_folder_layout(folder, tmp_path):
    """min-dalle's own layout: pretrained/dalle_bart_mini/{encoder,decoder}_mini.pt + vocab_mini.json +
    merges_mini.txt, the VQGAN in pretrained/vqgan/ (ours here: min-dalle's detoker is full size)."""
    from min_dalle.models import DalleBartDecoder, DalleBartEncoder  # the models only: no global state changes

    vocab = json.loads((folder / "vocab.json").read_text())
    bart = tmp_path / "pretrained" / "dalle_bart_mini"
    bart.mkdir(parents=True)
    enc = DalleBartEncoder(
        layer_count=1,
        embed_count=64,
        attention_head_count=1,
        text_vocab_count=len(vocab),
        text_token_count=64,
        glu_embed_count=48,
        device="cpu",
    )
    dec = DalleBartDecoder(
        image_vocab_count=64, embed_count=64, attention_head_count=1, glu_embed_count=48, layer_count=1, device="cpu"
    )
    torch.save(enc.state_dict(), bart / "encoder_mini.pt")
    torch.save(dec.state_dict(), bart / "decoder_mini.pt")
    (bart / "vocab_mini.json").write_text((folder / "vocab.json").read_text())
    (bart / "merges_mini.txt").write_text((folder / "merges.txt").read_text())
    load_pretrained(folder).vqgan.save_pretrained(tmp_path / "pretrained" / "vqgan")
    pipe = load_pretrained(bart)
    c = pipe.model.config
    assert (c.dim, c.num_heads, c.image_vocab_size, c.codebook_size, c.start_token) == (64, 1, 64, 64, 64)
    assert generate_pretrained(pipe, "a fox", seed=0).ids.shape == (1, 1, 256)


def test_load_pipeline_by_name_and_generate_images_with_reranking(folder, monkeypatch):
    """`load_pipeline("mini")` as the README's generation example uses it: the files come from huggingface_hub
    (here: its download answered by the local folder), and `generate_images` samples, reranks and keeps the best."""
    from dalle.generation import keep_best
    from dalle.pipeline import generate_images, load_pipeline

    asked = []

    def local_snapshot(repo_id, allow_patterns=None):
        asked.append(repo_id)
        return str(folder / "vqgan" if "vqgan" in repo_id else folder)

    monkeypatch.setattr("dalle.pretrained.snapshot_download", local_snapshot)
    model, tokenizer, vqgan = load_pipeline("mini")
    assert asked == ["dalle-mini/dalle-mini", "dalle-mini/vqgan_imagenet_f16_16384"]
    assert isinstance(model, DalleBart) and isinstance(vqgan, VQGAN) and not model.training

    def brightness(prompts, images):
        return images.mean(dim=(1, 2, 3))

    kept = generate_images(model, tokenizer, vqgan, ["a fox"], num_images=2, candidates=4, rerank=brightness, seed=5)
    sampled = generate_pretrained(
        load_pretrained(folder), ["a fox"], num_images=4, top_k=None, guidance_scale=1.0, seed=5
    )
    expected = keep_best(sampled, brightness, 2)
    assert torch.equal(kept.ids, expected.ids) and kept.scores.shape == (1, 2)
    assert kept.scores[0, 0] >= kept.scores[0, 1]  # best first
    with pytest.raises(ValueError, match="always decode with the cache"):
        generate_images(model, tokenizer, vqgan, ["a fox"], use_cache=False)
