"""Config parsing and the making of training / validation / test sets, with their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diag.classify.config import load_train_config, parse_train_config
from diag.classify.data import (
    ImageSet,
    build_sets,
    epoch_order,
    generated_items,
    split_validation,
)
from diag.commands.train import parse_seeds
from diag.errors import DiagError
from diag.imageio import write_image, write_mask


def make_folder(root: Path, n_neg: int, n_pos: int, size: tuple[int, int] = (24, 20),
                seed: int = 0) -> Path:
    """A `folder` layout: images/ + masks/ (a mask only for positives, a bright square)."""
    rng = np.random.default_rng(seed)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n_neg + n_pos):
        img = rng.integers(60, 120, size, dtype=np.uint8)
        if i >= n_neg:
            img[4:12, 4:12] = 250
            mask = np.zeros(size, bool)
            mask[4:12, 4:12] = True
            write_mask(root / "masks" / f"im{i:03d}.png", mask)
        write_image(root / "images" / f"im{i:03d}.png", img)
    return root


def make_generated(root: Path, n: int, size: tuple[int, int] = (24, 20), tag: str = "g") -> Path:
    """A generate-style output folder (images/, masks/, manifest.jsonl)."""
    rng = np.random.default_rng(n)
    lines = []
    for i in range(n):
        img = rng.integers(60, 120, size, dtype=np.uint8)
        img[2:9, 5:14] = 240
        mask = np.zeros(size, bool)
        mask[2:9, 5:14] = True
        write_image(root / "images" / f"{tag}{i:03d}.png", img)
        write_mask(root / "masks" / f"{tag}{i:03d}.png", mask)
        lines.append(json.dumps({"id": f"{tag}{i:03d}", "index": i, "image": f"images/{tag}{i:03d}.png",
                                 "mask": f"masks/{tag}{i:03d}.png", "defect": "square", "seed": i}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def cfg_for(root: Path, **data):
    d = {"train": {"root": str(root), "layout": "folder", "masks": "masks", "images": "images",
                   "split": "all"}}
    d.update(data)
    return parse_train_config({"data": d, "model": {"pretrained": "none"}})


def test_defaults_are_the_papers():
    cfg = parse_train_config({"data": {"train": {"root": "x"}}})
    assert cfg.model.backbone == "resnet50" and cfg.model.pretrained == "imagenet"
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == (1e-4, 32, 30)
    assert tuple(cfg.train.input_size) == (704, 256)


def test_config_file_overrides_and_relative_paths(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  train: {root: data}\n  generated: [gen]\n"
                                     "model: {pretrained: w.pth}\n")
    cfg = load_train_config(tmp_path / "c.yaml", ["train.epochs=2", "train.input_size=[64,32]"])
    assert cfg.train.epochs == 2 and tuple(cfg.train.input_size) == (64, 32)
    assert cfg.data.train.root == str(tmp_path / "data")
    assert cfg.data.generated == [str(tmp_path / "gen")]
    assert cfg.model.pretrained == str(tmp_path / "w.pth")


@pytest.mark.parametrize("override, match", [
    ("train.epoch=3", "did you mean 'epochs'"),
    ("model.backbone=vgg16", "backbone is 'vgg16'"),
    ("train.lr=-1", "lr must be > 0"),
    ("data.val_fraction=1.5", "val_fraction"),
    ("data.real_positives=some", "real_positives"),
    ("data.val_generated=sometimes", "val_generated"),
    ("train.select_epoch=first", "select_epoch"),
    ("train.input_size=[8,8]", "input_size"),
])
def test_config_errors_are_one_line(override, match):
    with pytest.raises(DiagError, match=match) as err:
        parse_train_config({"data": {"train": {"root": "x"}}}, [override])
    assert "\n" not in str(err.value)


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3-5") == [3, 4, 5]
    with pytest.raises(DiagError):
        parse_seeds("a,b")
    with pytest.raises(DiagError):
        parse_seeds("1,1")


def test_sets_full_and_zero_shot_and_stratified_validation(tmp_path):
    root = make_folder(tmp_path / "real", 30, 10)
    gen = make_generated(tmp_path / "gen", 12)
    full = build_sets(cfg_for(root, generated=[str(gen)], naug=8, val_fraction=0.25).data)
    assert full.info["train"]["positive"] + full.info["validation"]["positive"] == 18
    # with real positives, validation is real only (auto) and every generated image trains
    assert full.info["validation"]["by_source"] == {"real": 10}
    assert full.info["train"]["by_source"]["generated:gen"] == 8
    both = build_sets(cfg_for(root, generated=[str(gen)], naug=8, val_fraction=0.25,
                              val_generated=True).data)
    assert both.info["validation"]["by_source"] == {"real": 10, "generated:gen": 2}
    assert [it.key for it in both.val if it.source == "real"] == [
        it.key for it in full.val]
    assert full.info["generated_available"] == 12
    zero = build_sets(cfg_for(root, generated=[str(gen)], real_positives="none").data)
    assert all(it.source.startswith("generated") for it in zero.train + zero.val if it.label)
    assert zero.info["validation"]["positive"] > 0  # zero-shot: generated positives validate
    few = build_sets(cfg_for(root, generated=[str(gen)], real_positives=3, val_fraction=0).data)
    assert few.info["train"]["by_source"]["real"] == 33 and not few.val


def test_naug_is_deterministic_and_nested(tmp_path):
    a = make_generated(tmp_path / "a", 10, tag="a")
    b = make_generated(tmp_path / "b", 10, tag="b")
    six = [it.key for it in generated_items([str(a), str(b)], 6)]
    assert six == [it.key for it in generated_items([str(a), str(b)], 6)]
    assert set(six) < {it.key for it in generated_items([str(a), str(b)], 12)}
    assert six != [it.key for it in generated_items([str(a), str(b)], 6, seed=1)]


def test_split_validation_is_seeded_and_disjoint(tmp_path):
    root = make_folder(tmp_path, 20, 6)
    items = build_sets(cfg_for(root, val_fraction=0).data).train
    tr, va = split_validation(items, 0.3, 0)
    assert {i.key for i in tr}.isdisjoint({i.key for i in va})
    assert len(tr) + len(va) == 26 and sum(i.label for i in va) == 2
    assert [i.key for i in va] == [i.key for i in split_validation(items, 0.3, 0)[1]]


def test_epoch_order_balance():
    labels = [0] * 90 + [1] * 10
    order = epoch_order(labels, True, 0, 0)
    assert len(order) == 100 and 30 < sum(labels[i] for i in order) < 70
    assert epoch_order(labels, False, 0, 1) != epoch_order(labels, False, 0, 2)
    assert epoch_order(labels, False, 0, 1) == epoch_order(labels, False, 0, 1)


def test_image_set_tensors(tmp_path):
    root = make_folder(tmp_path, 2, 1)
    items = build_sets(cfg_for(root, val_fraction=0).data).train
    ds = ImageSet(items, (32, 16), "imagenet", augment=True, seed=0)
    x, y, i = ds[2]
    assert x.shape == (3, 32, 16) and float(y) == 1.0 and i == 2
    ds.set_epoch(0)
    a = ds[0][0]
    ds.set_epoch(0)
    assert (a == ds[0][0]).all()


# ------------------------------------------------------------------------ bad input


def test_one_class_training_set(tmp_path):
    root = make_folder(tmp_path, 10, 0)
    with pytest.raises(DiagError, match="no positive"):
        build_sets(cfg_for(root).data)
    with pytest.raises(DiagError, match="no positive"):
        build_sets(cfg_for(make_folder(tmp_path / "b", 10, 4), real_positives="none").data)


def test_only_generated_positives_without_negatives(tmp_path):
    gen = make_generated(tmp_path / "gen", 5)
    cfg = parse_train_config({"data": {"generated": [str(gen)]}})
    with pytest.raises(DiagError, match="no negative"):
        build_sets(cfg.data)


def test_empty_training_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DiagError, match="no images found"):
        build_sets(cfg_for(tmp_path).data)


def test_test_set_without_positives(tmp_path):
    root = make_folder(tmp_path / "r", 10, 5)
    neg = make_folder(tmp_path / "t", 5, 0)
    cfg = cfg_for(root, test={"root": str(neg), "layout": "folder", "images": "images",
                              "split": "all"})
    with pytest.raises(DiagError, match="AP is undefined"):
        build_sets(cfg.data)


def test_mismatched_mask_size(tmp_path):
    root = make_folder(tmp_path, 10, 5)
    write_mask(root / "masks" / "im012.png", np.ones((10, 10), bool))
    with pytest.raises(DiagError, match="masks must match"):
        build_sets(cfg_for(root, val_fraction=0.3).data)


def test_corrupt_image(tmp_path):
    root = make_folder(tmp_path, 10, 5)
    (root / "images" / "im003.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DiagError, match="im003.png"):
        build_sets(cfg_for(root).data)


def test_generated_folder_problems(tmp_path):
    root = make_folder(tmp_path / "r", 10, 0)
    with pytest.raises(DiagError, match="does not exist"):
        build_sets(cfg_for(root, generated=[str(tmp_path / "missing")]).data)
    (tmp_path / "nomanifest" / "images").mkdir(parents=True)
    with pytest.raises(DiagError, match="no manifest"):
        build_sets(cfg_for(root, generated=[str(tmp_path / "nomanifest")]).data)
    gen = make_generated(tmp_path / "gen", 4)
    with pytest.raises(DiagError, match="naug is 9 but .* only 4"):
        build_sets(cfg_for(root, generated=[str(gen)], naug=9).data)
