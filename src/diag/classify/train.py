"""Training the defect classifier, with honest thresholds, checkpoints and resume.

>>> from diag.classify.config import load_train_config            # doctest: +SKIP
>>> cfg = load_train_config("examples/train.yaml", ["train.epochs=1"])  # doctest: +SKIP
>>> metrics = train_run(cfg, "runs/mt")                             # doctest: +SKIP
>>> metrics["test"]["ap"]                                           # doctest: +SKIP

A run folder holds ``config.yaml``, ``metadata.json`` (versions, backbone, weights source, data
counts), ``checkpoints/last.pt`` (overwritten after every epoch: model, optimizer, epoch, RNG
states; with ``keep_checkpoints: all`` also ``epoch-NNN.pt``; with ``none`` the folder is
deleted once the run has finished), ``model.pt`` (the selected
weights with everything needed to score new images), ``metrics.json``, ``scores.csv`` and
``pr_curve.png``, and ``training_files.json`` (every training file's resolved path and
content hash, for the leakage guard of ``diag evaluate``).

Two protocols (``train.protocol``):

``honest``
    A validation split held out of the training data chooses the decision threshold (maximum
    F1), and with ``select_epoch: best`` the epoch; the model is put in train mode at the start
    of every epoch; the test set is scored once, after everything has been chosen.
``paper``
    Exactly as the reference code (``train_ResNet50.py`` of intelligolabs/DIAG): every training
    image trains (no validation split); after every epoch the test set is scored with
    ``model.eval()`` and nothing puts the model back in train mode, so epochs 2..N train with
    BatchNorm in eval mode (running statistics frozen) and dropout off; the threshold is the
    reference's best-F1 point of the test set (:func:`diag.metrics.detection.reference_best_f1`).
    Its precision / recall are optimistic, and metrics.json says so.

Before training, the training data (with the sources and masks of generated images) is
compared with the test set (:mod:`diag.classify.leakage`); any overlap stops the run unless
``allow_overlap`` is given, and is then recorded in metrics.json and metadata.json.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import platform
import random
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from diag.classify.config import DEFAULT_VAL_FRACTION, TrainConfig, config_dict, parse_train_config
from diag.classify.data import ImageSet, Item, SplitData, build_sets, epoch_order
from diag.classify.leakage import TRAINING_FILES, find_overlap, guard, training_record
from diag.classify.models import build_model, normalization
from diag.config import dump_yaml, load_yaml
from diag.device import resolve_device
from diag.errors import DiagError, where
from diag.files import (
    TEMP_RE,
    check_folder,
    lock_folder,
    remove_temp_files,
    save_torch,
    write_bytes,
    write_error,
    write_json,
    write_text,
)
from diag.metrics.detection import best_f1, detection_report, reference_best_f1

MODEL_FORMAT = "diag-classifier-1"
SUMMARY_KEYS = (("ap",), ("auroc",), ("at_threshold", "precision"), ("at_threshold", "recall"),
                ("at_threshold", "f1"), ("best_f1_on_this_set", "f1"))
RUN_FILES = ("config.yaml", "metadata.json", "model.pt", "metrics.json", "scores.csv",
             "pr_curve.png", TRAINING_FILES)
RESUME = "rerun the same command with --resume (the finished epochs are kept in checkpoints/last.pt)"
RERUN_TRAIN = "run the same command again (with --resume if it was given)"
REFERENCE_RULE = ("the reference code's (train_ResNet50.py): maximum F1 on the test PR curve, the "
                  "threshold halfway between that curve threshold and the next lower one")


def sigmoid(x: float) -> float:
    """The probability of a logit, without overflow for large negative logits."""
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def torch_threads(n: int | None):  # noqa: ANN201
    """Use ``n`` torch CPU threads for the duration (None or 0: leave as is), then restore."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def deterministic(enabled: bool):  # noqa: ANN201
    """Turn on torch's deterministic algorithms for the duration, then restore."""
    before = torch.are_deterministic_algorithms_enabled()
    cudnn = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = cudnn


# NHWC tensors: a training step runs 1.2-1.3x faster on CPU (EfficientNet-Lite0, ResNet-18/50,
# 2 cores; BENCHMARKS.md) and uses the tensor cores' layout on GPU. Training and scoring use
# the same layout, so diag evaluate reproduces the run's scores exactly.
CHANNELS_LAST = torch.channels_last


