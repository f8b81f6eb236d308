"""Export a ``diag generate`` folder in the layouts other tools read.

:func:`export` writes the generated images and masks of a generate folder (and, with
``with_real``, the real dataset its spec names) to a new folder in one of :data:`FORMATS`:

``anomalib-folder``
    anomalib's ``Folder`` layout: ``abnormal/<defect>/<name>.png`` with
    ``mask/<defect>/<name>.png`` (the same file names: anomalib pairs the sorted lists and
    wants each image's stem inside its mask's), real defect-free images in ``normal/``, and
    ``anomalib_folder.yaml`` with the datamodule's arguments.
``mvtec``
    MVTec AD: ``<category>/train/good/000.png`` (real defect-free images),
    ``<category>/test/<defect>/000.png``, ``<category>/ground_truth/<defect>/000_mask.png``;
    every image PNG (anomalib's MVTec reader takes only ``.png``).
``coco``
    ``images/`` and ``annotations.json`` (COCO instances): one annotation per connected
    defect region (8-connected), its ``segmentation`` an uncompressed RLE (exact, column-major
    ``counts`` starting with background) with ``iscrowd`` 0, so trainers use it as an
    ordinary instance (``iscrowd`` 1 marks regions to ignore), ``bbox`` ``[x, y, w, h]`` and
    ``area`` (pixels); real defect-free images have no annotation.
``yolo-seg``
    Ultralytics segmentation: ``images/train/``, ``labels/train/<name>.txt`` with one line
    ``class x1 y1 x2 y2 ...`` per connected defect region (its outer contour through the
    boundary pixels, coordinates = pixel index / image size, as Ultralytics' own mask
    converter writes them), and ``data.yaml``. A polygon approximates its mask: holes are
    filled, and tools that rasterise polygons differently gain or lose boundary pixels.

Every export writes ``README.txt``: one line per exported image naming where it came from
(for a generated image: its manifest id, the defect-free source image, the defect type, the
seed and the prompt). The export is built in a hidden folder beside the destination and
renamed into place at the end, so a failed or killed export leaves no half-written
destination (the next export there removes the leftover).

>>> m = np.zeros((4, 5), bool); m[1:3, 1:4] = True
>>> rle = rle_encode(m); rle["counts"]
[5, 2, 2, 2, 2, 2, 5]
>>> [p.tolist() for p in mask_polygons(m)]
[[[1, 1], [3, 1], [3, 2], [1, 2]]]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

from diag.data.sample import Sample
from diag.errors import DiagError, some, warn, where
from diag.files import (
    DIR_MODE,
    check_folder,
    copy_file,
    lock_folder,
    write_error,
    write_json,
    write_text,
)
from diag.imageio import image_size, read_image, write_image, write_mask

FORMATS = ("anomalib-folder", "mvtec", "coco", "yolo-seg")
README = "README.txt"
MARK = "diag export"  # README.txt's first line starts with it: --overwrite may replace the folder
ANOMALIB_YAML = "anomalib_folder.yaml"
_TMP = ".diag-export-"
_OLD = ".diag-old-"
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: a diagonal crack is one region
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Item:
    """One image to export.

    Attributes:
        name: File stem in the export, unique within it.
        image: The image file.
        mask: The mask file (None: a defect-free image).
        defect: Defect class (``""`` for a defect-free image).
        origin: Where it came from, for README.txt.
        generated: Whether it is a generated image (else real).
        whole: A defective image without a mask (a whole generated image, text2img): only
            anomalib-folder can export it (in ``abnormal/``, without ``mask_dir``).
    """

    name: str
    image: Path
    mask: Path | None
    defect: str
    origin: str
    generated: bool
    whole: bool = False

    def read_mask(self) -> np.ndarray:
        """The binary mask, checked against the image's size."""
        return Sample(self.name, self.image, self.mask, 1).mask


@dataclass
class ExportResult:
    """What :func:`export` wrote."""

    dest: Path
    format: str
    generated: int
    real: int
    how_to_load: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# masks as COCO RLE and as polygons


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE of a boolean mask: ``{"size": [h, w], "counts": [...]}``, runs
    in column-major order, the first run counting background pixels (0 when the first pixel
    is set)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


_STEPS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))  # clockwise
_DIRECTION = {s: i for i, s in enumerate(_STEPS)}


