"""Fused (SDPA) vs. eager attention: forward and forward+backward time and peak memory, B=4 H=8 D=64.

    python benchmarks/attention.py                # L in 256, 1024, 4096, causal and not
    python benchmarks/attention.py --lengths 256 1024 --repeats 5

Each measurement runs in its own subprocess so the peak resident memory (ru_maxrss) belongs to it alone;
"peak MiB" is the growth of the peak over the process's state after the inputs were made.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from core_attention import attend

B, H, D = 4, 8, 64


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(fused: bool, length: int, causal: bool, backward: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, length, D, requires_grad=backward) for _ in range(3))
    grad = torch.randn(B, H, length, D)

    def step() -> None:
        out, _ = attend(q, k, v, is_causal=causal, fused=fused)
        if backward:
            out.backward(grad)
            q.grad = k.grad = v.grad = None

    base = rss_mib()
    step()  # warm-up, and the peak we report
    peak = rss_mib() - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * min(times), "peak_mib": peak}


def measure(fused: bool, length: int, causal: bool, backward: bool, repeats: int) -> dict:
    flags = [str(int(fused)), str(length), str(int(causal)), str(int(backward))]
    cmd = [sys.executable, __file__, "--worker", *flags, "--repeats", str(repeats)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fused, length, causal, backward = args.worker
        print(json.dumps(worker(bool(fused), length, bool(causal), bool(backward), args.repeats)))
        return

    print(f"attention, B={B} H={H} D={D}, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    header = f"| {'L':>5} | pass    | causal | eager ms | fused ms | speed-up | eager peak MiB | fused peak MiB | memory ratio |"  # noqa: E501 (table header)
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for length in args.lengths:
        for backward, causal in [(b, c) for b in (False, True) for c in (False, True)]:
            repeats = 1 if length >= 4096 else args.repeats
            eager = measure(False, length, causal, backward, repeats)
            fused = measure(True, length, causal, backward, repeats)
            print(
                f"| {length:>5} | {'fwd+bwd' if backward else 'fwd':<7} | {'yes' if causal else 'no':>6} "
                f"| {eager['ms']:>8.1f} | {fused['ms']:>8.1f} "
                f"| {eager['ms'] / fused['ms']:>7.1f}x | {eager['peak_mib']:>14.0f} | {fused['peak_mib']:>14.0f} "
                f"| {fused['peak_mib'] / max(eager['peak_mib'], 1e-9):>12.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
