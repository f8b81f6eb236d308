"""``diag export OUT --format F --to DIR``: a generate folder in another tool's layout."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="write a generate folder as anomalib-folder, mvtec, coco or yolo-seg",
        description="Write the generated images and masks of a diag generate folder in the "
                    "layout another tool reads: anomalib's Folder (anomalib-folder), MVTec AD "
                    "(mvtec), COCO instances with RLE masks (coco) or Ultralytics YOLO "
                    "segmentation (yolo-seg). README.txt in DIR names where every image came "
                    "from. DIR appears only when the export is complete.")
    p.add_argument("out", metavar="OUT", help="a diag generate output folder")
    p.add_argument("--format", required=True, dest="fmt", metavar="FORMAT",
                   help="anomalib-folder, mvtec, coco or yolo-seg")
    p.add_argument("--to", required=True, dest="dest", metavar="DIR",
                   help="the export folder: new or empty")
    p.add_argument("--with-real", action="store_true",
                   help="also export the real dataset of OUT's spec: defect-free images as "
                        "normal / train images, defective ones with their masks")
    p.add_argument("--category", default=None,
                   help="mvtec: the category folder; anomalib-folder: the datamodule name "
                        "(default: OUT's folder name)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier diag export in DIR (never another folder)")
    p.add_argument("--link", action="store_true",
                   help="hard-link images instead of copying them where the disk allows (the "
                        "export then shares the files: do not edit them in place)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.data.export import export

    result = export(args.out, args.dest, args.fmt, with_real=args.with_real,
                    category=args.category, overwrite=args.overwrite, link=args.link)
    real = f" and {result.real} real" if args.with_real else ""
    print(f"exported {result.generated} generated{real} image(s) as {result.format} to "
          f"{result.dest} (provenance: {result.dest / 'README.txt'})", file=sys.stderr)
    for line in result.how_to_load:
        print(f"  {line}", file=sys.stderr)
    return 0
