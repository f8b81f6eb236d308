"""Regions per defect type (a crack along an edge, a blowhole anywhere), falling back to the
spec's top-level regions; random zoom of placed masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from diag.data.manifest import read_manifest
from diag.generate import load_inputs
from diag.generate.spec import load_spec
from diag.imageio import read_mask, resize_mask
from diag.regions import place_mask


def edge_band(tmp: Path) -> Path:
    """A drawn region: the left eighth of the image (a PNG mask, resized to each image)."""
    band = np.zeros((80, 80), np.uint8)
    band[:, :10] = 255
    path = tmp / "regions" / "edge.png"
    path.parent.mkdir()
    Image.fromarray(band).save(path)
    return path


def test_each_defect_type_uses_its_own_regions(tmp_path: Path, example_root: Path,
                                               cli) -> None:
    edge_band(tmp_path)
    spec = {
        "dataset": {"layout": "magnetic-tile", "root": str(example_root), "split": "all"},
        "regions": {"source": "shapes", "shapes": ["ellipse"], "size": [0.2, 0.3]},
        "defects": [
            {"name": "crack", "prompt": "a crack", "count": 4,
             "regions": {"source": "drawn", "path": "regions/edge.png"}},
            {"name": "blowhole", "prompt": "a pit", "count": 4},
        ],
        "generator": {"kind": "cutpaste"},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(tmp_path / "spec.yaml")
    crack, blowhole = loaded.defects
    assert crack.regions.source == "drawn" and Path(crack.regions.path).is_absolute()
    assert crack.regions.shapes == ["ellipse"], "unset fields come from the top-level regions"
    assert blowhole.regions is None
    inputs = load_inputs(loaded)
    assert inputs.regions["crack"] is not inputs.regions["blowhole"]

    code, _, err = cli("generate", tmp_path / "spec.yaml", "--out", tmp_path / "out")
    assert code == 0, err
    records = {r["id"]: r for r in read_manifest(tmp_path / "out")}
    assert len(records) == 8
    outside = 0
    for rid, r in records.items():
        mask = read_mask(tmp_path / "out" / r["mask"])
        h, w = mask.shape
        if rid.startswith("crack"):
            assert r["region"]["source"] == "drawn"
            allowed = resize_mask(read_mask(tmp_path / "regions/edge.png"), (h, w))
            assert mask.any() and not (mask & ~allowed).any(), rid
        else:
            assert r["region"]["source"] == "shapes"
            outside += bool(mask[:, int(w * 0.15):].any())
    assert outside >= 2, "blowholes are not confined to the edge"
    # the spec written with the set says where each defect type's regions came from
    written = yaml.safe_load((tmp_path / "out/spec.yaml").read_text())
    assert written["defects"][0]["regions"]["source"] == "drawn"
    assert "regions" not in written["defects"][1]
    # rerunning resumes with nothing to do
    code, _, err = cli("generate", tmp_path / "spec.yaml", "--out", tmp_path / "out")
    assert code == 0 and "0 generated, 8 already done" in err


def test_defect_regions_are_validated_with_their_field(tmp_path: Path, example_root: Path,
                                                       cli) -> None:
    from tests.test_bad_input import one_line_error

    spec = {"dataset": {"layout": "magnetic-tile", "root": str(example_root)},
            "defects": [{"name": "crack", "count": 1, "regions": {"source": "paint"}}],
            "generator": {"kind": "cutpaste"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    msg = one_line_error(cli, "generate", tmp_path / "bad.yaml", "--out", tmp_path / "o")
    assert "defects[0].regions.source" in msg and "paint" in msg
    spec["defects"][0]["regions"] = {"source": "drawn", "path": "nowhere/"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    msg = one_line_error(cli, "generate", tmp_path / "bad.yaml", "--out", tmp_path / "o")
    assert "nowhere" in msg
    assert not (tmp_path / "o" / "spec.yaml").exists()


def test_place_mask_zoom() -> None:
    m = np.zeros((100, 100), bool)
    m[40:60, 45:55] = True  # 20 x 10
    same, info = place_mask(m, (100, 100), np.random.default_rng(0))
    assert (same == m).all() and info["scale"] == 1.0
    sizes = []
    for seed in range(20):
        placed, info = place_mask(m, (100, 100), np.random.default_rng(seed), scale=(0.5, 2.0))
        ys, xs = np.nonzero(placed)
        sizes.append((np.ptp(ys) + 1, np.ptp(xs) + 1))
        assert 0.5 <= info["scale"] <= 2.0
        assert abs((np.ptp(ys) + 1) - 20 * info["scale"]) <= 1
    assert min(s[0] for s in sizes) < 16 and max(s[0] for s in sizes) > 28
    # a zoom beyond the image is capped so the mask still fits
    big, info = place_mask(m, (30, 30), np.random.default_rng(0), scale=(3.0, 3.0))
    assert big.any() and info["scale"] <= 1.5
    # a 1-pixel line zoomed down stays a line
    line = np.zeros((50, 50), bool)
    line[25, 5:45] = True
    small, _ = place_mask(line, (50, 50), np.random.default_rng(1), scale=(0.3, 0.3))
    assert small.sum() >= 10


def test_drawn_regions_can_be_flipped_shifted_and_scaled(tmp_path: Path) -> None:
    from diag.regions import RegionSpec, make_regions

    region = np.zeros((60, 90), np.uint8)
    region[5:15, 5:35] = 255  # a 10 x 30 box in the top-left corner
    Image.fromarray(region).save(tmp_path / "box.png")
    plain = make_regions(RegionSpec(source="drawn", path=str(tmp_path / "box.png")))
    a, info = plain.sample_shape(np.random.default_rng(0), (60, 90), "img")
    assert (a == (region > 0)).all() and "flip" not in info, "as-is without options: unchanged"

    varied = make_regions(RegionSpec(source="drawn", path=str(tmp_path / "box.png"), flip=True,
                                     shift=0.1, scale=(0.5, 1.5)))
    seen = set()
    for seed in range(12):
        mask, info = varied.sample_shape(np.random.default_rng(seed), (60, 90), "img")
        ys, xs = np.nonzero(mask)
        h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
        assert abs(w - 30 * info["scale"]) <= 1 and abs(h - 10 * info["scale"]) <= 1
        assert mask.sum() == h * w, "still one filled box"
        seen.add((info["flip"], info["offset"][0] > 30, info["offset"][1] > 45))
    assert any("h" in f for f, _, _ in seen) and any(right for _, _, right in seen), \
        "flips mirror the region to the other side"
    with_spec = RegionSpec(source="drawn", path="x", scale=(0.0, 1.0))
    from diag.errors import DiagError

    try:
        with_spec.validate("spec", "regions.")
    except DiagError as exc:
        assert "regions.scale" in str(exc)
    else:
        raise AssertionError("scale 0 is refused")
