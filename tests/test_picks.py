"""Picks: samples an expert chose (``defects[i].picks``), planned after the counted items,
made alone with ``run_spec(ids=...)``, and the folder rules that let the web tool grow a spec
(more picks, more defect types, more painted regions) without remaking anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diag.errors import DiagError
from diag.generate import load_inputs, make_plan, parse_spec, run_spec
from diag.generate.plan import is_pick, plan_index
from diag.imageio import write_mask


def painted_samples() -> dict:
    from diag.data.ref import DatasetRef

    return {s.id: s for s in DatasetRef(root=str(Path(__file__).parents[1] / "examples" /
                                                 "magnetic_tile"), layout="magnetic-tile").load()}


def _spec(root: Path, regions: Path, picks: list[dict] | None = None, count: int = 1,
          more: list[dict] | None = None) -> dict:
    crack = {"name": "crack", "count": count,
             "regions": {"source": "drawn", "path": str(regions), "mode": "as-is"}}
    if picks is not None:
        crack["picks"] = picks
    return {"dataset": {"root": str(root), "layout": "magnetic-tile"},
            "defects": [crack, *(more or [])], "generator": {"kind": "memseg"}}


def _paint(folder: Path, sample, rows: slice | None = None) -> None:
    h, w = sample.size
    mask = np.zeros((h, w), bool)
    mask[rows or slice(h // 3, h // 2), w // 4: w // 2] = True
    write_mask(folder / f"{sample.path.stem}.png", mask)


@pytest.fixture
def painted(example_root: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A region folder with a painted region on two defect-free training images."""
    from diag.data.ref import DatasetRef

    negatives = [s for s in DatasetRef(root=str(example_root), layout="magnetic-tile").load()
                 if not s.label]
    folder = tmp_path / "regions"
    for s in negatives[:2]:
        _paint(folder, s)
    return folder, [s.id for s in negatives]


def test_plan_puts_picks_after_counted_items(example_root: Path, painted) -> None:
    folder, ids = painted
    spec = parse_spec(_spec(example_root, folder, [{"image": ids[1], "seed": 7},
                                                   {"image": ids[0], "seed": 7}], count=2))
    assert spec.total == 4
    plan = make_plan(spec, load_inputs(spec).candidates)
    assert [it.id for it in plan] == ["crack_00000", "crack_00001", "crack_p00000", "crack_p00001"]
    assert [(it.source.id, it.seed) for it in plan[2:]] == [(ids[1], 7), (ids[0], 7)]
    index = plan_index(spec)
    assert [index(it.id) for it in plan] == [0, 1, 2, 3]
    assert index("crack_p00002") is None and is_pick("crack_p00001")


def test_bad_picks_are_one_line_errors(example_root: Path, painted) -> None:
    folder, ids = painted
    with pytest.raises(DiagError, match=r"defects\[0\].picks\[0\].seed must be"):
        parse_spec(_spec(example_root, folder, [{"image": ids[0], "seed": -1}]))
    with pytest.raises(DiagError, match=r"unknown field 'defects\[0\].picks\[0\].sed'"):
        parse_spec(_spec(example_root, folder, [{"image": ids[0], "sed": 1}]))
    spec = parse_spec(_spec(example_root, folder, [{"image": ids[2], "seed": 1}]))
    with pytest.raises(DiagError, match=r"picks\[0\].image '.*' is not a defect-free image "
                                        r"that 'crack' can go on"):
        make_plan(spec, load_inputs(spec).candidates)


