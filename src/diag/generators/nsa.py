"""NSA defects: patches of other defect-free images, rescaled and Poisson-blended in.

After Schlüter, Tan, Hou, Batchelor and Kainz, "Natural Synthetic Anomalies for
Self-Supervised Anomaly Detection and Localization" (ECCV 2022, Sec. 3, and its
``self_sup_tasks.patch_ex``): a rectangle whose sides are ``patch_size`` (here 5-40 %) of
the image's, cut from a different defect-free image of the same class, is rescaled by a
factor in ``resize`` (0.7 to 1.3), moved to a random place and blended with Poisson image
editing (``cv2.NORMAL_CLONE``; ``poisson-mixed`` is NSA's ``MIXED_CLONE`` variant), one to
``patches`` (1 to 3) times per image.

>>> import numpy as np
>>> from diag.generators import make_generator, Request
>>> gen = make_generator("nsa", {"patches": [1, 1]})
>>> img = np.full((64, 64), 90, np.uint8); img[::4] = 140
>>> res = gen.generate(Request(image=img, region=None, seed=0))
>>> res.info["donor"], bool((res.image != img)[~res.mask].any())
('self', False)

Without donors (no other defect-free image given) the patch comes from the image itself, at
another place. With a spec region the region is the defect: one patch the size of the region's
bounding box (before rescaling) is Poisson-blended into exactly the region's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from diag.generators.base import Generator, Request, Result, register, rng_for
from diag.generators.compositing import (
    bbox,
    check_paste_blend,
    check_range,
    check_region,
    composite,
    like,
    resize,
)
from diag.generators.textures import jitter as jitter_texture


@dataclass
class NsaConfig:
    """Parameters of the NSA generator (defaults after the NSA paper's code).

    Attributes:
        patch_size: Range of each patch side as a fraction of the image's side (NSA's
            ``width_bounds_pct``; 0.05 to 0.4 here, the span NSA uses across MVTec classes).
        resize: Range of the patch's rescaling factor (NSA: 0.7 to 1.3).
        patches: Range of the number of patches per image (NSA: up to 3 on most classes).
        blend: ``poisson`` (NSA), ``poisson-mixed`` (NSA-mixed) or ``alpha`` (plain paste).
        opacity: Weight of the blended patch (1 = the seamless result as is).
        feather: Soft inner edge in pixels (0 = none, as NSA).
        jitter: Random brightness/contrast/gamma of the patch (0 = none, as NSA).
        same_image: Cut patches from the image itself even when donors are available.
    """

    patch_size: tuple[float, float] = (0.05, 0.4)
    resize: tuple[float, float] = (0.7, 1.3)
    patches: tuple[int, int] = (1, 3)
    blend: str = "poisson"
    opacity: tuple[float, float] = (1.0, 1.0)
    feather: float = 0.0
    jitter: float = 0.0
    same_image: bool = False

    def validate(self, source: str, prefix: str) -> None:
        check_range(self.patch_size, 1e-3, 1.0, "patch_size", source, prefix)
        check_range(self.resize, 0.05, 10.0, "resize", source, prefix)
        check_range(self.patches, 1, 100, "patches", source, prefix)
        check_paste_blend(self, source, prefix)


@register
class NsaGenerator(Generator):
    """Rescaled patches of other defect-free images, blended seamlessly (NSA)."""

    kind: ClassVar[str] = "nsa"
    Config: ClassVar[type] = NsaConfig


    def _patch(self, donor: np.ndarray, size: tuple[int, int], scale: float,
               rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        """A patch of ``donor`` that, rescaled by ``scale``, is ``size``; and its source box."""
        dh, dw = donor.shape[:2]
        h = int(np.clip(round(size[0] / scale), 1, dh))
        w = int(np.clip(round(size[1] / scale), 1, dw))
        top = int(rng.integers(0, dh - h + 1))
        left = int(rng.integers(0, dw - w + 1))
        patch = resize(np.ascontiguousarray(donor[top:top + h, left:left + w]), size)
        if self.config.jitter > 0:
            patch = jitter_texture(patch, rng, self.config.jitter)
        return patch, [top, left, h, w]

    def generate(self, request: Request) -> Result:
        c = self.config
        image = request.image
        ih, iw = image.shape[:2]
        region = check_region(self.kind, image, request.region)
        rng = rng_for(request.seed)
        if request.donors and not c.same_image:
            donor_sample = request.donors[int(rng.integers(0, len(request.donors)))]
            donor, donor_id = like(donor_sample.image, image), donor_sample.id
        else:
            donor, donor_id = image, "self"
        opacity = float(rng.uniform(*c.opacity))
        out = image
        mask = np.zeros((ih, iw), bool)
        placed: list[dict[str, Any]] = []
        if region is not None:
            boxes = [(bbox(region), region)]
        else:
            boxes = []
            for _ in range(int(rng.integers(c.patches[0], c.patches[1] + 1))):
                h = int(np.clip(round(rng.uniform(*c.patch_size) * ih), 1, ih))
                w = int(np.clip(round(rng.uniform(*c.patch_size) * iw), 1, iw))
                top, left = int(rng.integers(0, ih - h + 1)), int(rng.integers(0, iw - w + 1))
                m = np.zeros((ih, iw), bool)
                m[top:top + h, left:left + w] = True
                boxes.append(((top, left, h, w), m))
        for (top, left, h, w), m in boxes:
            scale = float(rng.uniform(*c.resize))
            patch, cut = self._patch(donor, (h, w), scale, rng)
            full = out.copy()
            full[top:top + h, left:left + w] = patch
            out = composite(out, full, m, c.blend, opacity, c.feather)
            mask |= m
            placed.append({"cut_box": cut, "paste_box": [top, left, h, w],
                           "scale": round(scale, 4)})
        return Result(out, mask, {"donor": donor_id, "patches": placed,
                                  "opacity": round(opacity, 4), "blend": c.blend})