def trace_outline(region: np.ndarray) -> np.ndarray:
    """The outer boundary of one 8-connected region as ``(row, col)`` pixels in order
    (Moore-neighbour tracing from its first pixel in raster order, stopping when the first
    move repeats)."""
    pad = np.pad(np.asarray(region, dtype=bool), 1)
    ys, xs = np.nonzero(pad)
    start = (int(ys[0]), int(xs[0]))
    chain = [start]
    here, back, first = start, 4, None  # came from the west: nothing set there
    for _ in range(8 * pad.size + 8):
        for k in range(1, 9):
            d = (back + k) % 8
            nxt = (here[0] + _STEPS[d][0], here[1] + _STEPS[d][1])
            if pad[nxt]:
                break
        else:
            break  # a single pixel
        step = _STEPS[(d - 1) % 8]
        behind = (here[0] + step[0], here[1] + step[1])  # unset, beside nxt
        if first is None:
            first = nxt
        elif here == start and nxt == first:
            chain.pop()  # the start, reached again
            break
        back = _DIRECTION[(behind[0] - nxt[0], behind[1] - nxt[1])]
        here = nxt
        chain.append(here)
    else:  # pragma: no cover (the tracing always ends)
        raise RuntimeError("contour tracing did not end")
    return np.asarray(chain, dtype=np.int64) - 1


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """One polygon per 8-connected region of ``mask``: its outer boundary pixels as ``(x, y)``
    pixel indices, straight runs reduced to their ends, at least 3 points (a lone pixel
    repeats). Filled with its boundary (as ``cv2.fillPoly`` and PIL's ``polygon`` do), a
    polygon gives its region back exactly, holes filled."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        pts = trace_outline(labels[box] == i) + np.array([box[0].start, box[1].start])
        if len(pts) > 3:
            before, after = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
            pts = pts[np.any(pts - before != after - pts, axis=1)]
        if len(pts) < 3:
            pts = np.concatenate([pts, np.repeat(pts[-1:], 3 - len(pts), axis=0)])
        out.append(pts[:, ::-1].copy())
    return out


def yolo_lines(mask: np.ndarray, cls: int) -> list[str]:
    """YOLO segmentation label lines of ``mask``: ``cls x1 y1 ...`` per region, normalised."""
    h, w = mask.shape
    return [" ".join([str(cls), *(f"{x / w:.6f} {y / h:.6f}" for x, y in poly)])
            for poly in mask_polygons(mask)]


def coco_regions(mask: np.ndarray) -> list[dict[str, Any]]:
    """COCO annotation bodies of ``mask``: one per 8-connected region (exact RLE, bbox, area)."""
    labels, _ = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    out = []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels == i
        out.append({"segmentation": rle_encode(region), "area": int(region.sum()),
                    "bbox": [int(box[1].start), int(box[0].start), int(box[1].stop - box[1].start),
                             int(box[0].stop - box[0].start)], "iscrowd": 0})
    return out


# ---------------------------------------------------------------------------------------------
# what to export


def safe_name(text: str) -> str:
    """A file-name-safe stem: runs of other characters than letters, digits, ``._-`` become
    ``_``.

    >>> safe_name("MT_Crack/exp1 num 4")
    'MT_Crack_exp1_num_4'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"


