"""CPU time per generated image, diffusion (tiny SDXL-inpainting model) and memseg, 256x640.

    python benchmarks/bench_generate.py [--n 10] [--mt ../shared/data/magnetic_tile]

Images are Magnetic-tile defect-free images resized to 256 wide x 640 tall (the KSDD2 shape);
regions are real crack masks placed on them. The diffusion generator runs the real diffusers
SDXL-inpainting pipeline (random tiny weights, so compute is far below the real model: see
BENCHMARKS.md for what this does and does not say). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diag.data import load_dataset
from diag.generators import Request, make_generator
from diag.generators.diffusion.tiny import write_tiny_sdxl_inpainting
from diag.regions import place_mask

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--mt", default=str(REPO.parent / "shared/data/magnetic_tile"))
    args = ap.parse_args()
    samples = load_dataset("magnetic-tile", args.mt, "train")
    negs = [s for s in samples if not s.label][: args.n]
    cracks = [s for s in samples if s.defect == "crack"]
    rng = np.random.default_rng(0)
    cases = []
    for i, s in enumerate(negs):
        img = np.asarray(Image.fromarray(s.image).resize((256, 640), Image.BICUBIC))
        region, _ = place_mask(cracks[i % len(cracks)].mask, img.shape, rng)
        cases.append((img, region))
    torch.manual_seed(0)
    model = Path(tempfile.mkdtemp()) / "tiny"
    write_tiny_sdxl_inpainting(model)
    configs = [
        ("memseg", {}),
        ("diffusion", {"model": str(model), "steps": 10, "resize": "crop"}),
        ("diffusion", {"model": str(model), "steps": 30, "resize": "crop"}),
        ("diffusion", {"model": str(model), "steps": 30, "resize": "paper", "resolution": 256}),
    ]
    rows = []
    for kind, params in configs:
        gen = make_generator(kind, params)
        gen.generate(Request(image=cases[0][0], region=cases[0][1], seed=0, prompt="a crack"))
        times = []
        for j, (img, region) in enumerate(cases):
            t = time.perf_counter()
            res = gen.generate(Request(image=img, region=region, seed=j, prompt="a crack"))
            times.append(time.perf_counter() - t)
        model_size = res.info.get("model_size", "-")
        label = kind if kind == "memseg" else (
            f"diffusion tiny, {params['steps']} steps, resize {params['resize']}"
            f"{', resolution ' + str(params['resolution']) if 'resolution' in params else ''}")
        rows.append((label, model_size, statistics.median(times), statistics.mean(times)))
        print(f"{label}: median {statistics.median(times):.3f} s/image", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}; {len(cases)} images 256x640 (WxH)")
    print("| generator | model input (HxW) | median s/image | mean s/image |")
    print("|---|---|---|---|")
    for label, size, med, mean in rows:
        print(f"| {label} | {size} | {med:.3f} | {mean:.3f} |")
    print(f"peak RSS of the process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
