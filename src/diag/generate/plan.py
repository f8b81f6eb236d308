"""The plan of a spec: which samples, from which images, with which seeds. Pure: no files.

Item ``k`` of defect ``d`` always gets the same defect-free image and the same seed (derived
from the spec seed, the defect name and ``k``), whatever the other defects' counts, the shard
or the machine; raising a defect's count extends its set without changing the samples already
planned.

>>> sample_seed(0, "crack", 0) == sample_seed(0, "crack", 0) != sample_seed(0, "crack", 1)
True
>>> parse_shard("2/8")
(2, 8)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from diag.data import Sample
from diag.errors import DiagError
from diag.generate.spec import Spec
from diag.generators.base import rng_for


def sample_seed(spec_seed: int, defect: str, k: int) -> int:
    """The seed of item ``k`` of ``defect``: stable across machines, counts and orderings."""
    digest = hashlib.sha256(f"{spec_seed}/{defect}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class PlanItem:
    """One sample to generate."""

    index: int
    id: str
    defect: str
    prompt: str
    negative_prompt: str
    seed: int
    source: Sample


Sources = Sequence[Sample] | Mapping[str, Sequence[Sample]]


def iter_plan(spec: Spec, negatives: Sources) -> Iterator[PlanItem]:
    """The planned samples in order, one at a time (a huge count costs nothing up front).

    ``negatives``: the defect-free images every defect type draws from, or a mapping from
    defect name to its own images (``Inputs.candidates``: drawn regions may cover only some).
    """
    index = 0
    for d in spec.defects:
        pool = negatives.get(d.name, ()) if isinstance(negatives, Mapping) else negatives
        if not pool:
            raise DiagError(f"the plan needs at least one defect-free image for '{d.name}'")
        name_key = int.from_bytes(hashlib.sha256(d.name.encode()).digest()[:4], "big")
        order = rng_for(spec.seed, name_key).permutation(len(pool))
        for k in range(d.count):
            # a fresh permutation each pass over the images, so repeats are spread out
            p = k // len(pool)
            if p and k % len(pool) == 0:
                order = rng_for(spec.seed, name_key, p).permutation(len(pool))
            src = pool[int(order[k % len(pool)])]
            yield PlanItem(index, f"{d.name}_{k:05d}", d.name, d.prompt, d.negative_prompt,
                           sample_seed(spec.seed, d.name, k), src)
            index += 1


def make_plan(spec: Spec, negatives: Sources) -> list[PlanItem]:
    """The deterministic list of samples a spec asks for."""
    return list(iter_plan(spec, negatives))


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``; ``None`` -> ``(0, 1)``."""
    if not text:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise DiagError(f"bad --shard '{text}': write it as i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise DiagError(f"bad --shard '{text}': need 0 <= i < n")
    return i, n


def shard_of(items: Sequence[PlanItem], shard: tuple[int, int]) -> list[PlanItem]:
    """The items of shard ``(i, n)``: plan indices ``i, i + n, i + 2n, ...``."""
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise DiagError(f"bad shard {i}/{n}: use --shard i/n with 0 <= i < n")
    return [it for it in items if it.index % n == i]
