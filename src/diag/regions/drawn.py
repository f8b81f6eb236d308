"""Expert-drawn regions: PNG masks or polygon files (diag JSON or labelme JSON).

A region file can be:

* a PNG (or any image) mask: white = where defects may go;
* a JSON file of polygons, either diag's own format
  ``{"polygons": [[[x, y], ...], ...], "normalized": false}`` (``normalized: true`` means
  coordinates are fractions of width/height, so one file fits images of any size), or a labelme
  annotation (``{"shapes": [{"shape_type": "polygon", "points": [...]}, ...]}``; polygons,
  rectangles, circles, lines and points are drawn).

A region path can be one file (used for every image, resized to each image when its size
differs, thin strokes kept: :func:`diag.imageio.resize_mask`) or a folder holding files named
after the images' stems (``<stem>.png`` or ``<stem>.json``; ``default.png``/``default.json``
for images without their own).

>>> import numpy as np
>>> polygons_to_mask({"polygons": [[[0, 0], [0.5, 0], [0.5, 0.5]]], "normalized": True}, (10, 10)).sum() > 0
np.True_
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from diag.errors import DiagError, where
from diag.imageio import IMAGE_SUFFIXES, read_mask, resize_mask


def _number(value: Any, source: str, what: str) -> float:
    """A finite number from JSON (numbers or numeric text), else a one-line error."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise DiagError(f"{source}: {what} is {json.dumps(value)[:40]}, not a finite number: "
                        "fix the file")
    return number


def _points(raw: Any, sx: float, sy: float, source: str, what: str
            ) -> list[tuple[float, float]]:
    """``[[x, y], ...]`` from JSON as scaled pixel coordinates, else a one-line error."""
    if not isinstance(raw, list):
        raise DiagError(f"{source}: {what} must be a list of [x, y] points, got "
                        f"{json.dumps(raw)[:40]}")
    pts = []
    for p in raw:
        if not isinstance(p, list) or len(p) != 2:
            raise DiagError(f"{source}: {what} has the point {json.dumps(p)[:40]}: write every "
                            "point as [x, y]")
        x, y = (_number(v, source, f"a coordinate of {what} (write points as [x, y])")
                for v in p)
        # rounded: normalised coordinates (x / width) * width land back on x exactly
        pts.append((round(x * sx, 6), round(y * sy, 6)))
    return pts


def polygons_to_mask(data: dict[str, Any], shape: tuple[int, int], source: str = "polygons"
                     ) -> np.ndarray:
    """Rasterise diag or labelme polygon JSON to a boolean mask of ``shape``."""
    h, w = shape
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    if "polygons" in data:
        sx, sy = (w, h) if data.get("normalized") else (1.0, 1.0)
        if not isinstance(data["polygons"], list):
            raise DiagError(f"{source}: 'polygons' must be a list of polygons ([[x, y], ...])")
        for i, poly in enumerate(data["polygons"]):
            pts = _points(poly, sx, sy, source, f"polygon {i}")
            if len(pts) < 3:
                raise DiagError(f"{source}: a polygon needs at least 3 points, got {len(pts)}")
            draw.polygon(pts, fill=255, outline=255)
    elif "shapes" in data:  # labelme
        iw = _number(data.get("imageWidth") or w, source, "imageWidth")
        ih = _number(data.get("imageHeight") or h, source, "imageHeight")
        if iw <= 0 or ih <= 0:
            raise DiagError(f"{source}: imageWidth and imageHeight must be positive: fix the file")
        sx, sy = w / iw, h / ih
        if not isinstance(data["shapes"], list) or not all(isinstance(s, dict)
                                                           for s in data["shapes"]):
            raise DiagError(f"{source}: labelme 'shapes' must be a list of shape objects "
                            '({"shape_type": ..., "points": [[x, y], ...]})')
        for i, s in enumerate(data["shapes"]):
            pts = _points(s.get("points", []), sx, sy, source, f"shapes[{i}].points")
            kind = s.get("shape_type", "polygon")
            if kind == "polygon" and len(pts) >= 3:
                draw.polygon(pts, fill=255, outline=255)
            elif kind == "rectangle" and len(pts) == 2:
                (x0, y0), (x1, y1) = pts
                draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
            elif kind == "circle" and len(pts) == 2:
                (cx, cy), (px, py) = pts
                r = math.hypot(px - cx, py - cy)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            elif kind in ("line", "linestrip") and len(pts) >= 2:
                width = _number(s.get("width", 3), source, f"shapes[{i}].width")
                draw.line(pts, fill=255, width=int(min(max(1, width), 2 * (h + w))))
            elif kind == "point" and pts:
                draw.point(pts, fill=255)
    else:
        raise DiagError(f"{source}: region JSON needs a 'polygons' list (diag format) or a "
                        "'shapes' list (labelme format)")
    return np.asarray(img) > 0


def read_region_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A region file (mask image or polygon JSON) as a boolean mask of ``shape``."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DiagError(f"region file {where(path)} is not valid JSON ({exc}): fix it") from None
        if not isinstance(data, dict):
            raise DiagError(f"region file {where(path)} must hold a JSON object with 'polygons'")
        return polygons_to_mask(data, shape, f"region file {where(path)}")
    return resize_mask(read_mask(path), shape)


class DrawnRegions:
    """Finds the drawn region for an image stem in a file or folder of region files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DiagError(f"region path {where(self.path)} does not exist: set regions.path to a "
                            "mask PNG, a polygon JSON, or a folder of them named by image stem")
        suffixes = (*IMAGE_SUFFIXES, ".json")
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir()
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not files:
                raise DiagError(f"region folder {where(self.path)} holds no masks or polygon "
                                "JSON files: draw some regions first (empty region set)")
            self.by_stem = {p.stem: p for p in files}
        else:
            if self.path.suffix.lower() not in suffixes:
                raise DiagError(f"region file {where(self.path)} is neither an image mask nor a "
                                "JSON polygon file")
            self.by_stem = {"default": self.path}

    def file_for(self, stem: str) -> Path | None:
        return self.by_stem.get(stem) or self.by_stem.get("default")

    def covers(self, stem: str) -> bool:
        return self.file_for(stem) is not None

    def region(self, stem: str, shape: tuple[int, int]) -> tuple[np.ndarray, Path]:
        path = self.file_for(stem)
        if path is None:
            raise DiagError(f"no drawn region for image '{stem}' in {where(self.path)}: add "
                            f"{stem}.png or default.png")
        return read_region_file(path, shape), path
