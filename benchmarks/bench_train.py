"""Training throughput of the classifier backbones on this machine.

For each backbone and input size, runs a few real training steps (forward, BCE loss, backward,
Adam step) on random batches in a fresh subprocess, and reports images/s (after one warm-up
step) and the peak resident memory of that process.

    python benchmarks/bench_train.py                      # all backbones, 704x256 and 128x64
    python benchmarks/bench_train.py --steps 3 --batch 8 --sizes 704x256
    python benchmarks/bench_train.py --formats channels_last,contiguous   # diag trains NHWC
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time


def one(backbone: str, height: int, width: int, batch: int, steps: int, device: str,
        threads: int, memory_format: str = "channels_last") -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from diag.classify.models import build_model

    torch.manual_seed(0)
    model, _ = build_model(backbone, "none")
    fmt = getattr(torch, "contiguous_format" if memory_format == "contiguous" else memory_format)
    model.to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(batch, 3, height, width, device=device).to(memory_format=fmt)
    y = (torch.arange(batch, device=device) % 2).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"backbone": backbone, "input": f"{height}x{width}", "batch": batch, "steps": steps,
            "images_per_s": round(batch * steps / dt, 2), "seconds_per_step": round(dt / steps, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "threads": torch.get_num_threads(), "device": device, "format": memory_format}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="resnet50,resnet18,efficientnet-lite0")
    ap.add_argument("--sizes", default="704x256,128x64", help="HxW list")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--formats", default="channels_last",
                    help="memory formats: channels_last (what diag train uses), contiguous")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        b, hw, fmt = args.one.split("@")
        h, w = map(int, hw.split("x"))
        print(json.dumps(one(b, h, w, args.batch, args.steps, args.device, args.threads, fmt)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print("| backbone | input HxW | memory format | batch | threads | images/s | s/step | "
          "peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for b, hw, fmt in ((b, hw, f) for b in args.backbones.split(",")
                       for hw in args.sizes.split(",") for f in args.formats.split(",")):
        r = subprocess.run([sys.executable, __file__, "--one", f"{b}@{hw}@{fmt}", "--batch",
                            str(args.batch), "--steps", str(args.steps), "--device",
                            args.device, "--threads", str(args.threads)],
                           capture_output=True, text=True, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {b} | {d['input']} | {fmt} | {d['batch']} | {d['threads']} | "
              f"{d['images_per_s']} | {d['seconds_per_step']} | {d['peak_rss_mib']} |",
              flush=True)


if __name__ == "__main__":
    main()
