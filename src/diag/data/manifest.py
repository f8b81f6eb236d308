"""The manifest of a generate run: one JSON line per finished sample.

A run writes ``OUT/manifest.jsonl`` (or ``OUT/manifest-<i>-of-<n>.jsonl`` per shard). A line
is appended, flushed and synced only after the sample's image and mask are safely on disk, so
the manifest never names a file that is not there. A torn last line (process killed while
writing) is ignored on reading and cut away before appending again; a damaged line elsewhere
(edited by hand, junk) is skipped, never fatal.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> with ManifestWriter(out / "manifest.jsonl") as w:
...     w.append({"id": "a", "index": 0})
>>> [r["id"] for r in read_manifest(out)]
['a']
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import TracebackType
from typing import Any

MANIFEST = "manifest.jsonl"
SHARD_RE = re.compile(r"^manifest-(\d+)-of-(\d+)\.jsonl$")


def manifest_name(shard: tuple[int, int] | None) -> str:
    """``manifest.jsonl`` for a whole run, ``manifest-<i>-of-<n>.jsonl`` for a shard."""
    return MANIFEST if shard is None or shard[1] == 1 else f"manifest-{shard[0]}-of-{shard[1]}.jsonl"


def _valid(rec: Any) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("id"), str) and bool(rec["id"])


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Valid records of one manifest file, and the byte length of its complete lines.

    Lines that are not a JSON record with a text ``id`` (damaged by hand, binary junk) are
    skipped; a last line without its newline (a writer killed mid-line) is left out of the
    length, so an appending writer cuts it away.
    """
    records: list[dict[str, Any]] = []
    with open(path, "rb") as fh:
        data = fh.read()
    complete = data.rfind(b"\n") + 1
    for line in data[:complete].split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
            continue
        if _valid(rec):
            records.append(rec)
    return records, complete


def sample_files(out: str | Path, record: dict[str, Any]) -> tuple[Path, Path | None] | None:
    """The image and mask files of a record when they are named and on disk, else None.

    A whole generated image (``"mask": null``, the text2img generator) has no mask file: its
    record is finished when its image is on disk, and the mask path returned is None.
    """
    image, mask = record.get("image"), record.get("mask")
    if not (isinstance(image, str) and image):
        return None
    if mask is not None and not (isinstance(mask, str) and mask):
        return None
    try:
        img = Path(out) / image
        if not img.is_file():
            return None
        if mask is None:
            return img, None
        msk = Path(out) / mask
        return (img, msk) if msk.is_file() else None
    except (OSError, ValueError):
        return None


def manifest_files(out: Path) -> list[Path]:
    out = Path(out)
    files = [out / MANIFEST] if (out / MANIFEST).is_file() else []
    files += sorted(p for p in out.glob("manifest-*-of-*.jsonl") if SHARD_RE.match(p.name))
    return files


def read_manifest(out: str | Path) -> list[dict[str, Any]]:
    """All records of a run folder (whole-run and shard manifests), one per id, in plan order."""
    by_id: dict[str, dict[str, Any]] = {}
    for path in manifest_files(Path(out)):
        for rec in _read_lines(path)[0]:
            by_id[rec["id"]] = rec

    def order(r: dict[str, Any]) -> tuple[int, str]:
        index = r.get("index")
        return (index if isinstance(index, int) and not isinstance(index, bool) else 2**63,
                r["id"])

    return sorted(by_id.values(), key=order)


class ManifestWriter:
    """Appends records durably; repairs a torn tail left by a killed process first."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _, good = _read_lines(self.path)
            if good != self.path.stat().st_size:
                with open(self.path, "r+b") as fh:
                    fh.truncate(good)
        self._fh = open(self.path, "ab")  # noqa: SIM115 (closed in close())

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write((json.dumps(record, sort_keys=False, default=str) + "\n").encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def merge_manifests(out: str | Path) -> Path:
    """Write every record of a folder into ``manifest.jsonl`` in plan order (atomic)."""
    from diag.files import write_text

    out = Path(out)
    records = read_manifest(out)
    text = "".join(json.dumps(r, default=str) + "\n" for r in records)
    write_text(out / MANIFEST, text)
    for p in manifest_files(out):
        if p.name != MANIFEST:
            p.unlink()
    return out / MANIFEST
