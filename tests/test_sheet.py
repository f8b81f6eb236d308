"""``diag sheet``: contact sheets of generate outputs, on real Magnetic-tile images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diag.data import load_dataset
from diag.data.manifest import ManifestWriter
from diag.errors import DiagError
from diag.generate.sheet import ROWS, contact_sheet, overlay, save_contact_sheet, zoom_box
from diag.generators import Request, make_generator
from diag.imageio import read_image, write_image, write_mask


def make_output(out: Path, kind: str, root: Path, n: int = 3) -> Path:
    """A generate-style output folder made by calling the generator directly."""
    samples = load_dataset("magnetic-tile", root, split="all")
    neg = [s for s in samples if not s.label]
    pos = [s for s in samples if s.label]
    gen = make_generator(kind, {})
    with ManifestWriter(out / "manifest.jsonl") as w:
        for i in range(n):
            src = neg[i]
            res = gen.generate(Request(image=src.image, region=None, seed=i, donors=neg[n:],
                                       defects=pos))
            write_image(out / "images" / f"{i}.png", res.image)
            write_mask(out / "masks" / f"{i}.png", res.mask)
            w.append({"id": str(i), "index": i, "image": f"images/{i}.png",
                      "mask": f"masks/{i}.png", "source": str(src.path), "generator": kind})
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, example_root: Path) -> list[Path]:
    base = tmp_path_factory.mktemp("sheet")
    return [make_output(base / k, k, example_root) for k in ("cutpaste", "copy-paste")]


def test_sheet_layout_and_content(outputs: list[Path]) -> None:
    tile = 80
    sheet = contact_sheet(outputs, n=3, tile=tile)
    w, h = sheet.size
    assert w >= 2 * tile and h >= 3 * len(ROWS) * tile
    arr = np.asarray(sheet)
    # tiles hold real pixels (not the plain background), and the overlay row holds red
    assert arr.std() > 10
    red = (arr[..., 0] > 200) & (arr[..., 1] < 80) & (arr[..., 2] < 80)
    assert red.sum() > 0
    fewer = contact_sheet(outputs, n=1, tile=tile)
    assert fewer.size[0] == w and fewer.size[1] < h


def test_sheet_only_some_rows(outputs: list[Path]) -> None:
    full = contact_sheet(outputs[:1], n=2, tile=64)
    two = contact_sheet(outputs[:1], n=2, tile=64, rows=("source", "generated"))
    assert two.size[1] < full.size[1]
    with pytest.raises(DiagError, match="row"):
        contact_sheet(outputs[:1], rows=("histogram",))


def test_save_and_cli(outputs: list[Path], tmp_path: Path, cli) -> None:
    path = save_contact_sheet(outputs, tmp_path / "s.png", n=2)
    assert read_image(path).ndim == 3
    code, _, err = cli("sheet", *outputs, "--out", tmp_path / "c.png", "--n", "2")
    assert code == 0 and (tmp_path / "c.png").is_file(), err
    code, _, err = cli("sheet", tmp_path, "--out", tmp_path / "x.png")
    assert code == 2 and "no manifest records" in err
    code, _, err = cli("sheet", tmp_path / "missing", "--out", tmp_path / "x.png")
    assert code == 2 and "not a folder" in err
    code, _, err = cli("sheet", *outputs, "--out", tmp_path / "x.jpg")
    assert code == 2 and ".png" in err


def test_missing_source_is_shown_not_fatal(outputs: list[Path], tmp_path: Path) -> None:
    import json
    import shutil

    copy = tmp_path / "moved"
    shutil.copytree(outputs[0], copy)
    lines = (copy / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    recs[0]["source"] = "/no/such/file.png"
    (copy / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert contact_sheet([copy], n=2, tile=48).size[0] > 48


def test_overlay_and_zoom_box() -> None:
    img = np.full((50, 80), 100, np.uint8)
    mask = np.zeros((50, 80), bool)
    mask[20:24, 30:40] = True
    ov = overlay(img, mask)
    assert ov.shape == (50, 80, 3) and tuple(ov[21, 30]) == (255, 40, 40)
    assert tuple(ov[0, 0]) == (100, 100, 100)
    t, b, left, r = zoom_box(mask)
    assert t <= 20 and b >= 24 and left <= 30 and r >= 40 and b - t == r - left
    assert zoom_box(np.zeros((5, 6), bool)) == (0, 5, 0, 6)
