"""The anomalib-folder input layout: anomalib's Folder options, its mask pairing and splits,
diag's labels, positives without masks, and one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diag.config import from_dict, to_dict
from diag.data import DatasetRef, detect_layout, load_dataset
from diag.errors import DiagError
from diag.regions import RegionSource, RegionSpec


def _img(path: Path, value: int = 120, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)


def _mask(path: Path, box: tuple[int, int, int, int] | None, size: tuple[int, int] = (40, 30)
          ) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    if box:
        y0, y1, x0, x1 = box
        arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).save(path)


OPTS = {"normal_dir": "normal", "abnormal_dir": "abnormal", "mask_dir": "mask"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """normal/ (10 images), abnormal/crack (2), abnormal/hole (1), mask/ with the same names;
    crack/b's mask is empty."""
    root = tmp_path / "ds"
    for i in range(10):
        _img(root / "normal" / f"n{i:02d}.png")
    _img(root / "abnormal/crack/a.png")
    _mask(root / "mask/crack/a.png", (2, 4, 0, 40))
    _img(root / "abnormal/crack/b.png")
    _mask(root / "mask/crack/b.png", None)
    _img(root / "abnormal/hole/c.png")
    _mask(root / "mask/hole/c.png", (5, 9, 5, 9))
    return root


def test_splits_labels_and_defect_classes(folder: Path) -> None:
    every = load_dataset("anomalib-folder", folder, "all", **OPTS)
    train = load_dataset("anomalib-folder", folder, "train", **OPTS)
    test = load_dataset("anomalib-folder", folder, "test", **OPTS)
    assert len(every) == 13
    by_id = {s.id: s for s in every}
    assert by_id["abnormal/crack/a"].label == 1 and by_id["abnormal/crack/a"].defect == "crack"
    assert by_id["abnormal/crack/a"].mask.sum() == 80
    assert by_id["abnormal/crack/b"].label == 0 and by_id["abnormal/crack/b"].defect == ""
    assert by_id["abnormal/hole/c"].defect == "hole" and by_id["abnormal/hole/c"].mask.sum() == 16
    assert by_id["abnormal/hole/c"].mask_path == folder / "mask/hole/c.png"
    # train: normals only, less a seeded held-out share that joins the test side
    assert all(s.id.startswith("normal/") and s.label == 0 for s in train)
    held = [s for s in test if s.id.startswith("normal/")]
    assert len(train) + len(held) == 10 and 0 < len(held) < 10
    assert {s.id for s in train}.isdisjoint(s.id for s in test)
    assert {s.id for s in test} >= {"abnormal/crack/a", "abnormal/crack/b", "abnormal/hole/c"}
    again = load_dataset("anomalib-folder", folder, "train", **OPTS)
    assert [s.id for s in again] == [s.id for s in train]  # stable
    other = load_dataset("anomalib-folder", folder, "train", split_seed=5, **OPTS)
    assert [s.id for s in other] != [s.id for s in train]
    assert len(load_dataset("anomalib-folder", folder, "train", test_fraction=0.0, **OPTS)) == 10


def test_normal_test_dir_is_the_normal_test_split(folder: Path) -> None:
    _img(folder / "good_test/t0.png")
    _img(folder / "good_test/t1.png")
    opts = {**OPTS, "normal_test_dir": "good_test"}
    train = load_dataset("anomalib-folder", folder, "train", **opts)
    test = load_dataset("anomalib-folder", folder, "test", **opts)
    assert len(train) == 10  # nothing held out
    assert sorted(s.id for s in test if s.label == 0 and "good_test" in s.id) == [
        "good_test/t0", "good_test/t1"]
    assert len(test) == 5


