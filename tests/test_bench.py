"""diag bench end to end on CPU: a tiny grid on the bundled Magnetic-tile example; resume after
kill -9, reuse of unchanged cells when the grid changes, nested Naug subsets, and the tables'
numbers against results.csv."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from diag.bench import load_grid
from diag.bench.plan import make_plan
from diag.bench.tables import read_results

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def grid_file(tmp: Path, example_root: Path, name: str = "grid.yaml", **changes) -> Path:
    grid = {
        "dataset": {"root": str(example_root), "layout": "magnetic-tile", "test_fraction": 0.4},
        "generate": {"regions": {"source": "real-masks", "flip": True},
                     "defects": [{"name": "crack", "prompt": "a crack"},
                                 {"name": "blowhole", "prompt": "a pit"}]},
        "methods": {"real-only": "real-only", "memseg": {"generator": {"kind": "memseg"}}},
        "settings": ["zero-shot", "full-shot"],
        "naug": [2, 4],
        "seeds": [0, 1],
        "train": {"model": {"backbone": "resnet18", "pretrained": "none"},
                  "train": {"epochs": 1, "batch_size": 8, "input_size": [64, 32],
                            "threads": 1}},
        "fidelity": {"dims": [64]},
        **changes,
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(grid))
    return path


def cmd(grid: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "diag", "bench", str(grid), "--out", str(out)]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, example_root: Path):
    """One tiny bench, run to completion (10 cells)."""
    tmp = tmp_path_factory.mktemp("bench")
    grid = grid_file(tmp, example_root)
    done = subprocess.run(cmd(grid, tmp / "out"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    yield grid, tmp / "out", done.stderr
    shutil.rmtree(tmp, ignore_errors=True)  # its models: keep the suite's disk use small


def test_every_cell_ran_and_wrote_its_row(bench) -> None:
    grid, out, log = bench
    rows = read_results(out / "results.csv")
    # real-only: full-shot only, one per seed; memseg: 2 settings x 2 Naug x 2 seeds
    assert len(rows) == 2 + 8
    assert [r["method"] for r in rows].count("real-only") == 2
    assert {(r["setting"], r["naug"]) for r in rows if r["method"] == "memseg"} == {
        ("zero-shot", "2"), ("zero-shot", "4"), ("full-shot", "2"), ("full-shot", "4")}
    for r in rows:
        assert 0 <= float(r["ap"]) <= 1 and 0 < float(r["chance"]) < 1
        assert (out / "cells" / r["cell"] / "metrics.json").is_file()
        assert (out / "cells" / r["cell"] / "model.pt").is_file()
        assert not (out / "cells" / r["cell"] / "checkpoints").exists(), "finished: no resume state"
        if r["method"] == "memseg":
            assert float(r["fid_64"]) > 0
            zero = r["setting"] == "zero-shot"
            assert (int(r["train_real_positives"]) == 0) == zero
    assert len(re.findall(r"^cell \d+/10 .*: AP \d\.\d{3} \(chance", log, re.M)) == 10
    for name in ("summary.md", "report.html", "split.json", "bench.json", "grid.yaml"):
        assert (out / name).is_file()
    assert len(list((out / "generated").iterdir())) == 2, "one set per method and seed"


def test_nested_naug_subsets(bench) -> None:
    _, out, _ = bench
    rows = read_results(out / "results.csv")

    def generated(row: dict) -> set[str]:
        record = json.loads((out / "cells" / row["cell"] / "training_files.json").read_text())
        return {f["path"] for f in record["files"] if f["role"] == "generated"}

    for setting in ("zero-shot", "full-shot"):
        for seed in ("0", "1"):
            mine = {r["naug"]: r for r in rows if r["method"] == "memseg"
                    and r["setting"] == setting and r["train_seed"] == seed}
            small, big = generated(mine["2"]), generated(mine["4"])
            assert len(big) == 4 and len(small) <= 2 and small < big, "Naug 2 within Naug 4"
            assert {Path(p).parent.parent for p in big} == {Path(p).parent.parent for p in small}


def test_the_tables_show_results_csv(bench) -> None:
    _, out, _ = bench
    rows = read_results(out / "results.csv")
    text = (out / "summary.md").read_text()
    for setting in ("zero-shot", "full-shot"):
        section = text.split(f"## {setting}, protocol honest")[1].split("##")[0]
        chance = np.mean([float(r["chance"]) for r in rows if r["setting"] == setting])
        assert f"(chance {chance:.3f})" in section
        for line in section.splitlines():
            m = re.match(r"\| (\S+) \| (.+) \|$", line)
            if not m or m.group(1) in ("method", "---"):
                continue
            method, cells = m.group(1), m.group(2).split(" | ")
            for naug, cell in zip(("2", "4"), cells, strict=True):
                aps = [float(r["ap"]) for r in rows if r["method"] == method
                       and r["setting"] == setting and r["naug"] in (naug, "0")]
                mean, std = re.search(r"([\d.]+) ± ([\d.]+|-)", cell).groups()
                assert float(mean) == pytest.approx(np.mean(aps), abs=5e-4)
                assert float(std) == pytest.approx(np.std(aps, ddof=1), abs=5e-4)
                assert f"(n={len(aps)})" in cell


def test_rerun_reuses_everything(bench, tmp_path: Path) -> None:
    grid, out, _ = bench
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/metrics.json")}
    done = subprocess.run(cmd(grid, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "10 cells (0 trained, 10 reused)" in done.stderr
    assert before == {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/metrics.json")}


def test_a_changed_grid_redoes_only_the_changed_cells(bench, example_root: Path) -> None:
    grid, out, _ = bench
    # another Naug list and one more training epoch for... nothing else: the Naug 4 cells and
    # real-only keep their inputs; Naug 2 disappears, Naug 3 is new
    changed = grid_file(grid.parent, example_root, name="changed.yaml", naug=[3, 4])
    old = load_grid(grid)
    new = load_grid(changed)
    keys_old = {c.key for c in make_plan(old, {"root": "x"}, {"root": "y"}, "s", (64, 32)).cells}
    keys_new = {c.key for c in make_plan(new, {"root": "x"}, {"root": "y"}, "s", (64, 32)).cells}
    assert len(keys_old & keys_new) == 2 + 4, "real-only and the Naug 4 cells keep their keys"
    done = subprocess.run(cmd(changed, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "10 cells (4 trained, 6 reused)" in done.stderr
    rows = read_results(out / "results.csv")
    assert sorted({r["naug"] for r in rows}) == ["0", "3", "4"]


def test_a_killed_bench_resumes_where_it_stopped(tmp_path: Path, example_root: Path) -> None:
    grid = grid_file(tmp_path, example_root, seeds=[0], naug=[2])
    out = tmp_path / "out"
    proc = subprocess.Popen(cmd(grid, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "cells").glob("*/metrics.json"))) >= 1 if out.exists() else False:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the bench ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*/metrics.json")}
    assert 1 <= len(finished) < 3
    done = subprocess.run(cmd(grid, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"3 cells ({3 - len(finished)} trained, {len(finished)} reused)" in done.stderr
    for name, mtime in finished.items():
        assert (out / "cells" / name / "metrics.json").stat().st_mtime_ns == mtime
    assert len(read_results(out / "results.csv")) == 3
    assert not list(out.rglob("*.tmp"))


def test_bad_grids_are_one_line(tmp_path: Path, example_root: Path, cli) -> None:
    cases = [
        ({"methods": {}}, "methods is empty"),
        ({"settings": ["half-shot"]}, "settings has 'half-shot'"),
        ({"naug": [0]}, "naug values must be >= 1"),
        ({"protocols": ["cheat"]}, "protocols has 'cheat'"),
        ({"profile": "huge"}, "profile is 'huge'"),
        ({"methods": {"x": 5}}, "methods.x must be real-only"),
        ({"frobnicate": 1}, "unknown field 'frobnicate'"),
        ({"naug": [1]}, "has 2 defect types but the largest naug is 1"),
    ]
    for i, (change, needle) in enumerate(cases):
        path = grid_file(tmp_path, example_root, name=f"bad{i}.yaml", **change)
        code, _, err = cli("bench", path, "--out", tmp_path / f"o{i}")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], (change, err)


def test_layout_options_beside_root_or_under_options() -> None:
    """A grid names its dataset as a spec does: anomalib's Folder options beside root."""
    from diag.bench.grid import parse_grid
    from diag.errors import DiagError

    base = {"methods": {"real-only": "real-only"}, "profile": "quick"}
    beside = parse_grid({**base, "dataset": {"root": "d", "layout": "anomalib-folder",
                                             "normal_dir": "good", "abnormal_dir": ["bad"],
                                             "mask_dir": ["gt"]}})
    under = parse_grid({**base, "dataset": {"root": "d", "layout": "anomalib-folder",
                                            "options": {"normal_dir": "good",
                                                        "abnormal_dir": ["bad"],
                                                        "mask_dir": ["gt"]}}})
    assert beside.dataset == under.dataset
    assert beside.dataset.options["normal_dir"] == "good"
    with pytest.raises(DiagError, match=r"dataset\.options\.normal_dri"):
        parse_grid({**base, "dataset": {"root": "d", "options": {"normal_dri": "good"}}})
    with pytest.raises(DiagError, match="normal_dir"):  # the layout's own check
        parse_grid({**base, "dataset": {"root": "d", "layout": "anomalib-folder"}})


