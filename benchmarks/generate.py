"""Image tokens per second of ``DALLE.generate`` on the reference configuration (random weights).

    python benchmarks/generate.py                  # all rows: cache / no cache x fp32 / bf16 x guidance off / on
    python benchmarks/generate.py --repeats 7 --no-uncached

Reference: 12 layers, dim 512, 8 heads x 64, text 32 tokens, 8 x 8 = 64 image tokens, text vocab 1000, image vocab 512,
batch 4. Each row is the median of --repeats runs of one whole ``generate`` call (text prefill included). "Tokens"
counts the images' tokens (batch x 64); with guidance each step runs 2 x batch rows. The "weights floor" is the time
of the step's matrix products alone (every weight read once, batch rows at a time): no cached step can be faster
on this machine, so tokens/s ÷ floor tokens/s says how much of the step is overhead.

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
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dalle.model import DALLE, DALLEConfig  # noqa: E402

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


def time_generate(model: DALLE, text: torch.Tensor, repeats: int, **kwargs) -> float:
    model.generate(text, seed=0, **kwargs)  # warm-up (allocator, oneDNN kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(text, seed=0, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def weights_floor(model: DALLE, rows: int, repeats: int) -> float:
    """Seconds per step of only the decoder's and image head's matrix products for `rows` rows."""
    linears = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)] + [model.image_head]
    dtype = model.image_head.weight.dtype
    inputs = {n: torch.randn(rows, 1, n, dtype=dtype) for n in {m.in_features for m in linears}}
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for _ in range(20):
                for m in linears:
                    F.linear(inputs[m.in_features], m.weight, m.bias)
            times.append((time.perf_counter() - start) / 20)
    return statistics.median(times[1:])


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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"reference DALLE: {n_params / 1e6:.1f}M parameters read per step, batch {args.batch}, {REFERENCE.image_seq_len} image tokens")
    print(load())

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model = DALLE(REFERENCE).eval()
        model.load_state_dict(base.state_dict())
        model = model.to(dtype)
        name = "fp32" if dtype == torch.float32 else "bf16"
        for guided in (False, True):
            scale = args.guidance_scale if guided else 1.0
            batch_rows = args.batch * (2 if guided else 1)
            cached = time_generate(model, text, args.repeats, guidance_scale=scale)
            floor = weights_floor(model, batch_rows, args.repeats) * REFERENCE.image_seq_len
            uncached = None
            if not args.no_uncached:
                uncached = time_generate(model, text, args.uncached_repeats, guidance_scale=scale, use_cache=False)
            rows.append((name, guided, n_tokens / cached, n_tokens / uncached if uncached else None, n_tokens / floor))
            r = rows[-1]
            print(f"  {name} guidance={'on ' if guided else 'off'}: cached {r[2]:7.1f} tok/s"
                  + (f", uncached {r[3]:6.1f} tok/s (x{r[2] / r[3]:.1f})" if r[3] else "")
                  + f", weights floor {r[4]:7.1f} tok/s ({r[2] / r[4]:.0%} of it)", flush=True)  # fmt: skip

    if args.check:
        a = base.generate(text, seed=0, top_k=64)
        b = base.generate(text, seed=0, top_k=64, use_cache=False)
        print(f"cached == uncached ids (fp32, seed 0): {torch.equal(a, b)}")

    print()
    print("| dtype | guidance | cached tok/s | uncached tok/s | cache speed-up | weights floor tok/s | cached / floor "
          "| vs DALLE-pytorch (16 tok/s) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, guided, c, u, f in rows:
        print(f"| {name} | {'on (2x rows)' if guided else 'off'} | {c:.0f} | {f'{u:.1f}' if u else '-'} | "
              f"{f'{c / u:.0f}x' if u else '-'} | {f:.0f} | {c / f:.0%} | {c / DALLE_PYTORCH_TOKENS_PER_S:.0f}x |")  # fmt: skip
    print(load())


if __name__ == "__main__":
    main()
