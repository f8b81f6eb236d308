"""Images per second of each classical generator on real Magnetic-tile images, on this CPU.

    python benchmarks/bench_generators.py [--root ../shared/data/magnetic_tile] [--n 40]

Times ``generator.generate(request)`` alone (what a ``diag generate`` run spends per sample
apart from reading the source and writing PNGs), on the first ``--n`` defect-free training
images, seeds 0..n-1, with the dataset's other negatives as donors and its positives as real
defects, as the job runner passes them (donor and defect pixels are read from disk on use, as
in a real run). Two modes: the generator's own regions, and ``regions: real-masks`` (a real
defect mask placed on each image). One warm-up call per generator is not timed. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from diag.data import load_dataset
from diag.generators import Request, make_generator
from diag.regions import RegionSpec, make_regions

KINDS = ("memseg", "cutpaste", "draem", "nsa", "copy-paste")
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench(kind: str, images: list[np.ndarray], regions: list[np.ndarray | None], donors, defects
          ) -> float:
    gen = make_generator(kind, {})
    gen.generate(Request(image=images[0], region=regions[0], seed=10_000, donors=donors,
                         defects=defects))
    start = time.perf_counter()
    for seed, (img, region) in enumerate(zip(images, regions, strict=True)):
        gen.generate(Request(image=img, region=region, seed=seed, donors=donors, defects=defects))
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--n", type=int, default=40, help="images per generator and mode")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS))
    args = ap.parse_args()

    samples = load_dataset("magnetic-tile", args.root, split="train")
    negatives = [s for s in samples if not s.label]
    positives = [s for s in samples if s.label]
    images = [s.image for s in negatives[: args.n]]
    donors = negatives[args.n:]
    source = make_regions(RegionSpec(source="real-masks"), positives)
    real = [source.sample_shape(np.random.default_rng(i), img.shape[:2], "x")[0]
            for i, img in enumerate(images)]
    sizes = np.array([img.shape[0] * img.shape[1] for img in images])

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    print(f"data: {len(images)} Magnetic-tile train negatives (mean {sizes.mean() / 1e3:.0f} "
          f"kpx, {int(np.sqrt(sizes.min()))}..{int(np.sqrt(sizes.max()))} px side), "
          f"{len(donors)} donors, {len(positives)} positives")
    print()
    print("| generator | images/s (own regions) | images/s (real-mask regions) |")
    print("|---|---|---|")
    for kind in args.kinds:
        own = bench(kind, images, [None] * len(images), donors, positives)
        given = bench(kind, images, real, donors, positives)
        print(f"| {kind} | {own:.1f} | {given:.1f} |", flush=True)


if __name__ == "__main__":
    main()
