"""``diag demo``: the README's main job on the bundled Magnetic-tile example.

Uses the diffusion generator (SDXL inpainting) when a CUDA GPU and the weights are available,
otherwise the MemSeg-style generator, with a one-line notice saying why. Writes the generated
set and a contact sheet of source / generated / mask rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    from diag.files import check_folder, is_file
    from diag.generate import run_spec
    from diag.generate.sheet import save_contact_sheet
    from diag.generate.spec import load_spec

    spec_path = examples_dir() / "magnetic_tile.yaml"
    out = Path(args.out)
    # before any work (loading SDXL takes minutes): a file where the folder goes, a folder
    # where the contact sheet goes, a folder that cannot be written (unless it holds a finished
    # demo: a rerun may have nothing new to write)
    done = is_file(out / "manifest.jsonl") and is_file(out / "contact_sheet.png")
    check_folder(out, files=("contact_sheet.png", "manifest.jsonl", "spec.yaml"),
                 subdirs=("images", "masks"), need_write=not done)
    kind, gen = _choose(args, spec_path)
    overrides = list(args.overrides) + ([f"generator.kind={kind}"] if kind != "diffusion" else [])
    spec = load_spec(spec_path, overrides, notes=False)
    summary = run_spec(spec, out, generator=gen)
    sheet = save_contact_sheet([out], out / "contact_sheet.png", n=6)
    print(f"demo ({kind}): {summary.generated} generated, {summary.skipped} already there, in "
          f"{out}/images and {out}/masks; manifest {summary.manifest}; contact sheet {sheet}")
    return 0
