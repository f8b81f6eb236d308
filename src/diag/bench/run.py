"""Running a bench: split the data once, generate each method's set once, train every cell,
score fidelity, write results as they come. A killed bench resumes where it stopped.

>>> from diag.bench import load_grid, run_bench                    # doctest: +SKIP
>>> summary = run_bench(load_grid("examples/bench_quick.yaml"), "runs/bench")  # doctest: +SKIP

Layout of ``OUT``::

    grid.yaml         the grid as run (profile applied)
    split.json        the saved train/test split (datasets without an official one)
    bench.json        the plan, the chosen input size, versions
    generated/<method>-g<seed>-<key>/     diag generate folders (one per method and seed)
    fidelity/<method>-g<seed>-<key>.json  their FID (KID) against the real training positives
    cells/<method>-<setting>-...-<key>/   diag train run folders, one per cell
    results.csv       one row per finished cell; summary.md and report.html (diag.bench.report)
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diag.bench.grid import Grid, resolve
from diag.bench.plan import Cell, GeneratedSet, Plan, key_of, make_plan
from diag.bench.tables import read_test_scores
from diag.config import dump_yaml, to_dict
from diag.data import DatasetRef, detect_layout, load_dataset
from diag.data.split import make_split, read_split, write_split
from diag.errors import DiagError, where
from diag.files import check_folder, lock_folder, write_json, write_text

OFFICIAL_SPLIT = ("ksdd2", "mvtec")
RESULT_COLUMNS = ["method", "setting", "naug", "gen_seed", "train_seed", "protocol", "ap",
                  "ap_noise", "auroc", "precision", "recall", "f1", "threshold",
                  "threshold_chosen_on",
                  "chance", "test_images", "test_positives", "train_images",
                  "train_generated", "train_real_positives", "seconds", "cell"]


@dataclass
class BenchSummary:
    """What a bench run did."""

    out: Path
    cells: int
    trained: int
    reused: int
    seconds: float
    results: Path


def prepare_data(grid: Grid, out: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The training and test splits as ``DatasetRef`` mappings, and what the split is.

    Layouts with an official split (ksdd2, mvtec) use it; the others get one seeded split,
    stratified by defect class, made once and saved as ``OUT/split.json``.
    """
    d = grid.dataset
    root = resolve(grid, d.root)
    layout = detect_layout(root) if d.layout == "auto" else d.layout
    base = {"root": str(root), "layout": layout, **d.options}
    if layout in OFFICIAL_SPLIT:
        info = {"kind": "official", "layout": layout}
        train, test = ({**base, "split": "train"}, {**base, "split": "test"})
        for ref in (train, test):
            DatasetRef(**ref).load()  # a bad dataset fails here, before any work
        return train, test, {**info, "key": key_of(base)}
    path = out / "split.json"
    samples = load_dataset(layout, root, "all", **d.options)
    split = make_split(samples, d.test_fraction, d.split_seed)
    if path.is_file():
        old = read_split(path)
        if (old["train"], old["test"]) != (split["train"], split["test"]):
            raise DiagError(f"{where(path)} holds another split of the data (the dataset or "
                            "test_fraction / split_seed changed): use a new --out, or delete "
                            "it to redo every cell")
    else:
        write_split(path, split)
    info = {"kind": "saved", "file": "split.json", "test_fraction": d.test_fraction,
            "seed": d.split_seed, "train": len(split["train"]), "test": len(split["test"])}
    refs = [{**base, "split": s, "split_file": str(path)} for s in ("train", "test")]
    return refs[0], refs[1], {**info, "key": key_of([split["train"], split["test"]])}


