"""The defect spec: what to generate, where, with which generator, from which images.

A spec is a YAML file (see ``examples/magnetic_tile.yaml``)::

    dataset: {layout: magnetic-tile, root: path/to/data, split: train}   # negatives come from here
    regions: {source: real-masks, flip: true}                            # where defects go
    defects:
      - {name: crack, prompt: "a thin dark crack in the ceramic surface",
         negative_prompt: "smooth, plain, black, dark, shadow", count: 50}
    generator: {kind: diffusion, model: diffusers/stable-diffusion-xl-1.0-inpainting-0.1,
                steps: 30, guidance_scale: 20, strength: 0.99}
    seed: 0

>>> spec = parse_spec({"dataset": {"root": "data"}, "defects": [{"name": "crack", "count": 2}],
...                    "generator": {"kind": "memseg"}})
>>> spec.generator.kind, spec.total
('memseg', 2)

Every field is validated: an unknown key, a wrong type or a bad value gives one line naming the
spec file and the field. ``--set generator.steps=10`` overrides apply before validation. Paths
in the spec are relative to the spec file's folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.config import apply_overrides, dump_yaml, from_dict, load_yaml, resolve_path
from diag.data.ref import DatasetRef
from diag.errors import DiagError
from diag.regions import RegionSpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME = 100  # file names are <name>_<number>.png, temporaries add ~20 more (limit: 255)
MAX_COUNT = 10**12  # far beyond any run; keeps plan sizes within 64-bit integers
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


MAX_SEED = 2**63 - 1


@dataclass
class Pick:
    """A sample an expert chose in ``diag ui``: this defect type on the defect-free image
    ``image`` (a dataset sample id) with ``seed``. It is planned after every type's ``count``
    items, as ``<defect>_p<NNNNN>``, and reproduces the accepted image exactly."""

    image: str
    seed: int

    def validate(self, source: str, prefix: str) -> None:
        if not self.image:
            raise DiagError(f"{source}: {prefix}image is empty: give a dataset sample id")
        if not 0 <= self.seed <= MAX_SEED:
            raise DiagError(f"{source}: {prefix}seed must be between 0 and {MAX_SEED}")


@dataclass
class DefectSpec:
    """One defect type: its name (used in file names), text prompts, how many to make, and
    optionally its own regions (a crack along an edge, a blowhole anywhere): their fields
    override the spec's top-level ``regions`` for this defect type."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""
    count: int = 10
    # None (left out of spec.yaml) unless given: folders made before this field still resume
    regions: RegionSpec | None = field(default=None, metadata={"omit_none": True})
    # samples chosen in diag ui (see Pick); left out of spec.yaml unless given
    picks: list[Pick] | None = field(default=None, metadata={"omit_none": True})

    @property
    def planned(self) -> int:
        """How many samples this type plans: its count and its picks."""
        return self.count + len(self.picks or ())

    def validate(self, source: str, prefix: str) -> None:
        if not NAME_RE.match(self.name):
            raise DiagError(f"{source}: {prefix}name '{self.name}' must be letters, digits, "
                            "'_', '-' or '.' (it names output files)")
        if len(self.name) > MAX_NAME:
            raise DiagError(f"{source}: {prefix}name is {len(self.name)} characters long: use at "
                            f"most {MAX_NAME} (it names output files)")
        if self.count < 0:
            raise DiagError(f"{source}: {prefix}count must be >= 0")
        if self.count > MAX_COUNT:
            raise DiagError(f"{source}: {prefix}count is {self.count}: use at most {MAX_COUNT} "
                            "(and --limit to make a part of a set)")


@dataclass
class GeneratorSpec:
    """Which generator and its parameters (validated by the generator's own Config)."""

    kind: str
    params: Any


@dataclass
class Spec:
    """A whole generate spec. Build it with :func:`load_spec` or :func:`parse_spec`."""

    dataset: DatasetRef
    defects: list[DefectSpec]
    generator: GeneratorSpec
    regions: RegionSpec | None = None
    seed: int = 0
    device: str = "auto"
    source: str = "spec"

    @property
    def total(self) -> int:
        return sum(d.planned for d in self.defects)

    def to_dict(self) -> dict[str, Any]:
        from diag.config import to_dict

        return {
            "dataset": to_dict(self.dataset),
            "regions": to_dict(self.regions) if self.regions else None,
            "defects": to_dict(self.defects),
            "generator": {"kind": self.generator.kind, **to_dict(self.generator.params)},
            "seed": self.seed,
            "device": self.device,
        }

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


TOP_LEVEL = ("dataset", "regions", "defects", "generator", "seed", "device")


