"""What a generate folder was made from, so a resume never mixes two plans silently.

The plan depends on the dataset (which defect-free images, in which order; which real masks),
on the region files, on the generator's textures and on the model. A folder records them in
``inputs.json`` (every file's size, modification time and SHA-256; the model's identity). A
rerun into a folder that already holds samples compares, and stops with what changed when the
folder would no longer be what a fresh run makes: files added or removed (the plan or the
random choices move), a file that a finished sample was made from changed, or another model.
The user can accept the change (``--allow-changed-inputs``), which is then recorded in
``inputs.json``. A changed file no finished sample used (say, a corrupt image repaired before
its turn) is simply recorded. Unchanged files (same size and modification time) are not
hashed again, so the check costs a ``stat`` per file.

>>> old = {"files": {"a.png": {"sha256": "1"}, "b.png": {"sha256": "2"}}}
>>> new = {"files": {"a.png": {"sha256": "1"}, "b.png": {"sha256": "3"}, "c.png": {"sha256": "4"}}}
>>> describe_changes(compare(old, new))
"1 file added ('c.png'), 1 file changed ('b.png')"
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diag.errors import DiagError, some, where
from diag.files import hash_files, write_json
from diag.generate.plan import is_pick
from diag.imageio import IMAGE_SUFFIXES

INPUTS_FILE = "inputs.json"
FORMAT = "diag-generate-inputs-1"


def input_files(inputs: Any, spec: Any) -> list[Path]:
    """Every file the plan and the generator read: the dataset's images and masks, region
    files, texture images."""
    files: list[Path] = []
    for s in [*inputs.negatives, *inputs.positives]:
        files.append(Path(s.path))
        if s.mask_path is not None:
            files.append(Path(s.mask_path))
    regions = [spec.regions, *(d.regions for d in spec.defects)]
    paths = list(dict.fromkeys(getattr(r, "path", None) for r in regions if r is not None))
    for folder in (*paths, getattr(spec.generator.params, "textures", None)):
        if folder:
            p = Path(folder)
            if p.is_dir():
                files += sorted(q for q in p.rglob("*") if q.is_file()
                                and q.suffix.lower() in (*IMAGE_SUFFIXES, ".json"))
            elif p.is_file():
                files.append(p)
    return files


def fingerprint(inputs: Any, spec: Any, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """The inputs of a plan: its files (hashed) and the plan's image order."""
    paths = input_files(inputs, spec)
    files = hash_files(paths, (old or {}).get("files"))
    unreadable = [str(p) for p in paths if str(p) not in files]
    if unreadable:
        raise DiagError(f"cannot read {len(unreadable)} input file(s): {some(unreadable, 3)} "
                        "(a broken link, a folder, or no permission): fix or remove them")
    return {"format": FORMAT, "files": files,
            "negatives": [s.id for s in inputs.negatives],
            "positives": [s.id for s in inputs.positives]}


