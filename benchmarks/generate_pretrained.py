"""Image tokens per second of DALL·E Mini on our core (``DalleBart.generate``) against min-dalle, same random weights.

    python benchmarks/generate_pretrained.py                       # Mini size, fp32 + bf16, 1 image and a batch of 4
    python benchmarks/generate_pretrained.py --steps 8 --dim 64 --layers 2 --heads 4 --glu 96 --text-vocab 1000
                                                                   # a seconds-long check that the script runs
    python benchmarks/generate_pretrained.py --device cuda           # on a GPU (peak MB: allocated GPU memory)

Both sides sample with min-dalle's defaults (super-conditioning 16, so 2 rows per image, top-k 256, temperature 1)
from min-dalle's modules, whose random weights are copied into ours with our loader. min-dalle is timed through its
own step, ``DalleBartDecoder.sample_tokens``, called the way ``MinDalle.generate_raw_image_stream`` calls it
(its loop is those calls: the image tokens of one prompt, the text encoded once before). ``--steps`` below 256
times the first that many steps of both: ours is stopped from its progress callback after that many tokens.

Figures, each the median of --repeats runs, the implementations taking turns so that drift hits both alike:
- tok/s: sampled image tokens per second (images x steps / time), the text encoder included.
- peak MB: the largest rise of the process's resident memory during a call (sampled every 2 ms), weights excluded.
- read floor: time to read every weight a decoding step must read (decoder projections and lm_head, ours: the
  cross-attention query rows only) once per step; tok/s at the floor is how fast the machine's memory allows.

Duration: each run is a warm-up plus --repeats timed calls of all three. Rough per-step times on the shared 2-core
EPYC (1 thread, busy machine, fp32, 1 / 4 images): ours 0.14 / 0.25 s, min-dalle 0.32 / 0.84 s, so the default run
takes the better part of an hour there; ``--repeats 2 --dtypes fp32`` about a quarter of an hour.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core_attention.hardware import cpu_flags  # noqa: E402
from dalle.transformer.bart import DalleBart  # noqa: E402
from dalle.transformer.bart_weights import build, config_from_state, min_dalle_to_ours  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


class StopEarly(Exception):
    """Raised from `DalleBart.generate`'s progress callback to time only the first --steps tokens."""


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rise(run: Callable[[], object], device: torch.device) -> tuple[float, int]:
    """(seconds, largest rise of memory in bytes) of one call: resident memory on a CPU, allocated memory on a GPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - base
    base, peak, done = rss(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss() - base)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    return seconds, max(peak[0], rss() - base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=256, help="image tokens sampled per image (256 = whole images)")
    p.add_argument("--batch", type=int, default=4, help="images of one prompt in the batch row (a square: 4, 9)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--glu", type=int, default=2730)
    p.add_argument("--text-vocab", type=int, default=50264)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled rows (generate(compile=True))")
    args = p.parse_args()

    threads = args.threads or torch.get_num_threads()
    device = torch.device(args.device)
    from min_dalle.models import DalleBartDecoder, DalleBartEncoder  # its package import sets threads, no grad

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print(f"CPU: {cpu_flags()}")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))

    torch.manual_seed(0)
    enc = DalleBartEncoder(
        layer_count=args.layers,
        embed_count=args.dim,
        attention_head_count=args.heads,
        text_vocab_count=args.text_vocab,
        text_token_count=64,
        glu_embed_count=args.glu,
        device=device,
    ).eval()
    dec = DalleBartDecoder(
        image_vocab_count=2**14,
        embed_count=args.dim,
        attention_head_count=args.heads,
        glu_embed_count=args.glu,
        layer_count=args.layers,
        device=device,
    ).eval()
    state = min_dalle_to_ours(
        {k: v.clone() for k, v in enc.state_dict().items()}, {k: v.clone() for k, v in dec.state_dict().items()}
    )
    base: DalleBart = build(state, config_from_state(state, num_heads=args.heads, start_token=2**14 - 1), "min-dalle")
    n_params = sum(p.numel() for p in base.parameters())
    print(
        f"model: {n_params / 1e6:.0f}M parameters (dim {args.dim}, {args.layers}+{args.layers} layers), "
        f"{args.steps} steps per image"
    )

    g = torch.Generator().manual_seed(1)
    text = torch.ones(2, 64, dtype=torch.long)
    text[:, 0], text[0, 1] = 0, 2
    text[1, 1:11], text[1, 11] = torch.randint(3, args.text_vocab, (10,), generator=g), 2
    N = 256
    rows_out = []
    for dtype_name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        ours = base.to(dtype).to(device)
        enc_d, dec_d = enc.to(dtype).to(device), dec.to(dtype).to(device)
        step_weights = [ours.lm_head.weight]  # what a cached step reads: projections (cross-attention: queries only)
        for name, w in ours.decoder.named_parameters():
            if w.dim() == 2 and "embed" not in name:
                step_weights.append(w[: w.shape[1]] if ".cross_attn.qkv" in name else w)
        for images in (1, args.batch):
            settings = torch.tensor([1.0, 256, 16.0], device=device)

            def run_ours(images=images, compile=False) -> None:
                def stop_early(position: int) -> None:
                    if position + 1 == args.steps < N:
                        raise StopEarly

                try:
                    ours.generate(
                        text[1:],
                        text[:1],
                        num_images=images,
                        on_step=stop_early,
                        generator=torch.Generator(device).manual_seed(0),
                        compile=compile,
                    )
                except StopEarly:
                    pass

            def run_min_dalle(images=images) -> None:
                idx = [0] * images + [1] * images
                encoder_state = enc_d(text.to(device))[idx]
                mask = text.to(device)[idx].ne(1)[:, None, None, :]
                attention_state = torch.zeros(args.layers, images * 4, N, args.dim, device=device)
                tokens = torch.full((images, N + 1), 2**14 - 1, dtype=torch.long, device=device)
                positions = torch.arange(N, device=device)
                for i in range(args.steps):
                    tokens[:, i + 1], attention_state = dec_d.sample_tokens(
                        settings=settings,
                        attention_mask=mask,
                        encoder_state=encoder_state,
                        attention_state=attention_state,
                        prev_tokens=tokens[:, [i]],
                        token_index=positions[[i]],
                    )

            def read_floor() -> None:
                for _ in range(args.steps):
                    for w in step_weights:
                        w.sum()

            runs = {"ours": run_ours, "min-dalle": run_min_dalle, "read floor": read_floor}
            compile_s = None
            if not args.no_compile:
                start, resident = time.perf_counter(), rss()
                run_ours(compile=True)  # compiles the step for this batch shape, once: not in the timed calls
                compile_s = time.perf_counter() - start
                print(f"  compiled in {compile_s:.0f} s; resident memory +{(rss() - resident) / 2**20:.0f} MB (kept)")
                runs["compiled"] = lambda images=images: run_ours(images, compile=True)
            times: dict[str, list[float]] = {k: [] for k in runs}
            peaks: dict[str, list[int]] = {k: [] for k in runs}
            failed: dict[str, str] = {}
            for name, run in runs.items():  # one warm-up each
                try:
                    run()
                except RuntimeError as err:
                    failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"
            for _ in range(args.repeats):
                for name, run in runs.items():
                    if name not in failed:
                        t, m = peak_rise(run, device)
                        times[name].append(t)
                        peaks[name].append(m)
            tok = {k: images * args.steps / statistics.median(v) for k, v in times.items() if v}
            mb = {k: max(v) / 2**20 for k, v in peaks.items() if v}
            rows_out.append((dtype_name, images, tok, mb, failed, compile_s))
            print(
                f"  {dtype_name} {images} image(s): "
                + ", ".join(
                    f"{k} {tok[k]:.1f} tok/s ({mb[k]:.0f} MB)" if k in tok else f"{k} failed ({failed[k]})"
                    for k in runs
                ),
                flush=True,
            )

    print()
    print(
        "| dtype | images | ours tok/s | compiled tok/s (compile s) | min-dalle tok/s | best / min-dalle "
        "| read floor tok/s | ours / floor | compiled / floor | ours peak MB | min-dalle peak MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dtype_name, images, tok, mb, failed, compile_s in rows_out:
        o, c, m, f = tok.get("ours"), tok.get("compiled"), tok.get("min-dalle"), tok.get("read floor")
        best = max(o or 0, c or 0) or None
        cell = lambda x: f"{x:.1f}" if x is not None else "-"  # noqa: E731
        ratio = lambda a, b: f"{a / b:.0%}" if a and b else "-"  # noqa: E731
        megabytes = lambda k: f"{mb[k]:.0f}" if k in mb else "-"  # noqa: E731
        print(
            f"| {dtype_name} | {images} | {cell(o)} | {f'{c:.1f} ({compile_s:.0f})' if c else '-'} | {cell(m)} | "
            f"{f'{best / m:.2f}x' if best and m else '-'} | {cell(f)} | {ratio(o, f)} | {ratio(c, f)} | "
            f"{megabytes('ours')} | {megabytes('min-dalle')} |"
        )
    for dtype_name, images, _, _, failed, _ in rows_out:
        for name, why in failed.items():
            print(f"{name} failed in {dtype_name} with {images} image(s): {why}")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