def _save_atomic(obj: Any, path: Path, rerun: str = RESUME) -> None:
    """``torch.save`` to a temporary file beside ``path``, renamed into place; a failed write
    (disk full...) keeps the previous file and is one line (:mod:`diag.files`)."""
    save_torch(path, obj, rerun=rerun)


def _loader(ds: ImageSet, batch_size: int, workers: int, order: list[int] | None = None
            ) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=order, shuffle=False,
                                       num_workers=workers, persistent_workers=False)


@torch.no_grad()
def score(model: torch.nn.Module, ds: ImageSet, device: str, batch_size: int = 32,
          workers: int = 0, desc: str | None = None) -> np.ndarray:
    """Logits of every image of ``ds``, in order (model in eval mode)."""
    model.eval()
    out = np.zeros(len(ds), dtype=np.float64)
    for x, _, idx in tqdm(_loader(ds, batch_size, workers), desc=desc, disable=None if desc
                          else True, leave=False, unit="batch"):
        out[idx.numpy()] = model(x.to(device, memory_format=CHANNELS_LAST)).float().cpu().numpy()
    return out


def versions() -> dict[str, str]:
    import torchvision

    from diag import __version__

    return {"diag": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__,
            "platform": platform.platform()}


def _items_rows(items: list[Item], split: str, scores: np.ndarray, threshold: float
                ) -> list[list[Any]]:
    return [[split, it.key, it.label, repr(float(s)), f"{sigmoid(float(s)):.8g}",
             int(s >= threshold), it.source, str(it.sample.path)]
            for it, s in zip(items, scores, strict=True)]


def write_scores(path: Path, rows: list[list[Any]], rerun: str = RESUME) -> None:
    """scores.csv: split, id, label, score (logit), probability, predicted, source, path."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "id", "label", "score", "probability", "predicted", "source", "path"])
    w.writerows(rows)
    write_text(path, buf.getvalue(), rerun=rerun)


def plot_pr(path: Path, curves: list[tuple[str, np.ndarray, np.ndarray]],
            point: tuple[str, np.ndarray, np.ndarray, float] | None,
            point_label: str = "validation threshold", rerun: str = RESUME) -> None:
    """PR curves with the operating point at the chosen threshold.

    Args:
        path: The PNG to write (atomically).
        curves: ``(name, labels, scores)`` per curve; sets without positives are left out.
        point: ``(name, labels, scores, threshold)`` of the operating point to mark, or None.
        point_label: Where the threshold came from, for the legend (``... at <point_label>``).
        rerun: What to do after a failed write (for the message).
    """
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from diag.metrics.detection import at_threshold, average_precision, precision_recall_curve

    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    for name, y, s in curves:
        if y.sum() == 0:
            continue
        p, r, _ = precision_recall_curve(y, s)
        ax.step(r, p, where="post", label=f"{name} (AP {average_precision(y, s):.3f})")
    if point is not None:
        name, y, s, thr = point
        m = at_threshold(y, s, thr)
        ax.plot([m["recall"]], [m["precision"]], "o", color="black",
                label=f"{name} at {point_label}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue(), rerun=rerun)


def _only_run_files(out: Path) -> bool:
    """Whether ``out`` holds nothing but files diag train writes (and temporary files)."""
    for p in out.iterdir():
        if not (p.name in RUN_FILES or TEMP_RE.match(p.name)
                or (p.name == "checkpoints" and p.is_dir())):
            return False
    return True


def _check_same_config(out: Path, cfg: TrainConfig) -> None:
    saved = load_yaml(out / "config.yaml")
    now = config_dict(cfg)
    a, b = copy.deepcopy(saved), copy.deepcopy(now)
    for d in (a, b):
        if not isinstance(d, dict):
            continue
        d.setdefault("train", {}).pop("epochs", None)
        d["train"].pop("keep_checkpoints", None)  # what is kept on disk, not what is trained
        data = d.setdefault("data", {})
        if data.get("val_fraction") is None:  # null = the protocol's default
            data["val_fraction"] = (0.0 if d["train"].get("protocol") == "paper"
                                    else DEFAULT_VAL_FRACTION)
    if a != b:
        raise DiagError(f"--resume: the config differs from the run's {where(out / 'config.yaml')}"
                        " (only train.epochs and train.keep_checkpoints may change): use the "
                        "same config or a new --out")


def _finished(out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The metrics of a run folder that already holds this run, finished; else None."""
    import json

    if not (out / "model.pt").is_file():
        return None
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    history = metrics.get("history") if isinstance(metrics, dict) else None
    if not isinstance(history, list) or len(history) != cfg.train.epochs:
        return None
    return metrics


