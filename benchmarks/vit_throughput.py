"""Throughput of vit.VisionTransformer vs timm's VisionTransformer with the same weights.

ViT-Ti/16 and ViT-S/16 at 224 px, batch 16: inference and one training step (forward, backward, AdamW step),
fp32 and bf16 autocast, in one run. Ours and timm alternate within every repeat so both see the same machine
load; the table reports each side's best repeat (img/s) and the median of the per-repeat ratios ours/timm.

    python benchmarks/vit_throughput.py                 # CPU, all rows
    python benchmarks/vit_throughput.py --device cuda   # GPU
    python benchmarks/vit_throughput.py --models vit_tiny_patch16_224 --repeats 5 --iters 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402

from vit import from_timm  # noqa: E402

MODELS = {"vit_tiny_patch16_224": "ViT-Ti/16", "vit_small_patch16_224": "ViT-S/16"}


def make_step(
    model: torch.nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None, device: str
):
    autocast = (lambda: torch.autocast(device_type=device, dtype=dtype)) if dtype else nullcontext
    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast():
                model(x)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def timed(step, iters: int, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--models", nargs="+", default=list(MODELS), help="timm model names (default: ViT-Ti/16 and ViT-S/16)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--img-size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--repeats", type=int, default=5, help="alternating ours/timm measurements per row (default 5)")
    p.add_argument("--iters", type=int, default=2, help="timed steps per measurement (default 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before measuring (default 2)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"], help="what to time")
    p.add_argument(
        "--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"], help="fp32 and/or bf16 autocast"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    name = (
        torch.cuda.get_device_name()
        if dev == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"# torch {torch.__version__}, timm {timm.__version__}, {dev} ({name}), "
        f"batch {args.batch_size}, {args.img_size}px, "
        f"{args.repeats} repeats x {args.iters} iters, load avg {os.getloadavg()[0]:.1f}"
    )
    print("| model | mode | dtype | timm img/s | ours img/s | ours/timm (median) | ours/timm (best) |")
    print("|---|---|---|---:|---:|---:|---:|")
    fp32_timm_infer: dict[str, float] = {}
    bf16_ours_infer: dict[str, float] = {}
    for model_name in args.models:
        torch.manual_seed(0)
        ref = timm.create_model(model_name, pretrained=False, img_size=args.img_size).to(dev)
        ours = from_timm(ref).to(dev)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=dev)
        y = torch.randint(0, ref.num_classes, (args.batch_size,), device=dev)
        for mode in args.modes:
            for dt in args.dtypes:
                dtype = torch.bfloat16 if dt == "bf16" else None
                steps = {k: make_step(m, mode, x, y, dtype, dev) for k, m in (("timm", ref), ("ours", ours))}
                for s in steps.values():
                    for _ in range(args.warmup):
                        s()
                t_timm, t_ours, ratios = [], [], []
                for r in range(args.repeats):
                    order = ("timm", "ours") if r % 2 == 0 else ("ours", "timm")
                    got = {k: timed(steps[k], args.iters, dev) for k in order}
                    t_timm.append(got["timm"])
                    t_ours.append(got["ours"])
                    ratios.append(got["timm"] / got["ours"])
                ips_timm, ips_ours = args.batch_size / min(t_timm), args.batch_size / min(t_ours)
                print(
                    f"| {MODELS.get(model_name, model_name)} | {mode} | {dt} | {ips_timm:.1f} | {ips_ours:.1f} | "
                    f"{statistics.median(ratios):.2f}x | {ips_ours / ips_timm:.2f}x |",
                    flush=True,
                )
                if mode == "infer" and dt == "fp32":
                    fp32_timm_infer[model_name] = ips_timm
                if mode == "infer" and dt == "bf16":
                    bf16_ours_infer[model_name] = ips_ours
    for m in args.models:
        if m in fp32_timm_infer and m in bf16_ours_infer:
            speedup = bf16_ours_infer[m] / fp32_timm_infer[m]
            print(f"{MODELS.get(m, m)}: ours bf16 inference / timm fp32 inference = {speedup:.2f}x (best repeats)")


if __name__ == "__main__":
    main()
