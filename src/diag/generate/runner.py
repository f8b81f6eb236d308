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
import itertools
import os
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag import __version__
from diag.data.manifest import (
    MANIFEST,
    ManifestWriter,
    manifest_name,
    merge_manifests,
    read_manifest,
    sample_files,
)
from diag.errors import DiagError, warn, where
from diag.files import TMP_SUFFIX, is_locked, lock_file, remove_temp_files, write_text
from diag.generate.integrity import (
    INPUTS_FILE,
    check_generator,
    check_inputs,
    fingerprint,
    read_inputs,
    write_inputs,
)
from diag.generate.plan import PlanItem, iter_plan, plan_index, shard_of
from diag.generate.sample import Inputs, Made, generate_chunk, load_inputs
from diag.generate.spec import Spec
from diag.generators.base import Generator, make_generator
from diag.imageio import write_image, write_mask

SPEC_FILE = "spec.yaml"
MANIFEST_LOCK = "manifest.jsonl"
LOG_FILE = "generate.log"
LOG_EVERY = 10.0  # seconds between progress lines without a terminal


class RunLog:
    """Appends time-stamped lines to ``OUT/generate.log`` (start, progress, end, or why a run
    stopped); shards share the file, each line says which shard wrote it. A log that cannot
    be written never stops a run."""

    def __init__(self, out: Path, shard: tuple[int, int]) -> None:
        self.path = out / LOG_FILE
        self.tag = f"shard {shard[0]}/{shard[1]} pid {os.getpid()}"

    def __call__(self, message: str, echo: bool = False) -> None:
        import datetime as dt

        stamp = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        with contextlib.suppress(OSError), open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} [{self.tag}] {message}\n")
        if echo:
            print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def folder_lock(out: Path, name: str, wait: bool = False) -> Iterator[bool]:
    """Hold the lock ``OUT/.<name>.lock`` (see :func:`diag.files.lock_file`)."""
    with lock_file(out / f".{name}.lock", wait) as held:
        yield held


def _in_use(out: Path) -> bool:
    """Whether another process holds a manifest lock of ``out`` (is generating there)."""
    return any(is_locked(lock) for lock in out.glob(".manifest*.lock"))


def spec_fingerprint(data: dict[str, Any]) -> dict[str, Any]:
    """Everything of a spec dict that changes pixels, except counts and picks (which may
    grow) and the device."""
    d = dict(data)
    d.pop("device", None)
    d["defects"] = [{k: v for k, v in x.items() if k not in ("count", "picks")}
                    for x in d.get("defects", [])]
    d["generator"] = _generator_fingerprint(d.get("generator"))
    return d


SAME_PIXELS = ("batch_size", "prompt_cache")  # generator options that never change an image


def _generator_fingerprint(gen: Any) -> Any:
    """The generator section with every default filled in (a spec.yaml written before an
    option existed compares equal) and without options that leave the pixels alone."""
    from diag.config import to_dict
    from diag.generate.spec import _own_params
    from diag.generators.base import generator_config

    if not isinstance(gen, dict):
        return gen
    params = dict(gen)
    kind = str(params.pop("kind", "diffusion"))
    try:
        own, _ = _own_params(kind, params)
        full = {"kind": kind, **to_dict(generator_config(kind, own, "spec"))}
    except DiagError:
        full = dict(gen)
    return {k: v for k, v in full.items() if k not in SAME_PIXELS}


