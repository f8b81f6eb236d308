"""COCO instances JSON (``instances_*.json``, the "COCO 1.0" export of CVAT and others).

``{"info": ..., "licenses": [...], "images": [{"id", "file_name", "width", "height"}],
"annotations": [{"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}],
"categories": [{"id", "name", "supercategory"}]}``. A ``segmentation`` is a list of polygons
(``[x1, y1, x2, y2, ...]``) or a run-length encoding ``{"counts": ..., "size": [h, w]}`` of
the mask in column-major (Fortran) order, starting with a run of 0s: ``counts`` is a list
(uncompressed, usual for ``iscrowd: 1``) or pycocotools' compressed string. An annotation
without a segmentation is drawn as its ``bbox`` ``[x, y, width, height]``. Crowd annotations
are regions like any other. Labels are the category names.

>>> decode_rle({"counts": [1, 2, 1], "size": [2, 2]}, "f").astype(int).tolist()
[[0, 1], [1, 0]]
>>> counts_from_string("01400000")  # pycocotools' string for a 4x4 diagonal
[0, 1, 4, 1, 4, 1, 4, 1]
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import numpy as np

from diag.errors import DiagError
from diag.regions.formats.base import (
    Annotations,
    ImageShapes,
    Shape,
    box_shape,
    check_size,
    number,
)


def is_coco(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("images"), list) \
        and "annotations" in data


def stem_of(name: str) -> str:
    """The file stem of an image path or name, ``/`` or ``\\`` separated."""
    return PurePosixPath(str(name).replace("\\", "/")).stem


def counts_from_string(text: str) -> list[int]:
    """Decode pycocotools' compressed RLE string (``rleFrString``): each count is written as
    5-bit groups, least significant first, in characters ``48 + group`` with ``0x20`` set
    while more groups follow and ``0x10`` of the last group the sign; from the third count on,
    the number stored is the difference to the count two places before.

    Raises:
        ValueError: a character outside the encoding's range, or a count cut short.
    """
    counts: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("the string ends inside a count")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[p]!r} is not part of the encoding")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(rle: dict[str, Any], source: str, what: str = "segmentation") -> np.ndarray:
    """A COCO RLE (compressed or not) as a boolean ``(h, w)`` mask."""
    size = rle.get("size")
    if not isinstance(size, list) or len(size) != 2:
        raise DiagError(f"{source}: {what} needs 'size': [height, width]: fix the file")
    h, w = (int(number(v, source, f"{what}.size")) for v in size)
    check_size(h, w, source, f"{what}.size")
    raw = rle.get("counts")
    try:
        if isinstance(raw, str | bytes):
            counts = counts_from_string(raw.decode("ascii") if isinstance(raw, bytes) else raw)
        elif isinstance(raw, list) and all(isinstance(c, int) and not isinstance(c, bool)
                                           for c in raw):
            counts = list(raw)
        else:
            raise ValueError("'counts' must be a list of integers or a compressed string")
    except (ValueError, UnicodeDecodeError) as exc:
        raise DiagError(f"{source}: {what} is not a valid RLE ({exc}): re-export the file"
                        ) from None
    arr = np.asarray(counts, dtype=np.int64)
    if (arr < 0).any() or int(arr.sum()) != h * w:
        raise DiagError(f"{source}: {what} RLE counts cover {int(arr.sum())} pixels, but its "
                        f"size {h}x{w} has {h * w}: the RLE is corrupt; re-export the file")
    flat = np.repeat(np.arange(len(arr)) % 2 == 1, arr)
    return flat.reshape(w, h).T  # column-major: the runs go down each column


def _polygon(flat: Any, source: str, what: str) -> list[tuple[float, float]]:
    if not isinstance(flat, list) or len(flat) % 2:
        raise DiagError(f"{source}: {what} must be a flat list [x1, y1, x2, y2, ...] of an even "
                        "number of coordinates: fix the file")
    xs = [number(v, source, f"a coordinate of {what}") for v in flat]
    return list(zip(xs[0::2], xs[1::2], strict=True))


def read_coco(data: dict[str, Any], annotations: Annotations, source: str) -> Annotations:
    """Fill ``annotations`` from a COCO instances JSON object."""
    cats: dict[Any, str] = {}
    for c in data.get("categories") or []:
        if isinstance(c, dict) and "id" in c:
            cats[c["id"]] = str(c.get("name", c["id"]))
    by_id: dict[Any, tuple[str, ImageShapes]] = {}
    names: dict[str, str] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            raise DiagError(f"{source}: images[{i}] needs an 'id' and a 'file_name': fix the file")
        name = str(img["file_name"])
        stem = stem_of(name)
        if stem in names and names[stem] != name:
            raise DiagError(f"{source}: two images share the stem '{stem}' ({names[stem]}, "
                            f"{name}): diag finds regions by image stem; split the file")
        names[stem] = name
        size = tuple(number(img[k], source, f"images[{i}].{k}") if img.get(k) else None
                     for k in ("height", "width"))
        if size[0] and size[1]:
            check_size(size[0], size[1], source, f"images[{i}] ({name})")
        entry = annotations.add(stem, ImageShapes(name, size))  # type: ignore[arg-type]
        by_id[img["id"]] = (stem, entry)
    anns = data["annotations"]
    if not isinstance(anns, list):
        raise DiagError(f"{source}: 'annotations' must be a list: fix the file")
    for i, ann in enumerate(anns):
        what = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise DiagError(f"{source}: {what} must be an object: fix the file")
        if ann.get("image_id") not in by_id:
            raise DiagError(f"{source}: {what} is for image_id {ann.get('image_id')!r}, which "
                            "'images' does not list: add the image entry or re-export the file")
        cat = ann.get("category_id")
        if cats and cat not in cats:
            raise DiagError(f"{source}: {what} has category_id {cat!r}, which 'categories' does "
                            "not list: add the category or re-export the file")
        label = cats.get(cat, "" if cat is None else str(cat))
        image = by_id[ann["image_id"]][1]
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            mask = decode_rle(seg, source, f"{what}.segmentation")
            size = (float(mask.shape[0]), float(mask.shape[1]))
            if image.size == (None, None):
                image.size = size
            # an RLE of another size than its image entry is scaled on its own
            image.shapes.append(Shape("mask", label, mask=mask,
                                      ref=None if image.size == size else size))
        elif isinstance(seg, list) and seg:
            for j, poly in enumerate(seg):
                pts = _polygon(poly, source, f"{what}.segmentation[{j}]")
                if len(pts) >= 3:
                    image.shapes.append(Shape("polygon", label, pts))
        elif ann.get("bbox") is not None:
            bbox = ann["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4:
                raise DiagError(f"{source}: {what}.bbox must be [x, y, width, height]: fix the "
                                "file")
            x, y, w, h = (number(v, source, f"{what}.bbox") for v in bbox)
            image.shapes.append(box_shape(label, x, y, x + w, y + h, 0))
    return annotations

