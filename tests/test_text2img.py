"""The text2img generator (In&Out's whole images) through diag generate, the dataset reader,
the contact sheet, export and the bench, with the tiny SD-1.5-architecture pipeline and a
LoRA adapter made by ``diag finetune`` in 2 steps on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diag.cli import main
from diag.data.layouts import load_dataset
from diag.data.manifest import read_manifest
from diag.errors import DiagError
from diag.generate.spec import load_spec
from diag.generators.base import GeneratorError, Request, Result, check_result

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "magnetic_tile"


@pytest.fixture(scope="module")
def adapter(tiny_text2img: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None
            ) -> Path:
    """A LoRA adapter from 2 steps of diag finetune at a high learning rate."""
    folder = tmp_path_factory.mktemp("ft")
    cfg = {"model": str(tiny_text2img), "dataset": {"root": str(EXAMPLE), "layout": "magnetic-tile",
                                            "split": "train"},
           "item": "magnetic tile", "instance_limit": 2, "num_class_images": 1,
           "class_steps": 1, "resolution": 64, "batch_size": 2, "threads": 1, "log_every": 0,
           "max_steps": 2, "epochs": 2, "lr": 1e-2}
    (folder / "ft.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert main(["finetune", str(folder / "ft.yaml"), "--out", str(folder / "run")]) == 0
    return folder / "run"


def write_spec(folder: Path, model: Path, name: str = "spec.yaml", **params: object) -> Path:
    spec = {"dataset": {"layout": "magnetic-tile", "root": str(EXAMPLE), "split": "all"},
            "defects": [{"name": "crack", "prompt": "sks magnetic tile", "count": 1},
                        {"name": "blowhole", "prompt": "sks magnetic tile",
                         "negative_prompt": "smooth", "count": 1}],
            "generator": {"kind": "text2img", "model": str(model), "size": 64, "steps": 2,
                          **params},
            "seed": 0}
    path = folder / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tiny_text2img: Path, adapter: Path, tmp_path_factory: pytest.TempPathFactory,
         one_thread: None) -> dict[str, Path]:
    """The same spec twice without the adapter, once with it."""
    folder = tmp_path_factory.mktemp("gen")
    base = write_spec(folder, tiny_text2img)
    tuned = write_spec(folder, tiny_text2img, "tuned.yaml", adapter=str(adapter))
    out = {"a": folder / "a", "b": folder / "b", "lora": folder / "lora"}
    for key, spec in (("a", base), ("b", base), ("lora", tuned)):
        assert main(["generate", str(spec), "--out", str(out[key])]) == 0
    return out


def test_whole_images_without_masks(runs: dict[str, Path]) -> None:
    out = runs["a"]
    records = read_manifest(out)
    assert len(records) == 2
    assert not (out / "masks").exists() or not any((out / "masks").iterdir())
    for r in records:
        assert r["mask"] is None and r["mask_pixels"] is None and r["background"] == "whole"
        assert r["generator"] == "text2img" and r["adapter"] is None
        src = np.asarray(Image.open(r["source"]))
        img = np.asarray(Image.open(out / r["image"]))
        assert img.shape == src.shape and img.dtype == np.uint8  # grayscale source size kept
        assert r["info"]["model_size"] == [64, 64]


def test_same_seed_same_bytes_and_adapter_changes_images(runs: dict[str, Path]) -> None:
    names = [r["image"] for r in read_manifest(runs["a"])]
    for name in names:
        assert (runs["a"] / name).read_bytes() == (runs["b"] / name).read_bytes()
    lora = read_manifest(runs["lora"])
    assert lora[0]["adapter"].endswith("pytorch_lora_weights.safetensors")
    assert len(lora[0]["adapter_sha256"]) == 64
    diffs = [np.abs(np.asarray(Image.open(runs["a"] / n), dtype=int)
                    - np.asarray(Image.open(runs["lora"] / n), dtype=int)).max() for n in names]
    assert all(d > 0 for d in diffs)


def test_generated_folder_is_a_dataset_sheet_and_export(runs: dict[str, Path],
                                                        tmp_path: Path) -> None:
    samples = load_dataset("generated", runs["a"], "all")
    assert len(samples) == 2 and all(s.label == 1 and s.mask_path is None for s in samples)
    assert not samples[0].mask.any()
    assert main(["sheet", str(runs["a"]), str(runs["lora"]), "--out",
                 str(tmp_path / "sheet.png")]) == 0
    assert Image.open(tmp_path / "sheet.png").size[0] > 0
    assert main(["export", str(runs["a"]), "--to", str(tmp_path / "exp"), "--format",
                 "anomalib-folder"]) == 0
    assert len(list((tmp_path / "exp" / "abnormal").rglob("*.png"))) == 2
    assert not (tmp_path / "exp" / "mask").exists()
    args = yaml.safe_load((tmp_path / "exp" / "anomalib_folder.yaml").read_text())
    assert "mask_dir" not in args and args["abnormal_dir"] == "abnormal"
    from diag.data.export import export

    with pytest.raises(DiagError, match="whole images without a mask") as err:
        export(runs["a"], tmp_path / "coco", "coco")
    assert "\n" not in str(err.value)


def test_bad_config_is_one_line(tiny_text2img: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tmp_path / "missing")
    assert main(["generate", str(spec), "--out", str(tmp_path / "o1")]) != 0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DiagError, match="adapter .* holds no pytorch_lora_weights") as err:
        load_spec(write_spec(tmp_path, tiny_text2img, "bad.yaml", adapter=str(empty)))
    assert "\n" not in str(err.value)
    from diag.generators.text2img import Text2ImgConfig, load_text2img

    with pytest.raises(DiagError, match="does not exist") as err:
        load_text2img(Text2ImgConfig(model=str(tmp_path / "missing")), "cpu")
    assert "\n" not in str(err.value)


def test_check_result_whole_images_only_when_declared() -> None:
    img = np.zeros((8, 8), np.uint8)
    req = Request(image=img, region=None, seed=0)
    assert check_result("t", req, Result(img + 1, None, {}, "whole")) is None
    with pytest.raises(GeneratorError):
        check_result("t", req, Result(img + 1, None))  # no mask without background whole
    with pytest.raises(GeneratorError):
        check_result("t", req, Result(img + 1, np.ones((8, 8), bool), {}, "whole"))
    with pytest.raises(GeneratorError):
        check_result("t", req, Result(np.zeros((8, 8, 3), np.uint8), None, {}, "whole"))


def test_bench_lists_in_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = {"profile": "quick", "dataset": {"root": str(EXAMPLE), "layout": "magnetic-tile"},
            "generate": {"regions": {"source": "real-masks"},
                         "defects": [{"name": "crack", "prompt": "a crack"},
                                     {"name": "blowhole", "prompt": "a pit"}]},
            "methods": {"memseg": {"generator": {"kind": "memseg"}},
                        "in-and-out": {"kind": "in-and-out", "ratio": 0.25,
                                       "prompt": "sks magnetic tile", "adapter": "ft",
                                       "text2img": {"model": "m", "size": 64}}},
            "naug": [4, 8], "seeds": [0]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    assert main(["bench", str(path), "--out", str(tmp_path / "b"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "in-and-out" in text.splitlines()[0]
    assert "in-and-out zero-shot naug 4 seed 0 honest" in text
    from diag.bench.grid import load_grid
    from diag.bench.plan import make_plan

    plan = make_plan(load_grid(path), {"root": "tr"}, {"root": "te"}, "k", (64, 64))
    sets = {s.folder: s for s in plan.sets if s.method.startswith("in-and-out")}
    t2i = [s for s in sets.values() if s.method == "in-and-out-text2img"]
    assert len(t2i) == 2  # zero-shot pretrained, full-shot with the adapter
    assert sorted(bool(s.spec["generator"].get("adapter")) for s in t2i) == [False, True]
    assert all(sum(d["count"] for d in s.spec["defects"]) == 2 for s in t2i)  # 0.25 of 8
    assert all(d["prompt"] == "sks magnetic tile" for s in t2i for d in s.spec["defects"])
    cell = next(c for c in plan.cells if c.method == "in-and-out" and c.setting == "full-shot")
    assert cell.config["data"]["naug_shares"] == [0.25, 0.75]
    assert len(cell.config["data"]["generated"]) == 2 and len(cell.also) == 1
    bad = {**grid, "methods": {"in-and-out": {"kind": "in-and-out"}}}
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(DiagError, match="adapter is missing"):
        load_grid(path)


def test_naug_shares_nested(runs: dict[str, Path]) -> None:
    from diag.classify.config import share_counts
    from diag.classify.data import generated_items

    assert share_counts(8, [0.25, 0.75]) == [2, 6]
    folders = [str(runs["a"]), str(runs["lora"])]
    one = generated_items(folders, 2, 0, [0.5, 0.5])
    assert [it.source for it in one] == ["generated:a", "generated:lora"]
    assert json.dumps(sorted(it.key for it in generated_items(folders, 1, 0, [1.0, 0.0])))


def test_bench_runs_in_and_out_end_to_end(tiny_text2img: Path, adapter: Path, tmp_path: Path,
                                          one_thread: None) -> None:
    """Both settings of in-and-out through generate, train and evaluate: the mixed cell
    trains on text2img and memseg positives at the ratio."""
    import csv

    grid = {"profile": "quick", "dataset": {"root": str(EXAMPLE), "layout": "magnetic-tile",
                                            "test_fraction": 0.4},
            "generate": {"regions": {"source": "real-masks"},
                         "defects": [{"name": "crack", "prompt": "a crack"}]},
            "methods": {"in-and-out": {"kind": "in-and-out", "ratio": 0.5,
                                       "prompt": "sks magnetic tile", "adapter": str(adapter),
                                       "text2img": {"model": str(tiny_text2img), "size": 64,
                                                    "steps": 2}}},
            "settings": ["zero-shot", "full-shot"], "naug": [4], "seeds": [0],
            "train": {"model": {"backbone": "resnet18", "pretrained": "none"},
                      "train": {"epochs": 1, "batch_size": 8, "input_size": [64, 32],
                                "threads": 1}},
            "fidelity": {"dims": [64]}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "results.csv", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["method"] == "in-and-out"]
    assert sorted(r["setting"] for r in rows) == ["full-shot", "zero-shot"]
    assert all(0 <= float(r["ap"]) <= 1 for r in rows)
