"""Images per second of each classical generator on real Magnetic-tile images, on this CPU.

    python benchmarks/bench_generators.py [--root ../shared/data/magnetic_tile] [--n 40]
    python benchmarks/bench_generators.py --against-anomalib [--n 64] [--threads 1 2] [--repeat 3]

Times ``generator.generate(request)`` alone (what a ``diag generate`` run spends per sample
apart from reading the source and writing PNGs), on the first ``--n`` defect-free training
images, seeds 0..n-1, with the dataset's other negatives as donors and its positives as real
defects, as the job runner passes them (donor and defect pixels are read from disk on use, as
in a real run). Two modes: the generator's own regions, and ``regions: real-masks`` (a real
defect mask placed on each image). One warm-up call per generator is not timed. Prints a
markdown table.

``--against-anomalib`` (needs anomalib 2.x installed) times memseg and draem side by side with
anomalib's ``PerlinAnomalyGenerator`` (``probability=1``, so every image gets an anomaly; its
anomaly sources are the same donor files diag's generators borrow from, read from disk on use)
in one process: the first ``--n`` negatives resized to ``--size`` (256x640) RGB, one image per
call, for each ``--threads`` count (torch and NumPy/BLAS pools limited alike), ``--repeat``
rounds each, the generators interleaved within a round so that load from other jobs hits them
alike. Prints images/s per round and the ratios to anomalib. ``--anomalib-defaults`` times
anomalib as constructed by default instead (``probability=0.5``: half the images pass through
unchanged; the Perlin noise itself as the anomaly source, no file read).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
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


def rate(run: Callable[[int], object], n: int) -> float:
    """Images per second of ``run(i)`` for i in 0..n-1, after one untimed warm-up call."""
    run(n)
    start = time.perf_counter()
    for i in range(n):
        run(i)
    return n / (time.perf_counter() - start)


def against_anomalib(root: Path, n: int, size: tuple[int, int], threads: Sequence[int],
                     repeat: int, kinds: Sequence[str], defaults: bool = False) -> None:
    """memseg and draem vs anomalib's PerlinAnomalyGenerator, same images, same process."""
    import torch
    from anomalib.data.utils.generators.perlin import PerlinAnomalyGenerator
    from PIL import Image
    from threadpoolctl import threadpool_limits

    from diag.imageio import to_rgb

    samples = load_dataset("magnetic-tile", root, split="train")
    negatives = [s for s in samples if not s.label]
    h, w = size
    images = [to_rgb(np.asarray(Image.fromarray(s.image).resize((w, h), Image.BILINEAR)))
              for s in negatives[: n + 1]]  # one more for the warm-up call
    donors = negatives[n + 1:]
    tensors = [torch.from_numpy(img).permute(2, 0, 1).float().div(255.0) for img in images]
    anomalib = PerlinAnomalyGenerator() if defaults else PerlinAnomalyGenerator(probability=1.0)
    if not defaults:
        anomalib.anomaly_source_paths = [d.path for d in donors]
    gens = {kind: make_generator(kind, {}) for kind in kinds}

    def run_anomalib(i: int) -> object:
        return anomalib(tensors[i])

    def runner(kind: str) -> Callable[[int], object]:
        return lambda i: gens[kind].generate(Request(image=images[i], region=None, seed=i,
                                                     donors=donors))

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}, Python "
          f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")
    print(f"data: {n} Magnetic-tile train negatives resized to {w}x{h} RGB, {len(donors)} "
          "donors read from disk on use; anomalib: "
          + ("defaults (probability 0.5, Perlin-noise source)" if defaults else
             "probability 1, the donors as anomaly sources"))
    print()
    cols = " | ".join(f"{k} images/s | {k} / anomalib" for k in kinds)
    print(f"| threads | round | anomalib images/s | {cols} |")
    print("|---|---|---|" + "---|---|" * len(kinds))
    for t in threads:
        torch.set_num_threads(t)
        with threadpool_limits(t):
            for r in range(repeat):
                torch.manual_seed(r)
                base = rate(run_anomalib, n)
                ours = [rate(runner(kind), n) for kind in kinds]
                cells = " | ".join(f"{v:.1f} | {v / base:.2f}x" for v in ours)
                print(f"| {t} | {r + 1} | {base:.1f} | {cells} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--n", type=int, default=None,
                    help="images per generator and mode (default 40; 64 with --against-anomalib)")
    ap.add_argument("--kinds", nargs="+", default=None)
    ap.add_argument("--against-anomalib", action="store_true",
                    help="time memseg and draem against anomalib's PerlinAnomalyGenerator")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 640), metavar=("H", "W"),
                    help="image size for --against-anomalib")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="thread counts for --against-anomalib")
    ap.add_argument("--repeat", type=int, default=3, help="rounds for --against-anomalib")
    ap.add_argument("--anomalib-defaults", action="store_true",
                    help="with --against-anomalib: anomalib's default probability and source")
    args = ap.parse_args()
    if args.against_anomalib:
        against_anomalib(args.root, args.n or 64, tuple(args.size), args.threads, args.repeat,
                         args.kinds or ["memseg", "draem"], args.anomalib_defaults)
        return
    args.n = args.n or 40
    args.kinds = args.kinds or list(KINDS)

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