def _grown(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new``'s defect types are ``old``'s, each with the same picks first, and maybe
    more types after them: a spec grown this way plans every old sample as before."""
    a, b = old.get("defects") or [], new.get("defects") or []
    if len(a) > len(b):
        return False
    for x, y in zip(a, b, strict=False):
        px, py = x.get("picks") or [], y.get("picks") or []
        if py[:len(px)] != px:
            return False
    return True


def _old_spec(out: Path) -> dict[str, Any] | None:
    import yaml

    try:
        old = yaml.safe_load((out / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return old if isinstance(old, dict) and "dataset" in old else None


def _spec_diff(spec: Spec, out: Path) -> list[str] | None:
    """Fields whose change would alter pixels, against the folder's spec.yaml (None: no spec)."""
    old = _old_spec(out)
    if old is None:
        return None
    new = spec.to_dict()
    old_fp, new_fp = spec_fingerprint(old), spec_fingerprint(new)
    if _grown(old, new):  # defect types added after the old ones plan nothing old anew
        new_fp["defects"] = new_fp["defects"][:len(old_fp["defects"])]
    else:
        old_fp["defects"] = old.get("defects")  # a pick changed or removed: say "defects"
    return sorted(k for k in set(old_fp) | set(new_fp) if old_fp.get(k) != new_fp.get(k))


def check_something_planned(spec: Spec) -> None:
    """A spec whose counts are all 0 (and has no picks) is a one-line error."""
    if spec.total == 0:
        raise DiagError(f"{spec.source}: every defect's count is 0, so there is nothing to "
                        "generate: set defects[i].count")


def check_out_path(out: Path) -> None:
    """``out`` must be a folder, or creatable as one: a one-line error otherwise."""
    if out.exists() and not out.is_dir():
        raise DiagError(f"--out {where(out)} is a file, not a folder: give the path of a folder "
                        "(it is created if missing)")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DiagError(f"cannot create --out {where(out)}: {where(parent)} is a file, not a "
                        "folder: check the path")


def writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (or in its nearest existing parent)."""
    while not folder.exists():
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def _claim(spec: Spec, out: Path) -> list[dict[str, Any]]:
    """Write ``spec`` as the folder's spec.yaml unless the folder holds samples (or a running
    generate) of a spec that plans them differently. Returns the finished samples. Call it
    holding the folder's spec lock."""
    finished = _finished(out)
    diff = _spec_diff(spec, out)
    if diff:
        if finished or _in_use(out):
            state = "holds samples of" if finished else "is being written by"
            raise DiagError(f"{where(out)} {state} a different spec ({', '.join(diff)} "
                            "changed): use a new --out folder, or --overwrite to start "
                            "this one afresh")
        warn(f"{where(out)} held the spec of a run that made no sample: replacing it")
    remove_temp_files(out, [SPEC_FILE, INPUTS_FILE])
    text = spec.to_yaml()
    if diff != [] or (out / SPEC_FILE).read_text(encoding="utf-8") != text:
        write_text(out / SPEC_FILE, text)
    return finished


def claim_spec(spec: Spec, out: Path) -> None:
    """Save ``spec`` as ``out/spec.yaml`` (``diag ui``'s save), with the checks a run makes:
    refused when the folder holds samples of a spec that plans them differently."""
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "spec", wait=True):
        _claim(spec, out)


def prepare_out_folder(spec: Spec, out: Path, inputs: Inputs, allow_changed: bool
                       ) -> dict[str, Any]:
    """Own ``out`` for this spec: refuse another spec's samples and changed inputs, record the
    spec and the inputs, remove temporary files of killed runs. Returns the inputs record.

    A spec.yaml left by a run that made nothing (say, a typo in the model path) is replaced.
    """
    with folder_lock(out, "spec", wait=True):
        finished = _claim(spec, out)
        paths_of = {s.id: [str(s.path)] + ([str(s.mask_path)] if s.mask_path else [])
                    for s in [*inputs.negatives, *inputs.positives]}
        dirs = [Path(r.path) for r in [spec.regions, *(d.regions for d in spec.defects)]
                if r is not None and r.path and Path(r.path).is_dir()]
        record = check_inputs(out, fingerprint(inputs, spec, read_inputs(out)), finished,
                              allow_changed, paths_of, dirs)
        write_inputs(out, record)
    return record


