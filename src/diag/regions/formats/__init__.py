"""Region annotation files from the tools people already draw with.

:func:`read_annotations` reads one file, recognising its format from its content (the suffix
only decides for empty or unreadable files):

* ``coco``: COCO instances JSON (polygons, RLE masks, boxes; labels from categories);
* ``cvat``: CVAT for images 1.1 XML (boxes, polygons, polylines, points, ellipses, masks);
* ``label-studio``: Label Studio's JSON export (polygons, rectangles, ellipses, brush masks);
* ``labelme``: a labelme JSON file (one image);
* ``diag``: diag's polygon JSON (one image, no labels);
* ``mask``: a mask image (one image, no labels).

The first three name their images (:attr:`Annotations.multi`): each image's shapes are found
by the image's file stem. The others hold the regions of whichever image they are used for.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from diag.errors import DiagError, where
from diag.imageio import IMAGE_SUFFIXES, read_mask
from diag.regions.formats.base import Annotations, ImageShapes, Shape, rasterise
from diag.regions.formats.coco import is_coco, read_coco, stem_of
from diag.regions.formats.cvat import is_cvat, read_cvat
from diag.regions.formats.diag_json import is_diag, read_diag
from diag.regions.formats.label_studio import is_label_studio, read_label_studio
from diag.regions.formats.labelme import is_labelme, read_labelme

FORMATS = {
    "coco": "COCO instances JSON",
    "cvat": "CVAT for images 1.1 XML",
    "label-studio": "Label Studio JSON export",
    "labelme": "labelme JSON",
    "diag": "diag polygon JSON",
    "mask": "mask image",
}
KNOWN = ", ".join(FORMATS.values())
MULTI = ("coco", "cvat", "label-studio")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"GIF8")


def _kind(path: Path, head: bytes) -> str:
    """``json``, ``xml``, ``image`` or ``unknown``: from the content, else the suffix."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "json"
    if text[:1] == b"<":
        return "xml"
    if head.startswith(_IMAGE_MAGIC):
        return "image"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix == ".xml":
        return "xml"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return "unknown"


def _single(fmt: str, path: Path, image: ImageShapes, stem: str = "") -> Annotations:
    return Annotations(fmt, path, {stem or path.stem: image}, multi=False)


def read_json(path: Path, data: object) -> Annotations:
    """Annotations from a parsed JSON document of ``path``."""
    source = f"region file {where(path)}"
    if is_coco(data):
        return read_coco(data, Annotations("coco", path), source)  # type: ignore[arg-type]
    if is_label_studio(data):
        return read_label_studio(data, Annotations("label-studio", path), source)
    if is_labelme(data):
        image = read_labelme(data, source)  # type: ignore[arg-type]
        return _single("labelme", path, image, stem_of(image.name) if image.name else "")
    if is_diag(data):
        return _single("diag", path, read_diag(data, source))  # type: ignore[arg-type]
    if not isinstance(data, dict):
        raise DiagError(f"{source} must hold a JSON object ('polygons': diag, 'shapes': labelme, "
                        "'images' and 'annotations': COCO) or a list of Label Studio tasks (each "
                        f"with 'data' and 'annotations'); known formats: {KNOWN}")
    raise DiagError(f"{source}: region JSON needs a 'polygons' list (diag format), a 'shapes' "
                    "list (labelme format), 'images' and 'annotations' (COCO) or a list of "
                    f"Label Studio tasks; known formats: {KNOWN}")


def read_annotations(path: str | Path) -> Annotations:
    """Read a region annotation file of any known format (:data:`FORMATS`).

    Raises:
        DiagError: the file is missing, unreadable, of no known format, or corrupt (one line
            naming the file and the fix).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DiagError(f"cannot read region file {where(path)} ({exc.strerror or exc}): check "
                        "the path") from None
    kind = _kind(path, raw[:64])
    if kind == "image":
        mask = read_mask(path)
        image = ImageShapes(path.name, (float(mask.shape[0]), float(mask.shape[1])),
                            [Shape("mask", mask=mask)])
        return _single("mask", path, image)
    if kind == "json":
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DiagError(f"region file {where(path)} is not valid JSON ({exc}): fix it"
                            ) from None
        return read_json(path, data)
    if kind == "xml":
        try:
            root = ET.fromstring(raw)
        except ET.ParseError as exc:
            raise DiagError(f"region file {where(path)} is not valid XML ({exc}): fix it or "
                            "export it again") from None
        if is_cvat(root):
            return read_cvat(root, Annotations("cvat", path), f"region file {where(path)}")
        raise DiagError(f"region file {where(path)} is XML with a <{root.tag}> root, not a CVAT "
                        f"for images 1.1 export (<annotations>); known formats: {KNOWN}")
    raise DiagError(f"region file {where(path)} is of no format diag reads: export the regions "
                    f"as one of: {KNOWN}")


__all__ = ["FORMATS", "MULTI", "Annotations", "ImageShapes", "Shape", "rasterise",
           "read_annotations", "read_json", "stem_of"]
