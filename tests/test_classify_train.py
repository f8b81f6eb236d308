"""Training for real (tiny inputs, CPU): Magnetic-tile runs, a separable task, resume, seeds."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn import metrics as skm

from diag.classify.config import parse_train_config
from diag.classify.train import train_run
from diag.errors import DiagError
from diag.imageio import write_image, write_mask

TINY = ["--set", "model.backbone=resnet18", "--set", "model.pretrained=none",
        "--set", "train.input_size=[64,32]", "--set", "train.batch_size=8",
        "--set", "train.threads=1"]


def _subset(src: Path, dst: Path, per_class: dict[str, int]) -> Path:
    """A Magnetic-tile-layout folder linking the first N images (and masks) of each class."""
    for cls, n in per_class.items():
        imgs = sorted((src / cls / "Imgs").glob("*.jpg"))[:n]
        out = dst / cls / "Imgs"
        out.mkdir(parents=True)
        for p in imgs:
            os.symlink(p, out / p.name)
            if (p.with_suffix(".png")).is_file():
                os.symlink(p.with_suffix(".png"), out / f"{p.stem}.png")
    return dst


def _read_scores(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _separable(root: Path, n: int = 24, size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """Folder layout: noise negatives, positives with a bright blob (mask) in a random place."""
    rng = np.random.default_rng(seed)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(2 * n):
        img = rng.integers(40, 110, size, dtype=np.uint8)
        if i % 2:
            y, x = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
            img[y:y + 12, x:x + 12] = 255
            mask = np.zeros(size, bool)
            mask[y:y + 12, x:x + 12] = True
            write_mask(root / "masks" / f"s{i:03d}.png", mask)
        write_image(root / "images" / f"s{i:03d}.png", img)
    return root


def _sep_config(train: Path, test: Path, **train_opts) -> dict:
    ref = {"layout": "folder", "images": "images", "masks": "masks", "split": "all"}
    opts = {"epochs": 3, "batch_size": 8, "lr": 1e-3, "input_size": [32, 32], "seed": 0,
            "threads": 1}
    opts.update(train_opts)
    return {"data": {"train": {"root": str(train), **ref}, "test": {"root": str(test), **ref},
                     "val_fraction": 0.25},
            "model": {"backbone": "resnet18", "pretrained": "none"}, "train": opts}


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory, mt_root):
    """One real run: Magnetic-tile subset + memseg-generated positives, 2 epochs, honest protocol."""
    from diag.cli import main

    base = tmp_path_factory.mktemp("mt")
    data = _subset(mt_root, base / "mt", {"MT_Free": 50, "MT_Crack": 12, "MT_Blowhole": 12})
    spec = {"dataset": {"layout": "magnetic-tile", "root": str(data), "split": "train"},
            "regions": {"source": "real-masks"},
            "defects": [{"name": "crack", "prompt": "a crack", "count": 8}],
            "generator": {"kind": "memseg"}, "seed": 0}
    (base / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["generate", str(base / "spec.yaml"), "--out", str(base / "gen")]) == 0
    cfg = {"data": {"train": {"root": str(data), "layout": "magnetic-tile", "split": "train"},
                    "generated": [str(base / "gen")], "naug": 6,
                    "test": {"root": str(data), "layout": "magnetic-tile", "split": "test"},
                    "val_fraction": 0.25},
           "train": {"epochs": 2, "protocol": "honest"}}
    (base / "train.yaml").write_text(yaml.safe_dump(cfg))
    run = base / "run"
    assert main(["train", str(base / "train.yaml"), "--out", str(run), *TINY]) == 0
    return run, data


def test_run_folder_contents(mt_run):
    run, _ = mt_run
    for name in ("config.yaml", "metadata.json", "checkpoints/last.pt", "model.pt",
                 "metrics.json", "scores.csv", "pr_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "pr_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["backbone"] == "resnet18" and meta["weights"]["source"].startswith("none")
    assert meta["versions"]["torch"] == torch.__version__
    train, val = meta["data"]["train"], meta["data"]["validation"]
    # full-shot: every generated image trains, validation is real images only
    assert train["by_source"]["generated:gen"] == 6 and meta["data"]["generated_available"] == 8
    assert set(val["by_source"]) == {"real"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(h["val_ap"] is not None for h in metrics["history"])
    assert [h["model_mode"] for h in metrics["history"]] == ["train", "train"]
    assert "paper_protocol" not in metrics and metrics["optimistic"] is False
    assert metrics["threshold"]["chosen_on"] == "validation"
    # generated from split: train, tested on split: test: the leakage guard found nothing
    assert metrics["overlap"] == {"checked": True, "clean": True, "allowed": False, "found": {}}
    files = json.loads((run / "training_files.json").read_text())["files"]
    assert {f["role"] for f in files} == {"image", "generated", "source", "mask"}


def test_metrics_match_sklearn_on_saved_scores(mt_run):
    run, _ = mt_run
    metrics = json.loads((run / "metrics.json").read_text())
    rows = _read_scores(run / "scores.csv")
    thr = metrics["threshold"]["value"]
    for split, key in (("test", "test"), ("val", "validation")):
        y = np.array([int(r["label"]) for r in rows if r["split"] == split])
        s = np.array([float(r["score"]) for r in rows if r["split"] == split])
        m = metrics[key]
        assert m["n"] == len(y) and m["positives"] == int(y.sum())
        assert m["ap"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-6)
        assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-6)
        pred = (s >= thr).astype(int)
        assert [int(r["predicted"]) for r in rows if r["split"] == split] == pred.tolist()
        at = m["at_threshold"]
        assert at["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert at["recall"] == pytest.approx(skm.recall_score(y, pred, zero_division=0))
        assert at["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (at["tp"], at["fp"], at["tn"], at["fn"]) == (tp, fp, tn, fn)
        if split == "val":  # the threshold is the best-F1 point of validation, not of test
            best = max(skm.f1_score(y, (s >= t).astype(int)) for t in np.unique(s))
            assert at["f1"] == pytest.approx(best, abs=1e-6)


def test_evaluate_command_reproduces_test_scores(mt_run, cli, tmp_path):
    run, data = mt_run
    code, out, err = cli("evaluate", run, "--data", data, "--layout", "magnetic-tile",
                         "--split", "test", "--out", tmp_path / "ev")
    assert code == 0, err
    assert "AP" in out
    ev = {r["id"]: float(r["score"]) for r in _read_scores(tmp_path / "ev" / "scores.csv")}
    tr = {r["id"].removeprefix("test/"): float(r["score"])
          for r in _read_scores(run / "scores.csv") if r["split"] == "test"}
    assert ev.keys() == tr.keys()
    for k in ev:
        assert ev[k] == pytest.approx(tr[k], rel=1e-5, abs=1e-5)
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["threshold"]["value"] == json.loads((run / "metrics.json").read_text())[
        "threshold"]["value"]
    assert (tmp_path / "ev" / "pr_curve.png").is_file()


def test_existing_run_needs_resume(mt_run, cli):
    run, _ = mt_run
    code, _, err = cli("train", run / "config.yaml", "--out", run, *TINY)
    assert code == 2 and "--resume" in err and err.count("\n") == 1


def test_evaluate_without_positives_says_ap_undefined(mt_run, cli, tmp_path):
    run, data = mt_run
    neg = tmp_path / "neg"
    _subset(data, neg, {"MT_Free": 5})
    code, _, err = cli("evaluate", run, "--data", neg, "--split", "all")
    assert code == 2 and "AP is undefined" in err


def test_learns_a_separable_task(tmp_path):
    cfg = parse_train_config(_sep_config(_separable(tmp_path / "tr", 24),
                                         _separable(tmp_path / "te", 16, seed=1)))
    metrics = train_run(cfg, tmp_path / "run", progress=False)
    assert metrics["test"]["ap"] > 0.95, metrics["test"]
    assert metrics["test"]["auroc"] > 0.95


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    tr, te = _separable(tmp_path / "tr", 12), _separable(tmp_path / "te", 6, seed=1)
    # efficientnet-lite0 has dropout (RNG during training); balance + augment use the seeds too
    base = _sep_config(tr, te, epochs=2)
    base["model"]["backbone"] = "efficientnet-lite0"
    base["data"].update(balance=True, augment=True)
    full = train_run(parse_train_config(base), tmp_path / "full", progress=False)
    train_run(parse_train_config(base, ["train.epochs=1"]), tmp_path / "cut", progress=False)
    resumed = train_run(parse_train_config(base), tmp_path / "cut", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["history"] == resumed["history"]
    assert _read_scores(tmp_path / "full" / "scores.csv") == _read_scores(
        tmp_path / "cut" / "scores.csv")


def test_resume_with_a_changed_config_is_refused(tmp_path):
    tr, te = _separable(tmp_path / "tr", 6), _separable(tmp_path / "te", 3, seed=1)
    base = _sep_config(tr, te, epochs=1)
    train_run(parse_train_config(base), tmp_path / "run", progress=False)
    with pytest.raises(DiagError, match="config differs"):
        train_run(parse_train_config(base, ["train.lr=0.01"]), tmp_path / "run", resume=True,
                  progress=False)


def test_keep_checkpoints_none_drops_the_resume_state_once_finished(tmp_path, capsys):
    tr, te = _separable(tmp_path / "tr", 6), _separable(tmp_path / "te", 3, seed=1)
    base = _sep_config(tr, te, epochs=1, keep_checkpoints="none")
    first = train_run(parse_train_config(base), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert {"model.pt", "metrics.json", "scores.csv"} <= {
        p.name for p in (tmp_path / "run").iterdir()}
    # resuming the finished run is a no-op, whatever is kept
    again = train_run(parse_train_config(base, ["train.keep_checkpoints=last"]),
                      tmp_path / "run", resume=True, progress=False)
    assert again == first and "nothing to do" in capsys.readouterr().err
    with pytest.raises(DiagError, match="kept no checkpoint.*new --out"):
        train_run(parse_train_config(base, ["train.epochs=2"]), tmp_path / "run", resume=True,
                  progress=False)
    # a run that keeps its checkpoint can still be extended
    base["train"]["keep_checkpoints"] = "last"
    train_run(parse_train_config(base), tmp_path / "kept", progress=False)
    assert (tmp_path / "kept" / "checkpoints" / "last.pt").is_file()
    longer = train_run(parse_train_config(base, ["train.epochs=2"]), tmp_path / "kept",
                       resume=True, progress=False)
    assert len(longer["history"]) == 2


def test_seeds_give_mean_and_std(tmp_path, cli):
    tr, te = _separable(tmp_path / "tr", 8), _separable(tmp_path / "te", 4, seed=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_sep_config(tr, te, epochs=1)))
    code, out, err = cli("train", tmp_path / "c.yaml", "--out", tmp_path / "runs",
                         "--seeds", "0,1")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    ap = summary["metrics"]["ap"]
    assert ap["mean"] == pytest.approx(np.mean(ap["values"]))
    assert ap["std"] == pytest.approx(np.std(ap["values"], ddof=1))
    assert "ap:" in out
    code, out, err = cli("evaluate", tmp_path / "runs", "--data", te, "--layout", "folder",
                         "--split", "all", "--set", "images=images", "--set", "masks=masks",
                         "--out", tmp_path / "ev")
    assert code == 0, err
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert ev["metrics"]["ap"]["values"] == pytest.approx(ap["values"], abs=1e-5)


@pytest.mark.parametrize("args, match", [
    (["--set", "data.generated=[nowhere]"], "does not exist"),
    (["--set", "data.real_positives=none"], "no positive"),
    (["--set", "train.epoch=2"], "did you mean"),
    (["--set", "model.pretrained=missing.pth"], "does not exist"),
])
def test_cli_bad_inputs_exit_2(tmp_path, cli, args, match):
    tr, te = _separable(tmp_path / "tr", 6), _separable(tmp_path / "te", 3, seed=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_sep_config(tr, te, epochs=1)))
    code, _, err = cli("train", tmp_path / "c.yaml", "--out", tmp_path / "run", *args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err
