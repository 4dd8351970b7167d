"""DALL·E Mini / Mega on the shared core against min-dalle's own classes, on small random weights (no downloads).

min-dalle's models are built small (its sizes are constructor arguments, except the 256 image positions, the 64
text positions its sampler assumes and the 2**14 codebook its sampler slices to), their norms perturbed away from
ones / zeros so that a wrongly mapped norm shows, saved as the `.pt` files min-dalle ships, and loaded with our loader.
"""

from __future__ import annotations

import json

import msgpack
import pytest
import torch

from dalle.transformer.bart import DalleBart, DalleBartConfig
from dalle.transformer.bart_weights import load_dalle_bart
from dalle.weight_files import WeightsError

DIM, HEADS, GLU, LAYERS, TEXT_VOCAB = 64, 4, 96, 2, 300
IMAGE_VOCAB = 2**14  # min-dalle's sampler slices logits to 2**14 and starts from 2**14 - 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread beats two that wait on each other (and on the other tests sharing the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ref(one_thread):
    """min-dalle's model classes, with torch's global state restored afterwards (its package import switches
    autograd off and changes the thread count)."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    from min_dalle.min_dalle import MinDalle
    from min_dalle.models import DalleBartDecoder, DalleBartEncoder

    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)
    yield MinDalle, DalleBartEncoder, DalleBartDecoder
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)


def perturb_(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or ".ln" in name or "final_ln" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def ref_models(ref):
    _, Encoder, Decoder = ref
    torch.manual_seed(0)
    enc = Encoder(
        layer_count=LAYERS,
        embed_count=DIM,
        attention_head_count=HEADS,
        text_vocab_count=TEXT_VOCAB,
        text_token_count=64,
        glu_embed_count=GLU,
        device="cpu",
    ).eval()
    dec = Decoder(
        image_vocab_count=IMAGE_VOCAB,
        embed_count=DIM,
        attention_head_count=HEADS,
        glu_embed_count=GLU,
        layer_count=LAYERS,
        device="cpu",
    ).eval()
    perturb_(enc, 1)
    perturb_(dec, 2)
    return enc, dec


def drop_ln_scales(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What min-dalle's files look like: the norms dalle-mini builds without a scale have no `.weight`."""
    unscaled = (
        "pre_self_attn_layer_norm.weight",
        "pre_encoder_attn_layer_norm.weight",
        "glu.ln0.weight",
        "glu.ln1.weight",
        "final_ln.weight",
    )
    return {k: v for k, v in state.items() if not k.endswith(unscaled)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, ref_models):
    enc, dec = ref_models
    path = tmp_path_factory.mktemp("min_dalle")
    # The scale-less norms must then be exactly ones in the reference too, as min-dalle's strict=False load leaves them.
    for module in (enc, dec):
        for name, p in module.named_parameters():
            if name.endswith(
                (
                    "pre_self_attn_layer_norm.weight",
                    "pre_encoder_attn_layer_norm.weight",
                    "glu.ln0.weight",
                    "glu.ln1.weight",
                    "final_ln.weight",
                )
            ):
                p.data.fill_(1.0)
    torch.save(drop_ln_scales(enc.state_dict()), path / "encoder.pt")
    torch.save(drop_ln_scales(dec.state_dict()), path / "decoder.pt")
    return path


@pytest.fixture(scope="module")
def ours(folder) -> DalleBart:
    return load_dalle_bart(folder, num_heads=HEADS, start_token=2**14 - 1)


def text_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    text = torch.ones(2, 64, dtype=torch.long)  # min-dalle's encoder takes exactly 2 rows (its position table)
    text[0, :2] = torch.tensor([0, 2])  # the empty prompt: <s> </s>
    text[1, :12] = torch.cat([torch.tensor([0]), torch.randint(3, TEXT_VOCAB, (10,), generator=g), torch.tensor([2])])
    return text