def _unique(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out.lower() in taken:
        out, n = f"{name}_{n}", n + 1
    taken.add(out.lower())
    return out


def generated_items(out: Path, taken: set[str]) -> list[Item]:
    """The generated samples of ``out`` with their provenance."""
    from diag.data.layouts import load_dataset

    items = []
    for s in load_dataset("generated", out, "all"):
        r = s.meta
        defect = s.defect or "defect"
        origin = (f"generated {s.id}: source {json.dumps(str(r.get('source', '')))}, defect "
                  f"{json.dumps(defect)}, seed {r.get('seed')}, prompt "
                  f"{json.dumps(str(r.get('prompt', '')))}")
        items.append(Item(_unique(safe_name(s.id), taken), s.path, s.mask_path, defect, origin,
                          True, whole=s.mask_path is None))
    return items


def real_items(out: Path, taken: set[str]) -> tuple[list[Item], list[str], Path]:
    """The real dataset the generate folder's spec names (its split), notes, and its root."""
    from diag.generate.spec import load_spec

    spec_file = out / "spec.yaml"
    if not spec_file.is_file():
        raise DiagError(f"--with-real needs the spec {where(spec_file)} that diag generate writes: "
                        "it is missing, so the real dataset is unknown; leave --with-real out")
    spec = load_spec(spec_file, notes=False)
    items, unmasked = [], []
    for s in spec.dataset.load():
        if s.label and s.mask_path is None:
            unmasked.append(s.id)
            continue
        defect = (s.defect or "defect") if s.label else ""
        what = f"defect {json.dumps(defect)}, mask {json.dumps(str(s.mask_path))}" if s.label \
            else "defect-free"
        items.append(Item(_unique("real_" + safe_name(s.id), taken), s.path,
                          s.mask_path if s.label else None, defect,
                          f"real {json.dumps(str(s.path))} ({what})", False))
    notes = []
    if unmasked:
        notes.append(f"left out {len(unmasked)} real defective image(s) without a mask file "
                     f"({some(unmasked, 3)}): every exported defect needs its mask")
    return items, notes, Path(spec.dataset.root)


# ---------------------------------------------------------------------------------------------
# the formats


class _Tree:
    """Writes files under the export's (temporary) folder."""

    def __init__(self, root: Path, link: bool) -> None:
        self.root = root
        self.link = link

    def copy(self, rel: str, src: Path) -> None:
        copy_file(src, self.root / rel, link=self.link)

    def png(self, rel: str, src: Path) -> None:
        """``src`` as PNG: copied when it is one, else decoded and written as PNG."""
        if src.suffix.lower() == ".png":
            self.copy(rel, src)
        else:
            write_image(self.root / rel, read_image(src))

    def mask(self, rel: str, mask: np.ndarray) -> None:
        write_mask(self.root / rel, mask)

    def folder(self, rel: str) -> None:
        (self.root / rel).mkdir(parents=True, exist_ok=True)


def _ext(item: Item) -> str:
    return item.image.suffix.lower() or ".png"


def _check_image(item: Item) -> tuple[int, int]:
    return image_size(item.image)


def _anomalib_folder(tree: _Tree, items: list[Item], dest: Path, name: str
                     ) -> tuple[dict[str, str], list[str]]:
    lines: dict[str, str] = {}
    normals = [i for i in items if i.mask is None and not i.whole]
    for it in items:
        if it.whole:  # a whole generated image: a defect without a mask
            rel = f"abnormal/{it.defect}/{it.name}{_ext(it)}"
            _check_image(it)
            tree.copy(rel, it.image)
            lines[rel] = f"{it.origin}; whole image, no mask"
            continue
        if it.mask is None:
            rel = f"normal/{it.name}{_ext(it)}"
            _check_image(it)
            tree.copy(rel, it.image)
            lines[rel] = it.origin
            continue
        mask = it.read_mask()
        rel = f"abnormal/{it.defect}/{it.name}{_ext(it)}"
        tree.copy(rel, it.image)
        tree.mask(f"mask/{it.defect}/{it.name}.png", mask)
        lines[rel] = f"{it.origin}; mask mask/{it.defect}/{it.name}.png"
    args = {"name": name, "root": str(dest), "normal_dir": "normal" if normals else None,
            "abnormal_dir": "abnormal", "mask_dir": "mask"}
    text = ("# anomalib.data.Folder arguments for this export (anomalib 2.x):\n"
            "#   import yaml; from anomalib.data import Folder\n"
            f"#   datamodule = Folder(**yaml.safe_load(open('{ANOMALIB_YAML}')))\n"
            "# diag reads it as dataset: {layout: anomalib-folder, root: <this folder>, "
            "normal_dir: normal, abnormal_dir: abnormal, mask_dir: mask}\n")
    if any(i.whole for i in items):
        text += "# whole generated images (text2img) have no masks: no mask_dir\n"
        args.pop("mask_dir")
    if not normals:
        text += ("# anomalib needs defect-free images: export again with --with-real, or add\n"
                 "# normal_dir: <a folder of your own defect-free images>\n")
        args.pop("normal_dir")
    text += yaml.safe_dump(args, sort_keys=False)
    write_text(tree.root / ANOMALIB_YAML, text)
    call = ", ".join(f"{k}={v!r}" for k, v in args.items())
    how = [f"anomalib: Folder({call}) (arguments in {ANOMALIB_YAML})"]
    if not normals:
        how.append("anomalib's Folder needs normal_dir (defect-free images): add --with-real, or "
                   "point normal_dir at your own defect-free images")
    return lines, how


def _mvtec(tree: _Tree, items: list[Item], dest: Path, category: str
           ) -> tuple[dict[str, str], list[str]]:
    lines: dict[str, str] = {}
    good = [i for i in items if i.mask is None]
    by_defect: dict[str, list[Item]] = {}
    for it in items:
        if it.mask is not None:
            by_defect.setdefault(it.defect, []).append(it)
    tree.folder(f"{category}/train/good")
    width = max(3, len(str(max([len(good), *map(len, by_defect.values())]) - 1)))
    for n, it in enumerate(good):
        rel = f"{category}/train/good/{n:0{width}d}.png"
        _check_image(it)
        tree.png(rel, it.image)
        lines[rel] = it.origin
    for defect, group in sorted(by_defect.items()):
        for n, it in enumerate(group):
            rel = f"{category}/test/{defect}/{n:0{width}d}.png"
            mask_rel = f"{category}/ground_truth/{defect}/{n:0{width}d}_mask.png"
            mask = it.read_mask()
            tree.png(rel, it.image)
            tree.mask(mask_rel, mask)
            lines[rel] = f"{it.origin}; mask {mask_rel}"
    how = [f"anomalib: MVTecAD(root={str(dest)!r}, category={category!r}); diag: dataset: "
           f"{{layout: mvtec, root: {dest / category}}}"]
    if not good:
        how.append(f"{category}/train/good is empty: add --with-real, or put defect-free images "
                   "there")
    return lines, how


def _classes(items: list[Item]) -> list[str]:
    return sorted({i.defect for i in items if i.mask is not None})


def _coco(tree: _Tree, items: list[Item], out: Path) -> tuple[dict[str, str], list[str]]:
    from diag import __version__

    names = _classes(items)
    cat = {n: k for k, n in enumerate(names, start=1)}
    images, annotations, lines = [], [], {}
    for image_id, it in enumerate(items, start=1):
        rel = f"images/{it.name}{_ext(it)}"
        if it.mask is None:
            h, w = _check_image(it)
            extra = "no annotation"
        else:
            mask = it.read_mask()
            h, w = mask.shape
            first = len(annotations) + 1
            for body in coco_regions(mask):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": cat[it.defect], **body})
            extra = f"annotations {first}-{len(annotations)}"
        tree.copy(rel, it.image)
        images.append({"id": image_id, "file_name": f"{it.name}{_ext(it)}", "width": int(w),
                       "height": int(h)})
        lines[rel] = f"{it.origin}; annotations.json image {image_id}, {extra}"
    now = dt.datetime.now(dt.UTC)
    write_json(tree.root / "annotations.json", {
        "info": {"description": f"diag export of {out.name}", "version": __version__,
                 "year": now.year, "contributor": "diag", "date_created": now.isoformat()},
        "licenses": [], "images": images, "annotations": annotations,
        "categories": [{"id": cat[n], "name": n, "supercategory": "defect"} for n in names]})
    return lines, ["COCO: annotations.json with images in images/ (segmentation: uncompressed "
                   "RLE, one annotation per connected defect region)"]


def _yolo(tree: _Tree, items: list[Item], dest: Path) -> tuple[dict[str, str], list[str]]:
    names = _classes(items)
    cls = {n: k for k, n in enumerate(names)}
    lines = {}
    for it in items:
        rel = f"images/train/{it.name}{_ext(it)}"
        label_rel = f"labels/train/{it.name}.txt"
        if it.mask is None:
            _check_image(it)
            label = []
        else:
            label = yolo_lines(it.read_mask(), cls[it.defect])
        tree.copy(rel, it.image)
        write_text(tree.root / label_rel, "".join(f"{line}\n" for line in label))
        lines[rel] = f"{it.origin}; labels {label_rel}"
    data = {"path": str(dest), "train": "images/train", "val": "images/train",
            "names": {k: n for n, k in cls.items()}}
    write_text(tree.root / "data.yaml",
               "# Ultralytics YOLO segmentation dataset written by diag export. diag makes no\n"
               "# validation split: val is the training set; point it at real images of your "
               "own.\n" + yaml.safe_dump(data, sort_keys=False))
    return lines, [f"Ultralytics: YOLO('yolo11n-seg.pt').train(data={str(dest / 'data.yaml')!r})"]


# ---------------------------------------------------------------------------------------------
# the destination: checked, built beside, renamed into place


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier diag export (its README.txt says so)."""
    try:
        with open(folder / README, encoding="utf-8") as fh:
            return fh.readline().startswith(MARK)
    except (OSError, UnicodeDecodeError):
        return False


def _is_empty(folder: Path) -> bool:
    try:
        return next(folder.iterdir(), None) is None
    except OSError:
        return False


def _check_dest(dest: Path, overwrite: bool) -> None:
    check_folder(dest, "--to")
    if not dest.is_dir() or _is_empty(dest):
        return
    if not overwrite:
        raise DiagError(f"--to {where(dest)} is not empty: choose a new or empty folder, or add "
                        "--overwrite to replace an earlier export there")
    if not is_export(dest):
        raise DiagError(f"--to {where(dest)} is not empty and holds no earlier diag export (no "
                        f"{README} from diag export): --overwrite only replaces an export; empty "
                        "the folder or choose another --to")


def _check_apart(dest: Path, other: Path, what: str) -> None:
    a, b = dest.resolve(), other.resolve()
    if a == b or a in b.parents:
        raise DiagError(f"--to {where(dest)} holds {what} {where(other)}: choose a folder outside "
                        "it")
    if b in a.parents:
        raise DiagError(f"--to {where(dest)} is inside {what} {where(other)}: choose a folder "
                        "outside it")


@contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    """Hold the destination's parent folder for a moment (clean leftovers, make the temporary
    folder, rename into place), waiting up to 10 s for another export there."""
    deadline = time.monotonic() + 10.0
    while True:
        stack = ExitStack()
        try:
            stack.enter_context(lock_folder(parent, "an export into", "--to"))
        except DiagError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        with stack:
            yield
        return


def _remove_leftovers(parent: Path, name: str) -> None:
    """Remove temporary folders of killed exports to ``parent/name`` (those no process holds)."""
    for p in parent.iterdir():
        if not (p.name.startswith((f".{name}{_TMP}", f".{name}{_OLD}")) and p.is_dir()):
            continue
        try:
            with lock_folder(p, "a temporary export folder"):
                shutil.rmtree(p, ignore_errors=True)
        except DiagError:
            continue  # another export is writing it


def _swap(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Rename the finished export into place (replacing an earlier one with ``overwrite``)."""
    try:
        if dest.is_dir() and not _is_empty(dest):
            _check_dest(dest, overwrite)
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_OLD}", suffix=".tmp",
                                        dir=dest.parent))
            os.replace(dest, old / dest.name)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)  # replaces an empty folder
    except OSError as exc:
        raise write_error(dest, exc, "run the same command again") from None


