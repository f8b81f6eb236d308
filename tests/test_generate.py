"""diag generate end to end: real Magnetic-tile images, the real diffusers code path (a tiny
model loaded with from_pretrained), the memseg generator, resume, shards and determinism."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diag.data.manifest import read_manifest
from diag.generate import load_inputs, make_plan, run_spec
from diag.generate.spec import load_spec
from diag.generators.base import Generator, GeneratorError, Request, Result
from diag.generators.memseg import MemSegConfig
from diag.imageio import read_image, resize_mask

REQUIRED = {"id", "index", "image", "mask", "source", "source_id", "defect", "prompt",
            "negative_prompt", "seed", "spec_seed", "generator", "model", "params", "size",
            "mask_pixels", "region", "info", "background", "device", "threads", "seconds",
            "versions"}


def write_spec(tmp: Path, root: Path, generator: dict, counts=(3, 2), regions=None,
               name: str = "spec.yaml", **extra) -> Path:
    spec = {
        "dataset": {"layout": "magnetic-tile", "root": str(root), "split": "all"},
        "regions": regions if regions is not None else {"source": "real-masks", "flip": True},
        "defects": [
            {"name": "crack", "prompt": "a thin dark crack", "negative_prompt": "smooth, plain",
             "count": counts[0]},
            {"name": "blowhole", "prompt": "a small dark pit", "count": counts[1]},
        ],
        "generator": generator,
        "seed": 0,
        **extra,
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def tiny(model: Path, **kw) -> dict:
    return {"kind": "diffusion", "model": str(model), "steps": 4, "resolution": 128, **kw}


def check_outputs(out: Path, expected: int) -> list[dict]:
    records = read_manifest(out)
    assert len(records) == expected
    for r in records:
        assert set(r) >= REQUIRED, REQUIRED - set(r)
        src = read_image(r["source"])
        img = read_image(out / r["image"])
        mask_arr = np.asarray(Image.open(out / r["mask"]))
        assert Image.open(out / r["mask"]).mode == "L"
        assert set(np.unique(mask_arr)) <= {0, 255}, "masks are binary 0/255"
        mask = mask_arr == 255
        assert mask.any() and mask.sum() == r["mask_pixels"]
        assert img.shape == src.shape and img.dtype == np.uint8  # size and grayscale kept
        if r["background"] == "exact":
            assert np.array_equal(img[~mask], src[~mask]), "pixels outside the mask are untouched"
        else:
            assert r["background"] == "resampled" and r["info"]["paper_overlay"] == "diffusers"
        assert list(img.shape[:2]) == r["size"]
    return records


def test_diffusion_path_on_real_images(tmp_path: Path, example_root: Path, tiny_model: Path) -> None:
    spec = load_spec(write_spec(tmp_path, example_root, tiny(tiny_model)))
    summary = run_spec(spec, tmp_path / "out")
    assert summary.generated == 5 and summary.complete
    records = check_outputs(tmp_path / "out", 5)
    r = records[0]
    assert r["generator"] == "diffusion" and r["model"] == str(tiny_model)
    assert r["model_revision"].startswith("local:")
    assert r["pipeline"] == "StableDiffusionXLInpaintPipeline"
    assert r["params"]["steps"] == 4 and r["params"]["guidance_scale"] == 20.0
    assert r["info"]["resize"] == "crop" and len(r["info"]["crop_box"]) == 4
    assert r["region"]["source"] == "real-masks" and r["region"]["mask_from"].startswith("MT_Crack")
    # pixels inside the mask were really repainted
    img, src = read_image(tmp_path / "out" / r["image"]), read_image(r["source"])
    mask = np.asarray(Image.open(tmp_path / "out" / r["mask"])) > 0
    assert (img[mask] != src[mask]).mean() > 0.5


def test_paper_resize_mode_both_overlays(tmp_path: Path, example_root: Path,
                                         tiny_model: Path) -> None:
    spec = load_spec(write_spec(tmp_path, example_root, tiny(tiny_model, resize="paper"),
                                counts=(2, 0)))
    run_spec(spec, tmp_path / "exact")
    records = check_outputs(tmp_path / "exact", 2)
    for r in records:
        assert r["info"]["model_size"] == [128, 128] and r["info"]["padding_mask_crop"] == 2
        assert r["background"] == "exact" and len(r["info"]["model_crop_box"]) == 4
    ref = load_spec(write_spec(tmp_path, example_root, tiny(tiny_model, resize="paper",
                                                            paper_overlay="diffusers"),
                               counts=(2, 0), name="ref.yaml"))
    run_spec(ref, tmp_path / "ref")
    for a, b in zip(records, check_outputs(tmp_path / "ref", 2), strict=True):
        assert b["background"] == "resampled"
        img_a, img_b = read_image(tmp_path / "exact" / a["image"]), read_image(tmp_path / "ref" /
                                                                               b["image"])
        mask = np.asarray(Image.open(tmp_path / "exact" / a["mask"])) > 0
        assert np.array_equal(img_a[mask], img_b[mask]), "the same defect, two overlays"


def test_memseg_on_full_dataset(tmp_path: Path, mt_root: Path) -> None:
    path = write_spec(tmp_path, mt_root, {"kind": "memseg"}, counts=(6, 6))
    spec = load_spec(path, ["dataset.split=train"])
    run_spec(spec, tmp_path / "out")
    records = check_outputs(tmp_path / "out", 12)
    test_ids = {s.id for s in __import__("diag.data", fromlist=["x"]).load_dataset(
        "magnetic-tile", mt_root, "test")}
    assert not {r["source_id"] for r in records} & test_ids, "only training images are used"
    assert {r["region"]["mask_from"].split("/")[0] for r in records if r["defect"] == "crack"} == {
        "MT_Crack"}


def test_same_spec_same_seed_gives_identical_bytes(tmp_path: Path, example_root: Path,
                                                   tiny_model: Path) -> None:
    spec = load_spec(write_spec(tmp_path, example_root, tiny(tiny_model), counts=(2, 1)))
    run_spec(spec, tmp_path / "a")
    run_spec(spec, tmp_path / "b")
    for r in read_manifest(tmp_path / "a"):
        for key in ("image", "mask"):
            assert (tmp_path / "a" / r[key]).read_bytes() == (tmp_path / "b" / r[key]).read_bytes()
    other = load_spec(write_spec(tmp_path, example_root, tiny(tiny_model), counts=(2, 1),
                                 name="s2.yaml"), ["seed=1"])
    run_spec(other, tmp_path / "c")
    a = (tmp_path / "a/images/crack_00000.png").read_bytes()
    assert a != (tmp_path / "c/images/crack_00000.png").read_bytes(), "another seed differs"


def test_raising_a_count_extends_without_changing(tmp_path: Path, example_root: Path) -> None:
    small = load_spec(write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(2, 1)))
    big = load_spec(write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(4, 2),
                               name="big.yaml"))
    p_small = make_plan(small, load_inputs(small).negatives)
    p_big = {it.id: it for it in make_plan(big, load_inputs(big).negatives)}
    for it in p_small:
        assert (p_big[it.id].seed, p_big[it.id].source.id) == (it.seed, it.source.id)
    run_spec(small, tmp_path / "out")
    summary = run_spec(big, tmp_path / "out")
    assert (summary.generated, summary.skipped) == (3, 3)


def test_shards_merge_to_the_single_process_set(tmp_path: Path, example_root: Path) -> None:
    spec = load_spec(write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(4, 3)))
    run_spec(spec, tmp_path / "one")
    s0 = run_spec(spec, tmp_path / "sharded", shard=(0, 3))
    assert not s0.complete and (tmp_path / "sharded/manifest-0-of-3.jsonl").exists()
    run_spec(spec, tmp_path / "sharded", shard=(2, 3))
    s1 = run_spec(spec, tmp_path / "sharded", shard=(1, 3))
    assert s1.complete
    assert (tmp_path / "sharded/manifest.jsonl").exists()
    assert not list((tmp_path / "sharded").glob("manifest-*"))
    one, sharded = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "sharded")
    assert [r["id"] for r in one] == [r["id"] for r in sharded]
    for r in one:
        assert (tmp_path / "one" / r["image"]).read_bytes() == (
            tmp_path / "sharded" / r["image"]).read_bytes()


def test_rerun_skips_finished_samples(tmp_path: Path, example_root: Path, cli) -> None:
    path = write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(2, 2))
    assert cli("generate", path, "--out", tmp_path / "o")[0] == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "o/images").iterdir()}
    code, _, err = cli("generate", path, "--out", tmp_path / "o")
    assert code == 0 and "0 generated, 4 already done" in err
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "o/images").iterdir()}


def test_resume_after_kill(tmp_path: Path, example_root: Path, tiny_model: Path) -> None:
    """Kill -9 a real run mid-way, tear the manifest's last line, leave a temp file: a rerun
    completes the set, byte-identical to an uninterrupted run."""
    path = write_spec(tmp_path, example_root, tiny(tiny_model, steps=8, resolution=256),
                      counts=(6, 4))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "diag", "generate", str(path), "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(read_manifest(out)) >= 2 if out.exists() else False:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()!r}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_manifest(out))
    assert 2 <= done < 10
    with open(out / "manifest.jsonl", "ab") as fh:  # a torn line, as if killed mid-write
        fh.write(b'{"id": "crack_0000')
    (out / "images" / ".crack_00005.png.abc.tmp").write_bytes(b"half")
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    check_outputs(out, 10)
    # the uninterrupted reference runs the same way: a fresh process, default torch threads
    subprocess.run(cmd[:-1] + [str(tmp_path / "clean")], env=env, check=True, capture_output=True)
    for r in read_manifest(tmp_path / "clean"):
        assert (out / r["image"]).read_bytes() == (tmp_path / "clean" / r["image"]).read_bytes()
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == 10
    assert not list(out.rglob("*.tmp")), "the killed run's temporary files are gone"


def test_other_spec_in_same_folder_is_refused(tmp_path: Path, example_root: Path, cli) -> None:
    path = write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(1, 1))
    assert cli("generate", path, "--out", tmp_path / "o")[0] == 0
    code, _, err = cli("generate", path, "--out", tmp_path / "o", "--set", "seed=5")
    assert code == 2 and "different spec" in err and "seed" in err


def test_drawn_and_shape_regions(tmp_path: Path, example_root: Path) -> None:
    area = tmp_path / "area.json"
    area.write_text(json.dumps({"polygons": [[[0.1, 0.1], [0.9, 0.1], [0.9, 0.5], [0.1, 0.5]]],
                                "normalized": True}))
    regions = {"source": "shapes", "path": str(area), "shapes": ["stroke", "ellipse"],
               "size": [0.05, 0.2], "count": [1, 3]}
    spec = load_spec(write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(3, 0),
                                regions=regions))
    run_spec(spec, tmp_path / "out")
    for r in check_outputs(tmp_path / "out", 3):
        h, w = r["size"]
        ys, _ = np.nonzero(np.asarray(Image.open(tmp_path / "out" / r["mask"])) > 0)
        assert ys.min() >= int(0.1 * h) - 1 and ys.max() <= int(0.5 * h) + 1, "inside the area"
    drawn = tmp_path / "drawn.png"
    m = np.zeros((100, 100), np.uint8)
    m[40:60, 10:90] = 255
    Image.fromarray(m).save(drawn)
    spec = load_spec(write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(2, 0),
                                regions={"source": "drawn", "path": str(drawn)}, name="d.yaml"))
    run_spec(spec, tmp_path / "drawn")
    for r in check_outputs(tmp_path / "drawn", 2):
        h, w = r["size"]
        expect = resize_mask(m > 0, (h, w))
        got = np.asarray(Image.open(tmp_path / "drawn" / r["mask"])) > 0
        assert np.array_equal(got, expect), "drawn regions are used as they are"


def test_tiny_model_command_and_dry_run(tmp_path: Path, example_root: Path, cli) -> None:
    code, out, _ = cli("tiny-model", tmp_path / "m")
    assert code == 0 and (tmp_path / "m/model_index.json").exists()
    path = write_spec(tmp_path, example_root, tiny(tmp_path / "m"))
    code, out, _ = cli("generate", path, "--out", tmp_path / "o", "--dry-run")
    assert code == 0 and "plan: 5 samples" in out
    assert not (tmp_path / "o").exists()


def test_demo_runs_the_whole_path(tmp_path: Path, cli) -> None:
    """generate -> train -> evaluate -> fidelity -> report on the bundled images."""
    code, out, err = cli("demo", "--out", tmp_path / "demo")
    assert code == 0, err
    assert "memseg" in err  # no CUDA here: the notice says why
    demo = tmp_path / "demo"
    sheet = Image.open(demo / "contact_sheet.png")
    assert sheet.size[0] > 200 and sheet.size[1] > 200
    (generated,) = (demo / "generated").iterdir()
    check_outputs(generated, 12)
    assert str(demo / "report.html") in out and (demo / "report.html").stat().st_size > 1000
    rows = (demo / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # real-only full-shot, memseg zero-shot and full-shot


def test_copy_of_example_with_relative_paths(tmp_path: Path, cli) -> None:
    from tests.conftest import EXAMPLES

    shutil.copytree(EXAMPLES, tmp_path / "ex")
    code, _, err = cli("generate", tmp_path / "ex/magnetic_tile.yaml", "--out", tmp_path / "o",
                       "--set", "generator.kind=memseg", "--limit", "2")
    assert code == 0, err
    assert len(read_manifest(tmp_path / "o")) == 2


def test_batched_diffusion_calls(tmp_path: Path, example_root: Path, tiny_model: Path) -> None:
    """batch_size > 1 groups samples that share a model input size (and negative prompt or
    none) into one pipeline call; each keeps its own seeded noise and its image."""
    data = tmp_path / "same-size"
    data.mkdir()
    for p in sorted((example_root / "MT_Free" / "Imgs").glob("*.jpg"))[:4]:
        Image.open(p).convert("L").resize((240, 160)).save(data / f"{p.stem}.png")
    area = tmp_path / "area.json"
    area.write_text(json.dumps({"polygons": [[[0.4, 0.4], [0.6, 0.4], [0.6, 0.55], [0.4, 0.55]]],
                                "normalized": True}))
    regions = {"source": "drawn", "path": str(area)}
    dataset = {"dataset": {"layout": "folder", "root": str(data), "split": "all"}}
    one = load_spec(write_spec(tmp_path, example_root, tiny(tiny_model), counts=(3, 1),
                               regions=regions), [f"dataset={json.dumps(dataset['dataset'])}"])
    run_spec(one, tmp_path / "one")
    batched = load_spec(write_spec(tmp_path, example_root, {**tiny(tiny_model), "batch_size": 3},
                                   counts=(3, 1), regions=regions, name="b.yaml"),
                        [f"dataset={json.dumps(dataset['dataset'])}"])
    run_spec(batched, tmp_path / "batched")
    records = check_outputs(tmp_path / "batched", 4)
    assert [r["info"]["batch"] for r in records] == [3, 3, 3, 1]
    for r in records:
        a = read_image(tmp_path / "one" / r["image"]).astype(int)
        b = read_image(tmp_path / "batched" / r["image"]).astype(int)
        assert np.abs(a - b).max() <= 1


class Leaky(Generator):
    """A deliberately broken generator: it paints its region and also one pixel outside it."""

    kind = "leaky"
    Config = MemSegConfig

    def generate(self, request: Request) -> Result:
        image = request.image.copy()
        mask = np.zeros(image.shape[:2], bool)
        mask[5:9, 5:9] = True
        image[mask] = 255 - image[mask]
        image[0, 0] = 255 - image[0, 0]
        return Result(image, mask)


def test_a_generator_that_leaks_is_an_error_naming_it(tmp_path: Path, example_root: Path,
                                                      cli) -> None:
    spec = load_spec(write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(2, 0)))
    with pytest.raises(GeneratorError, match="generator 'leaky' changed 1 pixels outside its "
                                             "mask in crack_00000.*row 0, column 0"):
        run_spec(spec, tmp_path / "out", generator=Leaky(MemSegConfig()))
    assert read_manifest(tmp_path / "out") == [], "nothing recorded, nothing repaired"
    assert not (tmp_path / "out" / "images").exists()


def test_a_second_run_on_the_same_manifest_is_refused(tmp_path: Path, example_root: Path,
                                                      cli) -> None:
    from diag.generate.runner import folder_lock

    path = write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(2, 1))
    out = tmp_path / "o"
    with folder_lock(out, "manifest.jsonl") as held:  # as a running `diag generate` holds it
        assert held
        code, _, err = cli("generate", path, "--out", out)
        assert code == 2 and "another diag generate run is writing" in err
        code, _, err = cli("generate", path, "--out", out, "--shard", "0/2")
        assert code == 0, "another shard writes its own manifest"
    assert cli("generate", path, "--out", out)[0] == 0, "the lock goes with its holder"
    assert len(read_manifest(out)) == 3


@pytest.mark.parametrize(("change", "match"), [
    ("shape", r"returned a \(8, 8, 3\) uint8 image for the \(8, 8\) uint8 source"),
    ("nothing", "changed no pixel"),
    ("mask-size", r"returned a \(4, 4\) mask"),
])
def test_broken_results_are_errors_naming_the_generator(change: str, match: str) -> None:
    from diag.generators.base import check_result

    image = np.full((8, 8), 100, np.uint8)
    req = Request(image=image, region=None, seed=0)
    mask = np.zeros((8, 8), bool)
    if change == "shape":
        res = Result(np.stack([image] * 3, axis=2), mask)
    elif change == "nothing":
        res = Result(image.copy(), mask)
    else:
        res = Result(image.copy(), np.ones((4, 4), bool))
    with pytest.raises(GeneratorError, match=f"generator 'g' {match}"):
        check_result("g", req, res, "s1")