def parse_spec(data: dict[str, Any], source: str = "spec", notes: bool = True) -> Spec:
    """Validate a spec mapping (paths are taken as given: relative to the working folder)."""
    from diag.generators.base import generator_config

    unknown = [k for k in data if k not in TOP_LEVEL]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], TOP_LEVEL, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(TOP_LEVEL)}"
        raise DiagError(f"{source}: unknown field '{unknown[0]}'{hint}")
    if "dataset" not in data:
        raise DiagError(f"{source}: missing the dataset section (dataset: {{layout: ..., "
                        "root: ...}})")
    dataset = from_dict(DatasetRef, data["dataset"], source, "dataset.")
    if isinstance(data["dataset"], dict) and "split" not in data["dataset"]:
        dataset.split = default_split(dataset)
    defects_raw = data.get("defects")
    if not isinstance(defects_raw, list) or not defects_raw:
        raise DiagError(f"{source}: defects must be a non-empty list of {{name, prompt, count}} "
                        "entries")
    defects = [from_dict(DefectSpec, _merge_regions(d, data.get("regions")), source,
                         f"defects[{i}].") for i, d in enumerate(defects_raw)]
    names = [d.name for d in defects]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise DiagError(f"{source}: two defects are named '{dup}': names must be unique")
    regions = None
    if data.get("regions") is not None:
        regions = from_dict(RegionSpec, data["regions"], source, "regions.")
    gen_raw = data.get("generator") or {}
    if not isinstance(gen_raw, dict):
        raise DiagError(f"{source}: generator must be a mapping with a kind (diffusion, memseg...)")
    gen_raw = dict(gen_raw)
    kind = str(gen_raw.pop("kind", "diffusion"))
    try:
        gen_raw, ignored = _own_params(kind, gen_raw)
        params = generator_config(kind, gen_raw, source)
    except DiagError as exc:
        raise DiagError(f"{source}: {exc}" if not str(exc).startswith(source) else str(exc)
                        ) from None
    if ignored and notes:
        import sys

        print(f"note: {source}: generator {kind} ignores {', '.join(ignored)} (parameters of "
              "other generators)", file=sys.stderr)
    seed = from_dict(_Seed, {"seed": data.get("seed", 0)}, source).seed
    device = str(data.get("device", "auto"))
    if not DEVICE_RE.match(device.strip().lower()):
        raise DiagError(f"{source}: device is '{device}', expected auto, cpu, cuda, cuda:N or mps")
    return Spec(dataset, defects, GeneratorSpec(kind, params), regions, seed, device, source)


def _merge_regions(defect: Any, top: Any) -> Any:
    """A defect entry whose ``regions`` overrides the top-level ``regions`` field by field."""
    if not isinstance(defect, dict) or not isinstance(defect.get("regions"), dict):
        return defect
    base = top if isinstance(top, dict) else {}
    return {**defect, "regions": {**base, **defect["regions"]}}


def default_split(dataset: DatasetRef) -> str:
    """The split a generate spec reads when it names none: ``all`` for a plain folder (a
    source of defect-free images, nothing to hold out), ``train`` for layouts that hold
    training and test data (so generated images never start from a test image).

    >>> default_split(DatasetRef(root="d", layout="folder")), default_split(DatasetRef(root="d",
    ...     layout="mvtec"))
    ('all', 'train')
    """
    layout = dataset.layout
    if layout == "auto":
        from diag.data.layouts import detect_layout

        try:
            layout = detect_layout(Path(dataset.root))
        except DiagError:  # a missing root is reported when the dataset is read
            return "train"
    return "all" if layout == "folder" else "train"


def _own_params(kind: str, params: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split generator parameters into this generator's and those only other generators know,
    so that ``--set generator.kind=memseg`` works on a diffusion spec; typos still fail."""
    import dataclasses

    from diag.generators.base import GENERATORS, _lookup

    cls = _lookup(kind)
    own = {f.name for f in dataclasses.fields(cls.Config)}
    others = {f.name for c in GENERATORS.values() for f in dataclasses.fields(c.Config)} - own
    keep = {k: v for k, v in params.items() if k.replace("-", "_") not in others}
    return keep, sorted(k for k in params if k not in keep)


@dataclass
class _Seed:
    seed: int = 0



def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the spec's relative paths relative to ``base`` (the spec file's folder), in place.

    Model ids stay as they are unless they name an existing folder or start with ``.``."""
    defects = data.get("defects") if isinstance(data.get("defects"), list) else []
    nodes = [(data.get(section), key) for section, key in (
        ("dataset", "root"), ("dataset", "split_file"), ("regions", "path"),
        ("generator", "model"), ("generator", "textures"), ("generator", "adapter"))]
    nodes += [(d.get("regions"), "path") for d in defects if isinstance(d, dict)]
    for node, key in nodes:
        if not isinstance(node, dict) or not isinstance(node.get(key), str) or not node[key]:
            continue
        value = node[key]
        if key == "model" and not (value.startswith((".", "~")) or (base / value).exists()):
            continue
        node[key] = resolve_path(value, base)
    return data


def load_spec(path: str | Path, overrides: list[str] | None = None, notes: bool = True) -> Spec:
    """Read and validate a spec file; paths in it are relative to its folder, paths in
    ``overrides`` (``key=value``) to the working folder."""
    path = Path(path)
    data = resolve_paths(load_yaml(path), path.resolve().parent)
    apply_overrides(data, overrides)
    return parse_spec(data, f"spec '{path}'", notes)


