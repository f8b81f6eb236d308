"""Plan -> shard -> run -> manifest: reproducible, resumable, shardable generation.

>>> from diag.spec import load_spec  # doctest: +SKIP
>>> summary = run_spec(load_spec("examples/magnetic_tile.yaml"), "out/mt")  # doctest: +SKIP

The plan is a pure function of the spec and the dataset's file list: item ``k`` of defect
``d`` always gets the same negative image, the same seed (derived from the spec seed, the
defect name and ``k``) and so the same region and pixels. Raising a defect's count extends its
set without changing the samples already made.

Each finished sample is written as ``images/<id>.png`` and ``masks/<id>.png`` (atomically), and
only then recorded in the manifest. A rerun skips every id that is recorded with both files
present, so a run killed at any moment completes with nothing lost. ``shard=(i, n)`` runs the
items whose plan index is ``i`` modulo ``n``; shards write their own manifest files, merged
into ``manifest.jsonl`` once the whole plan is done.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diag import __version__
from diag.data import Sample
from diag.errors import DiagError, where
from diag.generators.base import Generator, Request, Result, make_generator, paste, rng_for
from diag.imageio import write_image, write_mask, write_text
from diag.manifest import ManifestWriter, manifest_name, merge_manifests, read_manifest
from diag.regions import RegionSource, make_regions
from diag.spec import Spec

SPEC_FILE = "spec.yaml"


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


@dataclass
class Inputs:
    """The dataset as the plan and the generator see it."""

    negatives: list[Sample]
    positives: list[Sample]
    regions: RegionSource | None


def load_inputs(spec: Spec) -> Inputs:
    """Read the spec's dataset and build its region source."""
    d = spec.dataset
    samples = d.load()
    negatives = [s for s in samples if not s.label]
    positives = [s for s in samples if s.label]
    if not negatives:
        raise DiagError(f"dataset {where(d.root)} (split {d.split}) has no defect-free images to "
                        "put defects on: check dataset.root, layout and split")
    regions = make_regions(spec.regions, positives) if spec.regions is not None else None
    if regions is not None:
        covered = [s for s in negatives if regions.covers(s)]
        if not covered:
            raise DiagError(f"no drawn region matches any defect-free image in {where(d.root)}: "
                            "name region files after image stems, or add default.png")
        negatives = covered
    return Inputs(negatives, positives, regions)


def make_plan(spec: Spec, negatives: Sequence[Sample]) -> list[PlanItem]:
    """The deterministic list of samples a spec asks for."""
    items: list[PlanItem] = []
    for d in spec.defects:
        name_key = int.from_bytes(hashlib.sha256(d.name.encode()).digest()[:4], "big")
        order = rng_for(spec.seed, name_key).permutation(len(negatives))
        for k in range(d.count):
            # a fresh permutation each pass over the negatives, so repeats are spread out
            p = k // len(negatives)
            perm = order if p == 0 else rng_for(spec.seed, name_key, p).permutation(len(negatives))
            src = negatives[int(perm[k % len(negatives)])]
            items.append(PlanItem(len(items), f"{d.name}_{k:05d}", d.name, d.prompt,
                                  d.negative_prompt, sample_seed(spec.seed, d.name, k), src))
    return items


def shard_of(items: Sequence[PlanItem], shard: tuple[int, int]) -> list[PlanItem]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise DiagError(f"bad shard {i}/{n}: use --shard i/n with 0 <= i < n")
    return [it for it in items if it.index % n == i]


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


def _fingerprint(spec: Spec) -> dict[str, Any]:
    """Everything that changes pixels, except counts (which may grow) and the device."""
    d = spec.to_dict()
    d.pop("device", None)
    d["defects"] = [{k: v for k, v in x.items() if k != "count"} for x in d["defects"]]
    return d


def check_out_folder(spec: Spec, out: Path) -> None:
    """Refuse to mix two different specs in one output folder; record the spec there."""
    import yaml

    path = out / SPEC_FILE
    if path.is_file():
        try:
            old = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            old = None
        if isinstance(old, dict) and "dataset" in old:
            old_fp = dict(old)
            old_fp.pop("device", None)
            old_fp["defects"] = [{k: v for k, v in x.items() if k != "count"}
                                 for x in old.get("defects", [])]
            new_fp = _fingerprint(spec)
            diff = sorted(k for k in set(old_fp) | set(new_fp) if old_fp.get(k) != new_fp.get(k))
            if diff:
                raise DiagError(f"{where(out)} holds a run of a different spec ({', '.join(diff)} "
                                "changed): use a new --out folder, or remove the old one")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, spec.to_yaml())


def _done_ids(out: Path) -> set[str]:
    return {r["id"] for r in read_manifest(out)
            if (out / r.get("image", "")).is_file() and (out / r.get("mask", "")).is_file()}


@dataclass
class RunSummary:
    """What a run did."""

    out: Path
    planned: int
    generated: int
    skipped: int
    seconds: float
    manifest: Path
    complete: bool
    records: list[dict[str, Any]] = field(default_factory=list)


def prepare(item: PlanItem, inputs: Inputs) -> tuple[Request, dict[str, Any] | None]:
    """The generator request of a planned sample (its source image, region, prompt, seed)."""
    image = item.source.image
    region, region_info = (None, None)
    if inputs.regions is not None:
        region, region_info = inputs.regions.sample_shape(rng_for(item.seed, 1), image.shape[:2],
                                                          item.source.path.stem, item.defect)
    request = Request(image=image, region=region, seed=item.seed, prompt=item.prompt,
                      negative_prompt=item.negative_prompt, donors=inputs.negatives,
                      defects=inputs.positives, defect=item.defect)
    return request, region_info


