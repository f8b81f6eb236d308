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


def _gradient_angles(scale: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The random gradient directions of a ``(sy + 1) x (sx + 1)`` lattice."""
    sy, sx = max(1, int(scale[0])), max(1, int(scale[1]))
    return rng.uniform(0.0, 2.0 * math.pi, size=(sy + 1, sx + 1))


def _axis_weights(n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation weights of one axis: ``n`` pixels over ``cells`` lattice cells.

    Returns each pixel's lower lattice point ``idx`` and an ``n x 4`` array of weights for its
    two lattice points: the fades ``1 - f(t)``, ``f(t)`` and the fades times the pixel's offset
    to each point, ``(1 - f(t)) * t`` and ``f(t) * (t - 1)`` (``t``: offset in its cell).
    """
    pos = np.linspace(0, cells, n, endpoint=False)
    idx = np.floor(pos).astype(np.intp)
    t = pos - idx
    u = _fade(t)
    return idx, np.stack([1.0 - u, u, (1.0 - u) * t, u * (t - 1.0)], axis=1)


def _noise(shape: tuple[int, int], angles: np.ndarray) -> np.ndarray:
    """Perlin noise of ``shape`` on the lattice of gradient ``angles`` (float64).

    Perlin noise is separable. With gradients ``(gy, gx)`` at the lattice points, a pixel's
    value is the sum over its four lattice points of ``ramp_y * gy * fade_x`` plus
    ``fade_y * gx * ramp_x``; summing over the x points first gives, per lattice row, two
    image-wide rows ``a = gy . fade_x`` and ``b = gx . ramp_x``, and each image row is then
    ``ramp_y0 * a[i] + ramp_y1 * a[i + 1] + fade_y0 * b[i] + fade_y1 * b[i + 1]``: a matrix
    product of inner size 4 per run of rows in lattice row ``i``, instead of four gathers and
    dot products per pixel. The values agree with the per-pixel formula to rounding (1e-15).
    The products are cut into pieces small enough that BLAS runs them on the calling thread.
    """
    h, w = shape
    iy, wy = _axis_weights(h, angles.shape[0] - 1)
    ix, wx = _axis_weights(w, angles.shape[1] - 1)
    gy, gx = np.cos(angles), np.sin(angles)
    a = gy[:, ix] * wx[:, 0] + gy[:, ix + 1] * wx[:, 1]
    b = gx[:, ix] * wx[:, 2] + gx[:, ix + 1] * wx[:, 3]
    left = wy[:, [2, 3, 0, 1]]  # ramps with a, fades with b
    out = np.empty((h, w))
    step = max(1, 65536 // w)  # OpenBLAS threads products of m * n * k > 4 * 65536
    starts = np.flatnonzero(np.diff(iy, prepend=-1))
    for start, end in zip(starts, [*starts[1:], h], strict=True):
        i = iy[start]
        right = np.stack([a[i], a[i + 1], b[i], b[i + 1]])
        for s in range(start, end, step):
            e = min(s + step, end)
            np.matmul(left[s:e], right, out=out[s:e])
    out *= math.sqrt(2.0)
    return out


def perlin_noise(shape: tuple[int, int], scale: tuple[int, int], rng: np.random.Generator
                 ) -> np.ndarray:
    """Perlin noise of ``shape`` with ``scale`` lattice cells per axis, values in about [-1, 1].

    Args:
        shape: ``(height, width)`` of the output.
        scale: Lattice cells along ``(y, x)``; 1 gives one smooth bump, 32 a fine texture.
        rng: Source of the random gradients.
    """
    return _noise(shape, _gradient_angles(scale, rng))


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, min_scale: int = 0,
                max_scale: int = 6, threshold: float = 0.5, rotate: bool = True) -> np.ndarray:
    """A binary blob mask from thresholded Perlin noise, DRAEM-style.

    The lattice scale along each axis is ``2**k`` with ``k`` drawn from
    ``[min_scale, max_scale)``; noise above ``threshold`` is defect. Higher thresholds give
    smaller, sparser blobs. With ``rotate``, the noise is turned by a random multiple of 90
    degrees. The draws from ``rng`` are, in order: the two scales, the lattice gradients, the
    turn, and, for a non-square image turned by 90 or 270 degrees, the gradients of the
    transposed lattice (the noise is made for the transposed shape; the first gradients then
    go unused). Only one noise image is computed.
    """
    sy = 2 ** int(rng.integers(min_scale, max_scale))
    sx = 2 ** int(rng.integers(min_scale, max_scale))
    angles = _gradient_angles((sy, sx), rng)
    k = int(rng.integers(0, 4)) if rotate else 0
    if k % 2 == 1 and shape[0] != shape[1]:
        noise = np.rot90(_noise((shape[1], shape[0]), _gradient_angles((sx, sy), rng)), k)
    else:
        noise = np.rot90(_noise(shape, angles), k)
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