def export(out: str | Path, dest: str | Path, fmt: str, *, with_real: bool = False,
           category: str | None = None, overwrite: bool = False, link: bool = False
           ) -> ExportResult:
    """Write the generate folder ``out`` to ``dest`` in format ``fmt``.

    Args:
        out: A ``diag generate`` output folder.
        dest: The export folder: new or empty (or an earlier export, with ``overwrite``).
        fmt: One of :data:`FORMATS`.
        with_real: Also export the real dataset of ``out``'s spec: defect-free images as
            normal / train images, defective ones with their masks beside the generated ones.
        category: mvtec: the category folder (default: ``out``'s folder name, made safe);
            anomalib-folder: the datamodule's name.
        overwrite: Replace an earlier diag export at ``dest``.
        link: Hard-link copied images instead of copying them, where the file system allows.

    Raises:
        DiagError: unknown format, ``out`` not a generate folder, ``dest`` not empty (or
            inside ``out``), a bad category, an unreadable image or mask (nothing is left at
            ``dest`` then).
    """
    if fmt not in FORMATS:
        raise DiagError(f"unknown export format '{fmt}': use one of {', '.join(FORMATS)}")
    out, dest = Path(out), Path(dest)
    if not out.is_dir():
        state = "is a file, not a folder" if out.exists() else "does not exist"
        raise DiagError(f"generate folder {where(out)} {state}: give the --out folder of diag "
                        "generate")
    name = category if category is not None else safe_name(out.resolve().name)
    if not NAME_RE.match(name) or len(name) > 100:
        raise DiagError(f"--category '{name}' must be letters, digits, '_', '-' or '.' (at most "
                        "100, it names a folder)")
    _check_apart(dest, out, "the generate folder")
    _check_dest(dest, overwrite)
    taken: set[str] = set()
    items = generated_items(out, taken)
    notes: list[str] = []
    n_real = 0
    if with_real:
        real, notes, root = real_items(out, taken)
        _check_apart(dest, root, "the real dataset")
        n_real = len(real)
        items += real
    wholes = [it for it in items if it.whole]
    if wholes and fmt != "anomalib-folder":
        raise DiagError(f"{len(wholes)} generated image(s) of {where(out)} are whole images "
                        f"without a mask (text2img, e.g. {wholes[0].name}): {fmt} needs a mask "
                        "for every defect; export them with --format anomalib-folder")
    if wholes and any(it.mask is not None for it in items):
        raise DiagError(f"{where(out)} has whole generated images without a mask (text2img) "
                        "beside defects with masks: anomalib's Folder pairs every abnormal "
                        "image with a mask; export them without --with-real, or separately")
    for it in items:
        if (it.mask is not None or it.whole) and not NAME_RE.match(it.defect):
            raise DiagError(f"defect class '{it.defect}' of {where(it.image)} cannot name a "
                            "folder: use letters, digits, '_', '-' or '.'")
        if fmt == "mvtec" and it.mask is not None and it.defect == "good":
            raise DiagError(f"defect type 'good' of {where(it.image)}: MVTec AD keeps defect-free "
                            "images in test/good, so a defect cannot be called good; rename it "
                            "in the spec, or export in another format")
    parent = dest.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(parent, exc, "run the same command again") from None
    check_folder(parent, "--to")
    with ExitStack() as stack:
        with _parent_lock(parent):
            _remove_leftovers(parent, dest.name)
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP}", suffix=".tmp",
                                            dir=parent))
            except OSError as exc:
                raise write_error(parent / f".{dest.name}{_TMP}", exc) from None
            stack.enter_context(lock_folder(tmp, "a temporary export folder"))
        try:
            os.chmod(tmp, DIR_MODE)
            tree = _Tree(tmp, link)
            writers: dict[str, Callable[[], tuple[dict[str, str], list[str]]]] = {
                "anomalib-folder": lambda: _anomalib_folder(tree, items, dest.absolute(), name),
                "mvtec": lambda: _mvtec(tree, items, dest.absolute(), name),
                "coco": lambda: _coco(tree, items, out),
                "yolo-seg": lambda: _yolo(tree, items, dest.absolute()),
            }
            lines, how = writers[fmt]()
            _write_readme(tmp, fmt, out, lines, len(items) - n_real, n_real)
            with _parent_lock(parent):
                _swap(tmp, dest, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    for note in notes:
        warn(note)
    return ExportResult(dest, fmt, len(items) - n_real, n_real, how, notes)


def _write_readme(root: Path, fmt: str, out: Path, lines: dict[str, str], generated: int,
                  real: int) -> None:
    from diag import __version__

    head = [f"{MARK}: {fmt} of {out.resolve()} ({generated} generated image(s), {real} real)",
            f"# Written by diag {__version__}. One line per exported image: FILE -> where it came",
            "# from. A generated image names its manifest id, the defect-free source image it was",
            "# made from, its defect type, seed and prompt (from manifest.jsonl).", ""]
    body = [f"{rel} -> {origin}" for rel, origin in lines.items()]
    write_text(root / README, "\n".join(head + body) + "\n")


def read_readme(folder: str | Path) -> dict[str, str]:
    """``{exported file: origin}`` from an export's README.txt."""
    out = {}
    for line in (Path(folder) / README).read_text(encoding="utf-8").splitlines()[1:]:
        if line and not line.startswith("#") and " -> " in line:
            rel, origin = line.split(" -> ", 1)
            out[rel] = origin
    return out


def exported_id(origin: str) -> str | None:
    """The generated sample id a README line names (None for a real image)."""
    m = re.match(r"generated (\S+):", origin)
    return m.group(1) if m else None


__all__ = ["FORMATS", "ExportResult", "coco_regions", "export", "is_export", "mask_polygons",
           "read_readme", "rle_encode", "safe_name", "trace_outline", "yolo_lines"]
