"""``diag sheet OUT... [--out sheet.png] [--n 6]``: compare generate outputs side by side."""

from __future__ import annotations

import argparse
import sys

MAX_TILE = 2048  # a 6-sample sheet of 2048-pixel tiles is already ~150 MB of pixels


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sheet", help="contact sheet of generate outputs side by side",
        description="Draw a labelled contact sheet: one column per diag generate output folder, "
                    "rows of source / generated / mask overlay / zoom for its first N samples.")
    p.add_argument("folders", nargs="+", metavar="OUT", help="diag generate output folders")
    p.add_argument("--out", default="sheet.png", help="PNG file to write (default: sheet.png)")
    p.add_argument("--n", type=int, default=6, help="samples per folder (default: 6)")
    p.add_argument("--tile", type=int, default=192, help="tile side in pixels (default: 192)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.errors import DiagError
    from diag.generate.sheet import check_sheet_path, save_contact_sheet

    if not 16 <= args.tile <= MAX_TILE:
        raise DiagError(f"--tile must be {16}..{MAX_TILE} pixels, got {args.tile}")
    if args.n < 1:
        raise DiagError(f"--n must be at least 1, got {args.n}")
    check_sheet_path(args.out)  # before reading anything
    path = save_contact_sheet(args.folders, args.out, n=args.n, tile=args.tile)
    print(f"contact sheet of {len(args.folders)} folder(s), up to {args.n} samples each: {path}",
          file=sys.stderr)
    return 0
