"""Shapes read from annotation files, and how they become masks.

Every reader turns a file into :class:`Annotations`: per image (keyed by the image's file
stem) an :class:`ImageShapes` holding labelled :class:`Shape` objects in the coordinates the
annotation tool recorded, and the image size it recorded. :meth:`ImageShapes.mask` draws them
onto a boolean mask of any ``(H, W)``: coordinates are scaled by ``W / width`` and
``H / height`` when the real image's size differs from the recorded one.

>>> img = ImageShapes("a.png", (10.0, 20.0), [Shape("box", "scratch", [(0, 0), (10, 5)])])
>>> img.mask((10, 20)).sum(), img.mask((20, 40)).sum()  # the real image is twice as large
(np.int64(50), np.int64(200))
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diag.errors import DiagError
from diag.imageio import resize_mask

Point = tuple[float, float]
MAX_PIXELS = 1 << 30  # an annotated image larger than this is a corrupt size, not a photo
#: what a shape kind holds in ``points``
KINDS = {
    "polygon": "the corners, drawn filled with their outline (as labelme and PIL draw them)",
    "box": "two corners of an axis-aligned box in continuous coordinates: the pixels whose "
           "centres lie inside (COCO bbox, CVAT box, Label Studio rectangle)",
    "rectangle": "two corners, both included (labelme rectangles)",
    "ellipse": "two corners of the ellipse's bounding box",
    "circle": "the centre and a point on the circle (labelme circles)",
    "line": "the vertices of a polyline drawn ``width`` pixels wide",
    "point": "single pixels",
    "mask": "nothing: ``mask`` holds the pixels (``offset`` is its top-left corner)",
}


@dataclass
class Shape:
    """One annotated shape.

    Attributes:
        kind: One of :data:`KINDS`.
        label: The annotation tool's label ("" when the file has none).
        points: ``(x, y)`` in the recorded image's pixel coordinates.
        width: Line width in pixels of the image it is drawn on (``line``).
        mask: ``kind == "mask"``: boolean pixels in recorded coordinates.
        offset: ``(top, left)`` of ``mask`` in the recorded image.
        ref: ``(height, width)`` of the image this shape was recorded on, when it differs
            from its image's (Label Studio records a size with every region).
    """

    kind: str
    label: str = ""
    points: list[Point] = field(default_factory=list)
    width: float = 3.0
    mask: np.ndarray | None = None
    offset: tuple[int, int] = (0, 0)
    ref: tuple[float | None, float | None] | None = None


@dataclass
class ImageShapes:
    """The shapes of one image.

    Attributes:
        name: The image as the file names it (a path, URL or file name).
        size: ``(height, width)`` the tool recorded; ``None`` for an axis means the
            coordinates are already in the pixels of any image (no scaling).
        shapes: The shapes, in file order.
    """

    name: str
    size: tuple[float | None, float | None] = (None, None)
    shapes: list[Shape] = field(default_factory=list)

    def labels(self) -> Counter[str]:
        """Shapes per label (labelled shapes only)."""
        return Counter(s.label for s in self.shapes if s.label)

    def select(self, defect: str | None, labels: Mapping[str, str] | None = None,
               labelled: bool | None = None) -> list[Shape]:
        """The shapes whose label maps to ``defect`` (``labels``: annotation label -> defect
        name; labels not listed map to themselves). All shapes with no ``defect``, or when
        the file has no labels at all (``labelled`` False; default: this image's own)."""
        if labelled is None:
            labelled = bool(self.labels())
        if not defect or not labelled:
            return list(self.shapes)
        labels = labels or {}
        return [s for s in self.shapes if s.label and labels.get(s.label, s.label) == defect]

    def mask(self, shape: tuple[int, int], shapes: Iterable[Shape] | None = None) -> np.ndarray:
        """The union of ``shapes`` (default: all) as a boolean mask of ``shape`` (H, W)."""
        return rasterise(self.shapes if shapes is None else shapes, self.size, shape)


@dataclass
class Annotations:
    """What one annotation file says about one or more images.

    Attributes:
        format: The format's name (:data:`diag.regions.formats.FORMATS`).
        path: The file.
        images: Per image stem, its shapes (images the file lists without shapes included).
        aliases: Other stems that name an image (Label Studio's upload prefix kept) -> the
            stem in ``images``.
        multi: Whether the file names its images (COCO, CVAT, Label Studio), rather than
            holding the regions of whichever image it is used for.
    """

    format: str
    path: Path
    images: dict[str, ImageShapes] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    multi: bool = True

    def find(self, stem: str) -> ImageShapes | None:
        """The shapes of the image named ``stem``, None when the file does not list it."""
        found = self.images.get(stem)
        if found is None and stem in self.aliases:
            found = self.images.get(self.aliases[stem])
        return found

    @property
    def labelled(self) -> bool:
        """Whether any shape in the file has a label (files without labels match any
        defect type)."""
        return any(s.label for img in self.images.values() for s in img.shapes)

    def labels(self) -> Counter[str]:
        """Shapes per label over the whole file."""
        total: Counter[str] = Counter()
        for img in self.images.values():
            total.update(img.labels())
        return total

    def add(self, stem: str, image: ImageShapes) -> ImageShapes:
        """Add an image's shapes, merging with an entry of the same stem."""
        old = self.images.get(stem)
        if old is None:
            self.images[stem] = image
            return image
        old.shapes.extend(image.shapes)
        if old.size == (None, None):
            old.size = image.size
        return old


def number(value: object, source: str, what: str) -> float:
    """A finite number from a file (numbers or numeric text), else a one-line error."""
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        result = math.nan
    if isinstance(value, bool) or not math.isfinite(result):
        raise DiagError(f"{source}: {what} is {json.dumps(value, default=str)[:40]}, not a finite "
                        "number: fix the file")
    return result


def check_size(h: float, w: float, source: str, what: str) -> None:
    """A recorded image size must be positive and below :data:`MAX_PIXELS`."""
    if not (h > 0 and w > 0) or h * w > MAX_PIXELS:
        raise DiagError(f"{source}: {what} is {w:g}x{h:g} pixels, not a real image size: fix or "
                        "re-export the file")


def xy_points(raw: object, source: str, what: str) -> list[Point]:
    """``[[x, y], ...]`` from JSON as floats, else a one-line error."""
    if not isinstance(raw, list):
        raise DiagError(f"{source}: {what} must be a list of [x, y] points, got "
                        f"{json.dumps(raw, default=str)[:40]}")
    pts = []
    for p in raw:
        if not isinstance(p, list) or len(p) != 2:
            raise DiagError(f"{source}: {what} has the point {json.dumps(p, default=str)[:40]}: "
                            "write every point as [x, y]")
        x, y = (number(v, source, f"a coordinate of {what} (write points as [x, y])") for v in p)
        pts.append((x, y))
    return pts


def _scale(ref: float | None, n: int) -> float:
    return 1.0 if not ref else n / ref


def rasterise(shapes: Iterable[Shape], ref: tuple[float | None, float | None],
              shape: tuple[int, int]) -> np.ndarray:
    """Draw ``shapes`` recorded on an image of size ``ref`` onto a boolean mask of ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    out = np.zeros((h, w), bool)
    for s in shapes:
        sref = s.ref or ref
        sy, sx = _scale(sref[0], h), _scale(sref[1], w)
        # rounded: normalised coordinates (x / width) * width land back on x exactly
        pts = [(round(x * sx, 6), round(y * sy, 6)) for x, y in s.points]
        if s.kind == "polygon" and len(pts) >= 3:
            draw.polygon(pts, fill=255, outline=255)
        elif s.kind == "box" and len(pts) == 2:
            _box(out, pts)
        elif s.kind == "rectangle" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
        elif s.kind == "ellipse" and len(pts) == 2:
            (x0, y0), (x1, y1) = pts
            draw.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
        elif s.kind == "circle" and len(pts) == 2:
            (cx, cy), (px, py) = pts
            r = math.hypot(px - cx, py - cy)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif s.kind == "line" and len(pts) >= 2:
            draw.line(pts, fill=255, width=int(min(max(1, s.width), 2 * (h + w))))
        elif s.kind == "point" and pts:
            draw.point(pts, fill=255)
        elif s.kind == "mask" and s.mask is not None:
            out |= _place(s, sref, (h, w))
    return out | (np.asarray(img) > 0)


def _box(out: np.ndarray, pts: list[Point]) -> None:
    """Set the pixels whose centres lie in the box (at least one pixel each way)."""
    (x0, y0), (x1, y1) = pts
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    c0, r0 = math.floor(x0 + 0.5), math.floor(y0 + 0.5)
    c1, r1 = max(c0 + 1, math.floor(x1 + 0.5)), max(r0 + 1, math.floor(y1 + 0.5))
    h, w = out.shape
    out[max(0, r0):max(0, min(h, r1)), max(0, c0):max(0, min(w, c1))] = True


def _place(s: Shape, ref: tuple[float | None, float | None], shape: tuple[int, int]
           ) -> np.ndarray:
    """A raster shape on the recorded canvas, resized to ``shape``."""
    assert s.mask is not None
    mh, mw = s.mask.shape
    top, left = s.offset
    rh = int(ref[0]) if ref[0] else top + mh
    rw = int(ref[1]) if ref[1] else left + mw
    canvas = np.zeros((rh, rw), bool)
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(rh, top + mh), min(rw, left + mw)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = s.mask[y0 - top:y1 - top, x0 - left:x1 - left]
    return canvas if canvas.shape == tuple(shape) else resize_mask(canvas, shape)


def rotated(corners: list[Point], origin: Point, degrees: float) -> list[Point]:
    """``corners`` turned ``degrees`` clockwise on screen (y down) about ``origin``."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    ox, oy = origin
    return [(ox + (x - ox) * c - (y - oy) * s, oy + (x - ox) * s + (y - oy) * c)
            for x, y in corners]


def box_shape(label: str, x0: float, y0: float, x1: float, y1: float, rotation: float,
              origin: Point | None = None) -> Shape:
    """A box from corners; a rotated one (``rotation`` degrees clockwise about ``origin``,
    default its centre) becomes a polygon."""
    if not rotation % 360:
        return Shape("box", label, [(x0, y0), (x1, y1)])
    origin = origin or ((x0 + x1) / 2, (y0 + y1) / 2)
    return Shape("polygon", label, rotated([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], origin,
                                           rotation))


def ellipse_shape(label: str, cx: float, cy: float, rx: float, ry: float, rotation: float
                  ) -> Shape:
    """An ellipse about ``(cx, cy)``; a rotated one becomes a 72-corner polygon."""
    if not rotation % 360:
        return Shape("ellipse", label, [(cx - rx, cy - ry), (cx + rx, cy + ry)])
    ring = [(cx + rx * math.cos(t), cy + ry * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 72, endpoint=False)]
    return Shape("polygon", label, rotated(ring, (cx, cy), rotation))