def choose_input_size(train: list[Any], max_side: int, min_width: float = 3.0
                      ) -> dict[str, Any]:
    """An input size that keeps the training defects at least ``min_width`` pixels wide.

    A defect's width is twice the largest distance from its mask's inside to its edge
    (a 3-pixel crack is 3 wide). The size keeps the images' median aspect, is the smallest
    whose scale keeps the narrowest quarter of the defects ``min_width`` wide, and at most
    ``max_side`` (then it says how many defects end up narrower).
    """
    from scipy import ndimage

    sizes = np.array([s.size for s in train], dtype=float)
    h, w = float(np.median(sizes[:, 0])), float(np.median(sizes[:, 1]))
    widths = []
    for s in [s for s in train if s.label][:300]:
        mask = s.mask
        if mask.any():
            widths.append(2 * float(ndimage.distance_transform_edt(mask).max()))
    long_side = max(h, w)
    if widths:
        narrow = round(float(np.percentile(widths, 25)), 2)
        want = long_side * min_width / narrow
    else:
        narrow, want = None, long_side
    side = int(min(max_side, max(64, math.ceil(want / 32) * 32), math.ceil(long_side / 32) * 32))
    scale = float(side / long_side)
    hh = max(32, int(round(h * scale / 32)) * 32)
    ww = max(32, int(round(w * scale / 32)) * 32)
    thin = float(np.mean(np.array(widths) * scale < 2)) if widths else None
    return {"input_size": [hh, ww], "median_image": [int(h), int(w)], "scale": round(scale, 4),
            "defect_width_p25": narrow, "defects_measured": len(widths),
            "width_after_resize_p25": round(narrow * scale, 2) if narrow else None,
            "share_narrower_than_2px": round(thin, 4) if thin is not None else None,
            "capped": bool(want > max_side), "max_side": max_side}


def _input_size(grid: Grid, train_ref: dict[str, Any]) -> tuple[tuple[int, int], dict | None]:
    from diag.bench.grid import train_config

    opts = train_config(grid).get("train", {})
    size = opts.get("input_size", [704, 256])
    if size != "auto":
        if not (isinstance(size, list) and len(size) == 2):
            raise DiagError(f"{grid.source}: train.train.input_size must be [height, width] or "
                            "auto")
        return (int(size[0]), int(size[1])), None
    choice = choose_input_size(DatasetRef(**train_ref).load(), int(opts.get("max_side", 256)))
    return tuple(choice["input_size"]), choice


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def generate_set(gen: GeneratedSet, out: Path, device: str | None,
                 generator: Any = None) -> Path:
    """Make (or finish) one method's generated set (with an already loaded ``generator`` if
    given)."""
    from diag.generate import run_spec
    from diag.generate.spec import parse_spec

    folder = out / "generated" / gen.folder
    spec = parse_spec(gen.spec, f"bench method '{gen.method}'", notes=False)
    run_spec(spec, folder, device=device, progress=False, generator=generator)
    return folder


def score_set(gen: GeneratedSet, folder: Path, out: Path, grid: Grid, train_ref: dict,
              extractor: Any) -> dict[str, Any]:
    """FID (and KID) of a generated set against the real positives of the training split;
    cached in ``OUT/fidelity`` by the set's key and the fidelity options."""
    from diag.metrics.fidelity import score_fidelity

    f = grid.fidelity
    path = out / "fidelity" / f"{gen.folder}.json"
    key = key_of([gen.key, to_dict(f)])
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("key") == key:
                return old
        except (OSError, ValueError):
            pass
    real = [s for s in DatasetRef(**train_ref).load() if s.label]
    fake = load_dataset("generated", folder, "all")
    result = score_fidelity(real, fake, extractor, kid=f.kid, region=f.region,
                            diversity=False, lpips=None, progress=False, warn=lambda m: None)
    record = {"key": key, "method": gen.method, "seed": gen.seed,
              "fid": {str(k): v for k, v in result["fid"].items()},
              **({"kid": {str(k): v for k, v in result["kid"].items()}} if "kid" in result
                 else {}),
              "real": len(real), "generated": len(fake), "region": f.region,
              "warnings": result.get("warnings", [])}
    write_json(path, record)
    return record


def _recall_by_class(rows: list[dict[str, str]], test_classes: dict[str, str]
                     ) -> dict[str, float]:
    """Recall of each defect class of the test set, at the run's threshold."""
    hits: dict[str, list[int]] = {}
    for row in rows:
        if row["label"] == "1":
            cls = test_classes.get(row["id"].removeprefix("test/"), "") or "defect"
            hits.setdefault(cls, []).append(int(row["predicted"]))
    return {c: float(np.mean(v)) for c, v in sorted(hits.items())}


