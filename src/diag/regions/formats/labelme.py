"""labelme annotations: one JSON file per image.

``{"version": ..., "shapes": [{"label": "scratch", "shape_type": "polygon", "points": [[x, y],
...], ...}], "imagePath": "a.png", "imageWidth": W, "imageHeight": H}``. Polygons,
rectangles, circles, lines, line strips, points and masks (labelme 5.3+: a base64 PNG of the
box between the two points) are drawn; coordinates are pixels of an image of
``imageWidth x imageHeight`` and are scaled to the image the file is used for.

>>> img = read_labelme({"shapes": [{"label": "dent", "shape_type": "rectangle",
...                                 "points": [[1, 1], [4, 2]]}]}, "f")
>>> img.labels()
Counter({'dent': 1})
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from diag.errors import DiagError
from diag.regions.formats.base import ImageShapes, Shape, number, xy_points

KINDS = {"polygon": "polygon", "rectangle": "rectangle", "circle": "circle", "line": "line",
         "linestrip": "line", "point": "point", "points": "point"}


def is_labelme(data: Any) -> bool:
    return isinstance(data, dict) and "shapes" in data


def _size(data: dict[str, Any], key: str, source: str) -> float | None:
    if not data.get(key):
        return None
    value = number(data[key], source, key)
    if value <= 0:
        raise DiagError(f"{source}: imageWidth and imageHeight must be positive: fix the file")
    return value


def _mask(raw: Any, source: str, what: str) -> np.ndarray:
    try:
        data = base64.b64decode(str(raw), validate=False)
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L"))
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise DiagError(f"{source}: {what} is not a base64 PNG ({type(exc).__name__}): fix or "
                        "redraw the mask in labelme") from None
    return arr > 0


def read_labelme(data: dict[str, Any], source: str) -> ImageShapes:
    """The labelled shapes of a labelme JSON object (``source`` names it in errors)."""
    ih = _size(data, "imageHeight", source)
    iw = _size(data, "imageWidth", source)
    raw = data["shapes"]
    if not isinstance(raw, list) or not all(isinstance(s, dict) for s in raw):
        raise DiagError(f"{source}: labelme 'shapes' must be a list of shape objects "
                        '({"shape_type": ..., "points": [[x, y], ...]})')
    shapes = []
    for i, s in enumerate(raw):
        pts = xy_points(s.get("points", []), source, f"shapes[{i}].points")
        label = str(s.get("label") or "")
        kind = str(s.get("shape_type") or "polygon")
        if kind == "mask" and s.get("mask") and pts:
            x0, y0 = (int(v) for v in pts[0])
            shapes.append(Shape("mask", label, mask=_mask(s["mask"], source, f"shapes[{i}].mask"),
                                offset=(y0, x0)))
        elif kind in KINDS:
            width = number(s.get("width", 3), source, f"shapes[{i}].width")
            shapes.append(Shape(KINDS[kind], label, pts, width=width))
    return ImageShapes(str(data.get("imagePath") or ""), (ih, iw), shapes)
