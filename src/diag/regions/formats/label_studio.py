"""Label Studio's JSON export: a list of tasks.

Each task has ``data`` (the image: ``/data/upload/1/1a2b3c4d-name.png``, a URL, or
``/data/local-files/?d=folder/name.png``; the file stem is taken from it, without the
``xxxxxxxx-`` prefix Label Studio puts before uploaded files' names) and ``annotations``, each
with a ``result`` list of regions: ``polygonlabels`` (``value.points``: ``[[x, y], ...]`` in
percent of ``original_width`` x ``original_height``), ``rectanglelabels`` (``x, y, width,
height`` in percent, ``rotation`` degrees clockwise about the top-left corner),
``ellipselabels`` (centre ``x, y`` and ``radiusX, radiusY`` in percent, ``rotation``) and
``brushlabels`` (``value.rle``: the bytes of :func:`decode_brush`, the whole image's RGBA
pixels; the alpha channel is the mask). Cancelled annotations and predictions are skipped.

>>> decode_brush([0, 0, 0, 4, 57, 27, 252, 127, 224], "f").tolist()  # a run of four 255s
[255, 255, 255, 255]
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from diag.errors import DiagError
from diag.regions.formats.base import (
    Annotations,
    ImageShapes,
    Shape,
    box_shape,
    check_size,
    ellipse_shape,
    number,
    xy_points,
)
from diag.regions.formats.coco import stem_of

UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-(.+)$")
TYPES = ("polygon", "rectangle", "ellipse", "brush")


def is_label_studio(data: Any) -> bool:
    tasks = data if isinstance(data, list) else [data]
    return bool(tasks) and all(isinstance(t, dict) and isinstance(t.get("data"), dict)
                               and ("annotations" in t or "predictions" in t) for t in tasks)


def image_stems(ref: str) -> tuple[str, str]:
    """``(stem, stem as uploaded)`` of a task's image reference.

    >>> image_stems("/data/upload/3/1a2b3c4d-tile%2007.png")
    ('tile 07', '1a2b3c4d-tile 07')
    >>> image_stems("/data/local-files/?d=scans/tile_07.png")
    ('tile_07', 'tile_07')
    """
    url = urlparse(ref)
    path = url.path
    local = parse_qs(url.query).get("d")
    if local:
        path = local[0]
    full = stem_of(unquote(path))
    m = UPLOAD_PREFIX.match(full)
    return (m.group(1) if m else full), full


class BitReader:
    """Reads big-endian bit fields from bytes (the bit order of thi.ng/rle-pack)."""

    def __init__(self, data: bytes) -> None:
        self.array = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.bits = (self.array + ord("0")).tobytes().decode("ascii")
        self.i = 0

    def _take(self, n: int) -> int:
        if self.i + n > len(self.bits):
            raise ValueError("the data ends early")
        start, self.i = self.i, self.i + n
        return start

    def read(self, n: int) -> int:
        start = self._take(n)
        return int(self.bits[start:self.i], 2) if n else 0

    def read_many(self, count: int, n: int) -> np.ndarray:
        """``count`` fields of ``n`` bits each, at once."""
        start = self._take(count * n)
        fields = self.array[start:self.i].reshape(count, n).astype(np.uint64)
        return fields @ (np.uint64(1) << np.arange(n - 1, -1, -1, dtype=np.uint64))


def decode_brush(rle: Any, source: str, what: str = "brush rle", expect: int | None = None
                 ) -> np.ndarray:
    """Decode Label Studio's brush RLE (thi.ng/rle-pack, as label-studio-converter's
    ``brush.decode_rle``): a 32-bit value count, a 5-bit word size - 1, four 4-bit run-length
    field sizes - 1, then chunks of: 1 bit (1: a run of one value, 0: literal values), 2 bits
    choosing a field size, the length - 1 in that many bits, then the value (or the values).
    ``expect``: the number of values there must be (checked before decoding)."""
    try:
        data = bytes(rle)
        bits = BitReader(data)
        num = bits.read(32)
        if expect is not None and num != expect:
            raise DiagError(f"{source}: {what} holds {num} values, but {expect} are expected "
                            "(4 per pixel of the image): the rle is corrupt; re-export the file")
        word = bits.read(5) + 1
        sizes = [bits.read(4) + 1 for _ in range(4)]
        if num > 8 * len(data) * (1 << 16):  # more values than any run could give
            raise ValueError(f"it claims {num} values")
        out = np.zeros(num, dtype=np.uint32 if word > 16 else np.uint16 if word > 8 else np.uint8)
        i = 0
        while i < num:
            run = bits.read(1)
            j = i + 1 + bits.read(sizes[bits.read(2)])
            if j > num:
                raise ValueError(f"a run goes past the {num} values")
            if run:
                out[i:j] = bits.read(word)
                i = j
            else:
                out[i:j] = bits.read_many(j - i, word)
                i = j
    except (TypeError, ValueError) as exc:
        raise DiagError(f"{source}: {what} is not a valid Label Studio brush RLE ({exc}): "
                        "re-export the file") from None
    return out


def _labels(result: dict[str, Any], kind: str, named: dict[str, list[str]]) -> list[str]:
    value = result.get("value") or {}
    found = value.get(f"{kind}labels") or value.get("labels") or named.get(str(result.get("id")))
    return [str(v) for v in found] if isinstance(found, list) and found else [""]


def _shape(result: dict[str, Any], kind: str, label: str, source: str, what: str) -> Shape:
    value = result.get("value")
    if not isinstance(value, dict):
        raise DiagError(f"{source}: {what} has no 'value' object: fix or re-export the file")
    ow = number(result.get("original_width"), source, f"{what} original_width")
    oh = number(result.get("original_height"), source, f"{what} original_height")
    check_size(oh, ow, source, f"{what} original_width x original_height")
    sx, sy = ow / 100, oh / 100
    rotation = number(value.get("rotation", 0) or 0, source, f"{what} rotation")
    if kind == "polygon":
        pts = xy_points(value.get("points"), source, f"{what} value.points")
        return Shape("polygon", label, [(x * sx, y * sy) for x, y in pts])
    if kind == "rectangle":
        x, y, w, h = (number(value.get(k), source, f"{what} value.{k}")
                      for k in ("x", "y", "width", "height"))
        x0, y0 = x * sx, y * sy
        return box_shape(label, x0, y0, x0 + w * sx, y0 + h * sy, rotation, origin=(x0, y0))
    if kind == "ellipse":
        x, y, rx, ry = (number(value.get(k), source, f"{what} value.{k}")
                        for k in ("x", "y", "radiusX", "radiusY"))
        return ellipse_shape(label, x * sx, y * sy, rx * sx, ry * sy, rotation)
    # brush
    if value.get("format", "rle") != "rle" or "rle" not in value:
        raise DiagError(f"{source}: {what} is a brush region without 'rle' data (format "
                        f"{value.get('format')!r}): re-export it as JSON from Label Studio")
    h, w = int(oh), int(ow)
    flat = decode_brush(value["rle"], source, f"{what} value.rle", expect=h * w * 4)
    return Shape("mask", label, mask=flat.reshape(h, w, 4)[:, :, 3] > 0)


def _image_ref(task: dict[str, Any]) -> str:
    data = task["data"]
    if isinstance(data.get("image"), str):
        return data["image"]
    refs = [v for v in data.values() if isinstance(v, str) and "." in v.rsplit("/", 1)[-1]]
    return refs[0] if refs else str(task.get("file_upload") or "")


def read_label_studio(data: Any, annotations: Annotations, source: str) -> Annotations:
    """Fill ``annotations`` from a Label Studio JSON export (a list of tasks)."""
    tasks = data if isinstance(data, list) else [data]
    for t, task in enumerate(tasks):
        ref = _image_ref(task)
        if not ref:
            raise DiagError(f"{source}: task {task.get('id', t)} has no image in 'data': fix or "
                            "re-export the file")
        stem, full = image_stems(ref)
        if full != stem:
            annotations.aliases[full] = stem
        entry = annotations.add(stem, ImageShapes(ref))
        anns = task.get("annotations") or []
        if not isinstance(anns, list):
            raise DiagError(f"{source}: task {task.get('id', t)} 'annotations' must be a list")
        for a, ann in enumerate(anns):
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            results = ann.get("result") or []
            if not isinstance(results, list):
                raise DiagError(f"{source}: task {task.get('id', t)} annotation {a} 'result' "
                                "must be a list")
            named = {str(r.get("id")): r["value"]["labels"] for r in results
                     if isinstance(r, dict) and r.get("type") == "labels"
                     and isinstance(r.get("value"), dict) and r["value"].get("labels")}
            for r, result in enumerate(results):
                if not isinstance(result, dict):
                    continue
                kind = str(result.get("type", "")).lower().removesuffix("labels")
                if kind not in TYPES:
                    continue  # choices, text, keypoints...: no region
                what = f"task {task.get('id', t)} result {result.get('id', r)}"
                for label in _labels(result, kind, named):
                    shape = _shape(result, kind, label, source, what)
                    size = (float(result["original_height"]), float(result["original_width"]))
                    if entry.size == (None, None):
                        entry.size = size
                    elif entry.size != size:  # drawn on another size: scaled on its own
                        shape.ref = size
                    entry.shapes.append(shape)
    return annotations