def _prepare_out(out: Path, cfg: TrainConfig, resume: bool
                 ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Check the run folder before any work.

    Returns:
        ``(state, finished)``: the checkpoint to resume from (or None), and with ``resume``
        the metrics of a run that is already finished (nothing left to do), else None.
    """
    last = out / "checkpoints" / "last.pt"
    if not resume:
        if last.is_file() or (out / "metrics.json").is_file():
            raise DiagError(f"{where(out)} already holds a training run: pass --resume to "
                            "continue it, or choose another --out")
        return None, None
    if last.is_file() or (out / "metrics.json").is_file():
        if not (out / "config.yaml").is_file():
            raise DiagError(f"cannot resume {where(out)}: it has no config.yaml (not a diag train "
                            "run folder, or a damaged one): choose another --out")
        _check_same_config(out, cfg)
        done = _finished(out, cfg)
        if done is not None:
            return None, done
        if not last.is_file() and (out / "model.pt").is_file():
            raise DiagError(f"{where(out)} holds a finished run that kept no checkpoint "
                            "(train.keep_checkpoints: none), so it cannot be trained further: "
                            "use a new --out")
    if not last.is_file():
        if (out / "config.yaml").is_file() or not out.exists() or _only_run_files(out):
            return None, None  # killed before the first epoch ended: start over
        raise DiagError(f"nothing to resume in {where(out)}: it holds no "
                        "checkpoints/last.pt; drop --resume or pick the right --out")
    try:
        state = torch.load(last, map_location="cpu", weights_only=False)
        epoch = int(state["epoch"])
    except Exception as exc:  # noqa: BLE001
        raise DiagError(f"cannot read checkpoint {where(last)} ({type(exc).__name__}): "
                        "delete it to start over") from None
    if epoch > cfg.train.epochs:
        raise DiagError(f"--resume: {where(last)} has trained {epoch} epochs, more than "
                        f"train.epochs {cfg.train.epochs}: set train.epochs to at least {epoch}, "
                        "or use a new --out")
    return state, None


def train_run(cfg: TrainConfig, out: str | Path, resume: bool = False,
              progress: bool | None = None, allow_overlap: bool = False) -> dict[str, Any]:
    """Train one run; see :func:`_train_run`. Torch's thread count is restored afterwards, so
    training leaves no global state behind for other work in the same process."""
    with torch_threads(cfg.train.threads):
        return _train_run(cfg, out, resume, progress, allow_overlap)


def check_leakage(cfg: TrainConfig, sets: SplitData, allow_overlap: bool
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compare the training data with the test set (see :mod:`diag.classify.leakage`).

    Args:
        cfg: The validated config.
        sets: The sets of the run.
        allow_overlap: Record an overlap instead of stopping.

    Returns:
        ``(record, overlap)``: the training record (for training_files.json) and the overlap
        block for metrics.json / metadata.json.

    Raises:
        DiagError: the sets overlap and ``allow_overlap`` is False.
    """
    record = training_record(sets.train + sets.val, cfg.data.generated)
    if not sets.test or cfg.data.test is None:
        return record, {"checked": False, "reason": "no test set (data.test is null)"}
    test = cfg.data.test
    report = find_overlap(record, [it.sample for it in sets.test], test)
    overlap = guard(report, allow_overlap,
                    f"the training data overlaps the test set {where(test.root)} (split "
                    f"'{test.split}')",
                    "generate from split: train and keep training and test data disjoint")
    return record, overlap


def _train_run(cfg: TrainConfig, out: str | Path, resume: bool = False,
               progress: bool | None = None, allow_overlap: bool = False) -> dict[str, Any]:
    """Train one model, choose its threshold (per ``train.protocol``), score the test set.

    Args:
        cfg: The validated config.
        out: Run folder (created).
        resume: Continue from ``out/checkpoints/last.pt``.
        progress: False hides progress bars; None shows them on a terminal.
        allow_overlap: Train even though training and test data overlap (recorded in
            metrics.json and metadata.json); otherwise an overlap is an error.

    Returns:
        The metrics dict also written to ``out/metrics.json``.

    Raises:
        DiagError: bad data or config (see :func:`diag.classify.data.build_sets`), or
            training data overlapping the test set without ``allow_overlap``.
    """
    out = Path(out)
    t0 = time.time()
    # a file where the run folder should be, or a folder where one of its files should be
    check_folder(out, files=RUN_FILES, subdirs=("checkpoints",), need_write=False)
    state, done = _prepare_out(out, cfg, resume)
    if done is not None:
        with lock_folder(out, "the training run"):  # temporary files of a killed run, if any
            for folder in (out, out / "checkpoints"):
                remove_temp_files(folder, older_than=None)  # (none on a read-only folder)
            if cfg.train.keep_checkpoints == "none":  # killed between metrics.json and this
                shutil.rmtree(out / "checkpoints", ignore_errors=True)
        print(f"note: {where(out)} already holds this run, finished: nothing to do",
              file=sys.stderr)
        return done
    check_folder(out, files=RUN_FILES, subdirs=("checkpoints",))
    device = resolve_device(cfg.train.device)
    sets = build_sets(cfg.data, val_fraction=cfg.effective_val_fraction)
    record, overlap = check_leakage(cfg, sets, allow_overlap)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc) from None
    with lock_folder(out, "the training run"):
        # left by a killed run (this one holds the lock: no one else is writing here)
        for folder in (out, out / "checkpoints"):
            remove_temp_files(folder, older_than=None)
        return _train_locked(cfg, out, state, device, sets, record, overlap, t0, resume,
                             progress)


