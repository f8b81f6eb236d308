"""One planned sample, start to finish, without writing a file: the single-sample API.

``diag generate`` runs every planned item through :func:`generate_chunk`; a preview of one
sample is :func:`generate_one`. Both check each generator result against the contract where
it is produced (:func:`diag.generators.base.check_result`): a generator that changes a pixel
outside its mask is an error naming it, never silently repaired.

>>> from diag.generate import load_spec, load_inputs, make_plan  # doctest: +SKIP
>>> spec = load_spec("examples/magnetic_tile.yaml", ["generator.kind=memseg"])  # doctest: +SKIP
>>> inputs = load_inputs(spec)  # doctest: +SKIP
>>> made = generate_one(make_generator("memseg", {}), make_plan(spec, inputs.candidates)[0],
...                     inputs)  # doctest: +SKIP
>>> made.image.shape == made.source.shape  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diag.config import to_dict
from diag.data import Sample
from diag.errors import DiagError, where
from diag.generate.plan import PlanItem
from diag.generate.spec import Spec
from diag.generators.base import (
    Generator,
    GeneratorError,
    Request,
    Result,
    check_result,
    rng_for,
)
from diag.regions import RegionSource, make_regions


@dataclass
class Inputs:
    """The dataset as the plan and the generator see it.

    Attributes:
        negatives: Every defect-free image of the dataset's split (the generators' donors).
        positives: The real defective images (masks for ``real-masks``, copy-paste donors).
        regions: Each defect type's region source (None: the generator places the defect);
            defect types with the same regions share one source.
        candidates: Each defect type's defect-free images: all of ``negatives`` unless its
            drawn regions cover only some images.
    """

    negatives: list[Sample]
    positives: list[Sample]
    regions: dict[str, RegionSource | None] = field(default_factory=dict)
    candidates: dict[str, list[Sample]] = field(default_factory=dict)


@dataclass
class Made:
    """A generated sample: the source pixels, the new image, its mask, and the manifest facts
    the generator and the region source recorded (``region``, ``info``, ``background``).
    ``mask`` is None for a whole generated image (``background: whole``, text2img)."""

    source: np.ndarray
    image: np.ndarray
    mask: np.ndarray | None
    record: dict[str, Any]


def load_inputs(spec: Spec) -> Inputs:
    """Read the spec's dataset and build its region source."""
    d = spec.dataset
    samples = d.load()
    negatives = [s for s in samples if not s.label]
    positives = [s for s in samples if s.label]
    if not negatives:
        raise DiagError(f"dataset {where(d.root)} (split {d.split}) has no defect-free images to "
                        "put defects on: check dataset.root, layout and split")
    shared: dict[str, RegionSource] = {}
    regions: dict[str, RegionSource | None] = {}
    candidates: dict[str, list[Sample]] = {}
    for defect in spec.defects:
        rs = defect.regions or spec.regions
        if rs is None:
            regions[defect.name], candidates[defect.name] = None, negatives
            continue
        key = json.dumps(to_dict(rs), sort_keys=True)
        if key not in shared:
            shared[key] = make_regions(rs, positives)
        src = regions[defect.name] = shared[key]
        candidates[defect.name] = [s for s in negatives if src.covers(s, defect.name)]
        if not candidates[defect.name]:
            hint = src.drawn.hint(defect.name) if src.drawn is not None else ""
            raise DiagError(f"no drawn region for defect '{defect.name}' matches any defect-free "
                            f"image in {where(d.root)}: name region files after image stems, or "
                            f"add default.png{hint}")
    # every defect-free image stays a texture donor, wherever regions are drawn: a sample
    # never changes because a region was painted on another image
    return Inputs(negatives, positives, regions, candidates)


def prepare(item: PlanItem, inputs: Inputs) -> tuple[Request, dict[str, Any] | None]:
    """The generator request of a planned sample (its source image, region, prompt, seed)."""
    image = item.source.image
    region, region_info = (None, None)
    source = inputs.regions.get(item.defect)
    if source is not None:
        region, region_info = source.sample_shape(rng_for(item.seed, 1), image.shape[:2],
                                                          item.source.path.stem, item.defect)
    request = Request(image=image, region=region, seed=item.seed, prompt=item.prompt,
                      negative_prompt=item.negative_prompt, donors=inputs.negatives,
                      defects=inputs.positives, defect=item.defect,
                      name=f"{item.id} (source {where(item.source.path)})")
    return request, region_info


def _made(kind: str, request: Request, result: Result, region_info: dict[str, Any] | None
          ) -> Made:
    mask = check_result(kind, request, result, request.name)
    return Made(request.image, result.image, mask,
                {"region": region_info, "info": result.info, "background": result.background})


def generate_one(generator: Generator, item: PlanItem, inputs: Inputs) -> Made:
    """Generate one planned sample, checked against the generator contract."""
    request, region_info = prepare(item, inputs)
    return _made(generator.kind, request, generator.generate(request), region_info)


def generate_chunk(generator: Generator, chunk: Sequence[PlanItem], inputs: Inputs
                   ) -> list[Made]:
    """Generate several items in one :meth:`~diag.generators.base.Generator.generate_batch`
    call (a sample's result does not depend on its batch-mates)."""
    prepared = [prepare(it, inputs) for it in chunk]
    results = generator.generate_batch([req for req, _ in prepared])
    if len(results) != len(chunk):
        raise GeneratorError(f"generator '{generator.kind}' returned {len(results)} results for "
                        f"{len(chunk)} requests")
    return [_made(generator.kind, req, res, info)
            for (req, info), res in zip(prepared, results, strict=True)]
