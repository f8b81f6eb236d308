"""2-D Perlin noise and the thresholded noise masks DRAEM and MemSeg draw defects with.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> noise = perlin_noise((64, 96), scale=(4, 4), rng=rng)
>>> noise.shape, bool(abs(noise).max() <= 1.5)
((64, 96), True)

The noise follows Perlin's gradient noise with the quintic fade curve, as in DRAEM
(Zavrtanik et al., ICCV 2021, ``perlin.py``): a lattice of random unit gradients, dot products
with the offsets to the four surrounding lattice points, blended smoothly. Scales are the
number of lattice cells along each axis: larger scales give finer, busier patterns.
"""

from __future__ import annotations

import math

import numpy as np

TINY = 8  # images with a side under this many pixels may get no Perlin blob at all


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], rng: np.random.Generator
                 ) -> np.ndarray:
    """Perlin noise of ``shape`` with ``scale`` lattice cells per axis, values in about [-1, 1].

    Args:
        shape: ``(height, width)`` of the output.
        scale: Lattice cells along ``(y, x)``; 1 gives one smooth bump, 32 a fine texture.
        rng: Source of the random gradients.
    """
    h, w = shape
    sy, sx = max(1, int(scale[0])), max(1, int(scale[1]))
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(sy + 1, sx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.linspace(0, sy, h, endpoint=False)
    xs = np.linspace(0, sx, w, endpoint=False)
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = ys - yi, xs - xi
    yf2, xf2 = np.meshgrid(yf, xf, indexing="ij")
    yi2, xi2 = np.meshgrid(yi, xi, indexing="ij")

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[yi2 + dy, xi2 + dx]
        return g[..., 0] * (yf2 - dy) + g[..., 1] * (xf2 - dx)

    u, v = _fade(xf2), _fade(yf2)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return math.sqrt(2.0) * (top * (1 - v) + bottom * v)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, min_scale: int = 0,
                max_scale: int = 6, threshold: float = 0.5, rotate: bool = True) -> np.ndarray:
    """A binary blob mask from thresholded Perlin noise, DRAEM-style.

    The lattice scale along each axis is ``2**k`` with ``k`` drawn from
    ``[min_scale, max_scale)``; noise above ``threshold`` is defect. Higher thresholds give
    smaller, sparser blobs.
    """
    sy = 2 ** int(rng.integers(min_scale, max_scale))
    sx = 2 ** int(rng.integers(min_scale, max_scale))
    noise = perlin_noise(shape, (sy, sx), rng)
    if rotate:
        k = int(rng.integers(0, 4))
        if k % 2 == 1 and shape[0] != shape[1]:
            noise = np.rot90(perlin_noise(shape[::-1], (sx, sy), rng), k)
        else:
            noise = np.rot90(noise, k)
    return noise > threshold


def perlin_defect_mask(shape: tuple[int, int], rng: np.random.Generator,
                       region: np.ndarray | None, in_region: bool, scale: tuple[int, int],
                       threshold: float, max_tries: int, kind: str) -> np.ndarray:
    """The defect mask of a Perlin-noise generator (MemSeg, DRAEM).

    With a spec region and ``in_region`` False, the region itself; otherwise thresholded Perlin
    blobs (inside the region when there is one), redrawn up to ``max_tries`` times until
    non-empty, falling back to the whole region, or, without one, to the whole image when it
    is too small for blobs (a side under ``TINY`` pixels: Perlin noise is 0 on its lattice
    points, so a 1x1 image never gets a blob).

    Raises:
        DiagError: no region and no non-empty Perlin mask in ``max_tries`` draws.
    """
    from diag.errors import DiagError

    if region is not None and not in_region:
        return region.copy()
    for _ in range(max_tries):
        m = perlin_mask(shape, rng, scale[0], scale[1], threshold)
        if region is not None:
            m &= region
        if m.any():
            return m
    if region is not None:
        return region.copy()
    if min(shape) < TINY:
        return np.ones(shape, dtype=bool)
    raise DiagError(f"{kind} could not draw a non-empty Perlin mask in {max_tries} tries: "
                    "lower generator.threshold")
