"""What a region annotation file holds: a summary table and a preview picture.

Used by ``diag regions show FILE``: :func:`summarise` counts images and shapes per label,
:func:`preview` draws one image's shapes as coloured fills with outlines, per label, on a grey
canvas of the size the annotation recorded (or on the real image).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from diag.errors import DiagError, some, where
from diag.imageio import IMAGE_SUFFIXES, read_image, to_rgb
from diag.regions.formats import FORMATS, Annotations, ImageShapes

PALETTE = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44),
           "red": (214, 39, 40), "purple": (148, 103, 189), "brown": (140, 86, 75),
           "pink": (227, 119, 194), "olive": (188, 189, 34), "cyan": (23, 190, 207),
           "yellow": (255, 221, 0)}
MAX_SIDE = 2048  # preview pixels along the longer side
NO_LABEL = "(no label)"


def summarise(ann: Annotations) -> list[str]:
    """The lines ``diag regions show`` prints: format, images, shapes per label, and the
    images without shapes."""
    shapes: Counter[str] = Counter()
    images: Counter[str] = Counter()
    for img in ann.images.values():
        per = Counter(s.label or NO_LABEL for s in img.shapes)
        shapes.update(per)
        images.update(per.keys())
    empty = [stem for stem, img in ann.images.items() if not img.shapes]
    lines = [f"file: {ann.path}", f"format: {FORMATS[ann.format]}",
             f"images: {len(ann.images)} ({len(ann.images) - len(empty)} with shapes)"
             if ann.multi else "images: any (the file is used for every image it is given for)"]
    if shapes:
        width = max(len("label"), *(len(k) for k in shapes))
        lines.append(f"{'label':<{width}}  {'shapes':>6}  {'images':>6}")
        lines += [f"{k:<{width}}  {shapes[k]:>6}  {images[k]:>6}"
                  for k in sorted(shapes, key=lambda k: (-shapes[k], k))]
    else:
        lines.append("no shapes")
    if ann.multi:
        lines.append(f"images without shapes: {len(empty)}" + (f" ({some(empty)})" if empty
                                                               else ""))
    return lines


def pick_image(ann: Annotations, stem: str | None) -> tuple[str, ImageShapes]:
    """The image to preview: ``stem``, else the first with shapes, else the first."""
    if stem:
        found = ann.find(stem)
        if found is None:
            raise DiagError(f"--image '{stem}': {where(ann.path)} does not list that image; it "
                            f"names {some(sorted(ann.images))}")
        return stem, found
    if not ann.images:
        raise DiagError(f"{where(ann.path)} lists no images: nothing to preview")
    return next(((k, v) for k, v in ann.images.items() if v.shapes),
                next(iter(ann.images.items())))


def canvas_size(image: ImageShapes) -> tuple[int, int]:
    """``(H, W)`` of the image as the annotation recorded it (from the shapes' extent when it
    recorded none)."""
    h, w = image.size
    if h and w and (h, w) != (1.0, 1.0):
        return max(1, round(h)), max(1, round(w))
    if (h, w) == (1.0, 1.0):  # normalised coordinates: any size fits
        return 512, 512
    xs = [x for s in image.shapes for x, _ in s.points] or [255.0]
    ys = [y for s in image.shapes for _, y in s.points] or [255.0]
    return max(1, math.ceil(max(ys)) + 1), max(1, math.ceil(max(xs)) + 1)


def find_image(folder: Path, stem: str, name: str) -> Path | None:
    """The image file ``name`` (or any image named ``stem``) in ``folder`` or below."""
    for candidate in (folder / name.lstrip("/"), folder / Path(name.replace("\\", "/")).name):
        if name and candidate.is_file():
            return candidate
    for p in sorted(folder.rglob(f"{stem}.*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            return p
    return None


def colours(image: ImageShapes) -> dict[str, str]:
    """The colour name of each label of ``image`` in :func:`preview` (in order of appearance)."""
    names = list(PALETTE)
    labels = dict.fromkeys(s.label for s in image.shapes)
    return {label: names[i % len(names)] for i, label in enumerate(labels)}


def preview(image: ImageShapes, background: np.ndarray | None = None) -> np.ndarray:
    """An RGB picture of ``image``'s shapes, a colour per label (:func:`colours`), on
    ``background`` (an image of any size) or on grey at the recorded size; at most
    :data:`MAX_SIDE` pixels a side."""
    h, w = background.shape[:2] if background is not None else canvas_size(image)
    f = min(1.0, MAX_SIDE / max(h, w))
    size = (max(1, round(h * f)), max(1, round(w * f)))
    if background is None:
        out = np.full((*size, 3), 128, np.float32)
    else:
        bg = Image.fromarray(to_rgb(background))
        out = np.asarray(bg.resize(size[::-1], Image.Resampling.BILINEAR), np.float32).copy()
    thick = max(1, min(size) // 300)
    for label, name in colours(image).items():
        colour = np.asarray(PALETTE[name], np.float32)
        mask = image.mask(size, [s for s in image.shapes if s.label == label])
        out[mask] = 0.6 * out[mask] + 0.4 * colour
        edge = mask & ~ndimage.binary_erosion(mask, iterations=thick)
        out[edge] = colour
    return out.round().clip(0, 255).astype(np.uint8)


def background_for(images: Path | None, stem: str, image: ImageShapes) -> tuple[
        np.ndarray | None, Path | None]:
    """The real image under ``images`` to draw on, if it is there."""
    if images is None:
        return None, None
    path = find_image(images, stem, image.name)
    return (None, None) if path is None else (read_image(path), path)
