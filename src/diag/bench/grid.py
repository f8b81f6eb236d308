"""The bench grid: which methods, settings, Naug values, seeds and protocols to compare.

A grid is a YAML file (``examples/bench_quick.yaml``)::

    profile: quick                 # quick (CPU) | paper (GPU) | null: the defaults below
    dataset:
      root: ../../shared/data/magnetic_tile
      layout: magnetic-tile
      test_fraction: 0.3           # no official split: one seeded, stratified split, saved
    generate:                      # shared by every method: a generate spec without dataset
      regions: {source: real-masks, flip: true}
      defects:
        - {name: crack, prompt: "a thin dark crack"}
        - {name: blowhole, prompt: "a small dark pit"}
    methods:
      real-only: real-only         # full-shot without generated images
      memseg: {generator: {kind: memseg}}
      diag: {generator: {kind: diffusion}}
    settings: [zero-shot, full-shot]
    naug: [100]
    seeds: [0, 1]                  # each: the generation seed and the training seed
    train: {model: {backbone: efficientnet-lite0}, train: {epochs: 3}}
    fidelity: {dims: [64, 192]}

>>> g = parse_grid({"dataset": {"root": "d"}, "methods": {"memseg": {"generator":
...     {"kind": "memseg"}}}, "generate": {"defects": [{"name": "crack"}]}, "profile": "quick"})
>>> g.naug, g.seeds, g.settings
([100], [0, 1], ['zero-shot', 'full-shot'])

The ``in-and-out`` method (the In&Out baseline: whole images from Stable Diffusion,
DreamBooth-LoRA fine-tuned on the real defects, mixed with MemSeg positives)::

    methods:
      in-and-out:
        kind: in-and-out
        ratio: 0.5                   # share of Naug made by text2img, the rest by memseg
        prompt: "sks magnetic tile"  # default: each defect's own prompt
        text2img: {model: stable-diffusion-v1-5/stable-diffusion-v1-5, steps: 30}
        adapter: runs/finetune       # full-shot: a `diag finetune` OUT folder (made first)
        memseg: {}                   # memseg generator parameters

Zero-shot uses the pretrained model, full-shot the adapter (the bench does not fine-tune:
run ``diag finetune`` on the training split first and give its folder as ``adapter``).

Paths are relative to the grid file. Each generated set is made once, at the largest Naug
(the counts of the spec's defects split it evenly); smaller Naug values take nested subsets
of it (``data.naug`` of ``diag train``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.config import apply_overrides, from_dict, load_yaml, resolve_path
from diag.data.ref import DatasetRef
from diag.errors import DiagError, where

SETTINGS = ("zero-shot", "full-shot")
PROTOCOLS = ("honest", "paper")
REAL_ONLY = "real-only"
IN_AND_OUT = "in-and-out"
IN_AND_OUT_FIELDS = ("kind", "ratio", "prompt", "text2img", "adapter", "memseg")
PROFILES = ("quick", "paper")

# What a profile fills in where the grid is silent (the grid always wins).
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "quick": {  # 2 CPU cores: about 1.5 minutes per cell on Magnetic-tile
        "settings": list(SETTINGS), "naug": [100], "seeds": [0, 1], "protocols": ["honest"],
        # lr 1e-3: in 3 epochs, real-only full-shot on Magnetic-tile reaches test AP 0.81
        # against 0.64 at 3e-4 and 0.51 at 1e-4 (BENCHMARKS.md)
        "train": {"model": {"backbone": "efficientnet-lite0", "pretrained": "imagenet"},
                  "train": {"epochs": 3, "batch_size": 32, "lr": 0.001, "input_size": "auto",
                            "max_side": 256}},
        "fidelity": {"dims": [64, 192]},
    },
    "paper": {  # the DIAG paper's settings, for a GPU
        "settings": list(SETTINGS), "naug": [80, 100, 120], "seeds": [0, 1, 2],
        "protocols": ["honest", "paper"],
        "train": {"model": {"backbone": "resnet50", "pretrained": "imagenet"},
                  "train": {"epochs": 30, "batch_size": 32, "lr": 1.0e-4,
                            "input_size": [704, 256]}},
        "fidelity": {"dims": [64, 192]},
    },
}


@dataclass
class GridDataset:
    """The real data: a dataset folder split into train and test.

    Attributes:
        root: Dataset folder.
        layout: Any layout diag reads (``auto`` guesses).
        test_fraction: Layouts without an official split (magnetic-tile, folder): the share
            held out as test, by a seeded split stratified by defect class, made once and
            saved as ``OUT/split.json``.
        split_seed: Seed of that split.
        options: Layout options (``images``, ``masks``, ``mask_suffix`` of the folder layout;
            ``normal_dir``, ``abnormal_dir``, ``mask_dir``, ``normal_test_dir``, ``extensions``
            of anomalib-folder). They may also be written beside ``root``, as in a spec.
    """

    root: str
    layout: str = "auto"
    test_fraction: float = 0.3
    split_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self, source: str, prefix: str) -> None:
        if not 0 < self.test_fraction < 1:
            raise DiagError(f"{source}: {prefix}test_fraction must be in (0, 1), got "
                            f"{self.test_fraction}")
        unknown = [k for k in self.options if k not in layout_options()]
        if unknown:
            raise DiagError(f"{source}: unknown field '{prefix}options.{unknown[0]}'; layout "
                            f"options: {', '.join(layout_options())}")
        ref = {"root": self.root, "layout": self.layout, **self.options}
        from_dict(DatasetRef, ref, source, prefix)  # the layout's own checks


def layout_options() -> list[str]:
    """The dataset fields that are layout options (not root, layout, split or its seed)."""
    own = {"root", "layout", "split", "test_fraction", "split_seed", "split_file"}
    return [f for f in DatasetRef.__dataclass_fields__ if f not in own]


def _options_beside_root(dataset: Any) -> Any:
    """``dataset: {root: d, layout: anomalib-folder, normal_dir: good}``: the layout options
    written beside ``root`` go into ``options``."""
    if not isinstance(dataset, dict):
        return dataset
    beside = [k for k in dataset if k in layout_options()]
    if not beside:
        return dataset
    options = dict(dataset.get("options") or {})
    options.update({k: dataset[k] for k in beside})
    return {**{k: v for k, v in dataset.items() if k not in beside}, "options": options}


@dataclass
class FidelityOptions:
    """How each generated set is scored against the real training positives.

    Attributes:
        dims: Inception feature dims (64, 192, 768, 2048; the paper: 64 and 192).
        region: Score crops around each defect instead of whole images.
        kid: Also compute KID.
        enabled: False skips fidelity.
    """

    dims: list[int] = field(default_factory=lambda: [64, 192])
    region: bool = False
    kid: bool = False
    enabled: bool = True

    def validate(self, source: str, prefix: str) -> None:
        bad = [d for d in self.dims if d not in (64, 192, 768, 2048)]
        if bad or not self.dims:
            raise DiagError(f"{source}: {prefix}dims must be some of 64, 192, 768, 2048")


@dataclass
class Grid:
    """A validated grid (see the module docstring).

    Attributes:
        dataset: The real data.
        methods: Name -> ``real-only``, or a generate spec mapping (without ``dataset``:
            the bench supplies the training split; merged over ``generate``).
        generate: What every method's spec shares (regions, defects, generator defaults).
        settings: ``zero-shot`` (no real positives trains) and/or ``full-shot`` (all do).
        naug: Generated positives per training set, one cell per value.
        seeds: One cell per seed: the generation seed and the training seed. A mapping
            ``{generation: [...], training: [...]}`` crosses them instead.
        protocols: ``honest`` and/or ``paper`` (see ``diag train``).
        train: A training config (mapping or file): model and optimisation. ``data`` is the
            bench's. ``train.input_size: auto`` picks a size that keeps the training defects
            a few pixels wide, at most ``train.max_side``.
        fidelity: Fidelity options.
        profile: ``quick`` or ``paper`` defaults, or None.
        source: Where the grid came from (messages).
        base: The folder relative paths start from.
    """

    dataset: GridDataset
    methods: dict[str, Any]
    generate: dict[str, Any] = field(default_factory=dict)
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    naug: list[int] = field(default_factory=lambda: [100])
    seeds: list[int] | dict[str, list[int]] = field(default_factory=lambda: [0])
    protocols: list[str] = field(default_factory=lambda: ["honest"])
    train: dict[str, Any] | str = field(default_factory=dict)
    fidelity: FidelityOptions = field(default_factory=FidelityOptions)
    profile: str | None = None
    source: str = "grid"
    base: str = "."

    def validate(self, source: str, prefix: str) -> None:
        if not self.methods:
            raise DiagError(f"{source}: methods is empty: name at least one (real-only, or a "
                            "generator such as {memseg: {generator: {kind: memseg}}})")
        for name, method in self.methods.items():
            if method != REAL_ONLY and not isinstance(method, (dict, str)):
                raise DiagError(f"{source}: methods.{name} must be real-only, a generate spec "
                                "mapping or the path of a spec file")
            if isinstance(method, dict) and method.get("kind") == IN_AND_OUT:
                _check_in_and_out(method, self.settings, f"{source}: methods.{name}")
        for s in self.settings:
            if s not in SETTINGS:
                raise DiagError(f"{source}: settings has '{s}', expected zero-shot or full-shot")
        for p in self.protocols:
            if p not in PROTOCOLS:
                raise DiagError(f"{source}: protocols has '{p}', expected honest or paper")
        if not self.settings or not self.naug or not self.protocols:
            raise DiagError(f"{source}: settings, naug and protocols must not be empty")
        if any(n < 1 for n in self.naug):
            raise DiagError(f"{source}: naug values must be >= 1, got {self.naug}")
        if isinstance(self.seeds, dict):
            if set(self.seeds) != {"generation", "training"}:
                raise DiagError(f"{source}: seeds must be a list, or a mapping with generation "
                                "and training lists")
        elif not self.seeds:
            raise DiagError(f"{source}: seeds must not be empty")

    def seed_pairs(self) -> list[tuple[int, int]]:
        """``(generation seed, training seed)`` of every run of a cell."""
        if isinstance(self.seeds, dict):
            return [(int(g), int(t)) for g in self.seeds["generation"]
                    for t in self.seeds["training"]]
        return [(int(s), int(s)) for s in self.seeds]


def is_in_and_out(method: Any) -> bool:
    """Whether a grid method is the ``in-and-out`` mixture (``kind: in-and-out``)."""
    return isinstance(method, dict) and method.get("kind") == IN_AND_OUT


def _check_in_and_out(method: dict[str, Any], settings: list[str], where_: str) -> None:
    unknown = [k for k in method if k not in IN_AND_OUT_FIELDS]
    if unknown:
        raise DiagError(f"{where_}: unknown field '{unknown[0]}' of an in-and-out method: use "
                        f"{', '.join(IN_AND_OUT_FIELDS)}")
    ratio = method.get("ratio", 0.5)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise DiagError(f"{where_}.ratio must be a number in [0, 1] (the share of Naug made by "
                        f"text2img), got {ratio!r}")
    for key in ("text2img", "memseg"):
        if not isinstance(method.get(key, {}), dict):
            raise DiagError(f"{where_}.{key} must be a mapping of generator parameters")
    adapter = method.get("adapter")
    if adapter is not None and not isinstance(adapter, str):
        raise DiagError(f"{where_}.adapter must be the path of a `diag finetune` OUT folder")
    if "full-shot" in settings and ratio > 0 and not adapter:
        raise DiagError(f"{where_}.adapter is missing: full-shot In&Out generates with a LoRA "
                        "adapter; run `diag finetune` on the training split first and set "
                        "adapter to its OUT folder (or drop full-shot from settings)")


def in_and_out_parts(grid: Grid, name: str) -> list[tuple[str, dict[str, Any], float]]:
    """The generate specs an ``in-and-out`` method mixes: ``(part, spec, share)`` for
    text2img (with the method's adapter, which the bench's plan keeps for full-shot cells
    only) and memseg; parts with share 0 are left out."""
    method = grid.methods[name]
    ratio = float(method.get("ratio", 0.5))
    t2i = {"kind": "text2img", **copy.deepcopy(method.get("text2img") or {})}
    if method.get("adapter"):
        t2i["adapter"] = method["adapter"]
    base = _local(grid, grid.generate)
    parts = []
    for part, generator, share in (("text2img", t2i, ratio),
                                   ("memseg", {"kind": "memseg", **(method.get("memseg") or {})},
                                    1.0 - ratio)):
        if share <= 0:
            continue
        spec = _merge(base, _local(grid, {"generator": generator}))
        if method.get("prompt") and isinstance(spec.get("defects"), list) and part == "text2img":
            for d in spec["defects"]:
                d["prompt"] = method["prompt"]
        parts.append((f"{name}-{part}", spec, share))
    return parts


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of mappings: ``over`` wins; lists and scalars are replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else copy.deepcopy(v)
    return out


def parse_grid(data: dict[str, Any], source: str = "grid", base: Path | None = None) -> Grid:
    """Validate a grid mapping, filling in its profile's defaults."""
    data = dict(data)
    profile = data.get("profile")
    if profile is not None and profile not in PROFILES:
        raise DiagError(f"{source}: profile is '{profile}', expected quick, paper or null")
    if profile:
        defaults = PROFILE_DEFAULTS[profile]
        data = {**defaults, **data}
        if isinstance(data.get("train"), dict):
            data["train"] = _merge(defaults["train"], data["train"])
    if "dataset" in data:
        data["dataset"] = _options_beside_root(data["dataset"])
    grid = from_dict(Grid, {**data, "source": source, "base": str(base or Path("."))}, source)
    return grid