def test_folder_lists_pair_masks_as_anomalib_does(tmp_path: Path) -> None:
    """abnormal_dir and mask_dir as lists, same stems in two classes, masks named *_mask:
    anomalib pairs the sorted lists; each image gets its own mask."""
    root = tmp_path / "ds"
    _img(root / "good/0.png")
    for k, cls in enumerate(("scratch", "dent")):
        for i in range(3):
            _img(root / cls / f"00{i}.png")
            _mask(root / "gt" / cls / f"00{i}_mask.png", (k, k + 1 + i, 0, 2))
    opts = {"normal_dir": "good", "abnormal_dir": ["scratch", "dent"],
            "mask_dir": ["gt/scratch", "gt/dent"]}
    pos = [s for s in load_dataset("anomalib-folder", root, "test", **opts) if s.label]
    assert len(pos) == 6
    for s in pos:
        assert s.mask_path.parent.name == s.defect == s.path.parent.name
        assert s.mask_path.stem == f"{s.path.stem}_mask"
        assert s.mask.sum() == 2 * (1 + int(s.path.stem))


def test_matches_anomalib_make_folder_dataset(folder: Path) -> None:
    folder_mod = pytest.importorskip("anomalib.data.datasets.image.folder",
                                     reason="anomalib is not installed (pip install -e .[dev])")
    df = folder_mod.make_folder_dataset(root=folder, **OPTS)
    theirs = {Path(r.image_path).resolve(): (int(r.label_index), r.mask_path or None)
              for r in df.itertuples()}
    ours = load_dataset("anomalib-folder", folder, "all", **OPTS)
    assert {s.path for s in ours} == set(theirs)
    for s in ours:
        label, mask = theirs[s.path]
        assert (Path(mask).resolve() if mask else None) == s.mask_path
        if s.mask_path is None:
            assert label == 0 == s.label
        else:  # anomalib labels by folder; diag by the mask (crack/b's mask is empty)
            assert label == 1 and s.label == int(s.mask.any())


