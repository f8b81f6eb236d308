"""Every bad input of `diag generate` ends in one line naming the file and the fix, exit 2,
with no traceback, and loses nothing already produced."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diag.data.manifest import read_manifest
from diag.generate import load_inputs, make_plan
from diag.generate.spec import load_spec


def spec_file(tmp: Path, root: Path | str, name: str = "spec.yaml", **changes) -> Path:
    spec = {
        "dataset": {"layout": "magnetic-tile", "root": str(root), "split": "all"},
        "regions": {"source": "real-masks"},
        "defects": [{"name": "crack", "prompt": "a crack", "count": 3}],
        "generator": {"kind": "memseg"},
    }
    for key, value in changes.items():
        node = spec
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp / name
    path.write_text(yaml.safe_dump(spec))
    return path


def one_line_error(cli, *args) -> str:
    code, out, err = cli(*args)
    assert code == 2, (code, out, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def mt_copy(tmp_path: Path, example_root: Path) -> Path:
    shutil.copytree(example_root, tmp_path / "mt")
    return tmp_path / "mt"


def test_missing_root(tmp_path: Path, cli) -> None:
    msg = one_line_error(cli, "generate", spec_file(tmp_path, tmp_path / "nowhere"), "--out",
                         tmp_path / "o")
    assert "nowhere" in msg and "dataset.root" in msg


def test_missing_spec_file(tmp_path: Path, cli) -> None:
    assert "does not exist" in one_line_error(cli, "generate", tmp_path / "x.yaml", "--out",
                                              tmp_path / "o")


def test_no_images_found(tmp_path: Path, cli) -> None:
    (tmp_path / "MT_Free" / "Imgs").mkdir(parents=True)
    msg = one_line_error(cli, "generate", spec_file(tmp_path, tmp_path), "--out", tmp_path / "o")
    assert "no images found" in msg


def test_corrupt_image_keeps_finished_samples(tmp_path: Path, mt_copy: Path, cli) -> None:
    path = spec_file(tmp_path, mt_copy, defects=[{"name": "crack", "count": 10}])
    spec = load_spec(path)
    plan = make_plan(spec, load_inputs(spec).negatives)
    victim = plan[4].source.path  # the fifth sample's source image becomes corrupt
    first_use = next(i for i, it in enumerate(plan) if it.source.path == victim)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # truncated: the header reads, the pixels don't
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert victim.name in msg and "corrupt" in msg
    records = read_manifest(tmp_path / "o")
    assert len(records) == first_use
    assert all((tmp_path / "o" / r["image"]).is_file() for r in records)
    victim.write_bytes(b"garbage, not an image")  # unreadable even as a header: found at once
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert victim.name in msg
    assert read_manifest(tmp_path / "o") == records, "nothing already produced is lost"
    victim.write_bytes(data)  # fixed: the rerun completes the set
    assert cli("generate", path, "--out", tmp_path / "o")[0] == 0
    assert len(read_manifest(tmp_path / "o")) == 10


def test_mask_size_differs(tmp_path: Path, mt_copy: Path, cli) -> None:
    mask = next((mt_copy / "MT_Crack" / "Imgs").glob("*.png"))
    Image.fromarray(np.full((7, 9), 255, np.uint8)).save(mask)
    path = spec_file(tmp_path, mt_copy)
    # the size check happens when the real mask is read: only crack masks are taken for cracks
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert mask.name in msg and "match" in msg


def test_empty_region_sets(tmp_path: Path, mt_copy: Path, cli) -> None:
    for cls in ("MT_Crack", "MT_Blowhole", "MT_Break", "MT_Fray", "MT_Uneven"):
        shutil.rmtree(mt_copy / cls)
    msg = one_line_error(cli, "generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o")
    assert "no defective images" in msg and "empty region set" in msg
    (tmp_path / "regions").mkdir()
    path = spec_file(tmp_path, mt_copy, "d.yaml",
                     regions={"source": "drawn", "path": str(tmp_path / "regions")})
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert "regions" in msg and "empty region set" in msg
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "regions" / "default.png")
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert "default.png" in msg and "empty" in msg


@pytest.mark.parametrize(("changes", "needle"), [
    ({"dataset__layout": "coco"}, "dataset.layout is 'coco'"),
    ({"generator": {"kind": "gan"}}, "unknown generator kind 'gan'"),
    ({"generator": {"kind": "diffusion", "stpes": 3}}, "did you mean 'steps'"),
    ({"generator": {"kind": "diffusion", "steps": "many"}}, "generator.steps must be an integer"),
    ({"regions": {"source": "lasers"}}, "regions.source is 'lasers'"),
    ({"defects": []}, "defects must be a non-empty list"),
    ({"defects": [{"name": "a/b"}]}, "defects[0].name 'a/b'"),
    ({"seeed": 1}, "did you mean 'seed'"),
])
def test_bad_fields(tmp_path: Path, example_root: Path, cli, changes: dict, needle: str) -> None:
    path = spec_file(tmp_path, example_root, **changes)
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert needle in msg and "spec.yaml" in msg


def test_bad_yaml(tmp_path: Path, cli) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: {root: x\ndefects: [\n")
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert "bad YAML" in msg and "bad.yaml" in msg and "line" in msg


def test_bad_set_override(tmp_path: Path, example_root: Path, cli) -> None:
    msg = one_line_error(cli, "generate", spec_file(tmp_path, example_root), "--out",
                         tmp_path / "o", "--set", "seed")
    assert "key=value" in msg


def test_unknown_model_id(tmp_path: Path, example_root: Path, cli) -> None:
    path = spec_file(tmp_path, example_root, generator={"kind": "diffusion",
                                                         "model": "nobody/no-such-model"})
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert "nobody/no-such-model" in msg and "local folder" in msg


def test_model_folder_without_pipeline(tmp_path: Path, example_root: Path, cli) -> None:
    (tmp_path / "empty-model").mkdir()
    path = spec_file(tmp_path, example_root, generator={"kind": "diffusion",
                                                         "model": str(tmp_path / "empty-model")})
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert "model_index.json" in msg


def test_cuda_asked_but_absent(tmp_path: Path, example_root: Path, cli) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    msg = one_line_error(cli, "generate", spec_file(tmp_path, example_root), "--out",
                         tmp_path / "o", "--device", "cuda")
    assert "CUDA is not available" in msg and "--device cpu" in msg


def test_bad_shard(tmp_path: Path, example_root: Path, cli) -> None:
    msg = one_line_error(cli, "generate", spec_file(tmp_path, example_root), "--out",
                         tmp_path / "o", "--shard", "3/2")
    assert "--shard" in msg
