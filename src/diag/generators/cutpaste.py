"""CutPaste defects: a patch cut from the image itself, jittered, and pasted elsewhere.

After Li, Sohn, Yoon and Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection
and Localization" (CVPR 2021, Sec. 3.1 and appendix), in its two variants:

* ``normal``: a rectangle of area ``area_ratio`` (2-15 %) of the image and aspect ratio
  log-uniform in ``[aspect_ratio, 1/aspect_ratio]`` (0.3), cut at a random place, colour
  jittered (``ColorJitter(0.1, 0.1, 0.1, 0.1)`` in the paper) and pasted at another;
* ``scar``: a thin rectangle ``scar_width`` (2-16 px) by ``scar_length`` (10-25 px), jittered,
  rotated by ``scar_angle`` (-45 to 45 degrees) and pasted along its rotated outline.

Each sample draws one of ``variants`` (both by default: CutPaste-3way's two defect classes).

>>> import numpy as np
>>> from diag.generators import make_generator, Request
>>> gen = make_generator("cutpaste", {"variants": ["scar"]})
>>> img = (np.arange(96 * 80) % 251).astype(np.uint8).reshape(96, 80)
>>> res = gen.generate(Request(image=img, region=None, seed=1))
>>> res.info["variant"], bool((res.image != img)[~res.mask].any())
('scar', False)

With a spec region, the region is the defect: a patch the size of the region's bounding box is
cut from another place of the same image and pasted into the region's pixels only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from diag.errors import DiagError
from diag.generators.base import Generator, Request, Result, register, rng_for
from diag.generators.compositing import (
    bbox,
    check_choice,
    check_paste_blend,
    check_range,
    check_region,
    composite,
)
from diag.generators.textures import jitter as jitter_texture

VARIANTS = ("normal", "scar")


@dataclass
class CutPasteConfig:
    """Parameters of the CutPaste generator (defaults: the CutPaste paper).

    Attributes:
        variants: Variants drawn uniformly per sample: ``normal`` (rectangle), ``scar``.
        area_ratio: Rectangle area as a fraction of the image area (CutPaste: 0.02 to 0.15).
        aspect_ratio: Rectangle aspect ratio is log-uniform in ``[r, 1/r]`` (CutPaste: 0.3).
        scar_width: Scar width range in pixels (CutPaste: 2 to 16).
        scar_length: Scar length range in pixels (CutPaste: 10 to 25).
        scar_angle: Scar rotation range in degrees (CutPaste: -45 to 45).
        jitter: Strength of random brightness/contrast/gamma changes of the patch
            (CutPaste: colour jitter 0.1).
        blend: ``alpha`` (CutPaste pastes opaquely), ``poisson`` or ``poisson-mixed``.
        opacity: Range of the patch's blending weight (1 = opaque, as in CutPaste).
        feather: Soft inner edge of the pasted patch, in pixels (0 = hard, as in CutPaste).
    """

    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    area_ratio: tuple[float, float] = (0.02, 0.15)
    aspect_ratio: float = 0.3
    scar_width: tuple[int, int] = (2, 16)
    scar_length: tuple[int, int] = (10, 25)
    scar_angle: tuple[float, float] = (-45.0, 45.0)
    jitter: float = 0.1
    blend: str = "alpha"
    opacity: tuple[float, float] = (1.0, 1.0)
    feather: float = 0.0

    def validate(self, source: str, prefix: str) -> None:
        if not self.variants:
            raise DiagError(f"{source}: {prefix}variants is empty: use some of normal, scar")
        for v in self.variants:
            check_choice(v, VARIANTS, "variants", source, prefix)
        check_range(self.area_ratio, 1e-4, 1.0, "area_ratio", source, prefix)
        if not 0 < self.aspect_ratio <= 1:
            raise DiagError(f"{source}: {prefix}aspect_ratio must be in (0, 1], got "
                            f"{self.aspect_ratio}")
        check_range(self.scar_width, 1, 10_000, "scar_width", source, prefix)
        check_range(self.scar_length, 1, 10_000, "scar_length", source, prefix)
        check_range(self.scar_angle, -180, 180, "scar_angle", source, prefix)
        check_paste_blend(self, source, prefix)


@register
class CutPasteGenerator(Generator):
    """CutPaste's rectangle and scar patches, cut from and pasted into the same image."""

    kind: ClassVar[str] = "cutpaste"
    Config: ClassVar[type] = CutPasteConfig


    def _cut(self, image: np.ndarray, h: int, w: int, rng: np.random.Generator
             ) -> tuple[np.ndarray, list[int]]:
        """A jittered ``h x w`` patch from a random place of ``image``, and its box."""
        ih, iw = image.shape[:2]
        top = int(rng.integers(0, ih - h + 1))
        left = int(rng.integers(0, iw - w + 1))
        patch = image[top:top + h, left:left + w]
        if self.config.jitter > 0:
            patch = jitter_texture(np.ascontiguousarray(patch), rng, self.config.jitter)
        return patch, [top, left, h, w]

    def _rectangle(self, image: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        c = self.config
        ih, iw = image.shape[:2]
        area = float(rng.uniform(*c.area_ratio)) * ih * iw
        aspect = math.exp(float(rng.uniform(math.log(c.aspect_ratio), -math.log(c.aspect_ratio))))
        w = int(np.clip(round(math.sqrt(area * aspect)), 1, iw))
        h = int(np.clip(round(math.sqrt(area / aspect)), 1, ih))
        patch, cut = self._cut(image, h, w, rng)
        top = int(rng.integers(0, ih - h + 1))
        left = int(rng.integers(0, iw - w + 1))
        full = image.copy()
        full[top:top + h, left:left + w] = patch
        mask = np.zeros((ih, iw), bool)
        mask[top:top + h, left:left + w] = True
        return full, mask, {"variant": "normal", "cut_box": cut, "paste_box": [top, left, h, w]}

    def _scar(self, image: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        c = self.config
        ih, iw = image.shape[:2]
        w = int(min(iw, rng.integers(c.scar_width[0], c.scar_width[1] + 1)))
        h = int(min(ih, rng.integers(c.scar_length[0], c.scar_length[1] + 1)))
        patch, cut = self._cut(image, h, w, rng)
        angle = float(rng.uniform(*c.scar_angle))
        rot = np.asarray(Image.fromarray(patch).rotate(angle, Image.BILINEAR, expand=True))
        alpha = np.asarray(Image.fromarray(np.full((h, w), 255, np.uint8)).rotate(
            angle, Image.NEAREST, expand=True)) > 127
        rh, rw = min(rot.shape[0], ih), min(rot.shape[1], iw)
        rot, alpha = rot[:rh, :rw], alpha[:rh, :rw]
        if not alpha.any():  # on a tiny image the rotated scar can be cut away: unrotated
            (rh, rw), rot, alpha, angle = (h, w), patch, np.ones((h, w), bool), 0.0
        top = int(rng.integers(0, ih - rh + 1))
        left = int(rng.integers(0, iw - rw + 1))
        full = image.copy()
        full[top:top + rh, left:left + rw] = rot
        mask = np.zeros((ih, iw), bool)
        mask[top:top + rh, left:left + rw] = alpha
        return full, mask, {"variant": "scar", "cut_box": cut, "paste_box": [top, left, rh, rw],
                            "angle": round(angle, 2)}

    def _in_region(self, image: np.ndarray, region: np.ndarray, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        top, left, h, w = bbox(region)
        patch, cut = self._cut(image, h, w, rng)
        full = image.copy()
        full[top:top + h, left:left + w] = patch
        return full, region.copy(), {"variant": "region", "cut_box": cut,
                                     "paste_box": [top, left, h, w]}

    def generate(self, request: Request) -> Result:
        c = self.config
        image = request.image
        region = check_region(self.kind, image, request.region)
        rng = rng_for(request.seed)
        if region is not None:
            full, mask, info = self._in_region(image, region, rng)
        elif c.variants[int(rng.integers(0, len(c.variants)))] == "scar":
            full, mask, info = self._scar(image, rng)
        else:
            full, mask, info = self._rectangle(image, rng)
        opacity = float(rng.uniform(*c.opacity))
        out = composite(image, full, mask, c.blend, opacity, c.feather)
        info["opacity"] = round(opacity, 4)
        return Result(out, mask, info)