def ap_noise(rows: list[dict[str, str]], draws: int = 200, seed: int = 0) -> float | None:
    """Standard deviation of the test AP over bootstrap resamples of the test images: how much
    AP moves by the luck of which test images were drawn (the noise floor of one run)."""
    from diag.metrics.detection import average_precision

    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    if y.sum() == 0 or y.sum() == len(y):
        return None
    rng = np.random.default_rng(seed)
    aps = []
    for _ in range(draws):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            aps.append(average_precision(y[i], s[i]))
    return float(np.std(aps, ddof=1)) if len(aps) > 1 else None


def result_row(cell: Cell, run: Path, metrics: dict[str, Any], seconds: float,
               test_classes: dict[str, str]) -> dict[str, Any]:
    """One results.csv row of a finished cell."""
    test = metrics.get("test", {})
    at = test.get("at_threshold", {})
    data = json.loads((run / "metadata.json").read_text(encoding="utf-8")).get("data", {})
    by_source = data.get("train", {}).get("by_source", {})
    scores = read_test_scores(run)
    row = {
        "method": cell.method, "setting": cell.setting, "naug": cell.naug or 0,
        "gen_seed": "" if cell.gen_seed is None else cell.gen_seed,
        "train_seed": cell.train_seed, "protocol": cell.protocol,
        "ap": test.get("ap"), "ap_noise": ap_noise(scores), "auroc": test.get("auroc"),
        "precision": at.get("precision"),
        "recall": at.get("recall"), "f1": at.get("f1"),
        "threshold": metrics.get("threshold", {}).get("value"),
        "threshold_chosen_on": metrics.get("threshold", {}).get("chosen_on"),
        "chance": test.get("positives", 0) / max(1, test.get("n", 0)),
        "test_images": test.get("n"), "test_positives": test.get("positives"),
        "train_images": data.get("train", {}).get("total"),
        "train_generated": sum(v for k, v in by_source.items() if k.startswith("generated")),
        "train_real_positives": data.get("train", {}).get("positive", 0) - sum(
            v for k, v in by_source.items() if k.startswith("generated")),
        "seconds": round(seconds, 1), "cell": cell.folder,
    }
    for cls, value in _recall_by_class(scores, test_classes).items():
        row[f"recall_{cls}"] = value
    return row


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """results.csv: the fixed columns, then one ``recall_<class>`` column per defect class."""
    extra = sorted({k for r in rows for k in r if k not in RESULT_COLUMNS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, RESULT_COLUMNS + extra, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v)
                         for k, v in r.items()})
    write_text(path, buf.getvalue())


