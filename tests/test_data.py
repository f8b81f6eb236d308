"""Dataset readers: every layout, binary labels from masks, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diag.data import detect_layout, load_dataset
from diag.errors import DiagError


def _img(path: Path, size=(40, 30), value=120, mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value)).save(path)


def _mask(path: Path, size=(40, 30), box=None, value=255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    if box:
        y0, y1, x0, x1 = box
        arr[y0:y1, x0:x1] = value
    Image.fromarray(arr).save(path)


def test_ksdd2_layout_and_one_pixel_wide_defect(tmp_path: Path) -> None:
    for split in ("train", "test"):
        _img(tmp_path / split / "10.png")
        _mask(tmp_path / split / "10_GT.png")
        _img(tmp_path / split / "11.png")
        _mask(tmp_path / split / "11_GT.png", box=(0, 30, 7, 8))  # a 1-pixel-wide vertical line
    train = load_dataset("ksdd2", tmp_path, "train")
    assert [s.id for s in train] == ["train/10", "train/11"]
    assert [s.label for s in train] == [0, 1]
    assert train[1].mask.sum() == 30 and train[1].mask.dtype == bool
    assert len(load_dataset("ksdd2", tmp_path, "all")) == 4
    assert detect_layout(tmp_path) == "ksdd2"


def test_antialiased_masks_are_thresholded(tmp_path: Path) -> None:
    _img(tmp_path / "train" / "a.png")
    _mask(tmp_path / "train" / "a_GT.png", box=(0, 5, 0, 5), value=100)  # faint: below 127
    _img(tmp_path / "train" / "b.png")
    _mask(tmp_path / "train" / "b_GT.png", box=(0, 5, 0, 5), value=200)
    a, b = load_dataset("ksdd2", tmp_path, "train")
    assert a.label == 0 and not a.mask.any()
    assert b.label == 1 and b.mask.sum() == 25


def test_mvtec_layout(tmp_path: Path) -> None:
    _img(tmp_path / "train/good/000.png", mode="RGB")
    _img(tmp_path / "test/good/000.png", mode="RGB")
    _img(tmp_path / "test/scratch/000.png", mode="RGB")
    _mask(tmp_path / "ground_truth/scratch/000_mask.png", box=(3, 4, 0, 40))
    train = load_dataset("mvtec", tmp_path, "train")
    test = load_dataset("mvtec", tmp_path, "test")
    assert [s.label for s in train] == [0]
    assert {(s.id, s.label, s.defect) for s in test} == {("test/good/000", 0, ""),
                                                         ("test/scratch/000", 1, "scratch")}
    assert train[0].image.shape == (30, 40, 3)
    assert detect_layout(tmp_path) == "mvtec"


def test_folder_layout_with_mask_suffix(tmp_path: Path) -> None:
    _img(tmp_path / "imgs/a.png")
    _img(tmp_path / "imgs/b.jpg")
    _mask(tmp_path / "masks/a_label.png", box=(1, 2, 1, 2))  # a single defect pixel
    samples = load_dataset("folder", tmp_path, "all", images="imgs", masks="masks",
                           mask_suffix="_label")
    assert [(s.id, s.label) for s in samples] == [("a", 1), ("b", 0)]


def test_magnetic_tile_bundled_example(example_root: Path) -> None:
    samples = load_dataset("magnetic-tile", example_root, "all")
    assert len(samples) == 20
    assert sum(s.label for s in samples) == 10
    crack = [s for s in samples if s.defect == "crack"]
    assert crack and all(s.mask.any() for s in crack)
    assert samples[0].image.ndim == 2  # grayscale stays grayscale


def test_magnetic_tile_real_split_is_disjoint_and_stable(mt_root: Path) -> None:
    train = load_dataset("magnetic-tile", mt_root, "train")
    test = load_dataset("magnetic-tile", mt_root, "test")
    every = load_dataset("magnetic-tile", mt_root, "all")
    assert len(every) == 1344
    assert not {s.id for s in train} & {s.id for s in test}
    assert len(train) + len(test) == 1344
    assert sum(s.label for s in every) == 388  # 392 defect images, 4 with empty masks
    assert [s.id for s in load_dataset("magnetic-tile", mt_root, "train")] == [s.id for s in train]


@pytest.mark.parametrize("layout", ["ksdd2", "mvtec", "magnetic-tile", "folder"])
def test_missing_root(layout: str, tmp_path: Path) -> None:
    with pytest.raises(DiagError, match="does not exist"):
        load_dataset(layout, tmp_path / "nope", "all")


def test_no_images_found(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiagError, match="no images found"):
        load_dataset("folder", tmp_path / "empty", "all")


def test_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(DiagError, match="unknown dataset layout 'coco'"):
        load_dataset("coco", tmp_path)


def test_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    (s,) = load_dataset("folder", tmp_path, "all")
    with pytest.raises(DiagError, match=r"cannot read image .*bad\.png"):
        _ = s.image


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    _img(tmp_path / "train" / "1.png", size=(40, 30))
    _mask(tmp_path / "train" / "1_GT.png", size=(41, 30), box=(0, 1, 0, 1))
    with pytest.raises(DiagError, match=r"1_GT\.png.*must match"):
        load_dataset("ksdd2", tmp_path, "train")


def test_ksdd2_stray_files_are_skipped_with_one_warning(tmp_path: Path, capsys) -> None:
    """The official KSDD2 download holds '10301 (copy).png' and '10301_GT (copy).png'."""
    for name in ("10301", "10302"):
        _img(tmp_path / "train" / f"{name}.png")
        _mask(tmp_path / "train" / f"{name}_GT.png", box=(0, 2, 0, 2))
    _img(tmp_path / "train" / "10301 (copy).png")
    _mask(tmp_path / "train" / "10301_GT (copy).png", box=(0, 2, 0, 2))
    _img(tmp_path / "train" / "10400.png")  # an image without its mask
    samples = load_dataset("ksdd2", tmp_path, "train")
    assert [s.id for s in samples] == ["train/10301", "train/10302"]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "skipped 3 file(s)" in err
    for name in ("10301 (copy).png", "10301_GT (copy).png", "10400.png"):
        assert name in err
