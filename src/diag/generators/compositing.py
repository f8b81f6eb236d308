"""Shared pieces of the patch-based generators: blending, feathering, boxes, parameter checks.

Every classical generator ends the same way: some new pixels (a patch, a texture, a real
defect), aligned with the image, are put into it inside a mask. :func:`composite` does that
with one of three blends, named the same in every generator's spec:

* ``alpha``: ``out = (1 - a) * image + a * patch`` with ``a = opacity * feather(mask)``;
  ``opacity: [1, 1]`` and ``feather: 0`` is a plain paste;
* ``poisson``: seamless cloning (the patch's gradients, the image's level at the border);
* ``poisson-mixed``: seamless cloning keeping the stronger of the two gradients.

Pixels outside the mask are never touched, whatever the blend.

>>> import numpy as np
>>> img = np.zeros((8, 8), np.uint8); patch = np.full((8, 8), 200, np.uint8)
>>> mask = np.zeros((8, 8), bool); mask[2:6, 2:6] = True
>>> out = composite(img, patch, mask, "alpha", opacity=0.5)
>>> int(out[3, 3]), int(out[0, 0])
(100, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from diag.errors import DiagError
from diag.generators.base import blend as alpha_blend
from diag.generators.poisson import poisson_blend
from diag.imageio import resize_mask, to_gray, to_rgb

BLENDS = ("alpha", "poisson", "poisson-mixed")
TEXTURE_SOURCES = ("auto", "folder", "donors", "structure")


def feather_alpha(mask: np.ndarray, feather: float) -> np.ndarray:
    """Alpha in [0, 1] that is 0 outside ``mask`` and ramps up over ``feather`` pixels inside.

    ``feather=0`` gives the mask itself (hard edges). Otherwise a pixel ``d`` steps inside the
    mask (``d=1`` on its edge) gets ``min(1, d / (feather + 1))``, so the alpha never leaks
    outside the mask. Thin structures (1-2 px) get partly transparent as ``feather`` grows.
    """
    if feather <= 0:
        return mask.astype(np.float32)
    dist = ndimage.distance_transform_edt(mask)
    return np.clip(dist / (feather + 1.0), 0.0, 1.0).astype(np.float32)


def composite(image: np.ndarray, patch: np.ndarray, mask: np.ndarray, blend: str = "alpha",
              opacity: float = 1.0, feather: float = 0.0) -> np.ndarray:
    """Put ``patch`` (aligned with ``image``) into ``image`` inside ``mask``.

    Args:
        image: Destination, ``uint8`` ``HxW`` or ``HxWx3``.
        patch: New content of the same shape as ``image`` (only its pixels in ``mask`` count).
        mask: Boolean ``HxW``; nothing outside it changes.
        blend: ``alpha``, ``poisson`` or ``poisson-mixed`` (see the module docstring).
        opacity: Weight of the new content (1 = opaque). With Poisson blends it mixes the
            seamless result with the image.
        feather: Width in pixels of the soft inner edge of the alpha (0 = hard edge).
    """
    if blend == "alpha":
        return alpha_blend(image, patch, feather_alpha(mask, feather) * float(opacity))
    if blend in ("poisson", "poisson-mixed"):
        out = poisson_blend(image, patch, mask, mixed=blend == "poisson-mixed")
        if opacity < 1.0 or feather > 0:
            out = alpha_blend(image, out, feather_alpha(mask, feather) * float(opacity))
        return out
    raise DiagError(f"unknown blend '{blend}': use one of {', '.join(BLENDS)}")


def like(arr: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``arr`` with ``image``'s channel layout (grayscale ``HxW`` or ``HxWx3``)."""
    return to_gray(arr) if image.ndim == 2 else to_rgb(arr)


def resize(arr: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an ``uint8`` image or a boolean mask to ``(height, width)`` (masks keep thin
    structures: :func:`diag.imageio.resize_mask`)."""
    h, w = max(1, int(size[0])), max(1, int(size[1]))
    if arr.shape[:2] == (h, w):
        return arr.copy()
    if arr.dtype == bool:
        return resize_mask(arr, (h, w))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((w, h), resample))


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a mask's pixels (the mask must have one)."""
    ys, xs = np.nonzero(mask)
    t, left = int(ys.min()), int(xs.min())
    return t, left, int(ys.max()) + 1 - t, int(xs.max()) + 1 - left


def check_region(kind: str, image: np.ndarray, region: np.ndarray | None) -> np.ndarray | None:
    """Validate a request's region against its image: same size, boolean, not empty."""
    if region is None:
        return None
    region = np.asarray(region, dtype=bool)
    if region.shape != image.shape[:2]:
        raise DiagError(f"{kind}: region is {region.shape[1]}x{region.shape[0]} but the image is "
                        f"{image.shape[1]}x{image.shape[0]}: regions must match their image")
    if not region.any():
        raise DiagError(f"{kind}: the region for this image is empty (empty region set): give "
                        "regions with some pixels, or drop the regions section")
    return region


def check_range(value: Sequence[float], lo: float, hi: float, name: str, source: str,
                prefix: str) -> None:
    """Raise a one-line :class:`DiagError` unless ``lo <= value[0] <= value[1] <= hi``."""
    a, b = value
    if not lo <= a <= b <= hi:
        raise DiagError(f"{source}: {prefix}{name} must be [min, max] with {lo:g} <= min <= max "
                        f"<= {hi:g}, got {list(value)}")


def check_choice(value: str, choices: Sequence[str], name: str, source: str, prefix: str) -> None:
    """Raise a one-line :class:`DiagError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise DiagError(f"{source}: {prefix}{name} is '{value}', expected one of "
                        f"{', '.join(choices)}")


def check_texture_fill(config: Any, source: str, prefix: str) -> None:
    """Checks shared by the Perlin + texture generators (memseg, draem): texture source,
    opacity range, Perlin scale and threshold, jitter, tries."""
    check_choice(config.texture_source, TEXTURE_SOURCES, "texture_source", source, prefix)
    check_range(config.opacity, 0.0, 1.0, "opacity", source, prefix)
    if not 0 <= config.perlin_scale[0] < config.perlin_scale[1] <= 10:
        raise DiagError(f"{source}: {prefix}perlin_scale must be [min, max) with "
                        f"0 <= min < max <= 10, got {list(config.perlin_scale)}")
    if not -1.0 < config.threshold < 1.0:
        raise DiagError(f"{source}: {prefix}threshold must be in (-1, 1), got {config.threshold}")
    if not 0 <= config.jitter < 1:
        raise DiagError(f"{source}: {prefix}jitter must be in [0, 1), got {config.jitter}")
    if not 1 <= config.max_tries <= 1000:
        raise DiagError(f"{source}: {prefix}max_tries must be 1 to 1000, got {config.max_tries}")


def check_paste_blend(config: Any, source: str, prefix: str) -> None:
    """Checks shared by the patch-pasting generators (cutpaste, nsa, copy-paste): opacity range,
    blend mode, jitter and feather."""
    check_range(config.opacity, 0.0, 1.0, "opacity", source, prefix)
    check_choice(config.blend, BLENDS, "blend", source, prefix)
    if not 0 <= config.jitter < 1:
        raise DiagError(f"{source}: {prefix}jitter must be in [0, 1), got {config.jitter}")
    if config.feather < 0:
        raise DiagError(f"{source}: {prefix}feather must be >= 0, got {config.feather}")