def _cell_done(run: Path) -> dict[str, Any] | None:
    if not ((run / "metrics.json").is_file() and (run / "model.pt").is_file()):
        return None
    try:
        return json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_bench(grid: Grid, out: str | Path, device: str | None = None,
              progress: bool | None = None, log: Callable[[str], None] = _log,
              generators: dict[str, Any] | None = None) -> BenchSummary:
    """Run every cell of ``grid`` into ``out`` (resumable; finished cells are reused).

    Args:
        grid: The validated grid.
        out: Output folder.
        device: auto, cpu, cuda... for generation, training and fidelity (default: auto).
        progress: Show the overall progress bar (None: on a terminal).
        log: Where the one-line-per-cell messages go.
        generators: Already loaded generators by method name (``diag demo`` checks SDXL by
            loading it once).

    Raises:
        DiagError: bad grid or data, another bench writing ``out``, or a failing cell.
    """
    from tqdm.auto import tqdm

    from diag.classify.config import parse_train_config
    from diag.classify.train import train_run

    t0 = time.perf_counter()
    out = Path(out).resolve()
    check_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    with lock_folder(out, "the bench"):
        write_text(out / "grid.yaml", dump_yaml(grid))
        train_ref, test_ref, split = prepare_data(grid, out)
        size, choice = _input_size(grid, train_ref)
        if choice:
            log(f"input size {size[0]}x{size[1]} (auto): training defects' narrowest quarter "
                f"is {choice['defect_width_p25']:.1f} px wide, {choice['width_after_resize_p25']}"
                f" px after resizing; {100 * (choice['share_narrower_than_2px'] or 0):.0f}% of "
                f"defects end up narrower than 2 px{' (capped at max_side)' if choice['capped'] else ''}")
        plan = make_plan(grid, train_ref, test_ref, split["key"], size)
        write_json(out / "bench.json", _describe(grid, plan, split, choice))
        test_classes = {s.id: s.defect for s in DatasetRef(**test_ref).load() if s.label}
        fidelity = _make_sets(plan, out, grid, train_ref, device, log, generators or {})
        rows: list[dict[str, Any]] = []
        trained = reused = 0
        bar = tqdm(total=len(plan.cells), desc="bench", unit="cell",
                   disable=None if progress is None else not progress)
        with bar:
            for i, cell in enumerate(plan.cells, 1):
                run = out / "cells" / cell.folder
                metrics = _cell_done(run)
                start = time.perf_counter()
                was_done = metrics is not None
                if metrics is None:
                    cfg = parse_train_config(cell.config, source=f"bench cell {cell.label}",
                                             base=out)
                    if device:
                        cfg.train.device = device
                    if "keep_checkpoints" not in cell.config.get("train", {}):
                        cfg.train.keep_checkpoints = "none"  # a finished cell needs model.pt only
                    resume = (run / "checkpoints").is_dir()
                    metrics = train_run(cfg, run, resume=resume, progress=False)
                    trained += 1
                    seconds = time.perf_counter() - start
                else:
                    reused += 1
                    seconds = float(metrics.get("seconds", 0.0))
                row = result_row(cell, run, metrics, seconds, test_classes)
                if cell.generated is not None:
                    for dim, value in fidelity.get(cell.generated.folder, {}).items():
                        row[f"fid_{dim}"] = value
                rows.append(row)
                write_results(out / "results.csv", rows)
                bar.update(1)
                ap = row["ap"]
                log(f"cell {i}/{len(plan.cells)} {cell.label}: AP "
                    f"{'n/a' if ap is None else f'{ap:.3f}'} (chance {row['chance']:.3f}), "
                    + ("reused" if was_done else f"{seconds:.0f} s"))
        from diag.bench.report import write_reports

        write_reports(out)
    return BenchSummary(out, len(plan.cells), trained, reused, time.perf_counter() - t0,
                        out / "results.csv")


def _make_sets(plan: Plan, out: Path, grid: Grid, train_ref: dict[str, Any],
               device: str | None, log: Callable[[str], None], generators: dict[str, Any]
               ) -> dict[str, dict[str, float]]:
    """Generate every set (resuming unfinished ones) and score its fidelity."""
    scores: dict[str, dict[str, float]] = {}
    extractor = None
    for gen in plan.sets:
        t = time.perf_counter()
        folder = generate_set(gen, out, device, generators.get(gen.method))
        line = f"generated {gen.method} seed {gen.seed}: {folder.name}"
        if grid.fidelity.enabled:
            if extractor is None:
                from diag.device import resolve_device
                from diag.metrics.inception import InceptionExtractor

                extractor = InceptionExtractor.load(None, dims=tuple(grid.fidelity.dims),
                                                    device=resolve_device(device))
            record = score_set(gen, folder, out, grid, train_ref, extractor)
            scores[gen.folder] = record["fid"]
            line += ", FID " + ", ".join(f"{d}: {v:.4g}" for d, v in record["fid"].items())
        log(f"{line} ({time.perf_counter() - t:.0f} s)")
    return scores


def _describe(grid: Grid, plan: Plan, split: dict[str, Any], choice: dict | None
              ) -> dict[str, Any]:
    from diag.generate.runner import _versions

    return {"format": "diag-bench-1", "grid": to_dict(grid), "split": split,
            "input_size": choice,
            "sets": [{"method": g.method, "seed": g.seed, "folder": g.folder} for g in plan.sets],
            "cells": [{"label": c.label, "folder": c.folder, "method": c.method,
                       "setting": c.setting, "naug": c.naug, "gen_seed": c.gen_seed,
                       "train_seed": c.train_seed, "protocol": c.protocol}
                      for c in plan.cells],
            "versions": _versions()}
