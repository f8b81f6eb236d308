"""End to end: ``diag generate`` with each classical baseline on real Magnetic-tile images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from diag.data.manifest import read_manifest
from diag.imageio import read_image, read_mask

KINDS = ("memseg", "cutpaste", "draem", "nsa", "copy-paste")


def write_spec(tmp: Path, root: Path, kind: str, regions: dict | None) -> Path:
    spec = {"dataset": {"layout": "magnetic-tile", "root": str(root), "split": "train"},
            "defects": [{"name": "crack", "count": 2}, {"name": "blowhole", "count": 1}],
            "generator": {"kind": kind}, "seed": 3}
    if regions:
        spec["regions"] = regions
    path = tmp / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.mark.realdata
@pytest.mark.parametrize("regions", [None, {"source": "real-masks", "flip": True}],
                         ids=["own-regions", "real-mask-regions"])
def test_generate_and_sheet_with_every_baseline(tmp_path: Path, mt_root: Path, cli,
                                                regions: dict | None) -> None:
    outs = []
    for kind in KINDS:
        out = tmp_path / kind
        code, _, err = cli("generate", write_spec(tmp_path, mt_root, kind, regions), "--out", out)
        assert code == 0, err
        records = read_manifest(out)
        assert len(records) == 3
        for rec in records:
            assert rec["generator"] == kind and rec["params"]["kind"] == kind
            src = read_image(rec["source"])
            img = read_image(out / rec["image"])
            mask = read_mask(out / rec["mask"])
            assert img.shape == src.shape and img.ndim == 2
            assert mask.any() and np.array_equal(img[~mask], src[~mask])
            assert (img != src).any()
            if regions:
                assert rec["region"]["source"] == "real-masks"
        outs.append(out)
    sheet = tmp_path / "sheet.png"
    code, _, err = cli("sheet", *outs, "--out", sheet, "--n", "2", "--tile", "96")
    assert code == 0, err
    arr = read_image(sheet)
    assert arr.ndim == 3 and arr.shape[1] > 5 * 96 and arr.shape[0] > 2 * 4 * 96
