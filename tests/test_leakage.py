"""The leakage guard: training data (and the sources / masks of generated images) against test
data, by path and by content, in ``diag train`` and ``diag evaluate``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from diag.classify.config import parse_train_config
from diag.classify.data import build_sets, generated_items
from diag.classify.leakage import (
    KINDS,
    file_hashes,
    find_overlap,
    guard,
    read_training_record,
    resolved,
    training_record,
)
from diag.classify.train import check_leakage
from diag.data import DatasetRef, load_dataset
from diag.data.manifest import ManifestWriter
from diag.errors import DiagError
from diag.files import sha256_file
from diag.imageio import write_image, write_mask

REF = {"layout": "folder", "images": "images", "masks": "masks", "test_fraction": 0.5}


def make_folder(root: Path, n_neg: int = 12, n_pos: int = 8, seed: int = 0) -> Path:
    """A `folder` layout of noise images (unique contents); positives get a square and a mask."""
    rng = np.random.default_rng(seed)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n_neg + n_pos):
        img = rng.integers(0, 256, (20, 16), dtype=np.uint8)
        if i >= n_neg:
            mask = np.zeros((20, 16), bool)
            mask[2:9, 1:4 + i - n_neg] = True  # a different mask for every positive
            img[mask] = 255
            write_mask(root / "masks" / f"im{i:03d}.png", mask)
        write_image(root / "images" / f"im{i:03d}.png", img)
    return root


def split_files(root: Path, split: str, positives: bool | None = None) -> list[Path]:
    """Image paths of one split (optionally only positives / negatives), sorted."""
    samples = load_dataset("folder", root, split, images="images", masks="masks",
                           test_fraction=0.5)
    return [s.path for s in samples if positives is None or bool(s.label) == positives]


def make_generated(folder: Path, sources: list[Path | None], mask_files: list[Path | None],
                   dataset: dict, seed: int = 7) -> Path:
    """A diag-generate-style folder: images, masks, manifest.jsonl and spec.yaml."""
    rng = np.random.default_rng(seed)
    with ManifestWriter(folder / "manifest.jsonl") as manifest:
        for i, (src, mask_file) in enumerate(zip(sources, mask_files, strict=True)):
            img = rng.integers(0, 256, (20, 16), dtype=np.uint8)
            mask = np.zeros((20, 16), bool)
            mask[5:12, 4:11] = True
            write_image(folder / "images" / f"g{i:03d}.png", img)
            write_mask(folder / "masks" / f"g{i:03d}.png", mask)
            region = ({"source": "real-masks", "mask_file": str(mask_file), "mask_from": "x"}
                      if mask_file is not None else None)
            manifest.append({"id": f"g{i:03d}", "index": i, "image": f"images/g{i:03d}.png",
                             "mask": f"masks/g{i:03d}.png",
                             "source": str(src) if src is not None else None,
                             "source_id": Path(src).stem if src is not None else None,
                             "region": region})
    spec = {"dataset": dataset, "defects": [{"name": "d", "prompt": "d", "count": len(sources)}],
            "generator": {"kind": "memseg"}, "seed": 0}
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder


def config(root: Path, train_split: str = "train", generated: list[Path] = (),
           train_root: Path | None = None, test: dict | None = None) -> dict:
    return {"data": {"train": {"root": str(train_root or root), **REF, "split": train_split},
                     "test": test or {"root": str(root), **REF, "split": "test"},
                     "generated": [str(g) for g in generated], "val_fraction": 0},
            "model": {"backbone": "resnet18", "pretrained": "none"},
            "train": {"epochs": 1, "batch_size": 8, "input_size": [64, 32], "threads": 1}}


def overlaps(cfg: dict) -> dict:
    """The overlap report of a config (allowed, so it is returned instead of raised)."""
    c = parse_train_config(cfg)
    _, block = check_leakage(c, build_sets(c.data, val_fraction=0), allow_overlap=True)
    return block["found"]


@pytest.fixture
def root(tmp_path) -> Path:
    r = make_folder(tmp_path / "data")
    assert split_files(r, "test", True) and split_files(r, "train", True)
    return r


def _spec_ds(root: Path, split: str = "train", **kw) -> dict:
    return {"root": str(root), "layout": "folder", "split": split, "test_fraction": 0.5,
            "split_seed": 0, "images": "images", "masks": "masks", **kw}


def test_a_clean_split_passes(root, tmp_path):
    train_neg = split_files(root, "train", False)
    train_pos_masks = [root / "masks" / p.name for p in split_files(root, "train", True)]
    gen = make_generated(tmp_path / "gen", train_neg[:3], train_pos_masks[:3], _spec_ds(root))
    assert overlaps(config(root, generated=[gen])) == {}
    c = parse_train_config(config(root, generated=[gen]))
    record, block = check_leakage(c, build_sets(c.data, val_fraction=0), allow_overlap=False)
    assert block == {"checked": True, "clean": True, "allowed": False, "found": {}}
    assert {f["role"] for f in record["files"]} == {"image", "generated", "source", "mask"}


def test_training_images_that_are_test_images(root):
    # split all trains on every image, the test split included: the same files
    found = overlaps(config(root, train_split="all"))
    test = [resolved(p) for p in split_files(root, "test")]
    assert list(found) == ["training_image_in_test"]
    entry = found["training_image_in_test"]
    assert entry["count"] == len(test) and entry["example"] in test
    assert entry["test"] == entry["example"]


def test_same_content_under_another_name_and_symlinks(root, tmp_path):
    other = make_folder(tmp_path / "other", seed=1)
    test_neg = split_files(root, "test", False)
    shutil.copy(test_neg[0], other / "images" / "zz_copy.png")  # same bytes, new name
    os.symlink(test_neg[1], other / "images" / "zz_link.png")  # same file through a link
    found = overlaps(config(root, train_split="all", train_root=other))
    entry = found["training_image_in_test"]
    assert entry["count"] == 2
    assert entry["example"] == resolved(other / "images" / "zz_copy.png")
    assert entry["test"] == resolved(test_neg[0])


def test_generated_images_made_from_test_images(root, tmp_path):
    test_neg, train_neg = split_files(root, "test", False), split_files(root, "train", False)
    gen = make_generated(tmp_path / "gen", [test_neg[0], train_neg[0], test_neg[1]],
                         [None, None, None], _spec_ds(root))
    found = overlaps(config(root, generated=[gen]))
    assert list(found) == ["generated_from_test_image"]
    assert found["generated_from_test_image"]["count"] == 2
    assert found["generated_from_test_image"]["example"] == resolved(test_neg[0])


def test_generated_images_shaped_by_a_test_mask(root, tmp_path):
    train_neg = split_files(root, "train", False)
    test_pos = split_files(root, "test", True)
    copy = tmp_path / "elsewhere" / "mask.png"  # a copy of a test mask counts too
    copy.parent.mkdir()
    shutil.copy(root / "masks" / test_pos[-1].name, copy)
    gen = make_generated(tmp_path / "gen", train_neg[:3],
                         [root / "masks" / test_pos[0].name, None, copy], _spec_ds(root))
    found = overlaps(config(root, generated=[gen]))
    assert list(found) == ["generated_mask_from_test"]
    entry = found["generated_mask_from_test"]
    assert entry["count"] == 2 and entry["example"] == resolved(root / "masks" / test_pos[0].name)


def test_generated_images_that_are_test_images(root, tmp_path):
    train_neg = split_files(root, "train", False)
    gen = make_generated(tmp_path / "gen", train_neg[:4], [None] * 4, _spec_ds(root))
    found = overlaps(config(root, generated=[gen],
                            test={"root": str(gen), "layout": "generated", "split": "all"}))
    assert list(found) == ["generated_image_in_test"]
    assert found["generated_image_in_test"]["count"] == 4


@pytest.mark.parametrize("split, test_fraction, flagged", [
    ("all", 0.5, True), ("test", 0.5, True), ("train", 0.5, False),
    ("train", 0.3, True),  # another hash split of the same folder: not disjoint from test
])
def test_generate_folder_made_from_the_test_data(root, tmp_path, split, test_fraction, flagged):
    train_neg = split_files(root, "train", False)
    gen = make_generated(tmp_path / "gen", train_neg[:2], [None, None],
                         _spec_ds(root, split, test_fraction=test_fraction))
    found = overlaps(config(root, generated=[gen]))
    if not flagged:
        assert found == {}
        return
    assert list(found) == ["generated_from_test_split"]
    assert found["generated_from_test_split"] == {
        "count": 1, "example": resolved(gen), "test": resolved(root),
        "what": KINDS["generated_from_test_split"].format(held="test")}


def test_real_generate_run_from_split_all_is_flagged(tmp_path, example_root):
    from diag.cli import main

    def generate(split: str) -> Path:
        spec = {"dataset": {"layout": "magnetic-tile", "root": str(example_root), "split": split},
                "regions": {"source": "real-masks"},
                "defects": [{"name": "crack", "prompt": "a crack", "count": 2}],
                "generator": {"kind": "memseg"}, "seed": 0}
        (tmp_path / f"{split}.yaml").write_text(yaml.safe_dump(spec))
        assert main(["generate", str(tmp_path / f"{split}.yaml"), "--out",
                     str(tmp_path / split)]) == 0
        return tmp_path / split

    test = DatasetRef(root=str(example_root), layout="magnetic-tile", split="test")
    samples = test.load()
    folder = str(generate("all"))
    found = find_overlap(training_record(generated_items([folder], None), [folder]), samples,
                         test)
    assert found["generated_from_test_split"]["count"] == 1
    folder = str(generate("train"))
    record = training_record(generated_items([folder], None), [folder])
    assert {f["role"] for f in record["files"]} == {"generated", "source", "mask"}
    assert find_overlap(record, samples, test) == {}


def test_an_overlap_is_a_one_line_error_unless_allowed():
    report = {"training_image_in_test": {"count": 3, "example": "/d/a.png", "test": "/d/a.png",
                                         "what": "training images that are test images"},
              "generated_from_test_image": {"count": 2, "example": "/d/b.png",
                                            "test": "/t/b.png",
                                            "what": "generated images painted on a test image"}}
    with pytest.raises(DiagError) as err:
        guard(report, False, "the training data overlaps the test set", "keep them disjoint")
    msg = str(err.value)
    assert "\n" not in msg and "--allow-overlap" in msg and "keep them disjoint" in msg
    assert "training images that are test images: 3 (e.g. '/d/a.png')" in msg
    assert "generated images painted on a test image: 2 (e.g. '/d/b.png' = test '/t/b.png')" in msg
    block = guard(report, True, "x", "y")
    assert block == {"checked": True, "clean": False, "allowed": True, "found": report}
    assert guard({}, False, "x", "y")["clean"] is True


def test_read_training_record(tmp_path):
    assert read_training_record(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "training_files.json").write_text(json.dumps({"format": "diag-training-files-1",
                                                              "files": []}))
    assert read_training_record(tmp_path / "checkpoints" / "last.pt")["files"] == []
    assert read_training_record(tmp_path / "model.pt")["files"] == []
    (tmp_path / "training_files.json").write_text("{not json")
    with pytest.raises(DiagError, match="not a diag training record"):
        read_training_record(tmp_path)


def test_hashing_on_threads_is_right(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(200):  # enough to use the thread pool
        p = tmp_path / f"f{i:04d}.bin"
        p.write_bytes(rng.bytes(5_000))
        paths.append(str(p))
    hashes = file_hashes(paths)
    assert hashes[paths[7]] == sha256_file(paths[7]) and len(set(hashes.values())) == 200
    assert file_hashes([str(tmp_path / "missing.png")]) == {str(tmp_path / "missing.png"): None}


def test_train_and_evaluate_refuse_overlap_unless_allowed(root, tmp_path, cli):
    test_neg = split_files(root, "test", False)
    train_neg = split_files(root, "train", False)
    gen = make_generated(tmp_path / "gen", [test_neg[0], train_neg[0], test_neg[1]],
                         [None] * 3, _spec_ds(root))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config(root, generated=[gen])))
    run = tmp_path / "run"
    code, _, err = cli("train", tmp_path / "c.yaml", "--out", run)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "generated images painted on a test image: 2" in err and "--allow-overlap" in err
    assert not run.exists()

    code, _, err = cli("train", tmp_path / "c.yaml", "--out", run, "--allow-overlap")
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "metadata.json").read_text())
    for block in (metrics["overlap"], meta["overlap"]):
        assert block["allowed"] is True
        assert block["found"]["generated_from_test_image"]["count"] == 2
    record = json.loads((run / "training_files.json").read_text())
    trained = {f["path"]: f["sha256"] for f in record["files"]}
    assert resolved(test_neg[0]) in trained  # a source is recorded with its hash
    assert trained[resolved(train_neg[0])] == sha256_file(train_neg[0])

    # evaluating on the training split: every training image is in it
    args = ("evaluate", run, "--data", root, "--layout", "folder", "--split", "train",
            "--set", "images=images", "--set", "masks=masks", "--set", "test_fraction=0.5")
    code, _, err = cli(*args, "--out", tmp_path / "ev")
    assert code == 2 and err.count("\n") == 1 and "overlaps the training data" in err, err
    n_train = len(split_files(root, "train"))
    assert f"training images that are evaluated images: {n_train}" in err
    code, _, err = cli(*args, "--out", tmp_path / "ev", "--allow-overlap")
    assert code == 0, err
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["overlap"]["allowed"] is True
    assert ev["overlap"]["found"]["training_image_in_test"]["count"] == n_train
    # a run without the record (trained by an older diag): one warning line, then scores
    (run / "training_files.json").unlink()
    code, _, err = cli(*args, "--out", tmp_path / "ev2")
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "cannot check" in warnings[0]
    assert json.loads((tmp_path / "ev2" / "metrics.json").read_text())["overlap"]["checked"] is False
