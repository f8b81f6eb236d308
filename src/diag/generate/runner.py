"""Running a plan into an output folder: files, manifest, resume, shards and locks.

>>> from diag.generate import load_spec, run_spec  # doctest: +SKIP
>>> summary = run_spec(load_spec("examples/magnetic_tile.yaml"), "out/mt")  # doctest: +SKIP

Each finished sample is written as ``images/<id>.png`` and ``masks/<id>.png`` (atomically),
and only then recorded in the manifest. A rerun skips every id that is recorded with both
files present, so a run killed at any moment completes with nothing lost. ``shard=(i, n)``
runs the items whose plan index is ``i`` modulo ``n``; shards write their own manifest files,
merged into ``manifest.jsonl`` once the whole plan is done. A run holds a lock on its manifest
file, so the same command started twice on one folder is refused instead of doubling work.
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag import __version__
from diag.data.manifest import ManifestWriter, manifest_name, merge_manifests, read_manifest
from diag.errors import DiagError, where
from diag.generate.plan import make_plan, shard_of
from diag.generate.sample import generate_chunk, load_inputs
from diag.generate.spec import Spec
from diag.generators.base import Generator, make_generator
from diag.imageio import write_image, write_mask, write_text

SPEC_FILE = "spec.yaml"


@contextlib.contextmanager
def folder_lock(out: Path, name: str, wait: bool = False) -> Iterator[bool]:
    """Hold the lock ``OUT/.<name>.lock`` (released when the process ends, even by kill -9).

    Yields True when the lock is held; with ``wait=False`` a lock held by another process
    yields False instead of blocking.
    """
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f".{name}.lock", "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fingerprint(data: dict[str, Any]) -> dict[str, Any]:
    """Everything of a spec dict that changes pixels, except counts (which may grow) and the
    device."""
    d = dict(data)
    d.pop("device", None)
    d["defects"] = [{k: v for k, v in x.items() if k != "count"} for x in d.get("defects", [])]
    return d


def check_out_folder(spec: Spec, out: Path) -> None:
    """Refuse to mix two different specs in one output folder; record the spec there."""
    import yaml

    path = out / SPEC_FILE
    with folder_lock(out, "spec", wait=True):
        if path.is_file():
            try:
                old = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                old = None
            if isinstance(old, dict) and "dataset" in old:
                old_fp, new_fp = _fingerprint(old), _fingerprint(spec.to_dict())
                diff = sorted(k for k in set(old_fp) | set(new_fp)
                              if old_fp.get(k) != new_fp.get(k))
                if diff:
                    raise DiagError(f"{where(out)} holds a run of a different spec "
                                    f"({', '.join(diff)} changed): use a new --out folder, or "
                                    "remove the old one")
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

    Raises:
        DiagError: bad input, a different spec in ``out``, the same shard already running
            there, or a generator breaking its contract.
    """
    start = time.perf_counter()
    out = Path(out)
    inputs = load_inputs(spec)
    plan = make_plan(spec, inputs.negatives)
    mine = shard_of(plan, shard)
    manifest_path = out / manifest_name(shard)
    check_out_folder(spec, out)
    with folder_lock(out, manifest_path.name) as locked:
        if not locked:
            raise DiagError(f"another diag generate run is writing {where(manifest_path)}: wait "
                            "for it to finish (or stop it), or use another --out folder")
        done = _done_ids(out)
        todo = [it for it in mine if it.id not in done]
        if limit is not None:
            todo = todo[:limit]
        records = _run(spec, out, todo, inputs, manifest_path, device, progress, generator,
                       on_sample) if todo else []
    all_done = _done_ids(out)
    complete = all(it.id in all_done for it in plan)
    final = manifest_path
    if complete and shard[1] > 1:
        with folder_lock(out, "manifest.jsonl") as locked:
            if locked:
                final = merge_manifests(out)
    skipped = sum(it.id in done for it in mine)
    return RunSummary(out, len(mine), len(records), skipped, time.perf_counter() - start,
                      final if final.exists() else manifest_path, complete, records)


def _run(spec: Spec, out: Path, todo: list, inputs: Any, manifest_path: Path,
         device: str | None, progress: bool | None, generator: Generator | None,
         on_sample: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """Generate ``todo`` in chunks of the generator's batch size; write and record each."""
    from tqdm.auto import tqdm

    from diag.device import resolve_device

    dev = resolve_device(device or spec.device)
    gen = generator or make_generator(spec.generator.kind, spec.generator.params, dev,
                                      spec.source)
    identity = gen.describe()
    params = spec.to_dict()["generator"]
    versions = _versions()
    threads = _torch_threads()
    records: list[dict[str, Any]] = []
    with ManifestWriter(manifest_path) as manifest, tqdm(
            total=len(todo), desc=f"generate {spec.generator.kind}", unit="img",
            disable=None if progress is None else not progress) as bar:
        t_start = t_log = time.perf_counter()
        for k in range(0, len(todo), gen.batch_size):
            chunk = todo[k:k + gen.batch_size]
            t0 = time.perf_counter()
            made = generate_chunk(gen, chunk, inputs)
            seconds = (time.perf_counter() - t0) / len(chunk)
            for item, m in zip(chunk, made, strict=True):
                t1 = time.perf_counter()
                write_image(out / "images" / f"{item.id}.png", m.image)
                write_mask(out / "masks" / f"{item.id}.png", m.mask)
                record = {
                    "id": item.id, "index": item.index,
                    "image": f"images/{item.id}.png", "mask": f"masks/{item.id}.png",
                    "source": str(item.source.path), "source_id": item.source.id,
                    "defect": item.defect, "prompt": item.prompt,
                    "negative_prompt": item.negative_prompt, "seed": item.seed,
                    "spec_seed": spec.seed, **identity, "params": params,
                    "size": list(m.image.shape[:2]), "mask_pixels": int(m.mask.sum()),
                    **m.record, "device": dev, "threads": threads,
                    "seconds": round(seconds + time.perf_counter() - t1, 4),
                    "versions": versions,
                }
                manifest.append(record)
                records.append(record)
                if on_sample:
                    on_sample(record)
                bar.update(1)
                now = time.perf_counter()
                if bar.disable and progress is not False and now - t_log >= 30:
                    t_log, rate = now, (now - t_start) / len(records)  # no tty: a line / 30 s
                    print(f"generated {len(records)}/{len(todo)} ({rate:.2f} s/image, about "
                          f"{rate * (len(todo) - len(records)) / 60:.0f} min left)",
                          file=sys.stderr, flush=True)
    return records


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
