"""The leakage guard: nothing a model trained on may be, or have come from, its test data.

Training data is compared with test data file by file, by resolved path and by SHA-256 of the
file contents (so a copy under another name is caught too). The training side is every real
training (and validation) image and every generated image, with the defect-free source image
each generated image was painted on and the real mask that shaped its defect (``real-masks``
regions). The test side is every test image and the masks of its positives. A generate folder
whose ``spec.yaml`` read the test set's dataset with an overlapping split (``all``, or the test
split itself) is flagged as a whole, even where the images it happened to use are clean.

>>> from diag.classify.leakage import find_overlap                         # doctest: +SKIP
>>> record = training_record(sets.train + sets.val, cfg.data.generated)    # doctest: +SKIP
>>> find_overlap(record, [it.sample for it in sets.test], cfg.data.test)   # doctest: +SKIP
{'training_image_in_test': {'count': 3, 'example': '/data/a.png', ...}}

``diag train`` writes the training side to ``training_files.json`` in the run folder, so that
``diag evaluate`` can check a dataset against it without reading the training data again.
Hashing is cheap: files are read in 1 MiB chunks on a few threads (:func:`diag.files.hash_files`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diag.classify.data import Item
from diag.data import DatasetRef, Sample
from diag.errors import DiagError, where
from diag.files import hash_files, write_json

TRAINING_FILES = "training_files.json"
FORMAT = "diag-training-files-1"
SPEC_FILE = "spec.yaml"

KINDS: dict[str, str] = {  # {held}: "test", or "evaluated" for diag evaluate
    "training_image_in_test": "training images that are {held} images",
    "generated_image_in_test": "generated training images that are {held} images",
    "generated_from_test_image": "generated images painted on a {held} image",
    "generated_mask_from_test": "generated images shaped by the mask of a {held} image",
    "generated_from_test_split": "generate folders made from the {held} data (spec.yaml split "
                                 "all, or the {held} split)",
}
# role of a training file -> (the test files it is compared with, the kind of overlap)
ROLES: dict[str, tuple[str, str]] = {
    "image": ("images", "training_image_in_test"),
    "generated": ("images", "generated_image_in_test"),
    "source": ("images", "generated_from_test_image"),
    "mask": ("masks", "generated_mask_from_test"),
}
# split by hash, per test_fraction/split_seed (anomalib-folder: its normals, unless the test
# normals have their own normal_test_dir)
HASH_SPLIT_LAYOUTS = ("magnetic-tile", "folder", "anomalib-folder")


def resolved(path: str | Path) -> str:
    """The absolute path with symlinks resolved, as a string (how files are compared)."""
    return str(Path(path).expanduser().resolve())


def file_hashes(paths: Iterable[str]) -> dict[str, str | None]:
    """SHA-256 of every path (None for a file that cannot be read: then only its path counts)."""
    paths = list(paths)
    hashed = hash_files(paths)
    return {p: hashed[p]["sha256"] if p in hashed else None for p in paths}


def generated_spec(folder: str | Path) -> dict[str, Any]:
    """The generate folder and the ``dataset`` of its ``spec.yaml`` (None when unreadable)."""
    import yaml

    folder = Path(folder)
    dataset = None
    try:
        spec = yaml.safe_load((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        spec = None
    if isinstance(spec, dict) and isinstance(spec.get("dataset"), dict):
        dataset = dict(spec["dataset"])
        if dataset.get("root"):
            root = Path(str(dataset["root"])).expanduser()
            dataset["root"] = resolved(root if root.is_absolute() else folder / root)
    return {"folder": resolved(folder), "dataset": dataset}


def training_record(items: list[Item], generated_folders: list[str]) -> dict[str, Any]:
    """What a model trains on: every file with its role, resolved path and content hash.

    Args:
        items: Training and validation items (real and generated).
        generated_folders: The ``data.generated`` folders (their specs are recorded).

    Returns:
        ``format``, ``files`` (``role``: image / generated / source / mask, ``path``,
        ``sha256``, ``item``: the item key it belongs to) and ``generated`` (folder and spec
        dataset of each generate folder).
    """
    rows: list[tuple[str, str, str]] = []
    for it in items:
        if not it.source.startswith("generated"):
            rows.append(("image", resolved(it.sample.path), it.key))
            continue
        rows.append(("generated", resolved(it.sample.path), it.key))
        meta = it.sample.meta if isinstance(it.sample.meta, dict) else {}
        source = meta.get("source")
        if source and isinstance(source, str) and "\0" not in source:
            rows.append(("source", resolved(source), it.key))
        region = meta.get("region")
        mask = region.get("mask_file") if isinstance(region, dict) else None
        if mask and isinstance(mask, str) and "\0" not in mask:
            rows.append(("mask", resolved(mask), it.key))
    hashes = file_hashes(p for _, p, _ in rows)
    return {"format": FORMAT,
            "files": [{"role": role, "path": p, "sha256": hashes[p], "item": key}
                      for role, p, key in rows],
            "generated": [generated_spec(g) for g in generated_folders]}


def write_training_record(out: Path, record: dict[str, Any]) -> None:
    """Write ``out/training_files.json`` (atomically)."""
    write_json(Path(out) / TRAINING_FILES, record)


def read_training_record(run: str | Path) -> dict[str, Any] | None:
    """The ``training_files.json`` of a run folder, or of the run a model file belongs to.

    Returns:
        The record, or None when the run has none (trained before diag recorded it).

    Raises:
        DiagError: the file exists but is not a training record.
    """
    import json

    run = Path(run)
    if run.is_dir():
        candidates = [run]
    else:
        candidates = [run.parent] + ([run.parent.parent] if run.parent.name == "checkpoints"
                                     else [])
    for folder in candidates:
        path = folder / TRAINING_FILES
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                record = None
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise DiagError(f"{where(path)} is not a diag training record: restore it from "
                                "the run, or delete it to evaluate without the overlap check")
            return record
    return None


def _same_root(a: str, b: str) -> bool:
    return resolved(a) == resolved(b)


def _layout(dataset: dict[str, Any]) -> str:
    layout = str(dataset.get("layout", "auto"))
    if layout == "auto":
        from diag.data import detect_layout

        with contextlib.suppress(DiagError):
            layout = detect_layout(Path(dataset["root"]))
    return layout


def splits_overlap(dataset: dict[str, Any], ref: DatasetRef) -> bool:
    """Whether a generate spec's ``dataset`` can hold images of the dataset ``ref``.

    Same root (resolved) and: either split is ``all``, both name the same split, or the two
    were split by hash (magnetic-tile, folder) with another ``test_fraction`` / ``split_seed``.
    """
    if not dataset.get("root") or not _same_root(str(dataset["root"]), ref.root):
        return False
    a, b = str(dataset.get("split", "train")), ref.split
    if "all" in (a, b) or a == b:
        return True
    files = (dataset.get("split_file"), ref.split_file)
    if any(files):  # a saved split: disjoint only when both use the same file
        return not all(files) or resolved(str(files[0])) != resolved(str(files[1]))
    if _layout(dataset) in HASH_SPLIT_LAYOUTS:
        return (float(dataset.get("test_fraction", 0.3)), int(dataset.get("split_seed", 0))) != (
            ref.test_fraction, ref.split_seed)
    return False


def held_out_files(samples: list[Sample]) -> dict[str, dict[str, str | None]]:
    """The test side: every image, and the mask of every positive (blank masks of defect-free
    images would match each other by content), each with its content hash."""
    images = [resolved(s.path) for s in samples]
    masks = [resolved(s.mask_path) for s in samples if s.label and s.mask_path is not None]
    hashes = file_hashes(images + masks)
    return {"images": {p: hashes[p] for p in images}, "masks": {p: hashes[p] for p in masks}}


def find_overlap(record: dict[str, Any], samples: list[Sample], ref: DatasetRef | None,
                 held_out: str = "test") -> dict[str, dict[str, Any]]:
    """Compare a training record with test samples.

    Args:
        record: From :func:`training_record` (or a run's ``training_files.json``).
        samples: The test (or evaluated) samples.
        ref: The dataset the samples come from (for the generate-spec check); None skips it.
        held_out: What the samples are called in the ``what`` texts (test, evaluated).

    Returns:
        One entry per kind of overlap found (see :data:`KINDS`), each with ``count`` (training
        items, or generate folders, concerned), ``example`` (a training-side path), ``test``
        (the test file or dataset it matches) and ``what``. Empty when the data are disjoint.
    """
    test = held_out_files(samples)
    by_path = {group: {p: p for p in files} for group, files in test.items()}
    by_hash = {group: {h: p for p, h in files.items() if h} for group, files in test.items()}
    report: dict[str, dict[str, Any]] = {}
    seen: dict[str, set[str]] = {}
    for f in record.get("files", []):
        group, kind = ROLES[f["role"]]
        hit = by_path[group].get(f["path"]) or (by_hash[group].get(f["sha256"])
                                                if f.get("sha256") else None)
        if hit is None or f["item"] in seen.setdefault(kind, set()):
            continue
        seen[kind].add(f["item"])
        entry = report.setdefault(kind, {"count": 0, "example": f["path"], "test": hit,
                                         "what": KINDS[kind].format(held=held_out)})
        entry["count"] += 1
    if ref is not None:
        for g in record.get("generated", []):
            if g.get("dataset") and splits_overlap(g["dataset"], ref):
                kind = "generated_from_test_split"
                entry = report.setdefault(kind, {"count": 0, "example": g["folder"],
                                                 "test": resolved(ref.root),
                                                 "what": KINDS[kind].format(held=held_out)})
                entry["count"] += 1
    return {k: report[k] for k in KINDS if k in report}


def describe(report: dict[str, dict[str, Any]], held_out: str = "test") -> str:
    """The overlaps in one line: ``what: count (e.g. path = test path)``, kinds joined by ``;``.

    Args:
        report: From :func:`find_overlap`.
        held_out: What the compared data is called (test, evaluated).
    """
    parts = []
    for entry in report.values():
        same = entry["test"] == entry["example"]
        test = "" if same else f" = {held_out} {where(entry['test'])}"
        parts.append(f"{entry['what']}: {entry['count']} (e.g. {where(entry['example'])}{test})")
    return "; ".join(parts)


def guard(report: dict[str, dict[str, Any]], allow: bool, context: str, fix: str,
          held_out: str = "test") -> dict[str, Any]:
    """Raise on any overlap unless allowed; return the block recorded in metrics.json.

    Args:
        report: From :func:`find_overlap`.
        allow: ``--allow-overlap`` was given: record the overlap instead of stopping.
        context: What was compared, for the message (``the training data overlaps ...``).
        fix: How to avoid the overlap, for the message.
        held_out: What the compared data is called (test, evaluated).

    Raises:
        DiagError: ``report`` is not empty and ``allow`` is False.
    """
    if report and not allow:
        raise DiagError(f"{context}: {describe(report, held_out)}: {fix}, or pass --allow-overlap to "
                        "proceed (the overlap is then recorded in metrics.json)")
    return {"checked": True, "clean": not report, "allowed": bool(allow and report),
            "found": report}