def test_paths_in_the_grid_are_relative_to_its_folder(tmp_path: Path, example_root: Path
                                                      ) -> None:
    """An inline method's model and adapter, and the generate section's region folder, are
    found next to the grid file, wherever the bench is started."""
    from diag.bench.grid import method_spec

    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "ft" / "adapter").mkdir(parents=True)
    (tmp_path / "runs" / "ft" / "adapter" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (tmp_path / "drawn").mkdir()
    grid = load_grid(grid_file(tmp_path, example_root, methods={
        "diag-ft": {"generator": {"kind": "diffusion", "model": "./models/tiny",
                                  "adapter": "runs/ft"}}},
        generate={"regions": {"source": "drawn", "path": "drawn"},
                  "defects": [{"name": "crack", "prompt": "a crack"}]}))
    spec = method_spec(grid, "diag-ft")
    assert spec["generator"]["model"] == str(tmp_path / "models" / "tiny")
    assert spec["generator"]["adapter"] == str(tmp_path / "runs" / "ft")
    assert spec["regions"]["path"] == str(tmp_path / "drawn")


def test_zero_shot_cells_generate_without_the_adapter(tmp_path: Path, example_root: Path
                                                      ) -> None:
    """A method's LoRA adapter (trained on the real positives) makes the full-shot cells'
    set only; zero-shot cells use the pretrained model, as in-and-out does."""
    (tmp_path / "runs" / "ft" / "adapter").mkdir(parents=True)
    (tmp_path / "runs" / "ft" / "adapter" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    grid = load_grid(grid_file(tmp_path, example_root, methods={
        "diag-ft": {"generator": {"kind": "diffusion", "model": "some/hub-id",
                                  "adapter": "runs/ft", "lora_scale": 0.8}}}, seeds=[0]))
    plan = make_plan(grid, {"root": "x"}, {"root": "y"}, "s", (64, 32))
    by_setting = {c.setting: c.generated for c in plan.cells}
    assert "adapter" not in by_setting["zero-shot"].spec["generator"]
    assert "lora_scale" not in by_setting["zero-shot"].spec["generator"]
    assert by_setting["full-shot"].spec["generator"]["adapter"] == str(tmp_path / "runs" / "ft")
    assert by_setting["zero-shot"].folder != by_setting["full-shot"].folder
    assert len(plan.sets) == 2
