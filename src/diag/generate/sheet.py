"""Contact sheets: generators side by side, for comparing their defects by eye.

Each column is one ``diag generate`` output folder (one generator, or one setting); each
sample is a block of rows: the defect-free **source**, the **generated** image, the generated
image with its **mask** tinted red and outlined, and a **zoom** on the defect (its mask's
bounding box with some context, enlarged), since defects on a whole tile are often only a few
pixels wide. The ``i``-th block of every column is the ``i``-th sample of that folder's
manifest, so folders generated from one spec (same seed, same regions) line up sample by sample.

>>> import tempfile, pathlib, numpy as np
>>> from diag.imageio import write_image, write_mask
>>> from diag.data.manifest import ManifestWriter
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> img = np.full((40, 60), 120, np.uint8); mask = np.zeros((40, 60), bool); mask[10:20, 5:30] = True
>>> write_image(out / "src.png", img); write_image(out / "images/a.png", img)
>>> write_mask(out / "masks/a.png", mask)
>>> with ManifestWriter(out / "manifest.jsonl") as w:
...     w.append({"id": "a", "image": "images/a.png", "mask": "masks/a.png",
...               "source": str(out / "src.png"), "generator": "memseg"})
>>> sheet = contact_sheet([out], n=2, tile=64)
>>> sheet.mode, sheet.size[0] > 64
('RGB', True)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from diag.errors import DiagError, warn, where

ROWS = ("source", "generated", "mask", "zoom")
BACKGROUND = (30, 30, 30)
TILE_BG = (48, 48, 48)
TEXT = (235, 235, 235)
MASK_COLOUR = np.array([255, 40, 40], np.float32)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]


def _fit(arr: np.ndarray, tile: int, nearest: bool = False, mask: np.ndarray | None = None
         ) -> Image.Image:
    """An image scaled to fit a ``tile x tile`` square (aspect kept), centred on a dark tile.

    With ``mask``, the mask is overlaid after scaling, at the tile's resolution (a tile pixel is
    masked when any source pixel under it is), so thin defects stay visible when shrunk.
    """
    img = Image.fromarray(_rgb(arr))
    scale = tile / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.NEAREST if nearest else Image.LANCZOS)
    if mask is not None:
        small = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.BOX)
        img = Image.fromarray(overlay(np.asarray(img), np.asarray(small) > 0))
    canvas = Image.new("RGB", (tile, tile), TILE_BG)
    canvas.paste(img, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return canvas


def _placeholder(tile: int, text: str) -> Image.Image:
    canvas = Image.new("RGB", (tile, tile), TILE_BG)
    ImageDraw.Draw(canvas).text((6, tile // 2 - 8), text, fill=TEXT, font=_font(12))
    return canvas


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` (RGB) with ``mask`` tinted red and its outline drawn in solid red."""
    rgb = _rgb(image).astype(np.float32)
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[mask] = rgb[mask] * (1 - alpha) + MASK_COLOUR * alpha
    rgb[edge] = MASK_COLOUR
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def zoom_box(mask: np.ndarray, context: float = 0.5, min_side: int = 32
             ) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)``: the mask's box grown by ``context`` of its size, squared."""
    h, w = mask.shape
    if not mask.any():
        return 0, h, 0, w
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) * (1 + 2 * context)
    side = int(min(max(side, min_side), max(h, w)))
    sh, sw = min(side, h), min(side, w)
    top = int(np.clip(round(cy - sh / 2), 0, h - sh))
    left = int(np.clip(round(cx - sw / 2), 0, w - sw))
    return top, top + sh, left, left + sw


def _read(path: Path) -> np.ndarray | None:
    """An image, or None when it cannot be had (missing, corrupt, not an image, odd path)."""
    from diag.imageio import read_image

    try:
        return read_image(path)
    except Exception:  # noqa: BLE001 (any unreadable image is shown as missing, not fatal)
        return None


def _read_mask(path: Path) -> np.ndarray | None:
    from diag.imageio import read_mask

    try:
        return read_mask(path)
    except Exception:  # noqa: BLE001
        return None


def _usable_fields(rec: Any) -> bool:
    """Whether a manifest line is a record the sheet can use: an object with a string ``id``,
    ``image`` and ``mask`` (``mask: null`` for a whole generated image, text2img), and an
    integer ``index`` if any."""
    if not isinstance(rec, dict):
        return False
    if not all(isinstance(rec.get(k), str) and rec[k] for k in ("id", "image")):
        return False
    if not (_whole(rec) or (isinstance(rec.get("mask"), str) and rec["mask"])):
        return False
    index = rec.get("index", 0)
    return isinstance(index, int) and not isinstance(index, bool)