def test_config_read_from_files(ours):
    c = ours.config
    assert (c.dim, c.encoder_depth, c.decoder_depth, c.glu_dim, c.text_vocab_size, c.image_vocab_size) == (
        DIM,
        LAYERS,
        LAYERS,
        GLU,
        TEXT_VOCAB,
        IMAGE_VOCAB,
    )
    assert sum(p.numel() for p in ours.parameters()) == c.num_params()


def test_encoder_matches(ours, ref_models):
    enc, _ = ref_models
    text = text_batch()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(text), enc(text), atol=1e-5, rtol=1e-5)


def test_teacher_forced_logits_match(ours, ref_models):
    enc, dec = ref_models
    text = text_batch()
    g = torch.Generator().manual_seed(4)
    image_in = torch.cat([torch.full((2, 1), 2**14 - 1), torch.randint(0, 2**14, (2, 255), generator=g)], dim=1)
    with torch.no_grad():
        encoded = enc(text)
        state = torch.zeros(LAYERS, 4, 256, DIM)
        # min-dalle's decoder repeats prev_tokens for its [uncond; cond] halves: feed one row per half.
        ref_logits, _ = dec(
            attention_mask=text.ne(1)[:, None, None, :],
            encoder_state=encoded,
            attention_state=state,
            prev_tokens=image_in[1:],
            token_index=torch.arange(256),
        )
        logits = ours(text, torch.cat([image_in[1:], image_in[1:]]))
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_cached_decoding_equals_full_pass(ours):
    text = text_batch()
    g = torch.Generator().manual_seed(5)
    start = torch.full((2, 1), ours.config.start_token)
    image_in = torch.cat([start, torch.randint(0, 2**14, (2, 40), generator=g)], dim=1)
    with torch.no_grad():
        full = ours(text, image_in)
        cache = ours.init_cache(2)
        context, mask = ours.encode(text), ours.text_mask(text)
        first = ours.lm_head(ours.decoder(image_in[:, :9], context, mask, cache=cache))  # a prefix, then one by one
        steps = [ours.lm_head(ours.decoder(image_in[:, j : j + 1], None, mask, cache=cache)) for j in range(9, 41)]
    torch.testing.assert_close(torch.cat([first, *steps], dim=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:.*autocast:FutureWarning", "ignore:CUDA is not available:UserWarning")
def test_sampled_tokens_match_reference_over_256_steps(ours, ref_models, ref):
    """min-dalle's own generation loop (MinDalle.generate_raw_image_stream) with the detokenizer swapped for a probe,
    against `DalleBart.generate`, same seed: both draw with torch.multinomial on (images, 2**14) weights, so the
    random streams line up and the tokens must be identical at every one of the 256 steps, for each of 4 images."""
    MinDalle, _, _ = ref
    enc, dec = ref_models
    md = MinDalle.__new__(MinDalle)  # skips __init__, which downloads
    md.device, md.dtype, md.is_reusable, md.is_verbose, md.text_token_count = "cpu", torch.float32, True, False, 64
    md.layer_count, md.embed_count, md.encoder, md.decoder = LAYERS, DIM, enc, dec
    text = text_batch()
    md.tokenizer = type("Fixed", (), {"tokenize": lambda self, t, is_verbose=False: text[1, :12].tolist()})()
    md.image_grid_from_tokens = lambda image_tokens, is_seamless, is_verbose=False: image_tokens.clone()
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        ref_tokens = next(
            md.generate_raw_image_stream("x", seed=7, grid_size=2, temperature=1.5, top_k=64, supercondition_factor=4)
        )
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
    tokens = ours.generate(
        text[1:],
        text[:1],
        num_images=4,
        temperature=1.5,
        top_k=64,
        guidance_scale=4,
        generator=torch.Generator().manual_seed(7),
    )
    assert tokens.shape == (4, 256)  # 4 images of one prompt: one shared copy of its cross-attention keys / values
    assert torch.equal(tokens, ref_tokens)


def test_generate_shapes_priming_and_seed(ours):
    text = text_batch()
    prime = torch.randint(0, 2**14, (3, 240))  # 16 steps left to sample: the 256-step path is tested above
    run = lambda seed: ours.generate(
        text[1:],
        text[:1],
        num_images=3,
        prime=prime,  # noqa: E731
        generator=torch.Generator().manual_seed(seed),
    )
    a, b = run(1), run(1)
    assert a.shape == (3, 256) and torch.equal(a, b) and torch.equal(a[:, :240], prime)
    assert (a < 2**14).all() and not torch.equal(a, run(2))


def test_save_and_load_pretrained_round_trip(ours, tmp_path):
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architecture"] == "dalle-bart" and config["start_token"] == 2**14 - 1
    again = load_dalle_bart(tmp_path / "ours", dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v.bfloat16(), v2)


# ------------------------------------------------------------------------------------------------ flax layout


def _pack_array(t: torch.Tensor) -> msgpack.ExtType:
    a = t.detach().float().numpy()
    return msgpack.ExtType(1, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes()), use_bin_type=True))