def finish(kind: str, item: PlanItem, request: Request, result: Result,
           region_info: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Check a generator's result against the contract; returns ``(image, mask, record)``."""
    image = request.image
    if result.image.shape != image.shape or result.image.dtype != image.dtype:
        raise RuntimeError(f"{kind} returned {result.image.shape} {result.image.dtype} "
                           f"for a {image.shape} {image.dtype} image")
    mask = np.asarray(result.mask, dtype=bool)
    if not mask.any():
        raise DiagError(f"the {kind} generator changed no pixel of {item.id} (source "
                        f"{where(item.source.path)}): check the regions section and its parameters")
    out = paste(image, result.image, mask)  # the contract, enforced: nothing outside changes
    return out, mask, {"region": region_info, "info": result.info}


def generate_one(generator: Generator, item: PlanItem, inputs: Inputs
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Generate one planned sample: returns ``(source, image, mask, record)``.

    This is the whole per-sample computation, free of files and global state, so a preview
    (the web tool) is one call.
    """
    request, region_info = prepare(item, inputs)
    image, mask, record = finish(generator.kind, item, request, generator.generate(request),
                                 region_info)
    return request.image, image, mask, record


def _generate_chunk(generator: Generator, chunk: Sequence[PlanItem], inputs: Inputs
                    ) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """Generate several items, in one batched call when the generator supports it."""
    if len(chunk) == 1 or not hasattr(generator, "generate_batch"):
        return [generate_one(generator, it, inputs)[1:] for it in chunk]
    prepared = [prepare(it, inputs) for it in chunk]
    results = generator.generate_batch([req for req, _ in prepared])
    return [finish(generator.kind, it, req, res, info)
            for it, (req, info), res in zip(chunk, prepared, results, strict=True)]


def run_spec(spec: Spec, out: str | Path, shard: tuple[int, int] = (0, 1),
             limit: int | None = None, device: str | None = None, progress: bool | None = None,
             generator: Generator | None = None,
             on_sample: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
    """Generate every planned sample of this shard that is not already done.

    Args:
        spec: The validated spec.
        out: Output folder (created).
        shard: ``(i, n)``: run plan items with index ``i`` modulo ``n``.
        limit: Stop after generating this many new samples (for previews and tests).
        device: Overrides ``spec.device`` (``auto``, ``cpu``, ``cuda``...).
        progress: Show a progress bar (None: only on a terminal).
        generator: An already built generator to use (else built from the spec when needed).
        on_sample: Called with each new manifest record.
    """
    from tqdm.auto import tqdm

    from diag.device import resolve_device

    start = time.perf_counter()
    out = Path(out)
    inputs = load_inputs(spec)
    plan = make_plan(spec, inputs.negatives)
    mine = shard_of(plan, shard)
    check_out_folder(spec, out)
    done = _done_ids(out)
    todo = [it for it in mine if it.id not in done]
    if limit is not None:
        todo = todo[:limit]
    manifest_path = out / manifest_name(shard)
    generated = 0
    records: list[dict[str, Any]] = []
    if todo:
        dev = resolve_device(device or spec.device)
        gen = generator or make_generator(spec.generator.kind, spec.generator.params, dev,
                                          spec.source)
        identity = gen.describe()
        params = spec.to_dict()["generator"]
        versions = _versions()
        threads = _torch_threads()
        with ManifestWriter(manifest_path) as manifest, tqdm(
                total=len(todo), desc=f"generate {spec.generator.kind}", unit="img",
                disable=None if progress is None else not progress) as bar:
            batch = max(1, int(getattr(gen.config, "batch_size", 1)))
            t_start = t_log = time.perf_counter()
            for k in range(0, len(todo), batch):
                chunk = todo[k:k + batch]
                t0 = time.perf_counter()
                made = _generate_chunk(gen, chunk, inputs)
                seconds = (time.perf_counter() - t0) / len(chunk)
                for item, (image, mask, extra) in zip(chunk, made, strict=True):
                    t1 = time.perf_counter()
                    write_image(out / "images" / f"{item.id}.png", image)
                    write_mask(out / "masks" / f"{item.id}.png", mask)
                    record = {
                        "id": item.id, "index": item.index,
                        "image": f"images/{item.id}.png", "mask": f"masks/{item.id}.png",
                        "source": str(item.source.path), "source_id": item.source.id,
                        "defect": item.defect, "prompt": item.prompt,
                        "negative_prompt": item.negative_prompt, "seed": item.seed,
                        "spec_seed": spec.seed, **identity, "params": params,
                        "size": list(image.shape[:2]), "mask_pixels": int(mask.sum()),
                        **extra, "device": dev, "threads": threads,
                        "seconds": round(seconds + time.perf_counter() - t1, 4),
                        "versions": versions,
                    }
                    manifest.append(record)
                    records.append(record)
                    generated += 1
                    if on_sample:
                        on_sample(record)
                    bar.update(1)
                    now = time.perf_counter()
                    if bar.disable and progress is not False and now - t_log >= 30:
                        t_log, rate = now, (now - t_start) / generated  # no tty: a line / 30 s
                        print(f"generated {generated}/{len(todo)} ({rate:.2f} s/image, about "
                              f"{rate * (len(todo) - generated) / 60:.0f} min left)",
                              file=sys.stderr, flush=True)
    all_done = _done_ids(out)
    complete = all(it.id in all_done for it in plan)
    final = out / "manifest.jsonl"
    if complete and shard[1] > 1:
        final = merge_manifests(out)
    elif shard[1] == 1:
        final = manifest_path
    skipped = sum(it.id in done for it in mine)
    return RunSummary(out, len(mine), generated, skipped, time.perf_counter() - start,
                      final if final.exists() else manifest_path, complete, records)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"diag": __version__}
    for pkg in ("torch", "diffusers", "transformers", "numpy", "pillow"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out
