"""Real ground-truth masks of positives, placed on negatives (the paper's setting).

A mask is cut to its bounding box and placed on the target image at the same relative position
(unchanged when the two images have the same size, as in KSDD2); optional random flips and
shifts vary it, and it is shrunk only if its box is larger than the target image, keeping its
shape: a pixel of the shrunk mask is set when any pixel it covers was, so a thin crack stays a
thin crack (:func:`diag.imageio.resize_mask`). The placed mask always lies inside the image.

>>> import numpy as np
>>> m = np.zeros((10, 20), bool); m[2:4, 5:9] = True
>>> placed, info = place_mask(m, (10, 20), np.random.default_rng(0))
>>> bool((placed == m).all()), info["flip"]
(True, '')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diag.imageio import resize_mask


def place_mask(mask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
               flip: bool = False, shift: float = 0.0, scale: tuple[float, float] = (1.0, 1.0)
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """Place a mask (a real defect's, or a drawn region) onto an image of ``shape``.

    Args:
        mask: Boolean source mask (must have a pixel).
        shape: ``(H, W)`` of the target image.
        rng: Randomness for flips, scale and shifts.
        flip: Randomly flip horizontally and/or vertically.
        shift: Largest random shift as a fraction of the target's height/width.
        scale: ``[min, max]`` of a random zoom of the mask's box (``[1, 1]``: none; thin
            parts stay at least a pixel wide when it shrinks, :func:`resize_mask`).

    Returns:
        The placed mask and a record of what was done (flip, offset, scale).
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1]
    rel_cy = (y0 + y1) / 2 / mask.shape[0]
    rel_cx = (x0 + x1) / 2 / mask.shape[1]
    flips = ""
    if flip:
        if rng.random() < 0.5:
            crop, rel_cx, flips = crop[:, ::-1], 1 - rel_cx, flips + "h"
        if rng.random() < 0.5:
            crop, rel_cy, flips = crop[::-1, :], 1 - rel_cy, flips + "v"
    h, w = shape
    zoom = 1.0 if scale[0] == scale[1] == 1.0 else float(rng.uniform(scale[0], scale[1]))
    fit = min(zoom, h / crop.shape[0], w / crop.shape[1])
    if fit != 1.0:
        crop = resize_mask(crop, (max(1, min(h, int(crop.shape[0] * fit))),
                                  max(1, min(w, int(crop.shape[1] * fit)))))
    ch, cw = crop.shape
    cy = rel_cy * h + (rng.uniform(-shift, shift) * h if shift else 0.0)
    cx = rel_cx * w + (rng.uniform(-shift, shift) * w if shift else 0.0)
    top = int(np.clip(round(cy - ch / 2), 0, h - ch))
    left = int(np.clip(round(cx - cw / 2), 0, w - cw))
    out = np.zeros(shape, dtype=bool)
    out[top:top + ch, left:left + cw] = crop
    return out, {"flip": flips, "offset": [top, left], "scale": round(fit, 4)}
