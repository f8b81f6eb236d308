"""diag export: a real generate folder written as anomalib-folder, mvtec, coco and yolo-seg,
read back and compared with the generated masks; provenance; one-line errors; no half export."""

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
from scipy import ndimage

from diag.data import load_dataset
from diag.data.export import (
    FORMATS,
    coco_regions,
    exported_id,
    mask_polygons,
    read_readme,
    rle_encode,
    yolo_lines,
)
from diag.data.manifest import read_manifest
from diag.imageio import read_image, read_mask

REPO = Path(__file__).resolve().parents[1]
N_REAL = 20  # the bundled Magnetic-tile example: 20 images (9 positives, 11 defect-free)


# --- decoders of the exported formats, written here (not in diag) as independent checks -------

def rle_decode(rle: dict) -> np.ndarray:
    """The boolean mask of an uncompressed COCO RLE (:func:`rle_encode`'s inverse)."""
    h, w = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, not {h}x{w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape((h, w), order="F")


def polygons_to_mask(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise ``(x, y)`` pixel polygons with their boundary (PIL), rounding coordinates to
    the nearest pixel: the inverse of :func:`mask_polygons` for regions without holes."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (int(shape[1]), int(shape[0])), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        pts = [(int(round(float(x))), int(round(float(y)))) for x, y in np.asarray(poly)]
        draw.polygon(pts, fill=1, outline=1)
    return np.asarray(img, dtype=bool)


def yolo_to_mask(text: str, shape: tuple[int, int]) -> np.ndarray:
    """The mask a YOLO segmentation label file describes (all classes), at ``shape``."""
    h, w = shape
    polys = []
    for line in text.splitlines():
        values = [float(v) for v in line.split()[1:]]
        if values:
            polys.append(np.asarray(values).reshape(-1, 2) * np.array([w, h]))
    return polygons_to_mask(polys, shape)


def _spec(tmp: Path, root: Path, layout: dict | None = None) -> Path:
    spec = {"dataset": layout or {"layout": "magnetic-tile", "root": str(root), "split": "all"},
            "regions": {"source": "real-masks", "flip": True},
            "defects": [{"name": "crack", "prompt": "a thin dark crack", "count": 3},
                        {"name": "blowhole", "prompt": "a small \"dark\" pit", "count": 2}],
            "generator": {"kind": "cutpaste"}, "seed": 0}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real generate folder: 5 cutpaste samples on the bundled Magnetic-tile images."""
    from diag.generate import run_spec
    from diag.generate.spec import load_spec

    tmp = tmp_path_factory.mktemp("gen")
    run_spec(load_spec(_spec(tmp, REPO / "examples" / "magnetic_tile")), tmp / "tiles")
    return tmp / "tiles"


@pytest.fixture(scope="module")
def records(gen: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_manifest(gen)}


def _mask_of(gen: Path, rec: dict) -> np.ndarray:
    return read_mask(gen / rec["mask"])


def _export(cli, gen: Path, dest: Path, fmt: str, *extra: str) -> str:
    code, _, err = cli("export", gen, "--format", fmt, "--to", dest, *extra)
    assert code == 0, err
    return err


def _generated_lines(dest: Path, records: dict[str, dict]) -> dict[str, str]:
    """{exported image: generated id}, checking each README line against the manifest."""
    lines = read_readme(dest)
    out = {}
    for rel, origin in lines.items():
        gid = exported_id(origin)
        if gid is None:
            assert origin.startswith("real ")
            continue
        r = records[gid]
        assert f'source {json.dumps(r["source"])}' in origin
        assert f'defect "{r["defect"]}"' in origin and f"seed {r['seed']}" in origin
        assert f"prompt {json.dumps(r['prompt'])}" in origin
        assert (dest / rel).is_file()
        out[rel] = gid
    assert sorted(out.values()) == sorted(records)
    return out


def test_anomalib_folder_round_trip(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    dest = tmp_path / "af"
    err = _export(cli, gen, dest, "anomalib-folder", "--with-real")
    assert "Folder(name='tiles'" in err
    names = _generated_lines(dest, records)
    assert len(read_readme(dest)) == len(records) + N_REAL
    for rel, gid in names.items():
        assert rel == f"abnormal/{records[gid]['defect']}/{gid}.png"
        assert (dest / rel).read_bytes() == (gen / records[gid]["image"]).read_bytes()
    args = yaml.safe_load((dest / "anomalib_folder.yaml").read_text(encoding="utf-8"))
    assert args == {"name": "tiles", "root": str(dest.absolute()), "normal_dir": "normal",
                    "abnormal_dir": "abnormal", "mask_dir": "mask"}
    every = load_dataset("anomalib-folder", dest, "all",
                         **{k: v for k, v in args.items() if k.endswith("_dir")})
    real = load_dataset("magnetic-tile", REPO / "examples" / "magnetic_tile", "all")
    assert len(every) == len(records) + len(real)
    assert sum(s.label for s in every) == len(records) + sum(s.label for s in real)
    ours = {s.path.stem: s for s in every}
    for gid, r in records.items():
        s = ours[gid]
        assert s.label == 1 and s.defect == r["defect"]
        assert np.array_equal(s.mask, _mask_of(gen, r))  # exact
    for s in real:
        twin = ours["real_" + s.id.replace("/", "_")]
        assert twin.label == s.label and np.array_equal(twin.mask, s.mask)
        assert np.array_equal(twin.image, s.image)


def test_anomalib_folder_without_real_data(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    dest = tmp_path / "af"
    err = _export(cli, gen, dest, "anomalib-folder")
    assert "Folder needs normal_dir" in err
    assert not (dest / "normal").exists()
    text = (dest / "anomalib_folder.yaml").read_text(encoding="utf-8")
    assert "normal_dir" not in yaml.safe_load(text) and "--with-real" in text
    assert len(read_readme(dest)) == len(records)
    _generated_lines(dest, records)


def test_mvtec_round_trip(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    dest = tmp_path / "mv"
    _export(cli, gen, dest, "mvtec", "--with-real", "--category", "tile")
    names = _generated_lines(dest, records)
    assert all(rel.startswith("tile/test/") and rel.endswith(".png") for rel in names)
    assert {p.name for p in (dest / "tile/train/good").iterdir()} == {
        f"{i:03d}.png" for i in range(len(list((dest / "tile/train/good").iterdir())))}
    every = {s.path.relative_to(dest).as_posix(): s
             for s in load_dataset("mvtec", dest / "tile", "all")}
    assert len(every) == len(read_readme(dest))
    for rel, gid in names.items():
        s = every[rel]
        assert s.mask_path.name == f"{Path(rel).stem}_mask.png"
        assert s.label == 1 and s.defect == records[gid]["defect"]
        assert np.array_equal(s.mask, _mask_of(gen, records[gid]))
        assert np.array_equal(s.image, read_image(gen / records[gid]["image"]))
    good = load_dataset("mvtec", dest / "tile", "train")
    real = load_dataset("magnetic-tile", REPO / "examples" / "magnetic_tile", "all")
    assert len(good) == sum(1 - s.label for s in real)
    # real JPEG images became PNG with the same pixels
    real_by_path = {str(s.path): s for s in real}
    for rel, origin in read_readme(dest).items():
        if origin.startswith("real ") and "/train/good/" in rel:
            src = json.loads(origin.split(" ", 1)[1].split(" (", 1)[0])
            assert np.array_equal(read_image(dest / rel), real_by_path[src].image)


def test_coco_round_trip_is_exact(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    dest = tmp_path / "coco"
    _export(cli, gen, dest, "coco", "--with-real")
    names = _generated_lines(dest, records)
    data = json.loads((dest / "annotations.json").read_text(encoding="utf-8"))
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    cats = {c["id"]: c["name"] for c in data["categories"]}
    assert set(cats.values()) >= {"crack", "blowhole"}
    images = {im["id"]: im for im in data["images"]}
    assert len(images) == len(records) + N_REAL
    by_file = {f"images/{im['file_name']}": im for im in images.values()}
    anns: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
        assert a["iscrowd"] == 0
        region = rle_decode(a["segmentation"])
        ys, xs = np.nonzero(region)
        assert a["area"] == region.sum()
        assert a["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
        assert ndimage.label(region, np.ones((3, 3)))[1] == 1  # one region each
    for rel, gid in names.items():
        im = by_file[rel]
        mask = _mask_of(gen, records[gid])
        assert [im["height"], im["width"]] == list(mask.shape)
        union = np.zeros_like(mask)
        for a in anns[im["id"]]:
            assert cats[a["category_id"]] == records[gid]["defect"]
            union |= rle_decode(a["segmentation"])
        assert np.array_equal(union, mask)  # exact
    negatives = [im for im in images.values() if im["id"] not in anns]
    real = load_dataset("magnetic-tile", REPO / "examples" / "magnetic_tile", "all")
    assert len(negatives) == sum(1 - s.label for s in real)


def test_pycocotools_reads_the_coco_export(gen: Path, records: dict, cli, tmp_path: Path
                                           ) -> None:
    coco_mod = pytest.importorskip("pycocotools.coco", reason="pycocotools is not installed")
    dest = tmp_path / "coco"
    _export(cli, gen, dest, "coco")
    coco = coco_mod.COCO(str(dest / "annotations.json"))
    by_file = {im["file_name"]: im["id"] for im in coco.dataset["images"]}
    for rel, gid in _generated_lines(dest, records).items():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[by_file[Path(rel).name]]))
        mask = _mask_of(gen, records[gid])
        union = np.zeros(mask.shape, bool)
        for a in anns:
            m = coco.annToMask(a).astype(bool)  # what detectron2 / mmdet decode
            assert m.sum() == a["area"] and np.array_equal(m, rle_decode(a["segmentation"]))
            union |= m
        assert np.array_equal(union, mask)


def test_yolo_seg_round_trip(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    dest = tmp_path / "yolo"
    _export(cli, gen, dest, "yolo-seg", "--with-real")
    names = _generated_lines(dest, records)
    data = yaml.safe_load((dest / "data.yaml").read_text(encoding="utf-8"))
    assert data["path"] == str(dest.absolute())
    assert data["train"] == data["val"] == "images/train"
    classes = data["names"]
    assert sorted(classes) == list(range(len(classes)))
    for rel, gid in names.items():
        label = dest / "labels/train" / f"{Path(rel).stem}.txt"
        text = label.read_text(encoding="utf-8")
        mask = _mask_of(gen, records[gid])
        lines = text.splitlines()
        assert len(lines) == ndimage.label(mask, np.ones((3, 3)))[1]  # one line per region
        for line in lines:
            values = line.split()
            assert classes[int(values[0])] == records[gid]["defect"]
            assert len(values) % 2 == 1 and len(values) >= 7  # >= 3 points: never a box line
            assert all(0.0 <= float(v) <= 1.0 for v in values[1:])
        back = yolo_to_mask(text, mask.shape)
        iou = (back & mask).sum() / (back | mask).sum()
        assert iou >= 0.9, (gid, iou)
        assert np.array_equal(back, ndimage.binary_fill_holes(mask))  # exact up to holes
    empty = [p for p in (dest / "labels/train").iterdir() if not p.read_text(encoding="utf-8")]
    real = load_dataset("magnetic-tile", REPO / "examples" / "magnetic_tile", "all")
    assert len(empty) == sum(1 - s.label for s in real)  # background images


def _blobs(rng: np.random.Generator, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    mask = ndimage.gaussian_filter(rng.random(shape), 3) > 0.53
    return ndimage.binary_opening(mask)


def test_rle_is_cocos_column_major_format() -> None:
    m = np.array([[0, 1], [1, 1]], bool)  # column-major: 0, 1, 1, 1
    assert rle_encode(m) == {"size": [2, 2], "counts": [1, 3]}
    assert rle_encode(~m)["counts"] == [0, 1, 3]  # starts with a set pixel: a 0-length run
    rng = np.random.default_rng(0)
    for _ in range(50):
        m = rng.random((int(rng.integers(1, 20)), int(rng.integers(1, 20)))) < rng.random()
        assert np.array_equal(rle_decode(rle_encode(m)), m)
    with pytest.raises(ValueError):
        rle_decode({"size": [2, 2], "counts": [1, 2]})


def test_polygons_of_blob_masks() -> None:
    """Outer contours give every hole-free region back exactly (as cv2.fillPoly, which
    Ultralytics uses, and PIL fill them); a hole is filled: IoU stays high, not 1."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        mask = _blobs(rng)
        polys = mask_polygons(mask)
        assert len(polys) == ndimage.label(mask, np.ones((3, 3)))[1]
        back = polygons_to_mask(polys, mask.shape)
        assert np.array_equal(back, ndimage.binary_fill_holes(mask))
        if mask.any():
            assert (back & mask).sum() / (back | mask).sum() >= 0.9
        text = "".join(f"{line}\n" for line in yolo_lines(mask, 0))
        assert np.array_equal(yolo_to_mask(text, mask.shape), back)
    ring = np.zeros((40, 40), bool)
    ring[5:35, 5:35] = True
    ring[18:22, 18:22] = False  # a hole
    back = polygons_to_mask(mask_polygons(ring), ring.shape)
    assert 0.9 <= (back & ring).sum() / (back | ring).sum() < 1.0
    lone = np.zeros((5, 5), bool)
    lone[2, 3] = True
    assert [p.tolist() for p in mask_polygons(lone)] == [[[3, 2], [3, 2], [3, 2]]]
    assert np.array_equal(polygons_to_mask(mask_polygons(lone), lone.shape), lone)
    cv2 = pytest.importorskip("cv2", reason="opencv is not installed (comes with anomalib)")
    mask = _blobs(rng)
    filled = np.zeros(mask.shape, np.uint8)
    cv2.fillPoly(filled, [p.astype(np.int32).reshape(-1, 1, 2) for p in mask_polygons(mask)], 1)
    assert np.array_equal(filled.astype(bool), ndimage.binary_fill_holes(mask))


def test_coco_regions_split_connected_parts() -> None:
    m = np.zeros((10, 12), bool)
    m[1:3, 1:4] = True
    m[5, 5] = m[6, 6] = True  # diagonal neighbours: one region
    regions = coco_regions(m)
    assert [r["area"] for r in regions] == [6, 2]
    assert [r["bbox"] for r in regions] == [[1, 1, 3, 2], [5, 5, 2, 2]]


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_inputs_are_one_line_errors(gen: Path, cli, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli("export", empty, "--format", "coco", "--to", tmp_path / "x")
    assert code == 2 and "has no manifest.jsonl" in _one_line_error(err) and str(empty) in err
    code, _, err = cli("export", tmp_path / "nope", "--format", "coco", "--to", tmp_path / "x")
    assert code == 2 and "does not exist" in _one_line_error(err)
    code, _, err = cli("export", gen, "--format", "voc", "--to", tmp_path / "x")
    line = _one_line_error(err)
    assert code == 2 and "unknown export format 'voc'" in line and all(f in line for f in FORMATS)
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("keep me", encoding="utf-8")
    code, _, err = cli("export", gen, "--format", "coco", "--to", full)
    assert code == 2 and "is not empty" in _one_line_error(err) and "--overwrite" in err
    code, _, err = cli("export", gen, "--format", "coco", "--to", full, "--overwrite")
    assert code == 2 and "holds no earlier diag export" in _one_line_error(err)
    assert (full / "mine.txt").read_text(encoding="utf-8") == "keep me"
    code, _, err = cli("export", gen, "--format", "coco", "--to", gen / "export")
    assert code == 2 and "is inside the generate folder" in _one_line_error(err)
    code, _, err = cli("export", gen, "--format", "mvtec", "--to", tmp_path / "m",
                       "--category", "a/b")
    assert code == 2 and "--category 'a/b'" in _one_line_error(err)
    code, _, err = cli("export", gen, "--format", "coco", "--to", tmp_path / "y")
    assert code == 0
    code, _, err = cli("export", gen, "--format", "coco", "--to", tmp_path / "y", "--with-real")
    assert code == 2 and "is not empty" in _one_line_error(err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "m").exists()


def test_overwrite_replaces_an_earlier_export(gen: Path, records: dict, cli,
                                              tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()  # an empty folder is fine
    _export(cli, gen, dest, "coco")
    _export(cli, gen, dest, "yolo-seg", "--overwrite")
    assert not (dest / "annotations.json").exists() and (dest / "data.yaml").is_file()
    assert len(read_readme(dest)) == len(records)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_link_hard_links_images(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    dest = tmp_path / "linked"
    _export(cli, gen, dest, "anomalib-folder", "--link")
    for rel, gid in _generated_lines(dest, records).items():
        assert (dest / rel).stat().st_ino == (gen / records[gid]["image"]).stat().st_ino


def test_failed_export_leaves_nothing(gen: Path, cli, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(gen, broken)
    last = read_manifest(broken)[-1]
    (broken / last["mask"]).write_bytes(b"not a png")
    for fmt in FORMATS:
        dest = tmp_path / f"to-{fmt}"
        code, _, err = cli("export", broken, "--format", fmt, "--to", dest)
        assert code == 2 and last["mask"].split("/")[-1] in _one_line_error(err)
        assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # no leftovers


def test_killed_export_leaves_no_destination(tmp_path: Path, mt_copy: Path, cli) -> None:
    """kill -9 halfway (the export blocks reading a named pipe that stands in for one real
    image): the destination does not exist; the next export removes the leftover."""
    from diag.generate import run_spec
    from diag.generate.spec import load_spec

    victim = sorted((mt_copy / "MT_Free/Imgs").glob("*.jpg"))[-1]
    victim.with_suffix(".png").unlink()  # no mask: the reader lists it without opening it
    run_spec(load_spec(_spec(tmp_path, mt_copy)), tmp_path / "gen")
    keep = victim.read_bytes()
    victim.unlink()
    os.mkfifo(victim)
    dest = tmp_path / "exports" / "af"
    proc = subprocess.Popen([sys.executable, "-m", "diag", "export", str(tmp_path / "gen"),
                             "--format", "anomalib-folder", "--to", str(dest), "--with-real"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = list((tmp_path / "exports").glob(".af.diag-export-*"))
            if tmps and len(list(tmps[0].glob("abnormal/*/*"))) >= 5:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # it blocks on the pipe
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not dest.exists()
    assert len(list((tmp_path / "exports").glob(".af.diag-export-*"))) == 1
    victim.unlink()
    victim.write_bytes(keep)
    _export(cli, tmp_path / "gen", dest, "anomalib-folder", "--with-real")
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["af"]
    assert len(read_readme(dest)) == 5 + N_REAL


# ---------------------------------------------------------------------------------------------
# anomalib reads the exports (skipped without anomalib)


def _anomalib_masks(dataset, dest: Path) -> dict[str, np.ndarray]:
    """{image file relative to dest: anomalib's gt_mask} for the abnormal items."""
    out = {}
    for i in range(len(dataset)):
        item = dataset[i]
        if bool(item.gt_label):
            rel = Path(item.image_path).relative_to(dest.absolute()).as_posix()
            out[rel] = np.asarray(item.gt_mask).astype(bool)
    return out


def test_anomalib_reads_the_folder_export(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    data = pytest.importorskip("anomalib.data", reason="anomalib is not installed "
                               "(pip install -e .[dev] installs it)")
    dest = tmp_path / "af"
    _export(cli, gen, dest, "anomalib-folder", "--with-real")
    args = yaml.safe_load((dest / "anomalib_folder.yaml").read_text(encoding="utf-8"))
    dm = data.Folder(**args, val_split_mode="none", seed=0)
    dm.setup()
    real = load_dataset("magnetic-tile", REPO / "examples" / "magnetic_tile", "all")
    n_pos = len(records) + sum(s.label for s in real)
    assert len(dm.train_data) + len(dm.test_data) == len(records) + len(real)
    assert dm.test_data.task.value == "segmentation"
    masks = _anomalib_masks(dm.test_data, dest)
    assert len(masks) == n_pos
    assert all(not bool(dm.train_data[i].gt_label) for i in range(len(dm.train_data)))
    for rel, gid in _generated_lines(dest, records).items():
        assert np.array_equal(masks[rel], _mask_of(gen, records[gid]))


def test_anomalib_reads_the_mvtec_export(gen: Path, records: dict, cli, tmp_path: Path) -> None:
    data = pytest.importorskip("anomalib.data", reason="anomalib is not installed "
                               "(pip install -e .[dev] installs it)")
    dest = tmp_path / "mv"
    _export(cli, gen, dest, "mvtec", "--with-real", "--category", "tile")
    dm = data.MVTecAD(root=dest, category="tile", val_split_mode="none", seed=0)
    dm.setup()
    real = load_dataset("magnetic-tile", REPO / "examples" / "magnetic_tile", "all")
    assert len(dm.train_data) + len(dm.test_data) == len(records) + len(real)
    masks = _anomalib_masks(dm.test_data, dest)
    assert len(masks) == len(records) + sum(s.label for s in real)
    for rel, gid in _generated_lines(dest, records).items():
        assert np.array_equal(masks[rel], _mask_of(gen, records[gid]))