def write_flax(path, enc: dict[str, torch.Tensor], dec: dict[str, torch.Tensor], layers: int) -> None:
    """The flax tree dalle-mini saves (scan-stacked layers, (in, out) kernels, `scale` only on scaled norms), built
    from min-dalle-named state dicts: the inverse of the published conversion, written independently of ours."""
    names = {
        "pre_self_attn_layer_norm": "LayerNorm_0",
        "self_attn_layer_norm": "LayerNorm_1",
        "self_attn": "FlaxBartAttention_0",
        "pre_encoder_attn_layer_norm": "LayerNorm_2",
        "encoder_attn_layer_norm": "LayerNorm_3",
        "encoder_attn": "FlaxBartAttention_1",
        "glu.ln0": "GLU_0/LayerNorm_0",
        "glu.ln1": "GLU_0/LayerNorm_1",
        "glu.fc0": "GLU_0/Dense_0",
        "glu.fc1": "GLU_0/Dense_1",
        "glu.fc2": "GLU_0/Dense_2",
    }
    tree: dict = {"model": {}}

    def put(keys: list[str], value) -> None:
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    for stack, state in (("encoder", enc), ("decoder", dec)):
        layer_keys = sorted({k.split(".", 2)[2] for k in state if k.startswith("layers.")})
        for local in layer_keys:
            module, _, param = local.rpartition(".")
            stacked = torch.stack([state[f"layers.{i}.{local}"] for i in range(layers)])
            if module.endswith(("_proj",)):
                attn, _, proj = module.rpartition(".")
                flax_module, kind = f"{names[attn]}/{proj}", "kernel"
            else:
                flax_module = names[module]
                kind = "kernel" if "fc" in module else ("scale" if param == "weight" else "bias")
            if kind == "kernel":
                stacked = stacked.transpose(-1, -2)
            path_keys = ["model", stack, "layers", f"FlaxBart{stack.title()}Layers", *flax_module.split("/"), kind]
            put(path_keys, _pack_array(stacked))
        for k, v in state.items():
            if k.startswith("layers."):
                continue
            if k == "lm_head.weight":
                put(["lm_head", "kernel"], _pack_array(v.t()))
                continue
            module, param = k.split(".")
            kind = "embedding" if module.startswith("embed") else ("scale" if param == "weight" else "bias")
            put(["model", stack, module, kind], _pack_array(v))
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))


def write_flax_config(folder) -> None:
    (folder / "config.json").write_text(
        json.dumps(
            dict(
                encoder_vocab_size=TEXT_VOCAB,
                image_vocab_size=IMAGE_VOCAB,
                max_text_length=64,
                image_length=256,
                d_model=DIM,
                encoder_layers=LAYERS,
                decoder_layers=LAYERS,
                encoder_attention_heads=HEADS,
                decoder_attention_heads=HEADS,
                encoder_ffn_dim=GLU,
                decoder_ffn_dim=GLU,
                decoder_start_token_id=2**14 - 1,
                ln_positions="normformer",
                use_glu=True,
                use_bias=False,
                force_ln_scale=False,
            )
        )
    )