def _finished(out: Path) -> list[dict[str, Any]]:
    """Manifest records whose image and mask (when it has one) are on disk."""
    return [r for r in read_manifest(out) if sample_files(out, r) is not None]


def _done_ids(out: Path) -> set[str]:
    return {r["id"] for r in _finished(out)}


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
             on_sample: Callable[[dict[str, Any]], None] | None = None,
             allow_changed_inputs: bool = False, overwrite: bool = False,
             ids: Collection[str] | None = None) -> RunSummary:
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
        allow_changed_inputs: Continue a folder whose dataset, region files, textures or model
            changed since its samples were made (recorded in ``inputs.json``).
        overwrite: Start ``out`` afresh: delete the samples, manifests and records a previous
            run left there (only diag's own files; refused while another run writes there).
        ids: Make only these planned samples (``diag ui`` accepting a pick), if not done yet.

    A run that stops before its first sample removes the ``spec.yaml`` and ``inputs.json``
    it wrote to a folder without samples, so a corrected rerun starts clean.

    Raises:
        DiagError: bad input, a different spec in ``out``, changed inputs, the same shard
            already running there, a folder that cannot be written, or a generator breaking
            its contract.
    """
    start = time.perf_counter()
    out = Path(out)
    i, n = shard
    shard_of([], shard)  # validates the shard
    if limit is not None and limit < 1:
        raise DiagError(f"--limit {limit}: give the number of new samples to make, at least 1 "
                        "(or --dry-run to plan without generating)")
    check_something_planned(spec)
    check_out_path(out)
    inputs = load_inputs(spec)
    index_of = plan_index(spec)
    mine = len(range(i, spec.total, n))
    if ids is not None:
        unknown = [x for x in ids if index_of(x) is None]
        if unknown:
            raise DiagError(f"{spec.source}: the plan has no sample '{unknown[0]}': check the "
                            "defect name and its count or picks")
        ids = set(ids)
        mine = sum(1 for x in ids if index_of(x) % n == i)
    if not writable(out):
        return _read_only(spec, out, shard, mine, index_of, start)
    if overwrite and n > 1:
        raise DiagError("--overwrite with --shard: one shard would delete the others' samples; "
                        "start the folder afresh once without --shard (or use a new --out)")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_out_folder(out)
    with _forget_if_nothing_made(out):
        inputs_record = prepare_out_folder(spec, out, inputs, allow_changed_inputs)
        manifest_path = out / manifest_name(shard)
        log = RunLog(out, shard)
        with folder_lock(out, manifest_path.name) as locked:
            if not locked:
                raise DiagError(f"another diag generate run is writing {where(manifest_path)}: "
                                "wait for it to finish (or stop it), or use another --out "
                                "folder")
            done = _done_ids(out)
            skipped = sum(1 for d in done if (x := index_of(d)) is not None
                          and x % n == i and (ids is None or d in ids))
            _remove_my_temp_files(spec, out, index_of, shard)
            remaining = mine - skipped if limit is None else min(limit, mine - skipped)
            todo = itertools.islice((it for it in iter_plan(spec, inputs.candidates)
                                     if it.index % n == i and it.id not in done
                                     and (ids is None or it.id in ids)), remaining)
            log(f"start: {remaining} to generate, {skipped} of {mine} already done, generator "
                f"{spec.generator.kind}")
            try:
                records = _run(spec, out, todo, remaining, inputs, manifest_path, device,
                               progress, generator, on_sample, inputs_record, bool(done),
                               allow_changed_inputs, log) if remaining else []
            except BaseException as exc:
                log(f"stopped: {type(exc).__name__}: {' '.join(str(exc).split())}")
                raise
        log(f"end: {len(records)} generated in {time.perf_counter() - start:.1f} s")
        return _finish(spec, out, shard, mine, skipped, records, index_of, manifest_path, start)


OWN_FILES = (SPEC_FILE, INPUTS_FILE, LOG_FILE, MANIFEST)


@contextlib.contextmanager
def _forget_if_nothing_made(out: Path) -> Iterator[None]:
    """If the run inside stops (error, Ctrl-C) while the folder holds no sample and nobody else
    is generating there, remove the spec and inputs records it wrote, so a corrected spec is
    not refused. The log keeps why it stopped."""
    try:
        yield
    except BaseException:
        _forget_failed_start(out)
        raise


def _forget_failed_start(out: Path) -> None:
    """See :func:`_forget_if_nothing_made`."""
    with contextlib.suppress(OSError, DiagError), folder_lock(out, "spec", wait=True):
        if _in_use(out) or read_manifest(out):
            return
        for p in [out / SPEC_FILE, out / INPUTS_FILE, *out.glob("manifest*.jsonl")]:
            if p.name.startswith("manifest") and p.stat().st_size:
                continue  # unreadable lines: not ours to judge, keep them
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def clear_out_folder(out: Path) -> None:
    """``--overwrite``: delete what diag generate wrote in ``out`` (samples, manifests, spec,
    inputs, log); refuse a folder with other files, or one another run is writing."""
    import shutil

    with folder_lock(out, "spec", wait=True):
        if _in_use(out):
            raise DiagError(f"--overwrite: another diag generate run is writing {where(out)}: "
                            "stop it first")
        entries = [p for p in out.iterdir() if not p.name.startswith(".")]
        ours = {*OWN_FILES, "images", "masks"}
        foreign = [p.name for p in entries if p.name not in ours
                   and not (p.name.startswith("manifest-") and p.suffix == ".jsonl")]
        if foreign:
            raise DiagError(f"--overwrite: {where(out)} holds files diag generate did not write "
                            f"({', '.join(sorted(foreign)[:3])}): it only deletes its own "
                            "outputs; move them away or choose another --out")
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        remove_temp_files(out)


def _finish(spec: Spec, out: Path, shard: tuple[int, int], mine: int, skipped: int,
            records: list[dict[str, Any]], index_of: Callable[[str], int | None], manifest_path: Path,
            start: float) -> RunSummary:
    all_done = {d for d in _done_ids(out) if index_of(d) is not None}
    complete = len(all_done) == spec.total
    final = manifest_path
    if complete and shard[1] > 1 and writable(out):
        with folder_lock(out, MANIFEST_LOCK) as locked:
            if locked:
                remove_temp_files(out, [MANIFEST])
                final = merge_manifests(out)
    return RunSummary(out, mine, len(records), skipped, time.perf_counter() - start,
                      final if final.exists() else manifest_path, complete, records)


def _read_only(spec: Spec, out: Path, shard: tuple[int, int], mine: int,
               index_of: Callable[[str], int | None], start: float) -> RunSummary:
    """A folder that cannot be written: fine when it already holds this whole spec's set."""
    diff = _spec_diff(spec, out)
    done = {d for d in _done_ids(out) if index_of(d) is not None}
    if diff is None or diff or len(done) < spec.total:
        raise DiagError(f"cannot write to {where(out)} (permission denied or a read-only disk) "
                        "and it does not hold this spec's finished set: choose a writable --out")
    skipped = sum(1 for d in done if index_of(d) % shard[1] == shard[0])
    manifest = out / MANIFEST if (out / MANIFEST).exists() else out / manifest_name(shard)
    return RunSummary(out, mine, 0, skipped, time.perf_counter() - start, manifest, True, [])


def _remove_my_temp_files(spec: Spec, out: Path, index_of: Callable[[str], int | None],
                          shard: tuple[int, int]) -> None:
    """Temporary image and mask files of this shard's samples, left by a killed run."""
    for folder in (out / "images", out / "masks"):
        if not folder.is_dir():
            continue
        names = set()
        for p in folder.glob(".*" + TMP_SUFFIX):
            stem = p.name[1:].split(".png.", 1)[0]
            x = index_of(stem)
            if x is not None and x % shard[1] == shard[0]:
                names.add(f"{stem}.png")
        if names:
            remove_temp_files(folder, names)


def _run(spec: Spec, out: Path, todo: Iterator[PlanItem], total: int, inputs: Inputs,
         manifest_path: Path, device: str | None, progress: bool | None,
         generator: Generator | None, on_sample: Callable[[dict[str, Any]], None] | None,
         inputs_record: dict[str, Any], has_samples: bool, allow_changed: bool, log: RunLog
         ) -> list[dict[str, Any]]:
    """Generate ``todo`` in chunks of the generator's batch size; write and record each."""
    from tqdm.auto import tqdm

    from diag.device import resolve_device

    dev = resolve_device(device or spec.device)
    gen = generator or make_generator(spec.generator.kind, spec.generator.params, dev,
                                      spec.source)
    identity = gen.describe()
    with folder_lock(out, "spec", wait=True):
        if check_generator(inputs_record, identity, has_samples, allow_changed, out):
            write_inputs(out, inputs_record)
    params = spec.to_dict()["generator"]
    versions = _versions()
    threads = _torch_threads()
    records: list[dict[str, Any]] = []
    with ManifestWriter(manifest_path) as manifest, tqdm(
            total=total, desc=f"generate {spec.generator.kind}", unit="img",
            disable=None if progress is None else not progress) as bar:
        t_start, t_log = time.perf_counter(), [time.perf_counter()]

        def save(item: PlanItem, m: Made, record: dict[str, Any]) -> None:
            """Files first, then the manifest line: a sample is recorded once it is whole."""
            write_image(out / "images" / f"{item.id}.png", m.image)
            if m.mask is not None:  # a whole generated image (text2img) has no mask file
                write_mask(out / "masks" / f"{item.id}.png", m.mask)
            manifest.append(record)
            records.append(record)
            if on_sample:
                on_sample(record)
            bar.update(1)
            now = time.perf_counter()
            if now - t_log[0] >= LOG_EVERY:
                t_log[0], rate = now, (now - t_start) / len(records)
                log(f"generated {len(records)}/{total} ({rate:.2f} s/image, about "
                    f"{rate * (total - len(records)) / 60:.0f} min left)",
                    echo=bar.disable and progress is not False)  # no terminal: on stderr

        with Writer() as writer:
            while chunk := list(itertools.islice(todo, gen.batch_size)):
                t0 = time.perf_counter()
                made = generate_chunk(gen, chunk, inputs)
                seconds = round((time.perf_counter() - t0) / len(chunk), 4)
                for item, m in zip(chunk, made, strict=True):
                    record = {
                        "id": item.id, "index": item.index,
                        "image": f"images/{item.id}.png",
                        "mask": None if m.mask is None else f"masks/{item.id}.png",
                        "source": str(item.source.path), "source_id": item.source.id,
                        "defect": item.defect, "prompt": item.prompt,
                        "negative_prompt": item.negative_prompt, "seed": item.seed,
                        "spec_seed": spec.seed, **identity, "params": params,
                        "size": list(m.image.shape[:2]),
                        "mask_pixels": None if m.mask is None else int(m.mask.sum()),
                        **m.record, "device": dev, "threads": threads, "seconds": seconds,
                        "versions": versions,
                    }
                    writer.put(save, item, m, record)
    return records


class Writer:
    """Saves finished samples on one background thread, in order, so the generator never
    waits for PNG encoding or the disk; at most ``depth`` samples wait. A write error stops
    the run at the next sample; leaving the ``with`` block (normally, on an error or Ctrl-C)
    first finishes the samples already handed over, which are whole."""

    def __init__(self, depth: int = 4) -> None:
        import queue
        import threading

        self.queue: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = \
            queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="diag-writer", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is None:
                try:
                    job[0](*job[1])
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                    self.error = exc

    def put(self, fn: Callable[..., None], *args: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((fn, args))

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


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