def test_abnormal_images_without_masks(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    opts = {"normal_dir": "normal", "abnormal_dir": "abnormal"}
    pos = [s for s in load_dataset("anomalib-folder", folder, "test", **opts) if s.label]
    assert len(pos) == 3 and all(s.mask_path is None and not s.mask.any() for s in pos)
    with pytest.raises(DiagError, match="no defective images"):
        RegionSource(RegionSpec(source="real-masks"), pos)
    assert "skipped 3 defective image(s) without a mask file" in capsys.readouterr().err
    masked = load_dataset("anomalib-folder", folder, "test", **OPTS)
    src = RegionSource(RegionSpec(source="real-masks"), [*pos, *masked])
    assert {p.id for p in src.positives} == {"abnormal/crack/a", "abnormal/hole/c"}


def test_generate_from_an_anomalib_folder(tmp_path: Path, example_root: Path) -> None:
    """diag generate reads the layout from a spec (real-masks regions from its masks)."""
    from diag.data.manifest import read_manifest
    from diag.generate import run_spec
    from diag.generate.spec import load_spec

    root = tmp_path / "ds"
    for p in sorted((example_root / "MT_Free/Imgs").glob("*.jpg"))[:4]:
        (root / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "good" / p.name)
    for p in sorted((example_root / "MT_Crack/Imgs").glob("*.jpg")):
        for sub, src in (("crack", p), ("masks/crack", p.with_suffix(".png"))):
            (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / sub / src.name)
    spec = {"dataset": {"layout": "anomalib-folder", "root": str(root), "normal_dir": "good",
                        "abnormal_dir": "crack", "mask_dir": "masks/crack", "split": "all"},
            "regions": {"source": "real-masks"},
            "defects": [{"name": "crack", "count": 2}], "generator": {"kind": "cutpaste"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    summary = run_spec(load_spec(tmp_path / "spec.yaml"), tmp_path / "out")
    assert summary.generated == 2
    records = read_manifest(tmp_path / "out")
    assert all(r["region"]["mask_from"].startswith("crack/") for r in records)
    saved = yaml.safe_load((tmp_path / "out/spec.yaml").read_text(encoding="utf-8"))
    assert saved["dataset"]["normal_dir"] == "good"


def test_unset_options_stay_out_of_written_configs() -> None:
    """spec.yaml / config.yaml written before the layout existed still compare equal."""
    keys = set(to_dict(DatasetRef(root="d")))
    assert keys == {"root", "layout", "split", "test_fraction", "split_seed", "split_file",
                    "images", "masks", "mask_suffix"}
    ref = DatasetRef(root="d", layout="anomalib-folder", normal_dir="n")
    assert to_dict(ref)["normal_dir"] == "n" and "mask_dir" not in to_dict(ref)
    assert ref.options()["normal_dir"] == "n"


def test_auto_never_guesses_it(folder: Path) -> None:
    assert detect_layout(folder) != "anomalib-folder"


@pytest.mark.parametrize(("fields", "message"), [
    ({"layout": "anomalib-folder"}, "dataset.normal_dir is required for layout anomalib-folder"),
    ({"layout": "folder", "normal_dir": "n"}, "dataset.normal_dir is an option of layout "
                                               "anomalib-folder, but layout is 'folder'"),
    ({"layout": "anomalib-folder", "normal_dir": "n", "mask_dir": "m"},
     "dataset.mask_dir is set but abnormal_dir is not"),
    ({"layout": "anomalib-folder", "normal_dir": ""}, "dataset.normal_dir is empty"),
    ({"layout": "anomalib-folder", "normal_dir": "n", "extensions": ["png"]},
     "dataset.extensions must be a list of file endings that start with a dot"),
])
def test_config_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(DiagError, match=message) as err:
        from_dict(DatasetRef, {"root": "d", **fields}, "spec 'x.yaml'", "dataset.")
    assert "\n" not in str(err.value) and str(err.value).startswith("spec 'x.yaml'")


def test_reader_errors(folder: Path) -> None:
    def load(**opts: object) -> None:
        load_dataset("anomalib-folder", folder, "all", **opts)

    with pytest.raises(DiagError, match="needs normal_dir"):
        load()
    with pytest.raises(DiagError, match="normal_dir '.*nope' does not exist"):
        load(normal_dir="nope")
    with pytest.raises(DiagError, match="holds no image"):
        load(normal_dir="normal", extensions=[".bmp"])
    with pytest.raises(DiagError, match="is under both normal_dir and abnormal_dir"):
        load(normal_dir=".", abnormal_dir="abnormal")
    (folder / "mask/hole/c.png").unlink()
    with pytest.raises(DiagError, match=r"3 abnormal image\(s\) but 2 mask\(s\) \(e.g. no mask "
                                        r"for '.*c.png'\)"):
        load(**OPTS)
    _mask(folder / "mask/hole/zz.png", (0, 1, 0, 1))
    with pytest.raises(DiagError, match="abnormal image '.*c.png' is paired with mask "
                                        "'.*zz.png'"):
        load(**OPTS)
    _mask(folder / "mask/hole/c.png", (0, 1, 0, 1), size=(8, 8))
    (folder / "mask/hole/zz.png").unlink()
    with pytest.raises(DiagError, match="masks must match their image's size"):
        load(**OPTS)


def test_copy_paste_skips_positives_without_masks(tmp_path: Path, example_root: Path, cli
                                                  ) -> None:
    root = tmp_path / "ds"
    for sub, pattern in (("good", "MT_Free/Imgs/*.jpg"), ("crack", "MT_Crack/Imgs/*.jpg")):
        (root / sub).mkdir(parents=True)
        for p in sorted(example_root.glob(pattern))[:3]:
            shutil.copy(p, root / sub / p.name)
    spec = {"dataset": {"layout": "anomalib-folder", "root": str(root), "normal_dir": "good",
                        "abnormal_dir": "crack", "split": "all"},
            "defects": [{"name": "crack", "count": 1}], "generator": {"kind": "copy-paste"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    code, _, err = cli("generate", tmp_path / "spec.yaml", "--out", tmp_path / "out")
    assert code == 2
    assert "warning: copy-paste: skipped 3 defective image(s) without a mask file" in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "needs real defective images with masks" in errors[0]
