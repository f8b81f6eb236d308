"""The plan of a spec: which samples, from which images, with which seeds. Pure: no files.

Item ``k`` of defect ``d`` always gets the same defect-free image and the same seed (derived
from the spec seed, the defect name and ``k``), whatever the other defects' counts, the shard
or the machine; raising a defect's count extends its set without changing the samples already
planned. The expert's picks (``defects[i].picks``, from ``diag ui``) come after every type's
counted items: pick ``j`` of ``d`` is ``<d>_p<j>``, on the image and with the seed it names.

>>> sample_seed(0, "crack", 0) == sample_seed(0, "crack", 0) != sample_seed(0, "crack", 1)
True
>>> parse_shard("2/8")
(2, 8)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    for i, d in enumerate(spec.defects):
        if not d.picks:
            continue
        pool = negatives.get(d.name, ()) if isinstance(negatives, Mapping) else negatives
        by_id = {s.id: s for s in pool}
        for j, pick in enumerate(d.picks):
            if pick.image not in by_id:
                raise DiagError(f"{spec.source}: defects[{i}].picks[{j}].image '{pick.image}' is "
                                f"not a defect-free image that '{d.name}' can go on (not in the "
                                "dataset's split, or no region drawn for it): fix the id or "
                                "remove the pick")
            yield PlanItem(index, pick_id(d.name, j), d.name, d.prompt, d.negative_prompt,
                           pick.seed, by_id[pick.image])
            index += 1


def pick_id(defect: str, j: int) -> str:
    """The sample id of pick ``j`` of ``defect``.

    >>> pick_id("crack", 3)
    'crack_p00003'
    """
    return f"{defect}_p{j:05d}"


def is_pick(item_id: str) -> bool:
    """Whether a sample id names an expert's pick (``crack_p00003``), not a counted item.

    >>> is_pick("crack_p00003"), is_pick("crack_00003"), is_pick("x_p1_00002")
    (True, False, False)
    """
    k = item_id.rpartition("_")[2]
    return k[:1] == "p" and k[1:].isdigit()


def plan_index(spec: Spec) -> Callable[[str], int | None]:
    """A function from sample id to plan index (None: the plan has no such id), without
    building the plan.

    >>> from diag.generate.spec import parse_spec
    >>> spec = parse_spec({"dataset": {"root": "d"}, "generator": {"kind": "memseg"},
    ...     "defects": [{"name": "a", "count": 2, "picks": [{"image": "x", "seed": 1}]},
    ...                 {"name": "b", "count": 1}]})
    >>> [plan_index(spec)(i) for i in ("a_00001", "b_00000", "a_p00000", "a_00002", "c_00000")]
    [1, 2, 3, None, None]
    """
    counted: dict[str, tuple[int, int]] = {}
    picked: dict[str, tuple[int, int]] = {}
    at = 0
    for d in spec.defects:
        counted[d.name], at = (at, d.count), at + d.count
    for d in spec.defects:
        picked[d.name], at = (at, len(d.picks or ())), at + len(d.picks or ())

    def index(item_id: str) -> int | None:
        name, _, k = item_id.rpartition("_")
        table = picked if is_pick(item_id) else counted
        k = k[1:] if is_pick(item_id) else k
        if name not in table or not k.isdigit():
            return None
        offset, n = table[name]
        return offset + int(k) if int(k) < n else None

    return index


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
