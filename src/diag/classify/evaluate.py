"""Scoring a trained classifier on any dataset diag reads.

>>> m = evaluate("runs/mt", DatasetRef(root="data/mt", layout="magnetic-tile", split="test"),
...              "runs/mt/eval-mt")  # doctest: +SKIP
>>> m["ap"], m["at_threshold"]["f1"]  # doctest: +SKIP

The threshold is the one stored with the model (chosen on its validation split, or on its test
set under ``protocol: paper``), unless one is given. The output folder gets ``metrics.json``,
``scores.csv`` and ``pr_curve.png``. A run folder made with ``--seeds`` (``seed-*/`` inside) is
evaluated seed by seed, with the mean and standard deviation in ``summary.json``.

The evaluated data is checked against the run's ``training_files.json`` (what the model
trained on, see :mod:`diag.classify.leakage`): any overlap is an error unless
``allow_overlap`` is given (then it is recorded in metrics.json). A run trained before diag
wrote that file cannot be checked; a warning line says so.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diag.classify.data import ImageSet, Item, check_items
from diag.classify.leakage import TRAINING_FILES, find_overlap, guard, read_training_record
from diag.classify.models import build_model
from diag.classify.train import (
    CHANNELS_LAST,
    MODEL_FORMAT,
    _items_rows,
    plot_pr,
    score,
    summarize,
    write_scores,
)
from diag.data import DatasetRef, Sample
from diag.device import resolve_device
from diag.errors import DiagError, where
from diag.files import check_folder, is_file, remove_temp_files, write_json

EVAL_FILES = ("metrics.json", "scores.csv", "pr_curve.png")
VOLATILE = ("seconds",)  # what a rerun may change without the evaluation changing


def find_model(path: str | Path) -> Path:
    """The model file of a run folder (``model.pt``), or the given file."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.pt").is_file():
            return path / "model.pt"
        if (path / "checkpoints" / "last.pt").is_file():
            raise DiagError(f"run {where(path)} has not finished (no model.pt): finish it with "
                            "diag train --resume, or pass checkpoints/last.pt to evaluate it as is")
        raise DiagError(f"{where(path)} holds no model.pt: give a diag train run folder or a "
                        "model / checkpoint file")
    if not path.is_file():
        raise DiagError(f"checkpoint {where(path)} does not exist: give a run folder or a .pt file")
    return path


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a trained classifier from ``model.pt`` or a training checkpoint.

    Returns:
        ``(model, info)`` with info keys backbone, normalize, input_size, threshold (None for
        a training checkpoint, which has none yet), epoch.
    """
    path = find_model(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise DiagError(f"cannot read checkpoint {where(path)} ({type(exc).__name__}): it is "
                        "corrupt or not a diag checkpoint") from None
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT or "config" not in obj:
        raise DiagError(f"{where(path)} is not a diag classifier (model.pt or "
                        "checkpoints/last.pt of a diag train run)")
    cfg = obj["config"]
    backbone = obj.get("backbone", cfg["model"]["backbone"])
    from diag.classify.models import normalization

    info = {"file": str(path), "backbone": backbone,
            "normalize": obj.get("normalize",
                                 normalization(backbone, cfg["model"].get("normalize", "auto"))),
            "input_size": obj.get("input_size", cfg["train"]["input_size"]),
            "threshold": obj.get("threshold"), "epoch": obj.get("epoch"),
            "threshold_chosen_on": obj.get("threshold_chosen_on", "validation"),
            "protocol": obj.get("protocol", cfg["train"].get("protocol", "honest")),
            "batch_size": cfg["train"].get("batch_size", 32)}
    model, _ = build_model(backbone, "none")
    model.load_state_dict(obj["model"])
    model.to(device, memory_format=CHANNELS_LAST).eval()
    return model, info


def check_against_training(checkpoint: str | Path, data: DatasetRef, samples: list[Sample],
                           allow_overlap: bool) -> dict[str, Any]:
    """Compare evaluated samples with what the model trained on (its run's training record).

    Args:
        checkpoint: The run folder or model file given to :func:`evaluate`.
        data: The evaluated dataset.
        samples: Its samples.
        allow_overlap: Record an overlap instead of stopping.

    Returns:
        The overlap block for metrics.json (``checked: false`` for a run without a record).

    Raises:
        DiagError: the evaluated data overlaps the training data and ``allow_overlap`` is
            False.
    """
    record = read_training_record(checkpoint)
    if record is None:
        print(f"warning: {where(checkpoint)} has no {TRAINING_FILES} (trained by an older diag): "
              "cannot check the evaluated data against the training data", file=sys.stderr)
        return {"checked": False, "reason": f"the run has no {TRAINING_FILES}"}
    report = find_overlap(record, samples, data, held_out="evaluated")
    return guard(report, allow_overlap,
                 f"the evaluated data {where(data.root)} (split '{data.split}') overlaps the "
                 f"training data of {where(checkpoint)}",
                 "evaluate on data the model did not train on", held_out="evaluated")


def evaluate(checkpoint: str | Path, data: DatasetRef, out: str | Path | None = None,
             device: str = "auto", threshold: float | None = None, batch_size: int | None = None,
             progress: bool | None = None, allow_overlap: bool = False) -> dict[str, Any]:
    """Score ``data`` with a trained model; write metrics.json, scores.csv, pr_curve.png.

    Args:
        checkpoint: A run folder (its model.pt) or a model / checkpoint file.
        data: The dataset to score.
        out: Output folder; None: write nothing.
        device: auto, cpu, cuda or cuda:N.
        threshold: Decision threshold on the logit; None: the model's.
        batch_size: Images per batch; None: the run's.
        progress: False hides progress bars; None shows them on a terminal.
        allow_overlap: Score even data the model trained on (recorded in metrics.json).

    Raises:
        DiagError: unreadable model or images, a dataset without positives (AP undefined), or
            one that overlaps the training data without ``allow_overlap``.
    """
    from diag.metrics.detection import detection_report

    t0 = time.time()
    if out is not None:
        check_out(out, EVAL_FILES)
    dev = resolve_device(device)
    model, info = load_model(checkpoint, dev)
    samples = data.load()
    items = [Item(s.id, s, s.label, "eval") for s in samples]
    if not any(it.label for it in items):
        raise DiagError(f"{where(data.root)} (split '{data.split}') has no positive images, so AP "
                        "is undefined: evaluate on a set with defects")
    check_items(items, "evaluation set")
    overlap = check_against_training(checkpoint, data, samples, allow_overlap)
    thr = threshold if threshold is not None else info["threshold"]
    ds = ImageSet(items, tuple(info["input_size"]), info["normalize"], progress=progress,
                  desc="loading images")
    scores = score(model, ds, dev, batch_size or info["batch_size"],
                   desc=None if progress is False else "scoring")
    y = np.array([it.label for it in items], dtype=int)
    metrics = detection_report(y, scores, thr)
    trained = info["threshold_chosen_on"]
    chosen_on = ("given" if threshold is not None else
                 "none (training checkpoint: pass --threshold)" if thr is None else
                 "test set of the training run (optimistic)" if trained == "test" else
                 "validation split of the training run" if trained == "validation" else
                 f"training run: {trained}")
    metrics["threshold"] = {"value": thr, "chosen_on": chosen_on}
    metrics["model"] = info
    metrics["data"] = {"root": data.root, "layout": data.layout, "split": data.split}
    metrics["overlap"] = overlap
    metrics["seconds"] = round(time.time() - t0, 2)
    if out is not None:
        out = Path(out)
        remove_temp_files(out, EVAL_FILES, older_than=t0)
        # metrics.json last: once it is there, so are the scores and the curve it goes with
        write_scores(out / "scores.csv", _items_rows(items, data.split, scores,
                                                     thr if thr is not None else np.inf),
                     rerun=RERUN)
        plot_pr(out / "pr_curve.png", [(data.split, y, scores)],
                (data.split, y, scores, thr) if thr is not None else None,
                "given threshold" if threshold is not None else "the model's threshold",
                rerun=RERUN)
        write_json(out / "metrics.json", metrics, volatile=VOLATILE, rerun=RERUN)
    return metrics


RERUN = "run the same command again"  # nothing to keep: an evaluation is redone whole


def check_out(out: str | Path, files: tuple[str, ...]) -> None:
    """Check an evaluation's output folder before any work: a file in the way, a folder where
    one of ``files`` goes, or a folder that cannot be written (unless it already holds all of
    ``files``: a rerun may have nothing new to write) is a one-line error."""
    out = Path(out)
    complete = all(is_file(out / f) for f in files)
    check_folder(out, files=files, need_write=not complete)


def evaluate_seeds(run: str | Path, data: DatasetRef, out: str | Path, seeds: list[int] | None,
                   **kwargs: Any) -> dict[str, Any]:
    """Evaluate ``run/seed-<s>`` for each seed (all found when None); write summary.json."""
    t0 = time.time()
    run, out = Path(run), Path(out)
    check_out(out, ("summary.json",))
    if seeds is None:
        found = sorted(int(p.name[5:]) for p in run.glob("seed-*") if p.name[5:].isdigit())
        seeds = found
    if not seeds:
        raise DiagError(f"{where(run)} holds no seed-<n> runs: train with --seeds, or evaluate "
                        "a single run folder")
    per_seed = {s: {"eval": evaluate(run / f"seed-{s}", data, out / f"seed-{s}", **kwargs)}
                for s in seeds}
    summary = summarize(per_seed, "eval")
    remove_temp_files(out, ["summary.json"], older_than=t0)
    write_json(out / "summary.json", summary, rerun=RERUN)
    return summary