def compare(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Files added, removed and changed (by content), and whether the images' order moved."""
    a, b = old.get("files", {}), new.get("files", {})
    changes = {"added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b)),
               "changed": sorted(k for k in set(a) & set(b)
                                 if a[k].get("sha256") != b[k].get("sha256"))}
    if not any(changes.values()) and old.get("negatives") not in (None, new.get("negatives")):
        changes["reordered"] = ["the defect-free images"]
    return {k: v for k, v in changes.items() if v}


def describe_changes(changes: dict[str, list[str]]) -> str:
    """``1 file added ('x.png'), 2 files changed ('a.png', 'b.png')``."""
    parts = []
    for kind, names in changes.items():
        noun = "file" if len(names) == 1 else "files"
        parts.append(f"{len(names)} {noun} {kind} ({some(names, 2)})")
    return ", ".join(parts)


def read_inputs(out: Path) -> dict[str, Any] | None:
    """The folder's ``inputs.json`` (None when absent or unreadable)."""
    try:
        data = json.loads((out / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def used_files(records: Iterable[dict[str, Any]], paths_of: dict[str, list[str]]) -> set[str]:
    """Files the finished samples were made from: each record's source, and every path or
    dataset sample id (``donor:<id>``, ``defect_from``...) named in its region and info."""
    used: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            name = value.split(":", 1)[1] if value.startswith("donor:") else value
            used.update(paths_of.get(name, ()))
            if "/" in value:
                used.add(value)

    for r in records:
        walk([r.get("source"), r.get("source_id"), r.get("region"), r.get("info")])
    return used


def check_inputs(out: Path, new: dict[str, Any], finished: list[dict[str, Any]], allow: bool,
                 paths_of: dict[str, list[str]], region_dirs: Iterable[Path] = ()
                 ) -> dict[str, Any]:
    """Compare the folder's recorded inputs with ``new``; returns what to record.

    Args:
        out: The output folder.
        new: :func:`fingerprint` of the inputs now.
        finished: Manifest records of the samples already made.
        allow: ``--allow-changed-inputs``: record a change instead of stopping.
        paths_of: Dataset sample id -> its image and mask paths.
        region_dirs: Folders of drawn regions. While the folder holds only picks (each names
            its image and seed), region files added or removed there for other images change
            none of them (``diag ui`` paints a region, accepts, paints the next one).

    Raises:
        DiagError: the folder holds samples that a fresh run would no longer make.
    """
    old = read_inputs(out)
    record = {**new, "generator": (old or {}).get("generator"),
              "accepted_changes": (old or {}).get("accepted_changes", [])}
    if old is None or not finished:
        return record
    changes = compare(old, new)
    used = used_files(finished, paths_of)
    blocking = {k: v for k, v in changes.items() if k != "changed"}
    if all(is_pick(r.get("id", "")) for r in finished):
        blocking = _picks_only(blocking, finished, used, [Path(d) for d in region_dirs])
    touched = [f for f in changes.get("changed", []) if f in used]
    if touched:
        blocking["changed"] = touched
    if blocking:
        text = describe_changes(blocking)
        if not allow:
            raise DiagError(f"the inputs of {where(out)} changed since its samples were made: "
                            f"{text}; resuming would mix two plans: restore the inputs, use a "
                            "new --out, or pass --allow-changed-inputs to continue anyway (the "
                            f"change is recorded in {INPUTS_FILE})")
        record["accepted_changes"] = [*record["accepted_changes"], _accepted(text)]
    return record


def _picks_only(blocking: dict[str, list[str]], finished: list[dict[str, Any]], used: set[str],
                region_dirs: list[Path]) -> dict[str, list[str]]:
    """Of the added and removed files, those that can move a pick: outside the region
    folders, a file the pick used, or a region file named after a pick's image."""
    stems = {Path(str(r.get("source", ""))).stem for r in finished}

    def moves(name: str) -> bool:
        p = Path(name)
        in_regions = any(p.parent == d or d in p.parents for d in region_dirs)
        return not in_regions or name in used or p.stem in stems

    kept = {k: [f for f in v if moves(f)] for k, v in blocking.items() if k != "reordered"}
    return {k: v for k, v in kept.items() if v}


def check_generator(record: dict[str, Any], identity: dict[str, Any], has_samples: bool,
                    allow: bool, out: Path) -> bool:
    """Compare the generator that will make the next samples with the recorded one (model,
    revision, variant, pipeline, scheduler); record it. Returns whether ``record`` changed.

    Raises:
        DiagError: another generator made the folder's samples and ``allow`` is False.
    """
    ident = json.loads(json.dumps(identity, default=str))
    old = record.get("generator")
    if old == ident:
        return False
    if old is not None and has_samples:
        diff = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        text = f"the generator changed ({', '.join(f'{k}: {old.get(k)} -> {ident.get(k)}' for k in diff)})"
        if not allow:
            raise DiagError(f"{where(out)} holds samples made by another generator: {text}: use "
                            "a new --out, or pass --allow-changed-inputs to continue anyway (the "
                            f"change is recorded in {INPUTS_FILE})")
        record["accepted_changes"] = [*record.get("accepted_changes", []), _accepted(text)]
    record["generator"] = ident
    return True


def write_inputs(out: Path, record: dict[str, Any]) -> None:
    """Write ``inputs.json`` atomically, only when its content changes."""
    old = read_inputs(out)
    if old != json.loads(json.dumps(record, default=str)):
        write_json(out / INPUTS_FILE, record)


def _accepted(text: str) -> dict[str, str]:
    return {"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "changes": text}