def test_flax_msgpack_loads_the_same_weights(ours, folder, tmp_path):
    enc, dec = torch.load(folder / "encoder.pt"), torch.load(folder / "decoder.pt")
    write_flax(tmp_path / "flax_model.msgpack", enc, dec, LAYERS)
    write_flax_config(tmp_path)
    flax = load_dalle_bart(tmp_path)
    assert flax.config == ours.config
    # straight to the target device, array by array (meta stands in for a GPU here), from either format
    assert all(p.is_meta for p in load_dalle_bart(tmp_path, device="meta").parameters())
    assert all(p.is_meta for p in load_dalle_bart(folder, device="meta", num_heads=HEADS).parameters())
    for (k, v), (k2, v2) in zip(ours.state_dict().items(), flax.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


# ------------------------------------------------------------------------------------------------ errors


def test_truncated_file_is_a_clear_error(folder, tmp_path):
    data = (folder / "decoder.pt").read_bytes()
    (tmp_path / "encoder.pt").write_bytes((folder / "encoder.pt").read_bytes())
    (tmp_path / "decoder.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="damaged or truncated"):
        load_dalle_bart(tmp_path)
    packed = msgpack.packb({"model": {"encoder": _pack_array(torch.ones(3))}})
    (tmp_path / "flax_model.msgpack").write_bytes(packed[:-5])
    write_flax_config(tmp_path)
    with pytest.raises(WeightsError, match="truncated"):
        load_dalle_bart(tmp_path)


def test_wrong_size_checkpoint_is_a_clear_error(folder, tmp_path):
    (tmp_path / "encoder.pt").write_bytes((folder / "encoder.pt").read_bytes())
    dec = torch.load(folder / "decoder.pt")
    dec["layers.1.glu.fc2.weight"] = dec["layers.1.glu.fc2.weight"][:, :-1]
    torch.save(dec, tmp_path / "decoder.pt")
    with pytest.raises(WeightsError, match=r"wrong shapes.*decoder.blocks.1.mlp.fc2.weight"):
        load_dalle_bart(tmp_path, num_heads=HEADS)
    dec = torch.load(folder / "decoder.pt")
    del dec["layers.0.encoder_attn.v_proj.weight"]
    torch.save(dec, tmp_path / "decoder.pt")
    with pytest.raises(WeightsError, match=r"decoder layer 0 encoder_attn lacks \['v_proj'\]"):
        load_dalle_bart(tmp_path, num_heads=HEADS)


def test_missing_files_are_a_clear_error(tmp_path):
    (tmp_path / "encoder.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="encoder.pt \\+\\s+decoder.pt|decoder.pt"):
        load_dalle_bart(tmp_path)


def test_mega_config_matches_the_published_sizes():
    c = DalleBartConfig.mega()
    assert (c.dim, c.encoder_depth, c.num_heads, c.glu_dim, c.text_vocab_size, c.image_vocab_size) == (
        2048,
        24,
        32,
        4096,
        50272,
        16415,
    )
    assert c.start_token == 16415 and DalleBartConfig.mini().start_token == 16384
    assert 2.5e9 < c.num_params() < 2.7e9  # DALL·E Mega's 2.6 billion parameters
    with torch.device("meta"):
        assert sum(p.numel() for p in DalleBart(c).parameters()) == c.num_params()


def test_flax_config_of_another_variant_is_refused(tmp_path):
    write_flax_config(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "ln_positions": "swinv2", "use_glu": False}))
    (tmp_path / "flax_model.msgpack").write_bytes(msgpack.packb({}))
    with pytest.raises(WeightsError, match="unsupported dalle-mini variant.*swinv2"):
        load_dalle_bart(tmp_path)
