"""Expert-drawn regions: masks, polygon files, or the exports of annotation tools.

A region file can be:

* a PNG (or any image) mask: white = where defects may go;
* a JSON file of polygons, either diag's own format
  ``{"polygons": [[[x, y], ...], ...], "normalized": false}`` (``normalized: true`` means
  coordinates are fractions of width/height, so one file fits images of any size), or a labelme
  annotation (``{"shapes": [{"label": ..., "shape_type": "polygon", "points": [...]}, ...]}``;
  polygons, rectangles, circles, lines, points and masks are drawn);
* an annotation file covering many images, named by them: COCO instances JSON, CVAT for
  images 1.1 XML, or a Label Studio JSON export (:mod:`diag.regions.formats`).

A region path can be one file (a mask or polygon file is used for every image; an annotation
file for the images it names), resized to each image when its size differs (thin strokes kept:
:func:`diag.imageio.resize_mask`), or a folder holding files named after the images' stems
(``<stem>.png`` or ``<stem>.json``; ``default.png``/``default.json`` for images without their
own).

Shapes carry the annotation tool's labels. Asked for a defect type, :class:`DrawnRegions`
gives the shapes whose label maps to it (``labels``: annotation label -> defect name; labels
not listed map to themselves); a file without labels (a mask, diag's polygons) gives all its
shapes to every defect type.

>>> import numpy as np
>>> polygons_to_mask({"polygons": [[[0, 0], [0.5, 0], [0.5, 0.5]]], "normalized": True}, (10, 10)).sum() > 0
np.True_
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diag.errors import DiagError, some, where
from diag.imageio import IMAGE_SUFFIXES, read_mask, resize_mask
from diag.regions.formats import FORMATS, Annotations, ImageShapes, read_annotations
from diag.regions.formats.diag_json import is_diag, read_diag
from diag.regions.formats.labelme import is_labelme, read_labelme


def polygons_to_mask(data: dict[str, Any], shape: tuple[int, int], source: str = "polygons"
                     ) -> np.ndarray:
    """Rasterise diag or labelme polygon JSON to a boolean mask of ``shape`` (all shapes)."""
    if is_diag(data):
        return read_diag(data, source).mask(shape)
    if is_labelme(data):
        return read_labelme(data, source).mask(shape)
    raise DiagError(f"{source}: region JSON needs a 'polygons' list (diag format) or a "
                    "'shapes' list (labelme format)")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_region_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A one-image region file (mask image, diag or labelme JSON) as a boolean mask of
    ``shape``: all its shapes."""
    if _is_image(path):
        return resize_mask(read_mask(path), shape)
    return _one_image(read_annotations(path)).mask(shape)


def _one_image(ann: Annotations) -> ImageShapes:
    if ann.multi:
        raise DiagError(f"region file {where(ann.path)} is a {FORMATS[ann.format]} file naming "
                        "its images: give it as regions.path itself, not inside a folder of "
                        "per-image region files")
    return next(iter(ann.images.values()))