def _train_locked(cfg: TrainConfig, out: Path, state: dict[str, Any] | None, device: str,
                  sets: SplitData, record: dict[str, Any], overlap: dict[str, Any], t0: float,
                  resume: bool, progress: bool | None) -> dict[str, Any]:
    """The run itself, in its locked run folder (see :func:`_train_run`)."""
    opt = cfg.train
    paper = opt.protocol == "paper"
    norm = normalization(cfg.model.backbone, cfg.model.normalize)
    size = tuple(opt.input_size)
    with deterministic(opt.deterministic):
        seed_everything(opt.seed)
        model, weights_info = build_model(cfg.model.backbone, cfg.model.pretrained)
        model.to(device, memory_format=CHANNELS_LAST)
        created = _created(out) if resume else None
        write_text(out / "config.yaml", dump_yaml(cfg), rerun=RERUN_TRAIN)
        write_json(out / TRAINING_FILES, record, rerun=RERUN_TRAIN)
        meta = {"created": created or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv), "versions": versions(), "device": device,
                "backbone": cfg.model.backbone, "weights": weights_info, "normalize": norm,
                "input_size": list(size), "seed": opt.seed, "protocol": opt.protocol,
                "data": sets.info, "overlap": overlap}
        write_json(out / "metadata.json", meta, rerun=RERUN_TRAIN)
        hide = True if progress is False else None
        train_ds = ImageSet(sets.train, size, norm, cfg.data.augment, opt.seed, cfg.data.cache,
                            progress, "loading train images")
        val_ds = ImageSet(sets.val, size, norm, False, opt.seed, cfg.data.cache, progress,
                          "loading validation images")
        test_ds = (ImageSet(sets.test, size, norm, False, opt.seed, cfg.data.cache, progress,
                            "loading test images") if sets.test else None)
        optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"epoch": None, "val_ap": -1.0}
        start = 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"]["torch"])
            if device.startswith("cuda") and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            history, best, start = state["history"], state["best"], state["epoch"]
        labels = [it.label for it in sets.train]
        test_y = np.array([it.label for it in sets.test], dtype=int)
        bar = tqdm(range(start, opt.epochs), desc="training", unit="epoch", disable=hide,
                   initial=start, total=opt.epochs)
        if paper:
            # train_ResNet50.py calls model.train() once, before its epoch loop; its evaluation
            # of the test set after every epoch calls model.eval(), and nothing switches back:
            # epochs 2..N train in eval mode (BatchNorm running statistics frozen, dropout
            # off). Reproduced on purpose; a resumed run continues in eval mode.
            model.train(start == 0)
        for epoch in bar:
            if not paper:
                model.train()
            mode = "train" if model.training else "eval"
            train_ds.set_epoch(epoch)
            order = epoch_order(labels, cfg.data.balance, opt.seed, epoch)
            total, n = 0.0, 0
            batches = tqdm(_loader(train_ds, opt.batch_size, opt.num_workers, order),
                           desc=f"epoch {epoch + 1}", leave=False, unit="batch", disable=hide)
            for x, y, _ in batches:
                x, y = x.to(device, memory_format=CHANNELS_LAST), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(y)
                n += len(y)
                batches.set_postfix(loss=f"{total / n:.4f}")
            rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(n, 1),
                                   "model_mode": mode}
            if len(val_ds):
                vs = score(model, val_ds, device, opt.batch_size, opt.num_workers)
                rec["val_ap"] = detection_report([it.label for it in sets.val], vs)["ap"]
            if paper and test_ds is not None:
                ts = score(model, test_ds, device, opt.batch_size, opt.num_workers)  # eval mode
                point = reference_best_f1(test_y, ts)
                rec.update(test_ap=detection_report(test_y, ts)["ap"],
                           test_precision=point["precision"], test_recall=point["recall"],
                           test_f1=point["f1"], test_threshold=point["threshold"])
            history.append(rec)
            if rec.get("val_ap") is not None and rec["val_ap"] > best["val_ap"]:
                best = {"epoch": epoch + 1, "val_ap": rec["val_ap"]}
                if opt.select_epoch == "best":
                    _save_atomic({"model": model.state_dict(), "epoch": epoch + 1},
                                 out / "checkpoints" / "best.pt")
            ckpt = {"format": MODEL_FORMAT, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                    "history": history, "best": best, "config": config_dict(cfg),
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate(),
                            "cuda": torch.cuda.get_rng_state() if device.startswith("cuda")
                            else None}}
            if opt.keep_checkpoints == "all":
                _save_atomic({"model": model.state_dict(), "epoch": epoch + 1},
                             out / "checkpoints" / f"epoch-{epoch + 1:03d}.pt")
            _save_atomic(ckpt, out / "checkpoints" / "last.pt")
            ap_name, ap = ("test AP", rec.get("test_ap")) if paper else ("validation AP",
                                                                          rec.get("val_ap"))
            bar.set_postfix(loss=f"{rec['train_loss']:.4f}",
                            ap=f"{ap:.3f}" if ap is not None else "-")
            if bar.disable and progress is not False:  # no terminal: one log line per epoch
                print(f"epoch {epoch + 1}/{opt.epochs}: train loss {rec['train_loss']:.4f}, "
                      f"{ap_name} {f'{ap:.4f}' if ap is not None else '-'}", file=sys.stderr,
                      flush=True)
        selected = opt.epochs
        if opt.select_epoch == "best" and best["epoch"] is not None:
            selected = best["epoch"]
            model.load_state_dict(torch.load(out / "checkpoints" / "best.pt",
                                             map_location=device, weights_only=True)["model"])
        metrics = _final_scores(model, sets, val_ds, test_ds, device, cfg, out)
    metrics.update({"selected_epoch": selected, "select_epoch": opt.select_epoch,
                    "history": history, "overlap": overlap,
                    "seconds": round(time.time() - t0, 2)})
    model_file = {"format": MODEL_FORMAT, "model": model.state_dict(),
                  "backbone": cfg.model.backbone, "weights": weights_info, "normalize": norm,
                  "input_size": list(size), "threshold": metrics["threshold"]["value"],
                  "threshold_chosen_on": metrics["threshold"]["chosen_on"],
                  "protocol": opt.protocol, "epoch": selected, "config": config_dict(cfg)}
    _save_atomic(model_file, out / "model.pt")
    write_json(out / "metrics.json", metrics, rerun=RESUME)
    if opt.keep_checkpoints == "none":  # the run is complete on disk: drop what resumes it
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return metrics


