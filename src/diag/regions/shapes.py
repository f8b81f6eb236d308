"""Random defect shapes: blobs, strokes, ellipses and rectangles, inside an optional area.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> m = random_shape((100, 200), "stroke", rng, size=(0.2, 0.4), width=(1, 3))
>>> m.dtype, bool(m.any())
(dtype('bool'), True)

Sizes are fractions of the image's shorter side (a shape of size 0.2 on a 256x640 image spans
about 51 pixels); stroke widths are in pixels, so thin scratches stay thin at any resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("blob", "stroke", "ellipse", "rectangle")


def _polygon_mask(shape: tuple[int, int], points: Sequence[tuple[float, float]]) -> np.ndarray:
    img = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in points], fill=255, outline=255)
    return np.asarray(img) > 0


def _rotated(points: np.ndarray, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def random_shape(shape: tuple[int, int], kind: str, rng: np.random.Generator,
                 size: tuple[float, float] = (0.05, 0.25), width: tuple[int, int] = (1, 4),
                 center: tuple[float, float] | None = None) -> np.ndarray:
    """One random shape as a boolean mask of ``shape`` (``(H, W)``).

    Args:
        shape: Output size.
        kind: ``blob`` (irregular smooth outline), ``stroke`` (a wandering line, like a crack or
            scratch), ``ellipse`` or ``rectangle`` (both randomly rotated).
        rng: Randomness source.
        size: Range of the shape's extent as a fraction of the shorter image side.
        width: Range of a stroke's width in pixels.
        center: ``(y, x)`` centre; random over the image when None.
    """
    h, w = shape
    side = min(h, w)
    extent = max(2.0, float(rng.uniform(*size)) * side)
    cy, cx = center if center is not None else (rng.uniform(0, h), rng.uniform(0, w))
    angle = float(rng.uniform(0, math.pi))
    if kind == "ellipse":
        a, b = extent / 2, extent / 2 * float(rng.uniform(0.2, 1.0))
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return _polygon_mask(shape, _rotated(np.stack([a * np.cos(t), b * np.sin(t)], 1), angle,
                                             cx, cy))
    if kind == "rectangle":
        a, b = extent / 2, extent / 2 * float(rng.uniform(0.2, 1.0))
        pts = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        return _polygon_mask(shape, _rotated(pts, angle, cx, cy))
    if kind == "blob":
        n = 48
        t = np.linspace(0, 2 * math.pi, n, endpoint=False)
        r = np.ones(n)
        for k in range(2, 6):
            r += rng.uniform(-0.35, 0.35) / k * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        r = np.clip(r, 0.3, None) * extent / 2
        return _polygon_mask(shape, _rotated(np.stack([r * np.cos(t), r * np.sin(t)], 1), angle,
                                             cx, cy))
    if kind == "stroke":
        segments = int(rng.integers(3, 9))
        step = extent / segments
        pts = [(cx, cy)]
        heading = angle
        for _ in range(segments):
            heading += float(rng.normal(0, 0.45))
            x, y = pts[-1]
            pts.append((x + step * math.cos(heading), y + step * math.sin(heading)))
        shift = np.mean(pts, axis=0) - np.array([cx, cy])
        pts = [(x - shift[0], y - shift[1]) for x, y in pts]
        lw = int(rng.integers(width[0], width[1] + 1))
        img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(img).line(pts, fill=255, width=max(1, lw), joint="curve")
        return np.asarray(img) > 0
    raise ValueError(f"unknown shape '{kind}'; use one of {', '.join(SHAPES)}")


def sample_shapes(shape: tuple[int, int], rng: np.random.Generator, kinds: Sequence[str],
                  size: tuple[float, float], width: tuple[int, int], count: tuple[int, int],
                  area: np.ndarray | None = None, tries: int = 20) -> np.ndarray:
    """Union of ``count`` random shapes, each centred on a random pixel of ``area`` and clipped
    to it (the whole image when ``area`` is None). Returns an empty mask only if ``area`` is."""
    h, w = shape
    allowed = np.ones(shape, dtype=bool) if area is None else area
    ys, xs = np.nonzero(allowed)
    out = np.zeros(shape, dtype=bool)
    if len(ys) == 0:
        return out
    n = int(rng.integers(count[0], count[1] + 1))
    for _ in range(n):
        for _ in range(tries):
            i = int(rng.integers(0, len(ys)))
            kind = kinds[int(rng.integers(0, len(kinds)))]
            m = random_shape(shape, kind, rng, size, width, center=(ys[i] + 0.5, xs[i] + 0.5))
            m &= allowed
            if m.any():
                out |= m
                break
    if not out.any():  # area too thin for every draw: use one pixel-wide seed of it
        i = int(rng.integers(0, len(ys)))
        out[ys[i], xs[i]] = True
    return out
