"""``diag regions show FILE [--image STEM] [--images DIR] [--out PREVIEW.png]``: what a region
annotation file (COCO, CVAT, Label Studio, labelme, diag polygons, a mask) holds."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("regions", help="inspect region annotation files",
                       description="Inspect the files a spec's regions.path can name: COCO "
                                   "instances JSON, CVAT for images 1.1 XML, Label Studio JSON "
                                   "exports, labelme JSON, diag polygon JSON, mask images.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser(
        "show", help="print a region file's format, images and labels; draw a preview",
        description="Print the detected format, the number of images, shapes per label and the "
                    "images without shapes, and write a preview PNG of one image's shapes "
                    "(a colour per label).")
    show.add_argument("file", help="the region annotation file")
    show.add_argument("--image", default=None, metavar="STEM",
                      help="image to preview, by file stem (default: the first with shapes)")
    show.add_argument("--images", default=None, metavar="DIR",
                      help="folder of the annotated images: draw on the real image when found")
    show.add_argument("--out", default="regions_preview.png",
                      help="preview PNG to write (default: ./regions_preview.png)")
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from diag.errors import DiagError, where
    from diag.files import check_file
    from diag.imageio import write_image
    from diag.regions.formats import read_annotations
    from diag.regions.show import NO_LABEL, background_for, colours, pick_image, preview, summarise

    path = Path(args.file)
    if not path.is_file():
        raise DiagError(f"region file {where(path)} does not exist or is not a file: check the "
                        "path")
    check_file(args.out, "--out", name="regions_preview.png")  # before any work
    images = Path(args.images) if args.images else None
    if images is not None and not images.is_dir():
        raise DiagError(f"--images {where(images)} is not a folder: give the folder holding the "
                        "annotated images")
    ann = read_annotations(path)
    for line in summarise(ann):
        print(line)
    stem, image = pick_image(ann, args.image)
    background, found = background_for(images, stem, image)
    pic = preview(image, background)
    write_image(args.out, pic)
    on = f"on {found}" if found else "on grey" + (
        f" ({stem} not found in {images})" if images else "")
    print(f"preview: {args.out} (image '{stem}', {pic.shape[1]}x{pic.shape[0]}, {on})")
    legend = ", ".join(f"{label or NO_LABEL} {name}" for label, name in colours(image).items())
    print(f"colours: {legend or 'no shapes'}")
    return 0