def _created(out: Path) -> str | None:
    """When a run being resumed was created (from its metadata.json), if known."""
    import json

    try:
        meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    created = meta.get("created") if isinstance(meta, dict) else None
    return created if isinstance(created, str) else None


def _final_scores(model: torch.nn.Module, sets: SplitData, val_ds: ImageSet,
                  test_ds: ImageSet | None, device: str, cfg: TrainConfig, out: Path
                  ) -> dict[str, Any]:
    """Score validation and test with the final model; choose the threshold per protocol;
    write scores.csv and pr_curve.png."""
    opt = cfg.train
    paper = opt.protocol == "paper"
    val_y = np.array([it.label for it in sets.val], dtype=int)
    test_y = np.array([it.label for it in sets.test], dtype=int)
    val_s = (score(model, val_ds, device, opt.batch_size, opt.num_workers) if len(val_ds)
             else np.zeros(0))
    test_s = (score(model, test_ds, device, opt.batch_size, opt.num_workers)
              if test_ds is not None else None)
    reference: dict[str, float] = {}
    if paper and test_s is not None:
        reference = reference_best_f1(test_y, test_s)
        threshold = {"value": reference["threshold"], "chosen_on": "test", "optimistic": True,
                     "rule": REFERENCE_RULE, "curve_threshold": reference["curve_threshold"],
                     "probability": sigmoid(reference["threshold"])}
    elif len(val_ds):
        chosen = best_f1(val_y, val_s)
        threshold = {"value": chosen["threshold"], "chosen_on": "validation",
                     "optimistic": False, "rule": "maximum F1 on the validation split",
                     "probability": sigmoid(chosen["threshold"])}
    else:
        threshold = {"value": 0.0, "chosen_on": "none (no validation split)",
                     "optimistic": False, "rule": "logit 0 (probability 0.5)",
                     "probability": 0.5}
    thr = threshold["value"]
    metrics: dict[str, Any] = {"protocol": opt.protocol, "optimistic": paper,
                               "threshold": threshold}
    rows = _items_rows(sets.val, "val", val_s, thr)
    curves = []
    if len(val_ds):
        metrics["validation"] = detection_report(val_y, val_s, thr)
        curves.append(("validation", val_y, val_s))
    point = None
    if test_s is not None:
        metrics["test"] = detection_report(test_y, test_s, thr)
        rows += _items_rows(sets.test, "test", test_s, thr)
        curves.append(("test", test_y, test_s))
        point = ("test", test_y, test_s, thr)
    if reference:
        metrics["paper_protocol"] = {
            "optimistic": True,
            "note": "as the reference code: no validation split, epochs 2..N trained with "
                    "BatchNorm in eval mode, precision/recall at the threshold that maximises F1 "
                    "on the test set itself (chosen on test data)",
            "ap": metrics["test"]["ap"], **reference}
    write_scores(out / "scores.csv", rows)
    label = {"test": "test-chosen threshold (optimistic)",
             "validation": "validation threshold"}.get(threshold["chosen_on"], "logit 0")
    plot_pr(out / "pr_curve.png", curves, point, label)
    return metrics


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def summarize(per_seed: dict[int, dict[str, Any]], split: str = "test") -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) of the main metrics over seeds."""
    summary: dict[str, Any] = {"seeds": list(per_seed), "split": split, "metrics": {}}
    for path in SUMMARY_KEYS:
        vals = [_get(m.get(split, {}), path) for m in per_seed.values()]
        vals = [v for v in vals if v is not None]
        if not vals:
            continue
        arr = np.array(vals, dtype=float)
        summary["metrics"][".".join(path)] = {
            "mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "values": [float(v) for v in arr]}
    return summary


def train_seeds(cfg: TrainConfig, out: str | Path, seeds: list[int], resume: bool = False,
                progress: bool | None = None, allow_overlap: bool = False) -> dict[str, Any]:
    """Train one run per seed into ``out/seed-<s>`` and write ``out/summary.json``.

    Args:
        cfg: The validated config (its ``train.seed`` is replaced by each seed).
        out: Folder of the runs.
        seeds: The seeds.
        resume: Skip finished seeds and resume an interrupted one.
        progress: False hides progress bars; None shows them on a terminal.
        allow_overlap: See :func:`train_run`.
    """
    out = Path(out)
    # a file where the folder should be, a folder where summary.json goes: before any work
    # (whether it can be written is checked by each seed's run, and by the summary's write,
    # which succeeds on a read-only folder that already holds the same summary)
    check_folder(out, files=("summary.json",), need_write=False)
    per_seed = {}
    for s in seeds:
        c = parse_train_config(config_dict(cfg), [f"train.seed={s}"])
        per_seed[s] = train_run(c, out / f"seed-{s}", resume=resume, progress=progress,
                                allow_overlap=allow_overlap)
    summary = summarize(per_seed, "test" if cfg.data.test is not None else "validation")
    summary["protocol"] = cfg.train.protocol
    summary["optimistic"] = cfg.train.protocol == "paper"
    write_json(out / "summary.json", summary, rerun=RERUN_TRAIN)
    return summary
