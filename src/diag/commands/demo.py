"""``diag demo``: the README's main job on the bundled Magnetic-tile example, in minutes.

generate -> train -> evaluate -> fidelity -> report: a small ``diag bench`` (real-only against
generated defects, zero-shot and full-shot, one seed) on the 20 bundled images, ending with
``report.html`` and a contact sheet. Uses the diffusion generator (SDXL inpainting) when a
CUDA GPU and the weights are available, otherwise the MemSeg-style generator, with a one-line
notice saying why. Twenty images make a demonstration of the whole path, not a measurement:
see examples/bench_quick.yaml for that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from diag.errors import DiagError, where


def examples_dir() -> Path:
    """The repository's ``examples/`` folder (diag is run from a clone)."""
    here = Path(__file__).resolve().parents[3] / "examples"
    if not (here / "magnetic_tile.yaml").is_file():
        raise DiagError(f"bundled example not found at {where(here)}: run diag demo from a clone "
                        "of the diag repository (pip install -e .)")
    return here


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate defects on the bundled example and a contact sheet",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    p.add_argument("--generator", choices=["auto", "diffusion", "memseg"], default="auto",
                   help="auto: diffusion if CUDA and SDXL weights are available, else memseg")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of examples/magnetic_tile.yaml")
    p.set_defaults(func=run)


def _choose(args: argparse.Namespace, spec_path: Path) -> tuple[str, object | None]:
    """Pick the generator; returns its kind and, for diffusion, the loaded generator."""
    if args.generator == "memseg":
        return "memseg", None
    import torch

    from diag.generate.spec import load_spec
    from diag.generators import make_generator

    if not torch.cuda.is_available():
        if args.generator == "diffusion":
            raise DiagError("--generator diffusion needs a CUDA GPU for SDXL: none is available "
                            "(use --generator memseg, or run diag generate on a GPU machine)")
        print("notice: no CUDA GPU here, so the demo uses the memseg generator instead of SDXL "
              "inpainting", file=sys.stderr)
        return "memseg", None
    spec = load_spec(spec_path, args.overrides)
    try:
        gen = make_generator("diffusion", spec.generator.params, "cuda", spec.source)
    except DiagError as exc:
        if args.generator == "diffusion":
            raise
        print(f"notice: SDXL weights unavailable ({exc}), so the demo uses the memseg generator",
              file=sys.stderr)
        return "memseg", None
    return "diffusion", gen


def demo_grid(kind: str, spec_path: Path, overrides: list[str]) -> Any:
    """The demo's bench grid: the bundled spec's regions and defects, real-only against
    ``kind``, zero-shot and full-shot, Naug 12, one seed, a small fast classifier."""
    from diag.bench import parse_grid
    from diag.config import apply_overrides, load_yaml

    spec = apply_overrides(load_yaml(spec_path), overrides)
    generator = spec.get("generator", {}) if kind == "diffusion" else {"kind": kind}
    method = "diag" if kind == "diffusion" else kind
    grid = {
        "dataset": {"root": spec["dataset"]["root"], "layout": spec["dataset"]["layout"],
                    "test_fraction": 0.3},
        "generate": {"regions": spec.get("regions"),
                     "defects": [{k: v for k, v in d.items() if k != "count"}
                                 for d in spec["defects"]]},
        "methods": {"real-only": "real-only", method: {"generator": generator}},
        "settings": ["zero-shot", "full-shot"], "naug": [12], "seeds": [0],
        "train": {"model": {"backbone": "efficientnet-lite0", "pretrained": "imagenet"},
                  "train": {"epochs": 4, "batch_size": 8, "input_size": "auto",
                            "max_side": 160}},
        "fidelity": {"dims": [64]},
    }
    return parse_grid(grid, "diag demo", spec_path.parent)


def run(args: argparse.Namespace) -> int:
    from diag.bench import run_bench
    from diag.files import check_folder
    from diag.generate.sheet import save_contact_sheet

    spec_path = examples_dir() / "magnetic_tile.yaml"
    out = Path(args.out)
    check_folder(out, files=("contact_sheet.png", "report.html"))  # before loading SDXL
    kind, gen = _choose(args, spec_path)
    grid = demo_grid(kind, spec_path, list(args.overrides))
    method = "diag" if kind == "diffusion" else kind
    summary = run_bench(grid, out, progress=False,
                        generators={method: gen} if gen is not None else None)
    generated = sorted((out / "generated").glob(f"{method}-*"))
    sheet = save_contact_sheet(generated[:1], out / "contact_sheet.png", n=6)
    print(f"demo ({kind}): {summary.cells} cells in {summary.seconds:.0f} s; report "
          f"{out / 'report.html'}; summary {out / 'summary.md'}; contact sheet {sheet}; "
          f"generated images in {generated[0] if generated else '-'}")
    return 0