class DrawnRegions:
    """Finds the drawn region for an image stem in a file or folder of region files.

    Args:
        path: A region file (mask, polygon JSON, or a COCO / CVAT / Label Studio file naming
            its images) or a folder of one-image region files named by image stem.
        labels: Annotation label -> defect type name (labels not listed map to themselves).
    """

    def __init__(self, path: str | Path, labels: Mapping[str, str] | None = None) -> None:
        self.path = Path(path).expanduser()
        self.labels = dict(labels or {})
        self.annotations: Annotations | None = None
        self._parsed: dict[Path, Annotations] = {}
        if not self.path.exists():
            raise DiagError(f"region path {where(self.path)} does not exist: set regions.path to a "
                            "mask PNG, a polygon JSON, a COCO / CVAT / Label Studio annotation "
                            "file, or a folder of masks named by image stem")
        suffixes = (*IMAGE_SUFFIXES, ".json")
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir()
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not files:
                raise DiagError(f"region folder {where(self.path)} holds no masks or polygon "
                                "JSON files: draw some regions first (empty region set)")
            self.by_stem = {p.stem: p for p in files}
            return
        self.by_stem = {"default": self.path}
        if not _is_image(self.path):
            ann = read_annotations(self.path)
            if ann.multi:
                self.annotations, self.by_stem = ann, {}
            else:
                self._parsed[self.path] = ann

    def file_for(self, stem: str) -> Path | None:
        """The one-image region file for ``stem`` (None for annotation files naming images)."""
        return self.by_stem.get(stem) or self.by_stem.get("default")

    def _shapes(self, path: Path) -> tuple[ImageShapes, bool] | None:
        """A one-image JSON region file's shapes and whether it has labels (None: a mask)."""
        if _is_image(path):
            return None
        if path not in self._parsed:
            self._parsed[path] = read_annotations(path)
        ann = self._parsed[path]
        if ann.format == "mask":
            return None
        return _one_image(ann), ann.labelled

    def _lookup(self, stem: str) -> tuple[ImageShapes, bool, Path] | None:
        if self.annotations is not None:
            found = self.annotations.find(stem)
            return None if found is None else (found, self.annotations.labelled, self.path)
        path = self.file_for(stem)
        if path is None:
            return None
        shapes = self._shapes(path)
        return None if shapes is None else (*shapes, path)

    def covers(self, stem: str, defect: str = "") -> bool:
        """Whether there is a region for image ``stem`` (for ``defect``: a shape labelled
        for it, when the file has labels). Annotation files cover the images they list with
        shapes."""
        if self.annotations is None and self.file_for(stem) is None:
            return False
        found = self._lookup(stem)
        if found is None:  # a mask, or an image the annotation file does not list
            return self.annotations is None
        image, labelled, _ = found
        if self.annotations is None and not (defect and labelled):
            return True  # as before labels: an empty region file is an error when it is used
        return bool(image.select(defect, self.labels, labelled))

    def region(self, stem: str, shape: tuple[int, int], label: str | None = None
               ) -> tuple[np.ndarray, Path]:
        """The region of image ``stem`` as a mask of ``shape``, and the file it came from:
        the union of the shapes whose label maps to the defect type ``label`` (all shapes
        with no ``label``, or when the file has no labels)."""
        if self.annotations is not None:
            found = self._lookup(stem)
            if found is None:
                raise DiagError(f"no drawn region for image '{stem}' in {where(self.path)}: the "
                                "file does not list that image; annotate it there")
        else:
            path = self.file_for(stem)
            if path is None:
                raise DiagError(f"no drawn region for image '{stem}' in {where(self.path)}: add "
                                f"{stem}.png or default.png")
            found = self._lookup(stem)
            if found is None:
                return read_region_file(path, shape), path
        image, labelled, path = found
        shapes = image.select(label, self.labels, labelled)
        if not shapes and label and labelled:
            raise DiagError(f"image '{stem}' in {where(path)} has no shape labelled for "
                            f"'{label}'{self.hint(label, image)}")
        return image.mask(shape, shapes), path

    def hint(self, defect: str, image: ImageShapes | None = None) -> str:
        """`` (labels there: ...; map one with regions.labels: {...})`` when no label maps to
        ``defect``, else ""."""
        found: Counter[str] = Counter()
        if image is not None:
            found = image.labels()
        elif self.annotations is not None:
            found = self.annotations.labels()
        else:
            for path in dict.fromkeys(self.by_stem.values()):
                shapes = self._shapes(path)
                if shapes is not None:
                    found.update(shapes[0].labels())
        mapped = {self.labels.get(k, k) for k in found}
        if not found or defect in mapped:
            if self.annotations is None or image is not None:
                return ""
            stems = sorted(self.annotations.images)
            return (f" ({where(self.path)} names the images {some(stems, 3)}: check that they are "
                    "this dataset's images, named by file stem)")
        names = sorted(found)
        shown = [f"{k} (-> {self.labels[k]})" if k in self.labels else k for k in names]
        return (f" (labels there: {some(shown)}; map one to the defect type with regions.labels:"
                f" {{{names[0]}: {defect}}})")

