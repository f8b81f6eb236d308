"""Where a defect goes: real masks, expert-drawn regions, or random shapes in an area.

The spec's ``regions`` section picks a source; :func:`make_regions` turns it into a
:class:`RegionSource`, whose ``sample(rng, negative)`` returns a boolean mask for one
defect-free image, and a record of how it was made (for the manifest).

>>> import numpy as np
>>> from diag.regions import RegionSpec, make_regions
>>> src = make_regions(RegionSpec(source="shapes", shapes=["ellipse"]), positives=[])
>>> mask, info = src.sample_shape(np.random.default_rng(0), (64, 64), "img")
>>> bool(mask.any()), info["source"]
(True, 'shapes')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from diag.data.sample import Sample
from diag.errors import DiagError, some, warn, where
from diag.regions.drawn import DrawnRegions, polygons_to_mask, read_region_file
from diag.regions.real_masks import place_mask
from diag.regions.shapes import SHAPES, random_shape, sample_shapes

SOURCES = ("real-masks", "drawn", "shapes")
MAX_WIDTH = 10_000  # stroke width limit, pixels
MAX_SHAPES = 1000  # shapes per region: far more already cover any image
MAX_SCALE = 100.0  # zoom of a placed mask (it is capped to the image anyway)


@dataclass
class RegionSpec:
    """The spec's ``regions`` section.

    Attributes:
        source: ``real-masks`` (GT masks of the dataset's positives put on negatives),
            ``drawn`` (expert region files) or ``shapes`` (random shapes).
        flip: real-masks, and drawn regions used as-is: randomly flip the mask horizontally
            and/or vertically (its position mirrors with it).
        shift: real-masks and drawn as-is: largest random shift, as a fraction of the image
            size.
        scale: real-masks and drawn as-is: ``[min, max]`` of a random zoom of the mask
            (default none); a zoomed mask is kept inside the image.
        defects: real-masks: use only positives of these defect classes (empty = all).
        path: drawn: a mask PNG, polygon JSON, or folder of them named by image stem;
            shapes: an optional area of interest in the same formats.
        mode: drawn: ``as-is`` (the drawn region is the defect region) or ``area`` (shapes
            are sampled inside it).
        shapes: Shape kinds to sample: blob, stroke, ellipse, rectangle.
        size: Shape extent range as a fraction of the image's shorter side.
        width: Stroke width range in pixels.
        count: Range of how many shapes make one region.
        dilate: Grow every region by this many pixels.
        labels: drawn: annotation label -> defect type name, for annotation files with labels
            (``{scratch: crack}``); labels not listed map to themselves. A defect type gets
            the shapes whose label maps to it; files without labels give all shapes.
    """

    source: str = "real-masks"
    flip: bool = False
    shift: float = 0.0
    defects: list[str] = field(default_factory=list)
    path: str | None = None
    mode: str = "as-is"
    shapes: list[str] = field(default_factory=lambda: ["blob", "stroke", "ellipse"])
    size: tuple[float, float] = (0.05, 0.25)
    width: tuple[int, int] = (1, 4)
    count: tuple[int, int] = (1, 1)
    dilate: int = 0
    # None (left out of spec.yaml) unless given: folders made before this field still resume
    labels: dict[str, str] | None = field(default=None, metadata={"omit_none": True})
    scale: tuple[float, float] | None = field(default=None, metadata={"omit_none": True})

    def validate(self, source: str, prefix: str) -> None:
        if self.source not in SOURCES:
            raise DiagError(f"{source}: {prefix}source is '{self.source}', expected one of "
                            f"{', '.join(SOURCES)}")
        if self.mode not in ("as-is", "area"):
            raise DiagError(f"{source}: {prefix}mode is '{self.mode}', expected as-is or area")
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or not self.shapes:
            raise DiagError(f"{source}: {prefix}shapes has '{bad[0] if bad else ''}', expected "
                            f"some of {', '.join(SHAPES)}")
        if not 0 < self.size[0] <= self.size[1]:
            raise DiagError(f"{source}: {prefix}size must be [min, max] with 0 < min <= max")
        if not 1 <= self.width[0] <= self.width[1] <= MAX_WIDTH:
            raise DiagError(f"{source}: {prefix}width must be [min, max] pixels, 1 <= min <= max "
                            f"<= {MAX_WIDTH}")
        if not 1 <= self.count[0] <= self.count[1] <= MAX_SHAPES:
            raise DiagError(f"{source}: {prefix}count must be [min, max] with 1 <= min <= max "
                            f"<= {MAX_SHAPES}")
        if not 0 <= self.shift <= 1:
            raise DiagError(f"{source}: {prefix}shift must be within [0, 1]")
        if self.dilate < 0:
            raise DiagError(f"{source}: {prefix}dilate must be >= 0")
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= MAX_SCALE:
            raise DiagError(f"{source}: {prefix}scale must be [min, max] with 0 < min <= max <= "
                            f"{MAX_SCALE} (1: the mask's own size)")
        for key, value in (self.labels or {}).items():
            if not all(isinstance(v, str | int) and not isinstance(v, bool) and str(v).strip()
                       for v in (key, value)):
                raise DiagError(f"{source}: {prefix}labels maps {key!r} to {value!r}: write it as "
                                "annotation label: defect name, e.g. {scratch: crack}")
        if self.labels is not None:
            self.labels = {str(k): str(v) for k, v in self.labels.items()}
        if self.source == "drawn" and not self.path:
            raise DiagError(f"{source}: {prefix}path is required when source is 'drawn' (a mask "
                            "PNG, a polygon JSON, or a folder of them)")


class RegionSource:
    """Samples defect regions for negatives, following a :class:`RegionSpec`."""

    def __init__(self, spec: RegionSpec, positives: Sequence[Sample] = ()) -> None:
        self.spec = spec
        self.positives = list(positives)
        self.drawn = DrawnRegions(spec.path, spec.labels) if spec.path else None
        if spec.source == "real-masks":
            pos = [p for p in self.positives if p.label
                   and (not spec.defects or p.defect in spec.defects)]
            unmasked = [p.id for p in pos if p.mask_path is None]
            if unmasked:  # e.g. anomalib-folder without mask_dir: nothing to take
                warn(f"regions.source real-masks: skipped {len(unmasked)} defective image(s) "
                     f"without a mask file ({some(unmasked, 3)}): give the dataset masks (e.g. "
                     "dataset.mask_dir) to use them")
                pos = [p for p in pos if p.mask_path is not None]
            if not pos:
                which = f" of classes {', '.join(spec.defects)}" if spec.defects else ""
                raise DiagError(f"regions.source is real-masks but the dataset has no defective "
                                f"images{which} to take masks from (empty region set): use "
                                "regions.source shapes or drawn, or a dataset with positives")
            self.positives = pos
        self.by_class: dict[str, list[Sample]] = {}
        for p in self.positives:
            self.by_class.setdefault(p.defect, []).append(p)

    @property
    def zoom(self) -> tuple[float, float]:
        return self.spec.scale if self.spec.scale is not None else (1.0, 1.0)

    def covers(self, negative: Sample, defect: str = "") -> bool:
        """Whether this source can give a region for ``negative`` (drawn folders may not; an
        annotation file with labels gives ``defect`` only the images with shapes for it)."""
        if self.drawn is None or self.spec.source == "real-masks":
            return True
        return self.drawn.covers(negative.path.stem, defect)

    def sample(self, rng: np.random.Generator, negative: Sample, defect: str = ""
               ) -> tuple[np.ndarray, dict]:
        """A region for ``negative`` (boolean mask of its size) and how it was made."""
        return self.sample_shape(rng, negative.size, negative.path.stem, defect)

    def sample_shape(self, rng: np.random.Generator, shape: tuple[int, int], stem: str,
                     defect: str = "") -> tuple[np.ndarray, dict[str, Any]]:
        """A region for an image of ``shape`` named ``stem``. With real masks, a defect type
        whose name matches a dataset class (``crack``) takes masks of that class only."""
        s = self.spec
        info: dict[str, Any] = {"source": s.source}
        if s.source == "real-masks":
            pool = self.by_class.get(defect) or self.positives
            donor = pool[int(rng.integers(0, len(pool)))]
            mask, placed = place_mask(donor.mask, shape, rng, s.flip, s.shift, self.zoom)
            info.update(mask_from=donor.id, mask_file=str(donor.mask_path), **placed)
        elif s.source == "drawn" and s.mode == "as-is":
            assert self.drawn is not None
            mask, path = self.drawn.region(stem, shape, defect or None)
            if not mask.any():
                raise DiagError(f"drawn region {where(path)} is empty: paint some white pixels "
                                "(empty region set)")
            if s.flip or s.shift or s.scale is not None:  # varied like a real mask
                mask, placed = place_mask(mask, shape, rng, s.flip, s.shift, self.zoom)
                info.update(placed)
            info["region_file"] = str(path)
        else:
            area = None
            if self.drawn is not None:
                area, path = self.drawn.region(stem, shape, defect or None)
                info["area_file"] = str(path)
                if not area.any():
                    raise DiagError(f"area of interest {where(path)} is empty: paint some white "
                                    "pixels (empty region set)")
            mask = sample_shapes(shape, rng, s.shapes, s.size, s.width, s.count, area)
            info["shapes"] = list(s.shapes)
        if s.dilate:
            mask = dilate(mask, s.dilate)
        return mask, info


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow ``mask`` by ``pixels`` (4-neighbour steps). Beyond ``H + W`` steps a non-empty mask
    already covers the whole image, so any larger number gives that at once."""
    return ndimage.binary_dilation(mask, iterations=max(1, min(int(pixels), sum(mask.shape))))


def make_regions(spec: RegionSpec, positives: Sequence[Sample] = ()) -> RegionSource:
    return RegionSource(spec, positives)


__all__ = ["SHAPES", "SOURCES", "DrawnRegions", "RegionSource", "RegionSpec", "dilate",
           "make_regions", "place_mask", "polygons_to_mask", "random_shape", "read_region_file",
           "sample_shapes"]
