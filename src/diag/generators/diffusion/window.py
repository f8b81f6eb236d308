"""``resize: crop``: a window around the region, at the model's resolution, pasted back exactly.

This is diag's default way through the diffusion model: the model sees a window around the
defect region with context, at its native resolution and the window's own aspect ratio; the
result is resized back and only the (optionally dilated/feathered) region is pasted into the
source, so every other pixel is byte-identical to the input. (``resize: paper``, the reference
code's way, is in :mod:`diag.generators.diffusion.paper`; docs/generate.md compares the two.)

>>> import numpy as np
>>> mask = np.zeros((256, 640), bool); mask[100:110, 300:420] = True
>>> w = plan_window(mask, resolution=1024, context=1.0)
>>> w.box, w.size
((0, 250, 178, 543), (832, 1216))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from diag.imageio import resize_mask, to_gray, to_rgb

MULTIPLE = 64  # model input sides are multiples of this (safe for SD 1.x/2.x/XL UNets)


@dataclass(frozen=True)
class Window:
    """A crop of the source and the size the model works at.

    Attributes:
        box: ``(top, bottom, left, right)`` of the crop in source pixels (bottom/right exclusive).
        size: ``(height, width)`` the crop is resized to for the model.
    """

    box: tuple[int, int, int, int]
    size: tuple[int, int]

    @property
    def crop_shape(self) -> tuple[int, int]:
        t, b, l, r = self.box
        return b - t, r - l


def _round(v: float) -> int:
    return max(MULTIPLE, int(round(v / MULTIPLE)) * MULTIPLE)


def _grow(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Grow ``[lo, hi)`` symmetrically to length ``want`` within ``[0, limit)``."""
    want = min(max(want, hi - lo), limit)
    extra = want - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), hi


def model_size(crop_h: int, crop_w: int, resolution: int) -> tuple[int, int]:
    """Model input ``(H, W)``: area about ``resolution**2``, the crop's aspect, multiples of 64."""
    aspect = crop_w / crop_h
    return _round(resolution / np.sqrt(aspect)), _round(resolution * np.sqrt(aspect))


def plan_window(mask: np.ndarray, resolution: int, context: float = 1.0, min_size: int = 64,
                max_aspect: float = 4.0) -> Window:
    """Choose the crop around ``mask`` and the model input size.

    Args:
        mask: Boolean region to repaint (must have a pixel).
        resolution: The model's native side (1024 for SDXL, 512 for SD 1.5).
        context: Margin added on each side of the mask's box, as a fraction of the box's larger
            side: 0 crops tightly, 1 gives a window about three times the defect.
        min_size: Smallest window side in source pixels (tiny defects still get context).
        max_aspect: Longest/shortest side limit of the window (grown when the image allows).
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    t, b, l, r = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    margin = int(round(context * max(b - t, r - l)))
    t, b = _grow(t, b, (b - t) + 2 * margin, h)
    l, r = _grow(l, r, (r - l) + 2 * margin, w)
    t, b = _grow(t, b, min_size, h)
    l, r = _grow(l, r, min_size, w)
    ch, cw = b - t, r - l
    if cw / ch > max_aspect:
        t, b = _grow(t, b, int(np.ceil(cw / max_aspect)), h)
    elif ch / cw > max_aspect:
        l, r = _grow(l, r, int(np.ceil(ch / max_aspect)), w)
    mh, mw = model_size(b - t, r - l, resolution)
    # match the crop's aspect to the rounded model size where the image leaves room
    ch, cw = b - t, r - l
    if cw / ch < mw / mh:
        l, r = _grow(l, r, int(round(ch * mw / mh)), w)
    else:
        t, b = _grow(t, b, int(round(cw * mh / mw)), h)
    return Window((t, b, l, r), (mh, mw))


def choose_window(mask: np.ndarray, sizes: Sequence[int], context: float = 1.0,
                  min_size: int = 64) -> tuple[Window, int]:
    """Plan the window at the smallest model side of ``sizes`` that does not shrink the crop.

    A window is planned at each side (smallest first, see :func:`plan_window`); the first whose
    model input has at least as many pixels as its crop of the source is taken, so the model
    never sees the defect at less than the source's resolution, and small defects are painted
    at a smaller, faster size. When every side would shrink the crop, the largest is used.
    One side gives :func:`plan_window` at that side. Returns the window and the side.

    >>> mask = np.zeros((256, 640), bool); mask[100:110, 300:320] = True
    >>> w, side = choose_window(mask, [1024, 768, 512])
    >>> side, w.crop_shape, w.size
    (512, (64, 64), (512, 512))
    """
    ordered = sorted(set(int(s) for s in sizes))
    if not ordered:
        raise ValueError("choose_window needs at least one model side")
    for side in ordered:
        window = plan_window(mask, side, context, min_size)
        ch, cw = window.crop_shape
        if window.size[0] * window.size[1] >= ch * cw:
            return window, side
    return window, ordered[-1]


def crop_for_model(image: np.ndarray, mask: np.ndarray, window: Window
                   ) -> tuple[Image.Image, Image.Image]:
    """The RGB crop and its binary mask, resized to the model size (mask stays binary).

    The mask is resized nearest neighbour; where the model size is smaller than the crop, a
    model pixel is set when any crop pixel it covers is (:func:`diag.imageio.resize_mask`), so
    a thin region is never dropped from what the model is asked to paint.
    """
    t, b, l, r = window.box
    mh, mw = window.size
    img = Image.fromarray(to_rgb(image[t:b, l:r])).resize((mw, mh), Image.LANCZOS)
    crop = mask[t:b, l:r]
    if mh < b - t or mw < r - l:
        m = Image.fromarray(resize_mask(crop, (mh, mw)).astype(np.uint8) * 255)
    else:
        m = Image.fromarray(crop.astype(np.uint8) * 255).resize((mw, mh), Image.NEAREST)
    return img, m


def paste_mask(mask: np.ndarray, dilate: int = 0, feather: int = 0) -> np.ndarray:
    """Alpha (``float32`` in [0, 1]) of what is pasted: 1 on the (dilated) mask, a soft edge of
    ``feather`` pixels outside it, 0 elsewhere."""
    # beyond H + W steps a non-empty mask covers the whole image: cap absurd values
    m = ndimage.binary_dilation(mask, iterations=min(dilate, sum(mask.shape))) if dilate else mask
    alpha = m.astype(np.float32)
    if feather:
        dist = ndimage.distance_transform_edt(~m)
        alpha = np.clip(1.0 - dist / (feather + 1), 0.0, 1.0).astype(np.float32)
    return alpha


def paste_back(source: np.ndarray, generated: Image.Image, window: Window, alpha: np.ndarray,
               resample: int = Image.LANCZOS) -> np.ndarray:
    """Resize the model output back to the window and blend it into ``source`` by ``alpha``.

    Pixels where ``alpha`` is 0 are copied from ``source`` unchanged; grayscale sources get
    the output's luminance and stay ``HxW``.
    """
    t, b, l, r = window.box
    back = np.asarray(generated.convert("RGB").resize((r - l, b - t), resample))
    if source.ndim == 2:
        back = to_gray(back)
    out = source.copy()
    a = alpha[t:b, l:r]
    a_ = a[..., None] if source.ndim == 3 else a
    region = source[t:b, l:r].astype(np.float32) * (1 - a_) + back.astype(np.float32) * a_
    region = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    keep = (a > 0) if source.ndim == 2 else (a > 0)[..., None]
    out[t:b, l:r] = np.where(keep, region, source[t:b, l:r])
    return out
