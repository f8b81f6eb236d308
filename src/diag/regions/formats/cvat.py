"""CVAT's "CVAT for images 1.1" XML (``annotations.xml`` in the exported zip).

``<annotations><version>1.1</version><meta>...</meta><image id name width height>`` holding
``<box label xtl ytl xbr ybr rotation>``, ``<polygon label points="x0,y0;x1,y1;...">``,
``<polyline points>``, ``<points points>``, ``<ellipse label cx cy rx ry rotation>`` and
``<mask label rle left top width height>``, whose ``rle`` ("3, 5, 2, ...") alternates runs of
0s and 1s over the ``width x height`` box at ``(left, top)``, row by row, starting with 0s.
Rotations are degrees clockwise about the shape's centre. Tags, cuboids and skeletons hold no
region and are skipped. "CVAT for video" exports (``<track>``) are refused with the fix.

>>> decode_mask_rle("0, 2, 1, 1", 2, 2, "f").astype(int).tolist()
[[1, 1], [0, 1]]
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from diag.errors import DiagError
from diag.regions.formats.base import (
    Annotations,
    ImageShapes,
    Shape,
    box_shape,
    check_size,
    ellipse_shape,
    number,
)
from diag.regions.formats.coco import stem_of

POLYLINE_WIDTH = 3  # pixels: a polyline has no width in CVAT; drawn like a labelme line


def is_cvat(root: ET.Element) -> bool:
    return root.tag == "annotations"


def decode_mask_rle(text: str, width: int, height: int, source: str, what: str = "mask"
                    ) -> np.ndarray:
    """CVAT's mask ``rle`` as a boolean ``(height, width)`` array."""
    try:
        counts = np.asarray([int(v) for v in text.replace(" ", "").split(",") if v != ""],
                            dtype=np.int64)
    except ValueError:
        raise DiagError(f"{source}: {what} rle must be comma-separated whole numbers: re-export "
                        "the file") from None
    if (counts < 0).any() or int(counts.sum()) != width * height:
        raise DiagError(f"{source}: {what} rle covers {int(counts.sum())} pixels, but its box "
                        f"{width}x{height} has {width * height}: the rle is corrupt; re-export the "
                        "file")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape(height, width)


def _attr(el: ET.Element, key: str, source: str, what: str) -> float:
    if key not in el.attrib:
        raise DiagError(f"{source}: {what} has no '{key}' attribute: fix or re-export the file")
    return number(el.attrib[key], source, f"{what} {key}")


def _points(el: ET.Element, source: str, what: str) -> list[tuple[float, float]]:
    text = el.attrib.get("points", "")
    pts = []
    for pair in filter(None, text.split(";")):
        xy = pair.split(",")
        if len(xy) != 2:
            raise DiagError(f"{source}: {what} has the point '{pair[:40]}': points must read "
                            "'x0,y0;x1,y1;...'")
        pts.append((number(xy[0], source, f"a coordinate of {what}"),
                    number(xy[1], source, f"a coordinate of {what}")))
    return pts


def _shape(el: ET.Element, source: str, what: str) -> Shape | None:
    label = el.attrib.get("label", "")
    rotation = number(el.attrib.get("rotation", 0) or 0, source, f"{what} rotation")
    if el.tag == "box":
        x0, y0, x1, y1 = (_attr(el, k, source, what) for k in ("xtl", "ytl", "xbr", "ybr"))
        return box_shape(label, x0, y0, x1, y1, rotation)
    if el.tag == "polygon":
        return Shape("polygon", label, _points(el, source, what))
    if el.tag == "polyline":
        return Shape("line", label, _points(el, source, what), width=POLYLINE_WIDTH)
    if el.tag == "points":
        return Shape("point", label, _points(el, source, what))
    if el.tag == "ellipse":
        cx, cy, rx, ry = (_attr(el, k, source, what) for k in ("cx", "cy", "rx", "ry"))
        return ellipse_shape(label, cx, cy, rx, ry, rotation)
    if el.tag == "mask":
        left, top, w, h = (int(_attr(el, k, source, what))
                           for k in ("left", "top", "width", "height"))
        check_size(h, w, source, f"{what} box")
        mask = decode_mask_rle(el.attrib.get("rle", ""), w, h, source, what)
        return Shape("mask", label, mask=mask, offset=(top, left))
    return None  # tag, cuboid, skeleton: no region


def read_cvat(root: ET.Element, annotations: Annotations, source: str) -> Annotations:
    """Fill ``annotations`` from a parsed CVAT for images XML tree."""
    images = root.findall("image")
    if not images and root.find("track") is not None:
        raise DiagError(f"{source} is a 'CVAT for video' export: export the task as 'CVAT for "
                        "images 1.1' instead")
    for i, img in enumerate(images):
        name = img.attrib.get("name", "")
        if not name:
            raise DiagError(f"{source}: <image> number {i + 1} has no name: fix or re-export the "
                            "file")
        size: Any = tuple(_attr(img, k, source, f"image '{name}'") if k in img.attrib else None
                          for k in ("height", "width"))
        if size[0] and size[1]:
            check_size(size[0], size[1], source, f"image '{name}'")
        entry = annotations.add(stem_of(name), ImageShapes(name, size))
        for j, el in enumerate(img):
            shape = _shape(el, source, f"<{el.tag}> {j + 1} of image '{name}'")
            if shape is not None:
                entry.shapes.append(shape)
    return annotations
