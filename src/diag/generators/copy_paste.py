"""Copy-paste defects: real defect pixels, cut with their mask from a positive, put on a negative.

The strongest cheap baseline when real positives exist (the paper's full-shot setting); after
Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation" (CVPR 2021), who found plain pasting (no blending) as good as blended pasting,
and Dwibedi et al., "Cut, Paste and Learn" (ICCV 2017) for the blend options. A real defect
(``defects``: restrict its classes) is cut along its ground-truth mask (optionally grown by
``dilate`` pixels to take its anti-aliased rim) and pasted:

* without a spec region, at the same relative position as in its own image (``placement:
  relative``, like ``regions: {source: real-masks}``) or at a random one (``random``),
  optionally flipped (``flip``) and rescaled (``scale``);
* with a spec region, the region is the defect: the real defect whose mask best matches the
  region's shape (IoU after scaling both to the region's bounding box, over flips when ``flip``
  is on; ``match: random`` takes a random one) is scaled to the region's bounding box and pasted
  into exactly the region's pixels. A region made by ``regions: {source: real-masks}`` thus gets
  the very defect its mask came from, pixel for pixel.

>>> import numpy as np, tempfile, pathlib
>>> from diag.data import Sample
>>> from diag.imageio import write_image, write_mask
>>> from diag.generators import make_generator, Request
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> pos = np.full((40, 40), 120, np.uint8); pos[10:14, 5:30] = 20
>>> m = np.zeros((40, 40), bool); m[10:14, 5:30] = True
>>> write_image(d / "p.png", pos); write_mask(d / "p_m.png", m)
>>> real = Sample("p", d / "p.png", d / "p_m.png", 1, "crack")
>>> gen = make_generator("copy-paste", {})
>>> res = gen.generate(Request(image=np.full((40, 40), 128, np.uint8), region=None, seed=0,
...                            defects=[real]))
>>> int(res.image[12, 10]), int(res.mask.sum()), res.info["defect_from"]
(20, 100, 'p')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from diag.data.sample import Sample
from diag.errors import DiagError, some, warn
from diag.generators.base import Generator, Request, Result, register, rng_for
from diag.generators.compositing import (
    bbox,
    check_choice,
    check_paste_blend,
    check_range,
    check_region,
    composite,
    like,
    resize,
)
from diag.generators.textures import jitter as jitter_texture

PLACEMENTS = ("relative", "random")
MATCHES = ("best", "random")
_FLIPS = ("", "h", "v", "hv")


def _flip(arr: np.ndarray, flips: str) -> np.ndarray:
    if "h" in flips:
        arr = arr[:, ::-1]
    if "v" in flips:
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


@dataclass
class CopyPasteConfig:
    """Parameters of the copy-paste generator.

    Attributes:
        defects: Use only real defects of these classes (empty = all), as ``regions.defects``.
        placement: Without a region: ``relative`` (the defect's own relative position) or
            ``random``.
        flip: Randomly flip the defect horizontally/vertically (no region), or also try
            flipped versions when matching a region's shape.
        scale: Range of a random rescaling of the defect (no region; 1 = real size).
        dilate: Grow the real mask by this many pixels before cutting (takes the defect's
            anti-aliased rim along; 0 = the thresholded mask as is).
        match: With a region: ``best`` (defect whose shape best fits the region) or ``random``.
        blend: ``alpha`` (plain paste with the defaults), ``poisson`` or ``poisson-mixed``.
        opacity: Range of the defect's blending weight (1 = opaque).
        feather: Soft inner edge of the pasted defect, in pixels (0 = hard; Ghiasi et al.).
        jitter: Random brightness/contrast/gamma of the defect crop (0 = none).
    """

    defects: list[str] = field(default_factory=list)
    placement: str = "relative"
    flip: bool = False
    scale: tuple[float, float] = (1.0, 1.0)
    dilate: int = 0
    match: str = "best"
    blend: str = "alpha"
    opacity: tuple[float, float] = (1.0, 1.0)
    feather: float = 0.0
    jitter: float = 0.0

    def validate(self, source: str, prefix: str) -> None:
        check_choice(self.placement, PLACEMENTS, "placement", source, prefix)
        check_choice(self.match, MATCHES, "match", source, prefix)
        check_range(self.scale, 0.05, 10.0, "scale", source, prefix)
        check_paste_blend(self, source, prefix)
        if self.dilate < 0:
            raise DiagError(f"{source}: {prefix}dilate must be >= 0, got {self.dilate}")


@register
class CopyPasteGenerator(Generator):
    """Real defects cut along their masks and pasted onto defect-free images."""

    kind: ClassVar[str] = "copy-paste"
    Config: ClassVar[type] = CopyPasteConfig

    def __init__(self, config: CopyPasteConfig, device: str = "cpu") -> None:
        super().__init__(config, device)
        self._cuts: dict[str, np.ndarray] = {}  # sample id -> cut mask (for region matching)
        self._noted = False  # the note on positives without a mask file is given once

    def identity(self) -> dict[str, Any]:
        return {"defects": list(self.config.defects)}

    def _positives(self, defects: Sequence[Sample], planned: str = "") -> list[Sample]:
        """Real positives to cut from: ``generator.defects`` classes if set, else the planned
        defect type's class when the dataset has it (``crack`` takes cracks), else all."""
        c = self.config
        pos = [d for d in defects if d.label and (not c.defects or d.defect in c.defects)]
        unmasked = [d.id for d in pos if d.mask_path is None]
        if unmasked and not self._noted:  # e.g. anomalib-folder without mask_dir
            self._noted = True
            warn(f"copy-paste: skipped {len(unmasked)} defective image(s) without a mask file "
                 f"({some(unmasked, 3)}): give the dataset masks (e.g. dataset.mask_dir) to "
                 "cut from them")
        pos = [d for d in pos if d.mask_path is not None]
        if not c.defects and planned:
            same = [d for d in pos if d.defect == planned]
            pos = same or pos
        if not pos:
            which = f" of classes {', '.join(c.defects)}" if c.defects else ""
            raise DiagError(f"copy-paste needs real defective images{which} with masks but the "
                            "dataset has none: use a dataset with positives, fix "
                            "generator.defects, or use another generator")
        return pos

    def _cut_mask(self, sample: Sample) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The (dilated) real mask of ``sample`` and its bounding box."""
        mask = sample.mask
        if self.config.dilate:
            # beyond H + W steps a mask covers the whole image: cap absurd values
            steps = min(self.config.dilate, sum(mask.shape))
            mask = ndimage.binary_dilation(mask, iterations=steps)
        if not mask.any():
            raise DiagError(f"copy-paste: real defect '{sample.id}' has an empty mask: fix its "
                            "mask file or remove it from the dataset's positives")
        return mask, bbox(mask)

    def _cut(self, sample: Sample, image: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The defect's crop (image layout like ``image``) and mask crop, and its source box."""
        mask, (t, left, h, w) = self._cut_mask(sample)
        crop = like(sample.image, image)[t:t + h, left:left + w]
        if self.config.jitter > 0:
            crop = jitter_texture(np.ascontiguousarray(crop), rng, self.config.jitter)
        return np.ascontiguousarray(crop), mask[t:t + h, left:left + w], [t, left, h, w]

    def _match(self, positives: list[Sample], region: np.ndarray, rng: np.random.Generator
               ) -> tuple[Sample, str, float]:
        """The positive (and flip) whose cut mask best fits the region's shape, with its IoU."""
        t, left, h, w = bbox(region)
        target = region[t:t + h, left:left + w]
        flips = _FLIPS if self.config.flip else ("",)
        scores = []
        for p in positives:
            if p.id not in self._cuts:
                mask, (pt, pl, ph, pw) = self._cut_mask(p)
                self._cuts[p.id] = mask[pt:pt + ph, pl:pl + pw]
            cut = resize(self._cuts[p.id], (h, w))
            for f in flips:
                fl = _flip(cut, f)
                inter = np.count_nonzero(fl & target)
                scores.append((inter / max(1, np.count_nonzero(fl | target)), p, f))
        best = max(s[0] for s in scores)
        ties = [s for s in scores if s[0] >= best - 1e-9]
        score, sample, f = ties[int(rng.integers(0, len(ties)))]
        return sample, f, float(score)

    def _in_region(self, image: np.ndarray, region: np.ndarray, positives: list[Sample],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        if self.config.match == "best":
            sample, flips, iou = self._match(positives, region, rng)
        else:
            sample = positives[int(rng.integers(0, len(positives)))]
            flips = _FLIPS[int(rng.integers(0, 4))] if self.config.flip else ""
            iou = None
        crop, _, cut = self._cut(sample, image, rng)
        top, left, h, w = bbox(region)
        full = image.copy()
        full[top:top + h, left:left + w] = resize(_flip(crop, flips), (h, w))
        info = {"defect_from": sample.id, "defect_class": sample.defect, "cut_box": cut,
                "paste_box": [top, left, h, w], "flip": flips,
                "match_iou": None if iou is None else round(iou, 4)}
        return full, region.copy(), info

    def _free(self, image: np.ndarray, positives: list[Sample], rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        c = self.config
        sample = positives[int(rng.integers(0, len(positives)))]
        crop, cmask, cut = self._cut(sample, image, rng)
        sh, sw = sample.size
        rel_cy, rel_cx = (cut[0] + cut[2] / 2) / sh, (cut[1] + cut[3] / 2) / sw
        flips = ""
        if c.flip:
            flips = _FLIPS[int(rng.integers(0, 4))]
            crop, cmask = _flip(crop, flips), _flip(cmask, flips)
            rel_cx = 1 - rel_cx if "h" in flips else rel_cx
            rel_cy = 1 - rel_cy if "v" in flips else rel_cy
        ih, iw = image.shape[:2]
        scale = float(rng.uniform(*c.scale))
        scale = min(scale, ih / crop.shape[0], iw / crop.shape[1])
        h = int(np.clip(round(crop.shape[0] * scale), 1, ih))
        w = int(np.clip(round(crop.shape[1] * scale), 1, iw))
        crop, cmask = resize(crop, (h, w)), resize(cmask, (h, w))  # the mask keeps its pixels
        if c.placement == "relative":
            top = int(np.clip(round(rel_cy * ih - h / 2), 0, ih - h))
            left = int(np.clip(round(rel_cx * iw - w / 2), 0, iw - w))
        else:
            top, left = int(rng.integers(0, ih - h + 1)), int(rng.integers(0, iw - w + 1))
        full = image.copy()
        full[top:top + h, left:left + w] = crop
        mask = np.zeros((ih, iw), bool)
        mask[top:top + h, left:left + w] = cmask
        info = {"defect_from": sample.id, "defect_class": sample.defect, "cut_box": cut,
                "paste_box": [top, left, h, w], "flip": flips, "scale": round(scale, 4)}
        return full, mask, info

    def generate(self, request: Request) -> Result:
        c = self.config
        image = request.image
        region = check_region(self.kind, image, request.region)
        positives = self._positives(request.defects, request.defect)
        rng = rng_for(request.seed)
        if region is not None:
            full, mask, info = self._in_region(image, region, positives, rng)
        else:
            full, mask, info = self._free(image, positives, rng)
        opacity = float(rng.uniform(*c.opacity))
        out = composite(image, full, mask, c.blend, opacity, c.feather)
        info["opacity"] = round(opacity, 4)
        return Result(out, mask, info)