def test_ids_makes_one_pick_like_a_full_run(example_root: Path, painted, tmp_path: Path) -> None:
    folder, ids = painted
    spec = parse_spec(_spec(example_root, folder, [{"image": ids[0], "seed": 11}], count=2))
    one = run_spec(spec, tmp_path / "one", ids=["crack_p00000"], progress=False)
    assert [r["id"] for r in one.records] == ["crack_p00000"] and not one.complete
    with pytest.raises(DiagError, match="the plan has no sample 'crack_p00001'"):
        run_spec(spec, tmp_path / "one", ids=["crack_p00001"], progress=False)
    full = run_spec(spec, tmp_path / "full", progress=False)
    rest = run_spec(spec, tmp_path / "one", progress=False)  # resumes: the pick is done
    assert rest.generated == 2 and rest.skipped == 1 and rest.complete and full.complete
    for sub in ("images", "masks"):
        for p in sorted((tmp_path / "full" / sub).glob("*.png")):
            assert (tmp_path / "one" / sub / p.name).read_bytes() == p.read_bytes()
    a = {r["id"]: r for r in map(json.loads, (tmp_path / "one/manifest.jsonl").read_text()
                                 .splitlines())}
    b = {r["id"]: r for r in map(json.loads, (tmp_path / "full/manifest.jsonl").read_text()
                                 .splitlines())}
    drop = ("seconds", "device", "threads")
    assert {k: {f: v for f, v in r.items() if f not in drop} for k, r in a.items()} == \
           {k: {f: v for f, v in r.items() if f not in drop} for k, r in b.items()}


def test_a_folder_grows_with_picks_types_and_regions(example_root: Path, painted,
                                                     tmp_path: Path) -> None:
    folder, ids = painted
    out = tmp_path / "out"
    first = [{"image": ids[0], "seed": 1}]
    run_spec(parse_spec(_spec(example_root, folder, first, count=0)), out, progress=False)
    # another painted image, another pick, another defect type: nothing old is remade
    samples = painted_samples()
    _paint(folder, samples[ids[2]])
    grown = _spec(example_root, folder, [*first, {"image": ids[2], "seed": 2}], count=0,
                  more=[{"name": "blob", "count": 1, "regions": {"source": "shapes"}}])
    summary = run_spec(parse_spec(grown), out, progress=False)
    assert summary.generated == 2 and summary.skipped == 1 and summary.complete
    fresh = run_spec(parse_spec(grown), tmp_path / "fresh", progress=False)
    assert fresh.generated == 3
    for sub in ("images", "masks"):  # memseg's texture donors did not move either
        for p in (out / sub).glob("*.png"):
            assert (tmp_path / "fresh" / sub / p.name).read_bytes() == p.read_bytes(), p.name
    # changing a made pick, or repainting the region a pick used, is refused
    changed = _spec(example_root, folder, [{"image": ids[0], "seed": 5}], count=0)
    with pytest.raises(DiagError, match=r"different spec \(defects changed\)"):
        run_spec(parse_spec(changed), out, progress=False)
    _paint(folder, samples[ids[0]], slice(0, 10))
    with pytest.raises(DiagError, match="changed since its samples were made"):
        run_spec(parse_spec(grown), out, progress=False)


def test_counted_items_still_refuse_new_regions(example_root: Path, painted,
                                                tmp_path: Path) -> None:
    folder, ids = painted
    out = tmp_path / "out"
    run_spec(parse_spec(_spec(example_root, folder, count=1)), out, progress=False)
    shutil.copy(next(folder.glob("*.png")), folder / "default.png")
    with pytest.raises(DiagError, match=r"1 file added \('.*default.png'\)"):
        run_spec(parse_spec(_spec(example_root, folder, count=2)), out, progress=False)


def test_a_spec_yaml_from_before_an_option_existed_resumes(example_root: Path, painted,
                                                            tmp_path: Path) -> None:
    import yaml

    folder, _ = painted
    out = tmp_path / "out"
    spec = parse_spec(_spec(example_root, folder, count=1))
    run_spec(spec, out, progress=False)
    old = yaml.safe_load((out / "spec.yaml").read_text())
    dropped = [k for k in old["generator"] if k != "kind"][:2]  # as if written by an older diag
    for k in dropped:
        del old["generator"][k]
    (out / "spec.yaml").write_text(yaml.safe_dump(old))
    again = run_spec(spec, out, progress=False)
    assert dropped and again.skipped == 1 and again.generated == 0
