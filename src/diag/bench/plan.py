"""The cells of a bench: every (method, setting, Naug, seeds, protocol), each with a key.

A cell's key hashes everything that decides its result (the training config with its data,
the generated set's spec, the split), and names its folder, so a rerun reuses every cell whose
inputs did not change, and a changed grid redoes only what changed. Pure: no files.

>>> from diag.bench.grid import parse_grid
>>> g = parse_grid({"dataset": {"root": "d"}, "methods": {"real-only": "real-only",
...     "memseg": {"generator": {"kind": "memseg"}}}, "naug": [50, 100], "seeds": [0],
...     "generate": {"defects": [{"name": "a"}, {"name": "b"}]}})
>>> plan = make_plan(g, {"root": "d"}, {"root": "d"}, split_key="s", input_size=(64, 64))
>>> [c.label for c in plan.cells]  # doctest: +NORMALIZE_WHITESPACE
['real-only full-shot seed 0 honest', 'memseg zero-shot naug 50 seed 0 honest',
 'memseg zero-shot naug 100 seed 0 honest', 'memseg full-shot naug 50 seed 0 honest',
 'memseg full-shot naug 100 seed 0 honest']
>>> [d["count"] for d in plan.sets[0].spec["defects"]]  # made once, at the largest Naug
[50, 50]
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from diag.bench.grid import Grid, method_spec, train_config
from diag.errors import DiagError


def key_of(obj: Any) -> str:
    """A short, stable hash of a JSON-able object."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class GeneratedSet:
    """One method's generated set for one generation seed, made at the largest Naug."""

    method: str
    seed: int
    spec: dict[str, Any]
    key: str

    @property
    def folder(self) -> str:
        """Folder name under ``OUT/generated``."""
        return f"{self.method}-g{self.seed}-{self.key}"


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    method: str
    setting: str
    naug: int | None
    gen_seed: int | None
    train_seed: int
    protocol: str
    generated: GeneratedSet | None
    config: dict[str, Any] = field(hash=False, compare=False)
    key: str = ""

    @property
    def label(self) -> str:
        naug = f" naug {self.naug}" if self.naug is not None else ""
        seed = (f"seed {self.train_seed}" if self.gen_seed in (None, self.train_seed)
                else f"seeds {self.gen_seed}/{self.train_seed}")
        return f"{self.method} {self.setting}{naug} {seed} {self.protocol}"

    @property
    def folder(self) -> str:
        """Folder name under ``OUT/cells``."""
        naug = f"-naug{self.naug}" if self.naug is not None else ""
        gen = f"-g{self.gen_seed}" if self.gen_seed is not None else ""
        return (f"{self.method}-{self.setting}{naug}{gen}-t{self.train_seed}-{self.protocol}-"
                f"{self.key}")


@dataclass
class Plan:
    """Generated sets to make and cells to train, in order."""

    sets: list[GeneratedSet]
    cells: list[Cell]


def _keyable(obj: Any) -> Any:
    """``obj`` without the split file's path (the split's content hash stands for it), so a
    moved output folder keeps its keys."""
    if isinstance(obj, dict):
        return {k: _keyable(v) for k, v in obj.items() if k != "split_file"}
    if isinstance(obj, list):
        return [_keyable(v) for v in obj]
    return obj


def _counts(defects: list[dict[str, Any]], total: int) -> list[int]:
    """Split ``total`` over the defect types, as evenly as possible (first ones get more)."""
    n = len(defects)
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def make_plan(grid: Grid, train_ref: dict[str, Any], test_ref: dict[str, Any], split_key: str,
              input_size: tuple[int, int], generated_root: str = "generated") -> Plan:
    """Every generated set and cell of ``grid``.

    Args:
        grid: The validated grid.
        train_ref: The training split as a ``DatasetRef`` mapping (the generate specs' dataset).
        test_ref: The test split as a ``DatasetRef`` mapping.
        split_key: Identity of the split (its content hash).
        input_size: The classifier input ``(height, width)`` (``auto`` already resolved).
        generated_root: Where generated folders live, for the training configs.
    """
    base = train_config(grid)
    opts = dict(base.get("train", {}))
    opts.pop("max_side", None)
    opts["input_size"] = list(input_size)
    top = max(grid.naug)
    sets: dict[tuple[str, int], GeneratedSet] = {}
    cells: list[Cell] = []
    pairs = grid.seed_pairs()
    for name in grid.methods:
        spec = method_spec(grid, name)
        if spec is not None:
            defects = spec.get("defects")
            if not isinstance(defects, list) or not defects:
                raise DiagError(f"{grid.source}: method {name} has no defects (give them in the "
                                "grid's generate section or the method's spec)")
            if len(defects) > top:
                raise DiagError(f"{grid.source}: method {name} has {len(defects)} defect types "
                                f"but the largest naug is {top}: raise naug or merge types")
        for protocol in grid.protocols:
            for setting in grid.settings:
                if spec is None:
                    if setting == "zero-shot":
                        continue  # no real positive, no generated one: nothing to learn
                    runs = [(None, None, t) for t in dict.fromkeys(t for _, t in pairs)]
                else:
                    runs = [(n, g, t) for n in sorted(grid.naug) for g, t in pairs]
                for naug, gen_seed, train_seed in runs:
                    gen = None
                    if spec is not None:
                        gen = sets.get((name, gen_seed))
                        if gen is None:
                            full = copy.deepcopy(spec)
                            full["dataset"] = train_ref
                            full["seed"] = gen_seed
                            for d, c in zip(full["defects"], _counts(full["defects"], top),
                                            strict=True):
                                d["count"] = c
                            gen = GeneratedSet(name, gen_seed, full,
                                               key_of([_keyable(full), split_key]))
                            sets[(name, gen_seed)] = gen
                    config = copy.deepcopy(base)
                    config["train"] = {**opts, "seed": train_seed, "protocol": protocol}
                    config["data"] = {
                        "train": train_ref, "test": test_ref,
                        "real_positives": "all" if setting == "full-shot" else "none",
                        "generated": [f"{generated_root}/{gen.folder}"] if gen else [],
                        "naug": naug, "naug_seed": 0,
                    }
                    key = key_of([_keyable(config), gen.key if gen else None, split_key])
                    cells.append(Cell(name, setting, naug, gen_seed, train_seed, protocol, gen,
                                      config, key))
    return Plan(list(sets.values()), cells)
