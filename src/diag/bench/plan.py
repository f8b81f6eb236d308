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

from diag.bench.grid import Grid, in_and_out_parts, is_in_and_out, method_spec, train_config
from diag.classify.config import share_counts
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
    also: tuple[GeneratedSet, ...] = ()  # in-and-out: the other sets it mixes in (memseg)

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
    sets: dict[tuple[str, int, str], GeneratedSet] = {}
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
                if spec is not None and is_in_and_out(grid.methods[name]):
                    parts = in_and_out_parts(grid, name)
                else:
                    parts = [(name, spec, 1.0)] if spec is not None else []
                parts = [(part, _for_setting(part_spec, setting), share)
                         for part, part_spec, share in parts]
                shares = [share for _, _, share in parts]
                tops = share_counts(top, shares) if parts else []
                if spec is None:
                    if setting == "zero-shot":
                        continue  # no real positive, no generated one: nothing to learn
                    runs = [(None, None, t) for t in dict.fromkeys(t for _, t in pairs)]
                else:
                    runs = [(n, g, t) for n in sorted(grid.naug) for g, t in pairs]
                for naug, gen_seed, train_seed in runs:
                    made: list[GeneratedSet] = []
                    for (part, part_spec, _), part_top in zip(parts, tops, strict=True):
                        made.append(_generated_set(sets, part, part_spec, gen_seed, part_top,
                                                   train_ref, split_key, grid.source))
                    gen = made[0] if made else None
                    config = copy.deepcopy(base)
                    config["train"] = {**opts, "seed": train_seed, "protocol": protocol}
                    config["data"] = {
                        "train": train_ref, "test": test_ref,
                        "real_positives": "all" if setting == "full-shot" else "none",
                        "generated": [f"{generated_root}/{g.folder}" for g in made],
                        "naug": naug, "naug_seed": 0,
                    }
                    if len(made) > 1:  # in-and-out: each part's share of every Naug
                        config["data"]["naug_shares"] = shares
                    key = key_of([_keyable(config), [g.key for g in made] if len(made) > 1
                                  else gen.key if gen else None, split_key])
                    cells.append(Cell(name, setting, naug, gen_seed, train_seed, protocol, gen,
                                      config, key, tuple(made[1:])))
    return Plan(list(sets.values()), cells)


def _for_setting(spec: dict[str, Any], setting: str) -> dict[str, Any]:
    """A method's (or in-and-out part's) spec in ``setting``: zero-shot cells generate without
    the generator's LoRA adapter (``diag finetune`` trained it on the real positives, which
    zero-shot must not have seen); full-shot cells with it."""
    generator = spec.get("generator")
    if setting != "zero-shot" or not isinstance(generator, dict) or not generator.get("adapter"):
        return spec
    spec = copy.deepcopy(spec)
    spec["generator"].pop("adapter")
    spec["generator"].pop("lora_scale", None)
    return spec


def _generated_set(sets: dict[tuple[str, int, str], GeneratedSet], part: str,
                   spec: dict[str, Any], gen_seed: int | None, count: int,
                   train_ref: dict[str, Any], split_key: str, source: str) -> GeneratedSet:
    """The generated set of ``part`` (a method, or a part of in-and-out) for ``gen_seed``,
    made at ``count`` images (split over the defect types); made once, then reused."""
    full = copy.deepcopy(spec)
    full["dataset"] = train_ref
    full["seed"] = gen_seed
    if len(full["defects"]) > count:
        raise DiagError(f"{source}: {part} makes {count} images at the largest naug but has "
                        f"{len(full['defects'])} defect types: raise naug or merge types")
    for d, c in zip(full["defects"], _counts(full["defects"], count), strict=True):
        d["count"] = c
    key = key_of([_keyable(full), split_key])
    seed = int(gen_seed or 0)
    if (part, seed, key) not in sets:
        sets[(part, seed, key)] = GeneratedSet(part, seed, full, key)
    return sets[(part, seed, key)]
