"""Scoring a trained classifier on any dataset diag reads.

>>> m = evaluate("runs/mt", DatasetRef(root="data/mt", layout="magnetic-tile", split="test"),
...              "runs/mt/eval-mt")  # doctest: +SKIP
>>> m["ap"], m["at_threshold"]["f1"]  # doctest: +SKIP

The threshold is the one stored with the model (chosen on its validation split), unless one is
given. The output folder gets ``metrics.json``, ``scores.csv`` and ``pr_curve.png``. A run
folder made with ``--seeds`` (``seed-*/`` inside) is evaluated seed by seed, with the mean and
standard deviation in ``summary.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diag.classify.data import ImageSet, Item, check_items
from diag.classify.models import build_model
from diag.classify.train import (
    MODEL_FORMAT,
    _items_rows,
    plot_pr,
    score,
    summarize,
    write_scores,
)
from diag.data import DatasetRef
from diag.device import resolve_device
from diag.errors import DiagError, where
from diag.imageio import write_json


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
            "batch_size": cfg["train"].get("batch_size", 32)}
    model, _ = build_model(backbone, "none")
    model.load_state_dict(obj["model"])
    model.to(device).eval()
    return model, info


def evaluate(checkpoint: str | Path, data: DatasetRef, out: str | Path | None = None,
             device: str = "auto", threshold: float | None = None, batch_size: int | None = None,
             progress: bool | None = None) -> dict[str, Any]:
    """Score ``data`` with a trained model; write metrics.json, scores.csv, pr_curve.png.

    Raises:
        DiagError: unreadable model or images, or a dataset without positives (AP undefined).
    """
    from diag.metrics.detection import detection_report

    t0 = time.time()
    dev = resolve_device(device)
    model, info = load_model(checkpoint, dev)
    samples = data.load()
    items = [Item(s.id, s, s.label, "eval") for s in samples]
    if not any(it.label for it in items):
        raise DiagError(f"{where(data.root)} (split '{data.split}') has no positive images, so AP "
                        "is undefined: evaluate on a set with defects")
    check_items(items, "evaluation set")
    thr = threshold if threshold is not None else info["threshold"]
    ds = ImageSet(items, tuple(info["input_size"]), info["normalize"], progress=progress,
                  desc="loading images")
    scores = score(model, ds, dev, batch_size or info["batch_size"],
                   desc=None if progress is False else "scoring")
    y = np.array([it.label for it in items], dtype=int)
    metrics = detection_report(y, scores, thr)
    metrics["threshold"] = {"value": thr, "chosen_on": "given" if threshold is not None else
                            "validation split of the training run" if thr is not None else
                            "none (training checkpoint: pass --threshold)"}
    metrics["model"] = info
    metrics["data"] = {"root": data.root, "layout": data.layout, "split": data.split}
    metrics["seconds"] = round(time.time() - t0, 2)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", metrics)
        write_scores(out / "scores.csv", _items_rows(items, data.split, scores,
                                                     thr if thr is not None else np.inf))
        plot_pr(out / "pr_curve.png", [(data.split, y, scores)],
                (data.split, y, scores, thr) if thr is not None else None)
    return metrics


def evaluate_seeds(run: str | Path, data: DatasetRef, out: str | Path, seeds: list[int] | None,
                   **kwargs: Any) -> dict[str, Any]:
    """Evaluate ``run/seed-<s>`` for each seed (all found when None); write summary.json."""
    run, out = Path(run), Path(out)
    if seeds is None:
        found = sorted(int(p.name[5:]) for p in run.glob("seed-*") if p.name[5:].isdigit())
        seeds = found
    if not seeds:
        raise DiagError(f"{where(run)} holds no seed-<n> runs: train with --seeds, or evaluate "
                        "a single run folder")
    per_seed = {s: {"eval": evaluate(run / f"seed-{s}", data, out / f"seed-{s}", **kwargs)}
                for s in seeds}
    summary = summarize(per_seed, "eval")
    write_json(out / "summary.json", summary)
    return summary
