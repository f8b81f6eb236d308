"""Benchmark of ``diag fidelity``: feature-extraction speed, and FID of memseg defects.

Usage::

    python benchmarks/bench_fidelity.py --speed                      # images/s only
    python benchmarks/bench_fidelity.py --real ../shared/data/magnetic_tile \\
        --generated /tmp/mt_memseg                                   # + FID of a generate run

The generated folder is made beforehand with ``diag generate`` (see RESULTS-fidelity.md).
Prints a markdown summary; ``--json`` writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def extraction_speed(device: str, batch: int, dims: tuple[int, ...], n: int) -> float:
    """Images per second of preprocessing + Inception features (after one warm-up batch)."""
    from diag.metrics.inception import InceptionExtractor

    ext = InceptionExtractor.load(dims=dims, device=device)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256), dtype=np.uint8) for _ in range(n)]
    ext.extract(images[:batch], batch_size=batch)  # warm-up (TorchScript specialisation)
    ext.extract(images[:batch], batch_size=batch)
    t0 = time.perf_counter()
    ext.extract(images, batch_size=batch)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n", type=int, default=64, help="images per speed run")
    p.add_argument("--speed", action="store_true", help="measure extraction speed")
    p.add_argument("--real", default=None)
    p.add_argument("--generated", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import torch

    out: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                             "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                             "torch": torch.__version__, "device": args.device,
                             "load_avg_at_start": os.getloadavg()[0]}}
    if args.speed:
        out["speed"] = {}
        for dims in ((64,), (64, 192), (64, 192, 2048)):
            ips = extraction_speed(args.device, args.batch, dims, args.n)
            key = "/".join(map(str, dims))
            out["speed"][key] = round(ips, 2)
            print(f"extraction, dims {key}: {ips:.2f} images/s (batch {args.batch}, "
                  f"{args.device})", flush=True)
    if args.real and args.generated:
        from diag.cli import main as diag_main

        res_path = os.path.join(args.generated, "fidelity-bench.json")
        argv = ["fidelity", "--real", args.real, "--generated", args.generated,
                "--dims", "64,192,2048", "--kid", "--device", args.device,
                "--batch-size", str(args.batch), "--out", res_path, "--quiet"]
        print("diag " + " ".join(argv), flush=True)
        t0 = time.perf_counter()
        assert diag_main(argv) == 0
        res = json.loads(Path(res_path).read_text())
        res_region = res_path.replace(".json", "-region.json")
        argv_r = [*argv[:-3], "--region", "--out", res_region, "--quiet"]
        print("diag " + " ".join(argv_r), flush=True)
        assert diag_main(argv_r) == 0
        reg = json.loads(Path(res_region).read_text())
        out["fid"] = {"whole": res["fid"], "kid_whole": res["kid"], "region": reg["fid"],
                      "kid_region": reg["kid"], "real": res["real"],
                      "generated": res["generated"], "diversity": res.get("diversity"),
                      "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
