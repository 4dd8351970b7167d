"""Embedding throughput of vit.clip.CLIP vs open_clip's CLIP with the same (random) weights.

Image embeddings (img/s, preprocessed 224 px batches) and text embeddings (prompts/s, 77-token batches), fp32 and
bf16 autocast, inference mode. Ours and open_clip take turns within every repeat, so both see the same machine
load; the table reports each side's best repeat and the median of the per-repeat ratios ours/open_clip (> 1: ours
is faster). No weights are downloaded: open_clip builds the model with random weights and ours copies them.
Text runs twice: short prompts (ours stops at the last end token, open_clip computes all 77 positions) and prompts
that fill the 77 tokens (the same work on both sides: the matmuls and attention alone).

    python benchmarks/clip_throughput.py                                  # ViT-B-32, CPU, all rows
    python benchmarks/clip_throughput.py --models ViT-B-32 ViT-B-16 --threads 2
    python benchmarks/clip_throughput.py --tiny --repeats 1 --iters 1     # seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import open_clip  # noqa: E402
from open_clip.model import CLIP as OpenClipCLIP  # noqa: E402
from open_clip.model import CLIPTextCfg, CLIPVisionCfg  # noqa: E402

from core_attention.hardware import cpu_flags  # noqa: E402
from vit.clip import CLIP, config_from_state_dict, load_open_clip_weights  # noqa: E402


def reference(name: str, tiny: bool) -> OpenClipCLIP:
    if tiny:  # two blocks of width 64 per tower: a smoke test of the script, not a measurement
        vision = CLIPVisionCfg(image_size=224, layers=2, width=64, patch_size=32)
        text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
        return OpenClipCLIP(64, vision, text, quick_gelu=name.endswith("quickgelu")).eval()
    return open_clip.create_model(name, pretrained=None).eval()


def timed(step: Callable[[], None], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B-32"], help="open_clip model names (default ViT-B-32)")
    p.add_argument("--image-batch", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--text-batch", type=int, default=64, help="prompts per batch (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="alternating ours/open_clip measurements per row (default 5)")
    p.add_argument("--iters", type=int, default=2, help="timed batches per measurement (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches before measuring (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"], help="bf16 = autocast")
    p.add_argument("--tiny", action="store_true", help="tiny random towers: check that the script runs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, open_clip {open_clip.__version__}, cpu ({platform.machine()}, "
        f"{torch.get_num_threads()} threads), {args.repeats} repeats x {args.iters} iters, "
        f"load avg {os.getloadavg()[0]:.1f}"
    )
    print(f"# {cpu_flags()}")
    print("| model | tower | dtype | batch | open_clip /s | ours /s | ours/open_clip (median) | (best) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        ref = reference(name, args.tiny)
        sd = ref.state_dict()
        ours = load_open_clip_weights(CLIP.empty(config_from_state_dict(sd, quick_gelu="quickgelu" in name)), sd)
        size = ours.image_size[0]
        images = torch.randn(args.image_batch, 3, size, size)
        short = open_clip.tokenize([f"a photo of a number {i}, taken on a sunny day" for i in range(args.text_batch)])
        full = open_clip.tokenize([" ".join(["word"] * 80)] * args.text_batch)  # cut to 77 tokens: no padding
        text = {"open_clip": ref.encode_text, "ours": ours.encode_text}
        towers = {
            "image": (images, {"open_clip": ref.encode_image, "ours": ours.encode_image}),
            f"text ({int(short.argmax(-1).max()) + 1} tokens)": (short, text),
            "text (77 tokens)": (full, text),
        }
        for tower, (inputs, fns) in towers.items():
            for dt in args.dtypes:
                autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dt == "bf16" else nullcontext

                def make(fn: Callable, autocast: Callable = autocast, inputs: torch.Tensor = inputs) -> Callable:
                    def step() -> None:
                        with torch.inference_mode(), autocast():
                            fn(inputs)

                    return step

                steps = {k: make(fn) for k, fn in fns.items()}
                for step in steps.values():
                    for _ in range(args.warmup):
                        step()
                times: dict[str, list[float]] = {"open_clip": [], "ours": []}
                ratios = []
                for r in range(args.repeats):
                    order = ("open_clip", "ours") if r % 2 == 0 else ("ours", "open_clip")
                    got = {k: timed(steps[k], args.iters) for k in order}
                    for k, t in got.items():
                        times[k].append(t)
                    ratios.append(got["open_clip"] / got["ours"])
                n = inputs.shape[0]
                ref_rate, our_rate = n / min(times["open_clip"]), n / min(times["ours"])
                print(
                    f"| {name}{' (tiny)' if args.tiny else ''} | {tower} | {dt} | {n} | {ref_rate:.1f} | "
                    f"{our_rate:.1f} | {statistics.median(ratios):.2f}x | {our_rate / ref_rate:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
