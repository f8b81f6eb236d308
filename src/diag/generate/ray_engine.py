"""``diag generate SPEC --out DIR --engine ray``: one plan over the workers of a Ray cluster.

>>> from diag.generate import load_spec  # doctest: +SKIP
>>> run_ray(load_spec("spec.yaml"), "/shared/out", workers=8)  # doctest: +SKIP

Each worker is a Ray actor that loads the generator once (on its own GPU when the cluster has
GPUs, else on one CPU) and runs plan chunks: chunk ``i`` of ``n`` is shard ``(i, n)`` of
:func:`~diag.generate.runner.run_spec`, with ``n`` a few times the number of workers so the
work spreads evenly; Ray's :class:`~ray.util.ActorPool` hands the chunks to idle workers. A
worker that dies (killed, out of memory, its machine lost) is restarted by Ray and its chunk
run again: delivery is at least once, and writes are idempotent, since ``run_spec`` skips
every sample already recorded with its files, writes images atomically, cuts a torn last
manifest line, and records each id once. The driver merges the chunk manifests into
``manifest.jsonl`` at the end. The merged set is the one a single process makes.

Every worker writes into the same ``--out`` folder, so on a multi-machine cluster it must be
on a shared file system, at the same path on every machine (as must the spec's inputs); the
workers run in the driver's working folder, so relative paths mean the same everywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diag.data.manifest import MANIFEST, manifest_files, merge_manifests, read_manifest, sample_files
from diag.errors import DiagError, where
from diag.generate.plan import iter_plan
from diag.generate.runner import (
    MANIFEST_LOCK,
    SPEC_FILE,
    RunLog,
    RunSummary,
    check_out_path,
    check_something_planned,
    clear_out_folder,
    folder_lock,
    prepare_out_folder,
    run_spec,
    writable,
)
from diag.generate.sample import load_inputs
from diag.generate.spec import Spec

CHUNKS_PER_WORKER = 4  # plan chunks per worker: small enough to balance, few manifest files
MAX_RESTARTS = 4  # how often Ray restarts a dead worker (and reruns its chunk)
PIP = "pip install 'diag[ray]'"


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise DiagError(f"--engine ray needs Ray, which is not installed: {PIP} (or pip "
                        "install 'ray[default]>=2.40'), or leave out --engine ray") from None
    return ray


def _log(out: Path, tag: str, message: str) -> None:
    """A line in ``OUT/generate.log`` (shared with the runs of the chunks)."""
    log = RunLog(out, (0, 1))
    log.tag = tag
    log(message)


class Worker:
    """A Ray actor's state: the spec and, once its first chunk starts, the generator."""

    def __init__(self, spec: Spec, device: str, out: str, number: int, cwd: str) -> None:
        with contextlib.suppress(OSError):
            os.chdir(cwd)  # relative paths (--set dataset.root=...) as the driver sees them
        self.spec, self.device, self.out, self.number = spec, device, Path(out), number
        self.gen: Any = None
        self.tag = f"ray worker {number} pid {os.getpid()}"
        _log(self.out, self.tag, f"started on {socket.gethostname()}, device {device}")

    def run(self, shard: tuple[int, int], allow_changed_inputs: bool) -> tuple[int, bool]:
        """Run one chunk; returns (samples generated, whether the whole plan is done)."""
        from diag.device import resolve_device
        from diag.generators.base import make_generator

        if not (self.out / SPEC_FILE).is_file():  # the driver wrote it before starting us
            raise DiagError(f"a Ray worker on {socket.gethostname()} does not see "
                            f"{where(self.out / SPEC_FILE)}, which the driver wrote: --out must be "
                            "on a file system every machine of the cluster mounts at the same "
                            "path")
        if self.gen is None:
            self.device = resolve_device(self.device)
            self.gen = make_generator(self.spec.generator.kind, self.spec.generator.params,
                                      self.device, self.spec.source)
            _log(self.out, self.tag, f"generator {self.spec.generator.kind} loaded")
        summary = run_spec(self.spec, self.out, shard=shard, device=self.device, progress=False,
                           generator=self.gen, allow_changed_inputs=allow_changed_inputs)
        return summary.generated, summary.complete


def _done(out: Path, planned: set[str]) -> set[str]:
    """Planned ids recorded in ``out`` with both files on disk."""
    return {r["id"] for r in read_manifest(out) if r["id"] in planned and sample_files(out, r)}