def load_grid(path: str | Path, overrides: list[str] | None = None) -> Grid:
    """Read and validate a grid file (``--set`` overrides apply first)."""
    path = Path(path)
    data = apply_overrides(load_yaml(path), overrides)
    return parse_grid(data, f"grid '{path}'", path.resolve().parent)


def resolve(grid: Grid, value: str) -> Path:
    """A path of the grid, relative to its folder."""
    return Path(resolve_path(value, Path(grid.base)))


def _local(grid: Grid, data: dict[str, Any]) -> dict[str, Any]:
    """A copy of spec mapping ``data`` of the grid with its paths (model, adapter, regions,
    textures) relative to the grid's folder."""
    from diag.generate.spec import resolve_paths

    return resolve_paths(copy.deepcopy(data), Path(grid.base))


def method_spec(grid: Grid, name: str) -> dict[str, Any] | None:
    """The generate spec mapping of a method (without ``dataset``), None for real-only."""
    from diag.generate.spec import resolve_paths

    method = grid.methods[name]
    if method == REAL_ONLY:
        return None
    base = _local(grid, grid.generate)
    if is_in_and_out(method):  # its parts' specs: in_and_out_parts; defects are the grid's
        return _merge(base, {})
    if isinstance(method, str):
        path = resolve(grid, method)
        spec = resolve_paths(load_yaml(path), path.parent)
        spec.pop("dataset", None)
        return _merge(base, spec)
    return _merge(base, _local(grid, method))


def train_config(grid: Grid) -> dict[str, Any]:
    """The grid's training config as a mapping (a file is read; ``data`` is dropped)."""
    if isinstance(grid.train, str):
        path = resolve(grid, grid.train)
        cfg = load_yaml(path)
        if not isinstance(cfg, dict):
            raise DiagError(f"{where(path)} must hold a training config mapping")
    else:
        cfg = copy.deepcopy(grid.train)
    cfg.pop("data", None)
    return cfg
