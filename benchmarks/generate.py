"""Image tokens per second of ``DALLE.generate`` on the reference configuration (random weights).

    python benchmarks/generate.py                  # all rows: eager / compiled / no cache x fp32 / bf16 x guidance
    python benchmarks/generate.py --repeats 7 --no-uncached --dtypes fp32
    python benchmarks/generate.py --device cuda    # on a GPU

Reference: 12 layers, dim 512, 8 heads x 64, text 32 tokens, 8 x 8 = 64 image tokens, text vocab 1000, image vocab 512,
batch 4. Each row is the median of --repeats runs of one whole ``generate`` call (text prefill included). "Tokens"
counts the images' tokens (batch x 64); with guidance each step runs 2 x batch rows.

"compiled" is ``generate(compile=True)``: the decoding step compiled once (its compile time is printed, and not in
the figure) and then reused by every timed call. The references are measured in the same run, taking turns with ours
so that the machine's drift hits all alike:
- "F.linear": the same eager ``generate`` with the decoding-step product of ``core_attention.linear`` turned off
  (``MAX_FAST_ROWS = 0``), i.e. every projection as ``F.linear``: what the step costs without it.
- "read floor": the time to read every weight once (a sum over each weight tensor). A cached step reads all the
  weights, so this is about what the machine's memory allows; tok/s ÷ floor tok/s is how close we are.
  "products" is the step's matrix products alone, as eager ``linear`` runs them: the rest of the step is overhead.

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
from core_attention.compiled import compiled_step  # noqa: E402
from core_attention.hardware import cpu_flags, native_bf16  # noqa: E402
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_references(model: DALLE, rows: int) -> dict[str, Callable[[], object]]:
    """One decoding step's weight reads alone ("read floor") and matrix products alone ("products"), `rows` rows."""
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)] + [model.image_head]
    dtype = model.image_head.weight.dtype
    inputs = {n: torch.randn(rows, 1, n, dtype=dtype, device=model.device) for n in {m.in_features for m in linears}}

    @torch.inference_mode()
    def read() -> None:
        for _ in range(REFERENCE_STEPS):
            for m in linears:
                m.weight.sum()
        sync(model.device)

    @torch.inference_mode()
    def products() -> None:
        for _ in range(REFERENCE_STEPS):
            for m in linears:
                m(inputs[m.in_features])
        sync(model.device)

    return {"read floor": read, "products": products}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cached row (median reported)")
    p.add_argument("--uncached-repeats", type=int, default=1)
    p.add_argument("--no-uncached", action="store_true", help="skip the (slow) rows without cache")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--check", action="store_true", help="also check cached == uncached ids (fp32, same seed)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    base = DALLE(REFERENCE).eval().to(device)
    text = torch.randint(1, REFERENCE.text_vocab_size, (args.batch, REFERENCE.text_seq_len))
    n_tokens = args.batch * REFERENCE.image_seq_len
    n_params = sum(p.numel() for p in base.decoder.parameters()) + base.image_head.weight.numel()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"CPU: {cpu_flags()}" + (f"; native bf16 on {device}: {native_bf16(device)}" if device.type != "cpu" else ""))
    print(
        f"reference DALLE: {n_params / 1e6:.1f}M parameters read per step, batch {args.batch}, "
        f"{REFERENCE.image_seq_len} image tokens"
    )
    print(load())

    rows, ids = [], {}
    for name in args.dtypes:
        dtype = torch.float32 if name == "fp32" else torch.bfloat16
        model = DALLE(REFERENCE).eval()
        model.load_state_dict(base.state_dict())
        model = model.to(device, dtype)
        for guided in (False, True):
            scale = args.guidance_scale if guided else 1.0

            def ours(m: DALLE = model, s: float = scale, compile: bool = False) -> torch.Tensor:
                out = m.generate(text, seed=0, guidance_scale=s, top_k=64, compile=compile)
                sync(device)
                return out

            runs = {"cached": ours, **step_references(model, args.batch * (2 if guided else 1))}
            if dtype == torch.float32 and device.type == "cpu":  # the decoding-step product is for fp32 on CPU
                runs["F.linear"] = plain_linear(ours)
            compile_s = None
            if not args.no_compile:
                ids[name, guided, "compiled"] = ours(compile=True)  # compiles once (logged) before the timing
                compile_s = sum(compiled_step(model, "decode_step").compile_seconds.values())
                runs["compiled"] = lambda o=ours: o(compile=True)
            ids[name, guided, "cached"] = ours()
            t = time_interleaved(runs, args.repeats)
            for ref in ("read floor", "products"):  # REFERENCE_STEPS steps per call -> the 64 steps of an image
                t[ref] *= REFERENCE.image_seq_len / REFERENCE_STEPS
            if not args.no_uncached:
                uncached = lambda m=model, s=scale: m.generate(text, seed=0, guidance_scale=s, use_cache=False)  # noqa: E731
                t.update(time_interleaved({"uncached": uncached}, args.uncached_repeats))
            r = {k: n_tokens / v for k, v in t.items()}
            rows.append((name, guided, r, compile_s))
            print(
                f"  {name} guidance={'on ' if guided else 'off'}: cached {r['cached']:6.1f} tok/s"
                + (f", compiled {r['compiled']:6.1f} (compile {compile_s:.0f} s)" if "compiled" in r else "")
                + (f", with F.linear {r['F.linear']:6.1f}" if "F.linear" in r else "")
                + (f", uncached {r['uncached']:5.1f}" if "uncached" in r else "")
                + f"; products alone {r['products']:6.1f}, read floor {r['read floor']:6.1f} tok/s",
                flush=True,
            )

    if args.check:
        a = base.generate(text, seed=0, top_k=64)
        b = base.generate(text, seed=0, top_k=64, use_cache=False)
        print(f"cached == uncached ids (fp32, seed 0): {torch.equal(a, b)}")
    for (name, guided, kind), value in ids.items():
        if kind == "compiled":
            same = torch.equal(value, ids[name, guided, "cached"])
            print(f"compiled == eager ids ({name}, guidance {'on' if guided else 'off'}, seed 0): {same}")
    for guided in (False, True):
        if ("bf16", guided, "cached") in ids and ("fp32", guided, "cached") in ids:
            agree = (ids["bf16", guided, "cached"] == ids["fp32", guided, "cached"]).float().mean().item()
            print(f"bf16 vs fp32 ids, guidance {'on' if guided else 'off'}: {agree:.0%} of tokens agree (seed 0)")

    print()
    print(
        "| dtype | guidance | eager tok/s | compiled tok/s (compile s) | with F.linear | uncached | products alone "
        "| read floor | eager / floor | compiled / floor | vs DALLE-pytorch (16 tok/s) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, guided, r, compile_s in rows:
        c, u, plain, comp = r["cached"], r.get("uncached"), r.get("F.linear"), r.get("compiled")
        best, floor = max(c, comp or 0), r["read floor"]
        print(
            f"| {name} | {'on (2x rows)' if guided else 'off'} | {c:.0f} | "
            f"{f'{comp:.0f} ({compile_s:.0f})' if comp else '-'} | "
            f"{f'{plain:.0f} (eager x{c / plain:.2f})' if plain else '-'} | {f'{u:.1f}' if u else '-'} | "
            f"{r['products']:.0f} | {floor:.0f} | {c / floor:.0%} | {f'{comp / floor:.0%}' if comp else '-'} | "
            f"{best / DALLE_PYTORCH_TOKENS_PER_S:.1f}x |"
        )
    print(load())


if __name__ == "__main__":
    main()