def _merge(out: Path) -> Path:
    """Merge the chunk manifests into ``manifest.jsonl`` (when any are left)."""
    with folder_lock(out, MANIFEST_LOCK, wait=True):
        if any(p.name != MANIFEST for p in manifest_files(out)):
            merge_manifests(out)
    return out / MANIFEST


def _placement(ray: Any, device: str, workers: int | None) -> tuple[str, dict[str, float], int]:
    """The workers' device, each one's Ray resources, and how many: GPU workers (one GPU
    each) when the cluster has GPUs and the device allows, else CPU workers (one CPU each)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    asked = device.strip().lower()
    if asked.startswith("cuda:"):
        raise DiagError(f"--device {device} with --engine ray: Ray gives each worker a GPU of its "
                        "own: use --device cuda (or auto)")
    if asked not in ("auto", "cpu", "cuda"):
        raise DiagError(f"--device {device} with --engine ray: Ray workers run on cpu or cuda: "
                        "use --device auto, cpu or cuda")
    if asked == "cuda" and not gpus:
        raise DiagError("--device cuda with --engine ray, but the Ray cluster has no GPU: use "
                        "--device cpu (or auto), or add GPU machines to the cluster")
    use_gpu = asked != "cpu" and gpus > 0
    have, kind = (gpus, "GPU") if use_gpu else (max(cpus, 1), "CPU")
    n = workers or have
    if n > have:
        raise DiagError(f"--workers {n}: the Ray cluster has {have} {kind}s, one per worker: use "
                        f"--workers {have} or fewer" + ("" if use_gpu else
                                                         ", or add machines to the cluster"))
    return ("cuda", {"num_gpus": 1}, n) if use_gpu else ("cpu", {"num_cpus": 1}, n)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse, in a few seconds, a ``host:port`` (or ``ray://host:port``) nothing listens on;
    Ray itself would retry for minutes. Other forms (``auto``, ``local``) are Ray's to check.

    >>> check_address("auto")
    >>> check_address("localhost:x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    diag.errors.DiagError: --address localhost:x: write it as HOST:PORT ...
    """
    rest = address.split("://", 1)[1] if "://" in address else address
    if ":" not in rest:
        return
    host, _, port = rest.rpartition(":")
    if not port.isdigit() or not host:
        raise DiagError(f"--address {address}: write it as HOST:PORT (the head node's "
                        "`ray start --head` address, e.g. head:6379), ray://HOST:10001, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise DiagError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}"
                        "): start one with `ray start --head` on that machine, or check the host "
                        "and port (or leave --address out for a local Ray)") from None


@contextlib.contextmanager
def _connected(ray: Any, address: str | None, workers: int | None) -> Iterator[None]:
    """Connected to Ray for the duration: the cluster at ``address`` (or ``RAY_ADDRESS``), a
    Ray already started by this program, or a new local one (with at least ``workers``
    CPUs)."""
    if ray.is_initialized():
        yield
        return
    local = address is None and not os.environ.get("RAY_ADDRESS")
    kw: dict[str, Any] = {"logging_level": logging.WARNING}
    if local:  # a new Ray of this run's own, even when another one runs on this machine
        kw.update(include_dashboard=False, num_cpus=max(os.cpu_count() or 1, workers or 1))
    try:
        ray.init(address="local" if local else address, **kw)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        target = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        raise DiagError(f"--address {target}: cannot connect to a Ray cluster ("
                        f"{' '.join(str(exc).split())[:200]}): start one with `ray start --head` "
                        "and give its address (host:6379), or leave --address out for a local "
                        "Ray") from None
    try:
        yield
    finally:
        ray.shutdown()


