"""Regions: real masks placed on other images, random shapes, drawn masks and polygons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from diag.errors import DiagError
from diag.imageio import read_mask, resize_mask
from diag.regions import DrawnRegions, place_mask, polygons_to_mask, random_shape, sample_shapes
from diag.regions.shapes import SHAPES


def test_real_mask_is_unchanged_on_same_size() -> None:
    m = np.zeros((230, 630), bool)
    m[100:101, 50:400] = True  # thin defect
    placed, info = place_mask(m, m.shape, np.random.default_rng(0))
    assert np.array_equal(placed, m) and info["scale"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_real_mask_fits_other_sizes_and_stays_binary(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = np.zeros((400, 300), bool)
    m[10:390, 140:150] = True
    placed, info = place_mask(m, (200, 500), rng, flip=True, shift=0.2)
    assert placed.shape == (200, 500) and placed.dtype == bool and placed.any()
    assert abs(info["scale"] - 200 / 380) < 1e-3  # 380 rows shrunk to fit 200
    assert placed.sum() <= m.sum()


@pytest.mark.parametrize("shape", [(200, 300), (37, 500), (900, 40)])
def test_a_thin_mask_that_must_shrink_keeps_its_shape(shape) -> None:
    """A 1-pixel diagonal crack from a large image, placed on a much smaller one: it stays a
    thin connected line (never an empty mask, never a filled rectangle)."""
    m = np.zeros((2000, 1500), bool)
    rr = np.arange(100, 1900)
    m[rr, 100 + (rr - 100) * 1200 // 1800] = True
    placed, info = place_mask(m, shape, np.random.default_rng(0))
    assert info["scale"] < 1 and placed.any()
    ys, xs = np.nonzero(placed)
    box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    assert placed.sum() <= 2 * max(np.ptp(ys), np.ptp(xs)) + 2 < box, "a line, not a box"
    _, parts = ndimage.label(placed, structure=np.ones((3, 3)))
    assert parts == 1, "still one connected crack"


def test_resize_mask_keeps_every_defect_when_shrinking() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        m = np.zeros(tuple(rng.integers(20, 300, 2)), bool)
        m[tuple(rng.integers(0, s) for s in m.shape)] = True  # one pixel anywhere
        out = resize_mask(m, tuple(rng.integers(1, 40, 2)))
        assert out.sum() == 1, "a single defect pixel survives any shrink"
    big = resize_mask(np.eye(4, dtype=bool), (8, 8))
    assert big.sum() == 16 and big[0, 0] and big[1, 1] and not big[0, 2], "nearest when growing"


def test_label_masks_of_zeros_and_ones_are_read_as_defects(tmp_path: Path) -> None:
    m = np.zeros((10, 10), np.uint8)
    m[2:4, 2:4] = 1
    Image.fromarray(m).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 4


@pytest.mark.parametrize("kind", SHAPES)
def test_shapes_respect_size(kind: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        m = random_shape((200, 400), kind, rng, size=(0.1, 0.2), width=(1, 2))
        assert m.any()
        ys, xs = np.nonzero(m)
        assert max(np.ptp(ys), np.ptp(xs)) <= 0.2 * 200 * 1.6 + 4


def test_shapes_stay_in_area() -> None:
    area = np.zeros((100, 100), bool)
    area[10:30, 60:90] = True
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = sample_shapes((100, 100), rng, SHAPES, (0.1, 0.5), (1, 5), (1, 3), area)
        assert m.any() and not (m & ~area).any()


def test_polygons_labelme_and_normalized(tmp_path: Path) -> None:
    labelme = {"imageWidth": 200, "imageHeight": 100, "shapes": [
        {"shape_type": "rectangle", "points": [[10, 10], [50, 30]]},
        {"shape_type": "polygon", "points": [[100, 10], [150, 10], [150, 60]]},
        {"shape_type": "line", "points": [[0, 90], [199, 90]], "width": 1}]}
    m = polygons_to_mask(labelme, (50, 100))  # half-size image: coordinates are scaled
    assert m[10, 15] and m[45, 50] and not m[40, 10]
    norm = polygons_to_mask({"polygons": [[[0, 0], [1, 0], [1, 0.5], [0, 0.5]]],
                             "normalized": True}, (10, 20))
    assert norm[:5].all() and not norm[6:].any()
    with pytest.raises(DiagError, match="polygons"):
        polygons_to_mask({"foo": 1}, (10, 10))


def test_drawn_folder_by_stem_with_default(tmp_path: Path) -> None:
    a = np.zeros((20, 20), np.uint8)
    a[:5] = 255
    Image.fromarray(a).save(tmp_path / "img1.png")
    (tmp_path / "default.json").write_text(json.dumps({"polygons": [[[0, 0], [5, 0], [5, 5]]]}))
    drawn = DrawnRegions(tmp_path)
    m1, p1 = drawn.region("img1", (40, 40))  # resized to the image
    assert p1.name == "img1.png" and m1[:10].all() and not m1[10:].any()
    m2, p2 = drawn.region("other", (40, 40))
    assert p2.name == "default.json" and m2.any()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DiagError, match=r"bad\.json.*not valid JSON"):
        DrawnRegions(tmp_path).region("bad", (10, 10))
