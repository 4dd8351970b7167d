"""Image tokens per second of ``DALLE.generate`` on the reference configuration (random weights).

    python benchmarks/generate.py                  # all rows: cache / no cache x fp32 / bf16 x guidance off / on
    python benchmarks/generate.py --repeats 7 --no-uncached

Reference: 12 layers, dim 512, 8 heads x 64, text 32 tokens, 8 x 8 = 64 image tokens, text vocab 1000, image vocab 512,
batch 4. Each row is the median of --repeats runs of one whole ``generate`` call (text prefill included). "Tokens"
counts the images' tokens (batch x 64); with guidance each step runs 2 x batch rows.

The references are measured in the same run, taking turns with ours so that the machine's drift hits all alike:
- "F.linear": the same cached ``generate`` with the decoding-step product of ``core_attention.linear`` turned off
  (``MAX_FAST_ROWS = 0``), i.e. every projection as ``F.linear``: what the step costs without it.
- "read floor": the time to read every weight once (a sum over each weight tensor). A cached step reads all the
  weights, so this is about what the machine's memory allows; cached tok/s ÷ floor tok/s is how close we are.
  "products" is the step's matrix products alone, as ``linear`` runs them: the rest of the step is overhead.

Threads: torch's default (all cores) unless OMP_NUM_THREADS / --threads says otherwise. Other processes on the
machine change the figures a lot (and with more threads than idle cores, a lot more): the load average is printed;
measure on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import core_attention.layers as layers  # noqa: E402
from dalle.transformer.model import DALLE, DALLEConfig  # noqa: E402

# DALLE-pytorch 1.6.6 on this configuration and the same 2-core CPU (fp32, cached, no guidance), the figure the
# project's issue gives; it cannot be installed and run here beside ours, so it is quoted, not measured.
DALLE_PYTORCH_TOKENS_PER_S = 16.0

REFERENCE = DALLEConfig(
    text_vocab_size=1000, text_seq_len=32, image_vocab_size=512, image_grid_size=8, dim=512, depth=12, num_heads=8
)


def load() -> str:
    try:
        return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs taking turns (one warm-up each: allocator, oneDNN kernels)."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def plain_linear(run: Callable[[], object]) -> Callable[[], object]:
    """`run` with every projection as F.linear (the decoding-step product off)."""

    def wrapped() -> object:
        saved, layers.MAX_FAST_ROWS = layers.MAX_FAST_ROWS, 0
        try:
            return run()
        finally:
            layers.MAX_FAST_ROWS = saved

    return wrapped


REFERENCE_STEPS = 10  # decoding steps timed per call of a step reference


def step_references(model: DALLE, rows: int) -> dict[str, Callable[[], object]]:
    """One decoding step's weight reads alone ("read floor") and matrix products alone ("products"), `rows` rows."""
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)] + [model.image_head]
    dtype = model.image_head.weight.dtype
    inputs = {n: torch.randn(rows, 1, n, dtype=dtype) for n in {m.in_features for m in linears}}

    @torch.inference_mode()
    def read() -> None:
        for _ in range(REFERENCE_STEPS):
            for m in linears:
                m.weight.sum()

    @torch.inference_mode()
    def products() -> None:
        for _ in range(REFERENCE_STEPS):
            for m in linears:
                m(inputs[m.in_features])

    return {"read floor": read, "products": products}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cached row (median reported)")
    p.add_argument("--uncached-repeats", type=int, default=1)
    p.add_argument("--no-uncached", action="store_true", help="skip the (slow) rows without cache")
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--check", action="store_true", help="also check cached == uncached ids (fp32, same seed)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    base = DALLE(REFERENCE).eval()
    text = torch.randint(1, REFERENCE.text_vocab_size, (args.batch, REFERENCE.text_seq_len))
    n_tokens = args.batch * REFERENCE.image_seq_len
    n_params = sum(p.numel() for p in base.decoder.parameters()) + base.image_head.weight.numel()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"reference DALLE: {n_params / 1e6:.1f}M parameters read per step, batch {args.batch}, "
        f"{REFERENCE.image_seq_len} image tokens"
    )
    print(load())

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = DALLE(REFERENCE).eval()
        model.load_state_dict(base.state_dict())
        model = model.to(dtype)
        name = "fp32" if dtype == torch.float32 else "bf16"
        for guided in (False, True):
            scale = args.guidance_scale if guided else 1.0
            ours = lambda m=model, s=scale: m.generate(text, seed=0, guidance_scale=s)  # noqa: E731
            runs = {"cached": ours, **step_references(model, args.batch * (2 if guided else 1))}
            if dtype == torch.float32:  # bf16 projections take F.linear anyway
                runs["F.linear"] = plain_linear(ours)
            t = time_interleaved(runs, args.repeats)
            for ref in ("read floor", "products"):  # REFERENCE_STEPS steps per call -> the 64 steps of an image
                t[ref] *= REFERENCE.image_seq_len / REFERENCE_STEPS
            if not args.no_uncached:
                uncached = lambda m=model, s=scale: m.generate(text, seed=0, guidance_scale=s, use_cache=False)  # noqa: E731
                t.update(time_interleaved({"uncached": uncached}, args.uncached_repeats))
            r = {k: n_tokens / v for k, v in t.items()}
            rows.append((name, guided, r))
            print(
                f"  {name} guidance={'on ' if guided else 'off'}: cached {r['cached']:6.1f} tok/s"
                + (f", with F.linear {r['F.linear']:6.1f}" if "F.linear" in r else "")
                + (f", uncached {r['uncached']:5.1f}" if "uncached" in r else "")
                + f"; products alone {r['products']:6.1f}, read floor {r['read floor']:6.1f} tok/s"
                + f" ({r['cached'] / r['read floor']:.0%} of it)",
                flush=True,
            )

    if args.check:
        a = base.generate(text, seed=0, top_k=64)
        b = base.generate(text, seed=0, top_k=64, use_cache=False)
        print(f"cached == uncached ids (fp32, seed 0): {torch.equal(a, b)}")

    print()
    print(
        "| dtype | guidance | cached tok/s | with F.linear | uncached | cache speed-up | products alone | read floor "
        "| cached / floor | vs DALLE-pytorch (16 tok/s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, guided, r in rows:
        c, u, plain = r["cached"], r.get("uncached"), r.get("F.linear")
        print(
            f"| {name} | {'on (2x rows)' if guided else 'off'} | {c:.0f} | "
            f"{f'{plain:.0f} (ours x{c / plain:.2f})' if plain else '-'} | {f'{u:.1f}' if u else '-'} | "
            f"{f'{c / u:.1f}x' if u else '-'} | {r['products']:.0f} | {r['read floor']:.0f} | "
            f"{c / r['read floor']:.0%} | "
            f"{c / DALLE_PYTORCH_TOKENS_PER_S:.1f}x |"
        )
    print(load())


if __name__ == "__main__":
    main()
