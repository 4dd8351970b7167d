"""Throughput of our OpenAI-architecture dVAE vs. OpenAI's `dall_e` modules, same (random) weights, 256 px.

    python benchmarks/dvae_throughput.py [--batch 2] [--iters 2] [--size 256] [--device cpu]

Prints a markdown table: encode and decode img/s in fp32 and in bf16 autocast with channels-last tensors, for
ours and for dall_e (run the same way), and the ratio. Encode = pixels -> argmax token ids; decode = token ids ->
pixels in [0, 1] (dall_e: one-hot -> Decoder -> sigmoid -> unmap_pixels, as in OpenAI's notebook).
Full-size released architecture (n_hid 256, 2 blocks per group, K 8192): about 3 GB of RAM at batch 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dalle.vae.dvae import DiscreteVAE, DVAEConfig  # noqa: E402


def timed(fn, warmup: int, iters: int) -> float:
    """Best seconds per call over ``iters`` calls after ``warmup`` calls (best-of is robust to a shared machine)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import dall_e

    device = torch.device(args.device)
    torch.manual_seed(0)
    enc = dall_e.Encoder(device=device).eval()
    dec = dall_e.Decoder(device=device).eval()
    if device.type == "cuda":  # dall_e's Conv2d runs in fp16 on GPUs unless told otherwise; compare like for like
        for m in list(enc.modules()) + list(dec.modules()):
            if hasattr(m, "use_float16"):
                m.use_float16 = False
    vae = DiscreteVAE.from_config(DVAEConfig.openai(image_size=args.size)).to(device).eval()
    vae.encoder.load_state_dict(enc.state_dict())
    vae.decoder.load_state_dict(dec.state_dict())
    for p in list(vae.parameters()) + list(enc.parameters()) + list(dec.parameters()):
        p.requires_grad_(False)

    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        ids = vae.encode(x)
        assert torch.equal(ids, enc(dall_e.map_pixels(x)).argmax(1)), "token ids differ from dall_e's"

    def ours_encode(images):
        return lambda: vae.encode(images)

    def theirs_encode(images):
        return lambda: enc(dall_e.map_pixels(images)).argmax(1)

    def ours_decode(codes):
        return lambda: vae.decode(codes)

    def theirs_decode(codes):
        def run():
            one_hot = F.one_hot(codes, num_classes=vae.num_tokens).permute(0, 3, 1, 2).float()
            return dall_e.unmap_pixels(torch.sigmoid(dec(one_hot)[:, :3].float()))

        return run

    rows = []
    for mode in ("fp32", "bf16 + channels-last"):
        low = mode != "fp32"
        fmt = torch.channels_last if low else torch.contiguous_format
        for m in (vae, enc, dec):
            m.to(memory_format=fmt)
        images = x.contiguous(memory_format=fmt)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if low else contextlib.nullcontext()
        for op, ours, theirs, arg in (
            ("encode", ours_encode, theirs_encode, images),
            ("decode", ours_decode, theirs_decode, ids),
        ):
            with torch.inference_mode(), autocast:
                t_ours = timed(ours(arg), args.warmup, args.iters)
                t_theirs = timed(theirs(arg), args.warmup, args.iters)
            rows.append((op, mode, args.batch / t_ours, args.batch / t_theirs))
            print(
                f"  {op} {mode}: ours {args.batch / t_ours:.3f} img/s, dall_e {args.batch / t_theirs:.3f} img/s",
                file=sys.stderr,
                flush=True,
            )

    fp32 = {op: theirs for op, mode, _, theirs in rows if mode == "fp32"}
    print(
        f"\ndVAE throughput, {args.size}px, batch {args.batch}, best of {args.iters} after {args.warmup} warm-up; "
        f"device {device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}\n"
    )
    print("| op | precision / layout | ours img/s | dall_e img/s | ratio | ratio vs dall_e fp32 |")
    print("|---|---|---:|---:|---:|---:|")
    for op, mode, ours, theirs in rows:
        print(f"| {op} | {mode} | {ours:.3f} | {theirs:.3f} | {ours / theirs:.2f}x | {ours / fp32[op]:.2f}x |")


if __name__ == "__main__":
    main()