def _whole(rec: dict[str, Any]) -> bool:
    """Whether a record is a whole generated image without a mask (text2img)."""
    return "mask" in rec and rec["mask"] is None


def manifest_records(folder: Path) -> tuple[list[tuple[dict[str, Any], Path]], dict[Path, int]]:
    """The records of a generate output folder, robust to any damage to its manifests.

    Returns:
        ``(records, skipped)``: ``(record, manifest file)`` pairs, one per id (the last line
        wins, as :func:`diag.data.manifest.read_manifest`), in plan order; and, per manifest
        file, how many lines were unusable (not JSON, not an object, keys missing or of the
        wrong type; a torn last line counts too).

    Raises:
        DiagError: a manifest cannot be read (permissions).
    """
    from diag.data.manifest import manifest_files

    by_id: dict[str, tuple[dict[str, Any], Path]] = {}
    skipped: dict[Path, int] = {}
    try:
        files = manifest_files(folder)
    except OSError as exc:
        raise DiagError(f"cannot list {where(folder)} ({exc.strerror or exc}): check its "
                        "permissions") from None
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DiagError(f"cannot read manifest {where(path)} ({exc.strerror or exc}): check "
                            "its permissions") from None
        bad = 0
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, not UTF-8, absurdly nested
                bad += 1
                continue
            if not _usable_fields(rec):
                bad += 1
                continue
            by_id[rec["id"]] = (rec, path)
        if bad:
            skipped[path] = bad
    records = sorted(by_id.values(), key=lambda rp: (rp[0].get("index", 0), rp[0]["id"]))
    return records, skipped


def _column(folder: Path, n: int, tile: int, rows: Sequence[str]
            ) -> tuple[str, list[list[Image.Image]], list[str]]:
    """The label, the tiles (one list of rows per sample) and the warnings of one output
    folder.

    Records that cannot be shown (damaged manifest lines, generated images missing or
    unreadable) are skipped, with one warning per manifest; a folder with none left is an
    error."""
    if not folder.is_dir():
        raise DiagError(f"{where(folder)} is not a folder: give diag generate output folders")
    records, skipped = manifest_records(folder)
    if not records and not skipped:
        raise DiagError(f"{where(folder)} has no manifest records: it is not a diag generate "
                        "output folder, or nothing was generated yet")
    chosen: list[tuple[dict[str, Any], np.ndarray]] = []
    for rec, manifest in records:
        if len(chosen) == n:
            break
        gen = _read(folder / rec["image"])
        if gen is None:
            skipped[manifest] = skipped.get(manifest, 0) + 1
            continue
        chosen.append((rec, gen))
    if not chosen:
        found = ", ".join(f"{count} in {where(m)}" for m, count in skipped.items())
        raise DiagError(f"{where(folder)} has no usable manifest records (unusable: {found}; "
                        "each is damaged or names a missing or unreadable image): regenerate it "
                        "with diag generate, or leave the folder out")
    notes = [f"{where(manifest)}: skipped {count} unusable record{'s' * (count != 1)} (not "
             "JSON, fields missing or of the wrong type, or an image that is missing or "
             "unreadable)" for manifest, count in skipped.items()]
    kinds = sorted({str(r.get("generator", "?")) for r, _ in chosen})
    kind = "/".join(kinds)
    label = kind if folder.name == kind else f"{kind}  [{folder.name}]"
    blocks = []
    for rec, gen in chosen:
        whole = _whole(rec)
        mask = None if whole else _read_mask(folder / rec["mask"])
        source = _source(folder, rec)
        tiles: list[Image.Image] = []
        for row in rows:
            if row == "source":
                tiles.append(_fit(source, tile) if source is not None
                             else _placeholder(tile, "source missing"))
            elif row == "generated":
                tiles.append(_fit(gen, tile))
            elif whole:  # no mask to overlay or zoom on: the defect is anywhere
                tiles.append(_placeholder(tile, "whole image"))
            elif mask is None or mask.shape != gen.shape[:2]:
                tiles.append(_placeholder(tile, "mask missing"))
            elif row == "mask":
                tiles.append(_fit(gen, tile, mask=mask))
            else:  # zoom
                t, b, left, r = zoom_box(mask)
                tiles.append(_fit(gen[t:b, left:r], tile, nearest=(b - t) * 3 < tile))
        blocks.append(tiles)
    return label, blocks, notes


def _source(folder: Path, rec: dict[str, Any]) -> np.ndarray | None:
    src = rec.get("source")
    if not src or not isinstance(src, str):
        return None
    for p in (Path(src), folder / src):
        img = _read(p)
        if img is not None:
            return img
    return None


