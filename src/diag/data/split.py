"""Saved train/test splits: made once, stratified by defect class, used by every run.

Datasets without an official split (Magnetic-tile, plain folders) are split by a seeded hash
of each file name, which is stable but only roughly stratified. For an experiment that many
runs share (``diag bench``), :func:`make_split` draws an exact, seeded split per (label,
defect class) and :func:`write_split` saves it; a dataset reference with ``split_file``
(:class:`~diag.data.ref.DatasetRef`) then reads its ``train`` or ``test`` ids from that file,
whatever the layout.

>>> from pathlib import Path
>>> from diag.data.sample import Sample
>>> s = [Sample(f"c{i}", Path(f"c{i}.png"), label=int(i < 4), defect="crack" if i < 4 else "")
...      for i in range(10)]
>>> split = make_split(s, test_fraction=0.5, seed=0)
>>> len(split["test"]), sum(x.startswith("c") and int(x[1:]) < 4 for x in split["test"])
(5, 2)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diag.data.sample import Sample
from diag.errors import DiagError, some, where

FORMAT = "diag-split-1"


def _order(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def make_split(samples: Sequence[Sample], test_fraction: float, seed: int = 0
               ) -> dict[str, Any]:
    """A seeded train/test split holding out ``test_fraction`` of every (label, defect class)
    group, rounded; every group with two or more images keeps at least one on each side."""
    if not 0 < test_fraction < 1:
        raise DiagError(f"split test_fraction must be in (0, 1), got {test_fraction}")
    groups: dict[tuple[int, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((int(s.label), s.defect or ""), []).append(s)
    test: list[str] = []
    for group in groups.values():
        ordered = sorted(group, key=lambda s: _order(seed, s.id))
        n = round(test_fraction * len(ordered))
        if len(ordered) >= 2:
            n = min(max(n, 1), len(ordered) - 1)
        test += [s.id for s in ordered[:n]]
    held = set(test)
    return {"format": FORMAT, "test_fraction": test_fraction, "seed": seed,
            "train": sorted(s.id for s in samples if s.id not in held), "test": sorted(held)}


def write_split(path: str | Path, split: dict[str, Any]) -> None:
    """Save a split (JSON, atomically)."""
    from diag.files import write_json

    write_json(path, split)


def read_split(path: str | Path) -> dict[str, Any]:
    """Read a split file.

    Raises:
        DiagError: missing, unreadable or not a diag split file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DiagError(f"split file {where(path)} does not exist: check split_file") from None
    except (OSError, ValueError) as exc:
        raise DiagError(f"split file {where(path)} cannot be read ({exc}): fix or remove "
                        "it") from None
    if not (isinstance(data, dict) and data.get("format") == FORMAT
            and all(isinstance(data.get(k), list) for k in ("train", "test"))):
        raise DiagError(f"{where(path)} is not a diag split file (format {FORMAT} with train "
                        "and test id lists)")
    return data


def apply_split(samples: Sequence[Sample], path: str | Path, split: str) -> list[Sample]:
    """The samples of ``split`` (``train``, ``test`` or ``all``) listed in the split file.

    Raises:
        DiagError: the file names ids the dataset does not have (it was made for another one).
    """
    data = read_split(path)
    by_id = {s.id: s for s in samples}
    listed = set(data["train"]) | set(data["test"])
    missing = sorted(listed - set(by_id))
    if missing:
        raise DiagError(f"split file {where(path)} lists {len(missing)} image(s) the dataset "
                        f"does not have ({some(missing, 3)}): it was made for another dataset")
    wanted = listed if split == "all" else set(data[split])
    return [s for s in samples if s.id in wanted]
