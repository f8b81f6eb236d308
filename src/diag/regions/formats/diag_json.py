"""diag's own polygon JSON: ``{"polygons": [[[x, y], ...], ...], "normalized": false}``.

``normalized: true`` means coordinates are fractions of the image's width and height, so one
file fits images of any size; otherwise they are pixels of the image it is used for. The file
holds no labels and names no image: it is used for whichever image it is given for.

>>> img = read_diag({"polygons": [[[0, 0], [1, 0], [1, 1]]], "normalized": True}, "f")
>>> img.size, img.shapes[0].kind
((1.0, 1.0), 'polygon')
"""

from __future__ import annotations

from typing import Any

from diag.errors import DiagError
from diag.regions.formats.base import ImageShapes, Shape, xy_points


def is_diag(data: Any) -> bool:
    return isinstance(data, dict) and "polygons" in data


def read_diag(data: dict[str, Any], source: str) -> ImageShapes:
    """The polygons of a diag polygon JSON object (``source`` names it in errors)."""
    if not isinstance(data["polygons"], list):
        raise DiagError(f"{source}: 'polygons' must be a list of polygons ([[x, y], ...])")
    shapes = []
    for i, poly in enumerate(data["polygons"]):
        pts = xy_points(poly, source, f"polygon {i}")
        if len(pts) < 3:
            raise DiagError(f"{source}: a polygon needs at least 3 points, got {len(pts)}")
        shapes.append(Shape("polygon", "", pts))
    size: tuple[float | None, float | None] = (1.0, 1.0) if data.get("normalized") else (None, None)
    return ImageShapes("", size, shapes)