def contact_sheet(folders: Sequence[str | Path], n: int = 6, tile: int = 192,
                  rows: Sequence[str] = ROWS) -> Image.Image:
    """A labelled grid comparing ``diag generate`` output folders side by side.

    Args:
        folders: Output folders (each with ``manifest.jsonl``, ``images/``, ``masks/``); one
            column each, in the order given.
        n: Samples per folder (the first ``n`` of each manifest, in plan order).
        tile: Side in pixels of each square tile.
        rows: Which rows each sample shows, among ``source``, ``generated``, ``mask`` (red
            overlay of the mask) and ``zoom`` (the defect's surroundings, enlarged).

    Raises:
        DiagError: no folders, a folder that is not a generate output, or a bad row name.
    """
    if not folders:
        raise DiagError("no output folders given: name one or more diag generate output folders")
    if n < 1:
        raise DiagError(f"n must be at least 1, got {n}")
    bad = [r for r in rows if r not in ROWS]
    if bad or not rows:
        raise DiagError(f"unknown contact sheet row '{bad[0] if bad else ''}': use some of "
                        f"{', '.join(ROWS)}")
    built = [_column(Path(f), n, tile, rows) for f in folders]
    for _, _, notes in built:  # only once every folder is usable: one error line otherwise
        for note in notes:
            warn(note)
    columns = [(label, blocks) for label, blocks, _ in built]
    if len(columns) == 1:
        return _single(columns[0], tile, rows)
    samples = max(len(blocks) for _, blocks in columns)
    pad, label_w, header_h, gap = 4, 84, 28, 10
    font, small = _font(14), _font(12)
    block_h = len(rows) * (tile + pad)
    width = label_w + len(columns) * (tile + pad) + pad
    height = header_h + samples * (block_h + gap)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for j, (label, blocks) in enumerate(columns):
        x = label_w + j * (tile + pad)
        text = label
        while len(text) > 4 and draw.textlength(text, font=font) > tile:
            text = text[:-2]
        draw.text((x + 2, 6), text if text == label else text + "…", fill=TEXT, font=font)
        for i, tiles in enumerate(blocks):
            y0 = header_h + i * (block_h + gap)
            for k, t in enumerate(tiles):
                sheet.paste(t, (x, y0 + k * (tile + pad)))
    for i in range(samples):
        y0 = header_h + i * (block_h + gap)
        for k, row in enumerate(rows):
            y = y0 + k * (tile + pad) + tile // 2 - 8
            draw.text((6, y), f"{i + 1}: {row}" if k == 0 else row, fill=TEXT, font=small)
    return sheet


def _single(column: tuple[str, list[list[Image.Image]]], tile: int, rows: Sequence[str]
            ) -> Image.Image:
    """One folder: samples side by side, one row per kind of tile (source, generated, ...)."""
    label, blocks = column
    pad, label_w, header_h = 4, 84, 28
    font, small = _font(14), _font(12)
    width = label_w + max(1, len(blocks)) * (tile + pad) + pad
    height = header_h + len(rows) * (tile + pad) + pad
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), label, fill=TEXT, font=font)
    for k, row in enumerate(rows):
        y = header_h + k * (tile + pad)
        draw.text((6, y + tile // 2 - 8), row, fill=TEXT, font=small)
        for i, tiles in enumerate(blocks):
            sheet.paste(tiles[k], (label_w + i * (tile + pad), y))
    return sheet


def check_sheet_path(path: str | Path, flag: str = "--out") -> Path:
    """Check where a contact sheet goes, before any work: a ``.png`` file path, not a folder,
    in a folder that can be written (unless the sheet is already there: a rerun may have
    nothing new to write)."""
    from diag.files import check_file, is_file

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DiagError(f"contact sheet path {where(path)} must end in .png")
    check_file(path, flag, need_write=not is_file(path), name="sheet.png")
    return path


def save_contact_sheet(folders: Sequence[str | Path], path: str | Path, n: int = 6,
                       tile: int = 192, flag: str = "--out") -> Path:
    """Write :func:`contact_sheet` as a PNG (atomically) and return its path.

    A sheet already there with the same pixels is left as it is (so a rerun on a finished,
    read-only output succeeds); a failed write (disk full, read-only) is one
    :class:`~diag.errors.DiagError` line and keeps the previous sheet.
    """
    from diag.files import remove_temp_files, write_bytes
    from diag.imageio import encode_png

    t0 = time.time()
    path = check_sheet_path(path, flag)
    data = encode_png(np.asarray(contact_sheet(folders, n, tile)))
    remove_temp_files(path.parent, [path.name], older_than=t0)  # left by a killed run
    write_bytes(path, data)
    return path