def _unwrap(ray: Any, exc: BaseException) -> BaseException:
    """A worker's error as the driver should raise it: a DiagError as its one line, a dead
    worker as a one-line DiagError, anything else as the worker raised it."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        return DiagError(str(cause)) if isinstance(cause, DiagError) else cause
    if isinstance(exc, ray.exceptions.RayActorError):
        return DiagError(f"a Ray worker died {MAX_RESTARTS + 1} times (killed, out of memory, its "
                         "machine lost, or diag not installed there; see generate.log in --out "
                         "and the Ray logs): run the same command again to continue (finished "
                         "samples are kept)")
    return exc


def run_ray(spec: Spec, out: str | Path, *, address: str | None = None,
            workers: int | None = None, device: str | None = None, progress: bool | None = None,
            allow_changed_inputs: bool = False, overwrite: bool = False) -> RunSummary:
    """Generate the whole plan of ``spec`` into ``out`` on a Ray cluster.

    Args:
        spec: The validated spec.
        out: Output folder, on a file system every worker sees at this path.
        address: A Ray cluster (``host:6379``, ``ray://host:10001``, ``auto``); None: the
            ``RAY_ADDRESS`` environment variable, else a new local Ray on this machine.
        workers: How many workers (default: one per GPU of the cluster, else one per CPU).
        device: ``auto`` (GPU workers when the cluster has GPUs), ``cuda`` or ``cpu``
            (default: the spec's).
        progress: Show a progress bar over chunks (None: only on a terminal).
        allow_changed_inputs: See :func:`~diag.generate.runner.run_spec`.
        overwrite: Start ``out`` afresh first (see :func:`~diag.generate.runner.run_spec`).

    Raises:
        DiagError: Ray missing, no cluster at ``address``, more workers than the cluster has
            room for, a worker dying more than ``MAX_RESTARTS`` times, or any error of
            :func:`~diag.generate.runner.run_spec` (bad input, another spec in ``out``...).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    ray = import_ray()
    if workers is not None and workers < 1:
        raise DiagError(f"--workers {workers}: give the number of Ray workers, at least 1 (or "
                        "leave it out: one per GPU, else one per CPU)")
    check_something_planned(spec)
    if (address or os.environ.get("RAY_ADDRESS")) and not ray.is_initialized():
        check_address(address or os.environ["RAY_ADDRESS"])
    out = Path(out).absolute()
    check_out_path(out)
    inputs = load_inputs(spec)  # a bad dataset fails here, before Ray starts
    planned = {it.id for it in iter_plan(spec, inputs.candidates)}
    if not writable(out):  # fine only when the finished set is already there
        return run_spec(spec, out, progress=False, allow_changed_inputs=allow_changed_inputs)
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        clear_out_folder(out)
    before = _done(out, planned)
    if len(before) < len(planned):
        # another spec's samples in out, changed inputs: one line here, before Ray starts
        prepare_out_folder(spec, out, inputs, allow_changed_inputs)
        _run_chunks(ray, spec, out, address, workers, device or spec.device, progress,
                    allow_changed_inputs, len(planned), tqdm)
    else:  # nothing to generate: check the folder as a plain run does, without Ray
        run_spec(spec, out, progress=False, allow_changed_inputs=allow_changed_inputs)
    done = _done(out, planned)
    complete = len(done) == len(planned)
    manifest = _merge(out) if complete else out / MANIFEST
    return RunSummary(out, len(planned), len(done - before), len(before),
                      time.perf_counter() - start, manifest, complete)


def _run_chunks(ray: Any, spec: Spec, out: Path, address: str | None, workers: int | None,
                device: str, progress: bool | None, allow_changed_inputs: bool, total: int,
                tqdm: Any) -> None:
    """Start the workers and run every chunk of the plan on them."""
    from ray.util import ActorPool

    with _connected(ray, address, workers):
        dev, resources, n_workers = _placement(ray, device, workers)
        n = min(total, n_workers * CHUNKS_PER_WORKER)
        actor = ray.remote(Worker).options(max_restarts=MAX_RESTARTS,
                                           max_task_retries=MAX_RESTARTS, **resources)
        cwd = os.getcwd()
        actors = [actor.remote(spec, dev, str(out), k, cwd) for k in range(n_workers)]
        target = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        _log(out, f"ray driver pid {os.getpid()}",
             f"start: {n_workers} {dev} workers on {target}, the plan in {n} chunks")
        print(f"ray: {n_workers} {dev} workers on {target}, the plan in {n} chunks of about "
              f"{-(-total // n)} samples", file=sys.stderr, flush=True)
        pool = ActorPool(actors)
        results = pool.map_unordered(lambda a, shard: a.run.remote(shard, allow_changed_inputs),
                                     [(i, n) for i in range(n)])
        with tqdm(total=n, desc=f"generate {spec.generator.kind} on Ray ({n_workers} workers)",
                  unit="chunk", disable=None if progress is None else not progress) as bar:
            while True:
                try:
                    next(results)
                except StopIteration:
                    break
                except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                    # the workers end with this driver (or with their handles, in a Ray
                    # this program started): killing them here would only retry their tasks
                    _log(out, f"ray driver pid {os.getpid()}", f"stopped: {type(exc).__name__}")
                    raise _unwrap(ray, exc) from None
                bar.update(1)
        for a in actors:
            ray.kill(a)
        _log(out, f"ray driver pid {os.getpid()}", "end: every chunk done")
