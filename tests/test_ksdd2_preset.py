"""examples/ksdd2_paper.yaml runs unchanged on a folder in KSDD2 layout (with the stray copies of
the official download), with the tiny model standing in for SDXL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diag.data.manifest import read_manifest
from diag.generate.spec import load_spec
from diag.imageio import read_image, read_mask, resize_mask
from tests.conftest import EXAMPLES

PRESET = EXAMPLES / "ksdd2_paper.yaml"
SIZE = (230, 630)  # KSDD2 images are about 230 x 630 (W x H)


@pytest.fixture(scope="module")
def ksdd2_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small KSDD2-layout folder made from the bundled Magnetic-tile images: numbered RGB
    PNGs with <id>_GT.png masks (0/255) in train/ and test/, plus the official stray copies."""
    root = tmp_path_factory.mktemp("KolektorSDD2")
    mt = EXAMPLES / "magnetic_tile"
    free = sorted((mt / "MT_Free" / "Imgs").glob("*.jpg"))
    defects = [p for c in ("MT_Crack", "MT_Blowhole") for p in sorted((mt / c / "Imgs").glob("*.jpg"))]
    n = 10000
    for split, negs, poss in (("train", free[:6], defects[:4]), ("test", free[6:8], defects[4:5])):
        (root / split).mkdir()
        for p in negs + poss:
            img = Image.open(p).convert("RGB").resize(SIZE)
            mask = np.zeros((SIZE[1], SIZE[0]), bool)
            if p in poss:
                mask = resize_mask(read_mask(p.with_suffix(".png")), (SIZE[1], SIZE[0]))
            img.save(root / split / f"{n}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / split / f"{n}_GT.png")
            n += 1
    (root / "train" / "10301 (copy).png").write_bytes((root / "train" / "10000.png").read_bytes())
    (root / "train" / "10301_GT (copy).png").write_bytes(
        (root / "train" / "10000_GT.png").read_bytes())
    return root


def test_preset_is_the_reference_configuration() -> None:
    spec = load_spec(PRESET, ["dataset.root=/anywhere"])
    g = spec.generator.params
    assert spec.dataset.layout == "ksdd2" and spec.dataset.split == "train"
    assert spec.regions.source == "real-masks" and not spec.regions.flip
    assert [d.prompt for d in spec.defects] == ["white marks on the wall", "copper metal scratches"]
    assert {d.negative_prompt for d in spec.defects} == {"smooth, plain, black, dark, shadow"}
    assert [d.count for d in spec.defects] == [50, 50]
    assert (g.steps, g.guidance_scale, g.strength, g.resolution) == (30, 20.0, 0.99, 1024)
    assert (g.resize, g.padding_mask_crop, g.variant) == ("paper", 2, "auto")
    assert g.model == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"


@pytest.mark.parametrize(("per_prompt", "naug"), [(40, 80), (50, 100), (60, 120)])
def test_naug_by_set(ksdd2_root: Path, cli, per_prompt: int, naug: int) -> None:
    code, out, err = cli("generate", PRESET, "--out", ksdd2_root.parent / "x", "--dry-run",
                         "--set", f"dataset.root={ksdd2_root}",
                         "--set", f"defects.0.count={per_prompt}",
                         "--set", f"defects.1.count={per_prompt}")
    assert code == 0, err
    assert f"plan: {naug} samples" in out
    assert "10 images (4 defective, 6 defect-free)" in out


@pytest.mark.parametrize("faster", [
    pytest.param(["--set", "generator.resolution=256", "--set", "generator.steps=3"], id="small"),
    pytest.param([], id="unchanged", marks=pytest.mark.slow),  # 1024 px, 30 steps: ~45 s/image
])
def test_preset_runs_on_a_ksdd2_folder(ksdd2_root: Path, tiny_model: Path, tmp_path: Path,
                                       cli, faster: list[str]) -> None:
    out = tmp_path / "naug"
    code, _, err = cli("generate", PRESET, "--out", out, "--limit", "2",
                       "--set", f"dataset.root={ksdd2_root}",
                       "--set", f"generator.model={tiny_model}", *faster)
    assert code == 0, err
    assert err.count("skipped 2 file(s)") == 1 and "10301 (copy).png" in err
    records = read_manifest(out)
    assert len(records) == 2
    side = 256 if faster else 1024
    train_ids = {f"train/{n}" for n in range(10000, 10010)}
    for r in records:
        assert r["source_id"] in train_ids and r["region"]["mask_from"] in train_ids
        assert r["params"]["steps"] == (3 if faster else 30) and r["params"]["resize"] == "paper"
        assert r["info"]["model_size"] == [side, side] and r["info"]["padding_mask_crop"] == 2
        assert r["prompt"] == "white marks on the wall" and r["background"] == "exact"
        src, img = read_image(r["source"]), read_image(out / r["image"])
        mask = read_mask(out / r["mask"])
        assert img.shape == src.shape == (SIZE[1], SIZE[0], 3)
        assert np.array_equal(img[~mask], src[~mask])
