"""``train.protocol: paper``: no validation split, BatchNorm in eval mode from epoch 2, the
reference code's test-chosen threshold (flagged optimistic); and its config errors."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score, precision_recall_curve

from diag.classify.config import parse_train_config
from diag.classify.train import train_run
from diag.errors import DiagError
from diag.imageio import write_image, write_mask


def _separable(root: Path, n: int, seed: int = 0) -> Path:
    """Folder layout: n noise negatives and n positives with a bright square (and its mask)."""
    rng = np.random.default_rng(seed)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(2 * n):
        img = rng.integers(40, 110, (32, 32), dtype=np.uint8)
        if i % 2:
            y, x = rng.integers(0, 20, 2)
            img[y:y + 12, x:x + 12] = 255
            mask = np.zeros((32, 32), bool)
            mask[y:y + 12, x:x + 12] = True
            write_mask(root / "masks" / f"s{i:03d}.png", mask)
        write_image(root / "images" / f"s{i:03d}.png", img)
    return root


def _config(train: Path, test: Path | None, protocol: str, **opts) -> dict:
    ref = {"layout": "folder", "images": "images", "masks": "masks", "split": "all"}
    data = {"train": {"root": str(train), **ref}}
    if test is not None:
        data["test"] = {"root": str(test), **ref}
    train_opts = {"epochs": 2, "batch_size": 8, "lr": 1e-3, "input_size": [32, 32], "seed": 0,
                  "threads": 1, "protocol": protocol, "keep_checkpoints": "all"}
    train_opts.update(opts)
    return {"data": data, "model": {"backbone": "resnet18", "pretrained": "none"},
            "train": train_opts}


def _bn_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("paper")
    return _separable(base / "train", 8), _separable(base / "test", 4, seed=1)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, data) -> Iterator[Path]:
    """A 2-epoch paper-protocol run through the command line."""
    from diag.cli import main

    base = tmp_path_factory.mktemp("paper-run")
    (base / "c.yaml").write_text(yaml.safe_dump(_config(*data, "paper")))
    assert main(["train", str(base / "c.yaml"), "--out", str(base / "run")]) == 0
    yield base / "run"
    shutil.rmtree(base, ignore_errors=True)  # its checkpoints: keep the suite's disk use small


def test_every_training_image_trains(paper_run):
    meta = json.loads((paper_run / "metadata.json").read_text())
    assert meta["protocol"] == "paper" and meta["data"]["val_fraction"] == 0.0
    assert meta["data"]["train"]["total"] == 16 and meta["data"]["validation"]["total"] == 0
    with open(paper_run / "scores.csv", newline="") as fh:
        splits = {r["split"] for r in csv.DictReader(fh)}
    assert splits == {"test"}


def test_epochs_after_the_first_train_in_eval_mode(paper_run):
    # epoch 2 ran in eval mode: BatchNorm kept epoch 1's running statistics, while the
    # weights did train on
    after_1 = _weights(paper_run / "checkpoints" / "epoch-001.pt")
    final = _weights(paper_run / "model.pt")
    bn1, bn2 = _bn_buffers(after_1), _bn_buffers(final)
    assert bn1 and bn1.keys() == bn2.keys()
    for k in bn1:
        assert torch.equal(bn1[k], bn2[k]), k
    assert not torch.equal(after_1["net.conv1.weight"], final["net.conv1.weight"])
    history = json.loads((paper_run / "metrics.json").read_text())["history"]
    assert [h["model_mode"] for h in history] == ["train", "eval"]


def test_honest_protocol_updates_batchnorm_every_epoch(tmp_path, data):
    # the same run under honest (validation off, to train on the same images): BatchNorm's
    # running statistics move in epoch 2, so the check above can tell the two apart
    cfg = parse_train_config(_config(*data, "honest"), ["data.val_fraction=0"])
    metrics = train_run(cfg, tmp_path / "run", progress=False)
    bn1 = _bn_buffers(_weights(tmp_path / "run" / "checkpoints" / "epoch-001.pt"))
    bn2 = _bn_buffers(_weights(tmp_path / "run" / "model.pt"))
    means = [k for k in bn1 if k.endswith("running_mean")]
    assert means and all(not torch.equal(bn1[k], bn2[k]) for k in means)
    assert int(bn2["net.bn1.num_batches_tracked"]) == 2 * int(bn1["net.bn1.num_batches_tracked"])
    assert [h["model_mode"] for h in metrics["history"]] == ["train", "train"]
    assert metrics["optimistic"] is False and "paper_protocol" not in metrics


def test_resumed_paper_run_stays_in_eval_mode(tmp_path, data, paper_run):
    base = _config(*data, "paper")
    train_run(parse_train_config(base, ["train.epochs=1"]), tmp_path / "cut", progress=False)
    train_run(parse_train_config(base), tmp_path / "cut", resume=True, progress=False)
    a, b = _weights(paper_run / "model.pt"), _weights(tmp_path / "cut" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = json.loads((tmp_path / "cut" / "metrics.json").read_text())["history"]
    assert [h["model_mode"] for h in history] == ["train", "eval"]


def test_threshold_is_the_references_best_f1_on_test(paper_run):
    metrics = json.loads((paper_run / "metrics.json").read_text())
    with open(paper_run / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    # train_ResNet50.py's evaluate(), written out
    p, r, t = precision_recall_curve(y, s)
    f = 2 * (p * r) / (p + r + 0.0000000001)
    ix = np.argmax(f)
    best = (t[ix] + t[ix - 1]) / 2 if ix > 0 else t[ix]
    thr = metrics["threshold"]
    assert thr["chosen_on"] == "test" and thr["optimistic"] is True
    assert thr["value"] == pytest.approx(best) and thr["curve_threshold"] == pytest.approx(t[ix])
    assert metrics["optimistic"] is True and metrics["protocol"] == "paper"
    pp = metrics["paper_protocol"]
    assert pp["optimistic"] is True
    assert (pp["precision"], pp["recall"]) == pytest.approx((p[ix], r[ix]))
    assert pp["accuracy"] == pytest.approx(np.mean((s > best) == y))
    assert pp["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-9)
    at = metrics["test"]["at_threshold"]
    assert (at["precision"], at["recall"]) == pytest.approx((p[ix], r[ix]))
    # the last epoch's record is the same evaluation (same weights, eval mode)
    last = metrics["history"][-1]
    assert last["test_ap"] == pytest.approx(pp["ap"], abs=1e-6)
    assert (last["test_precision"], last["test_recall"]) == pytest.approx((p[ix], r[ix]))
    assert torch.load(paper_run / "model.pt", weights_only=False)["threshold_chosen_on"] == "test"


def test_val_fraction_defaults_per_protocol(tmp_path):
    ref = {"root": "x"}
    honest = parse_train_config({"data": {"train": ref}})
    paper = parse_train_config({"data": {"train": ref, "test": ref},
                                "train": {"protocol": "paper"}})
    assert honest.data.val_fraction is None and honest.effective_val_fraction == 0.2
    assert paper.effective_val_fraction == 0.0
    assert parse_train_config({"data": {"train": ref, "test": ref, "val_fraction": 0},
                               "train": {"protocol": "paper"}}).effective_val_fraction == 0.0


@pytest.mark.parametrize("data, train, match", [
    ({"test": {"root": "t"}, "val_fraction": 0.2}, {}, "data.val_fraction is 0.2"),
    ({"test": {"root": "t"}}, {"select_epoch": "best"}, "select_epoch is best"),
    ({}, {}, "data.test is missing"),
])
def test_paper_config_errors(data, train, match):
    cfg = {"data": {"train": {"root": "x"}, **data}, "train": {"protocol": "paper", **train}}
    with pytest.raises(DiagError, match=match) as err:
        parse_train_config(cfg)
    assert "\n" not in str(err.value) and "protocol" in str(err.value)


def test_testless_paper_config_exits_2(tmp_path, cli, data):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_config(data[0], None, "paper")))
    code, _, err = cli("train", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "data.test is missing" in err and not (tmp_path / "run").exists()
