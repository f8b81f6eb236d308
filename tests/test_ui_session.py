"""The web tool's session without a browser: starting from a spec, editing it, loading and
saving YAML, regions, previews and accepts through the same code the page calls."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diag.errors import DiagError
from diag.imageio import read_mask
from diag.ui.session import Job, Session

REPO = Path(__file__).resolve().parents[1]


def _png(mask: np.ndarray) -> bytes:
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = (255, 32, 32, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    return buf.getvalue()


def test_starts_from_a_spec_and_keeps_its_regions(tmp_path: Path) -> None:
    s = Session(tmp_path / "ui", spec_path=REPO / "examples" / "magnetic_tile.yaml")
    view = s.view_spec()
    assert [d["name"] for d in view["defects"]] == ["crack", "blowhole"]
    assert {d["region_kind"] for d in view["defects"]} == {"real-masks"}
    assert s.data == (REPO / "examples" / "magnetic_tile").resolve()
    # the page switches one type to painted regions and memseg
    page = {"defects": [{**d, "region_kind": "painted" if d["name"] == "crack" else
                         d["region_kind"]} for d in view["defects"]],
            "generator": {"kind": "memseg"}}
    view = s.update_spec(page)
    crack = view["defects"][0]
    assert crack["regions"] == {"source": "drawn", "path": str(tmp_path / "ui" / "regions" /
                                                                 "crack"), "mode": "as-is"}
    assert view["generator"]["kind"] == "memseg"
    assert "kind: memseg" in s.spec_yaml()


def test_bad_edits_are_one_line_and_keep_the_page(tmp_path: Path) -> None:
    s = Session(tmp_path / "ui", data=REPO / "examples" / "magnetic_tile", layout="magnetic-tile")
    with pytest.raises(DiagError, match="must be letters, digits"):
        s.update_spec({"defects": [{"name": "a b", "region_kind": "painted",
                                    "region_set": "ab"}]})
    with pytest.raises(DiagError, match="region set '../x'"):
        s.update_spec({"defects": [{"name": "a", "region_kind": "painted",
                                    "region_set": "../x"}]})
    with pytest.raises(DiagError, match="not valid YAML"):
        s.load_spec_text("dataset: [")
    outside = yaml.safe_dump({"dataset": {"root": str(tmp_path), "layout": "folder"},
                              "defects": [{"name": "a"}], "generator": {"kind": "memseg"}})
    with pytest.raises(DiagError, match="outside the data folder this page serves"):
        s.load_spec_text(outside)
    assert s.view_spec()["dataset"]["root"] == str((REPO / "examples" / "magnetic_tile").resolve())


def test_region_preview_accept_and_save(tmp_path: Path) -> None:
    out = tmp_path / "ui"
    s = Session(out, data=REPO / "examples" / "magnetic_tile", layout="magnetic-tile")
    s.update_spec({"defects": [{"name": "crack", "prompt": "a crack", "count": 0,
                                "region_kind": "painted", "region_set": "crack"}],
                   "generator": {"kind": "memseg"}})
    image = s.samples()["negatives"][0]
    with pytest.raises(DiagError, match="no region painted for 'crack'"):
        s.preview(Job("j", "preview"), "crack", image.id, 1)
    h, w = image.size
    mask = np.zeros((h, w), bool)
    mask[10:40, 20:60] = True
    with pytest.raises(DiagError, match="is 5x5 but the image is"):
        s.save_region("crack", image.id, _png(np.ones((5, 5), bool)))
    assert s.save_region("crack", image.id, _png(mask)) == int(mask.sum())
    assert np.array_equal(read_mask(out / "regions" / "crack" / f"{image.path.stem}.png"), mask)
    cands = s.preview(Job("j", "preview"), "crack", image.id, seeds=[3, 4])
    assert [c["seed"] for c in cands] == [3, 4]
    result = s.accept(Job("a", "accept"), cands[1]["id"])
    assert result["id"] == "crack_p00000" and result["same_as_preview"]
    with pytest.raises(DiagError, match="already accepted"):
        s.accept(Job("a", "accept"), cands[1]["id"])
    s.reject(cands[0]["id"])
    assert s.save_spec() == out / "spec.yaml"
    saved = yaml.safe_load((out / "spec.yaml").read_text())
    assert saved["defects"][0]["picks"] == [{"image": image.id, "seed": 4}]
    # a spec that would remake the accepted sample differently is refused on save
    s.update_spec({"defects": [{"name": "crack", "prompt": "another", "count": 0,
                                "region_kind": "real-masks", "region_set": "crack"}],
                   "generator": {"kind": "memseg"}})
    with pytest.raises(DiagError, match="holds samples of a different spec"):
        s.save_spec()


def test_preview_with_a_fine_tuned_adapter(tmp_path: Path, tiny_model: Path) -> None:
    """The page's adapter field: a `diag finetune` (mode: inpainting) folder makes other
    candidates than the pretrained model, from the same seed, image and region; emptying the
    field goes back to the pretrained ones."""
    from diag.cli import main

    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump({
        "mode": "inpainting", "model": str(tiny_model), "item": "magnetic tile",
        "dataset": {"root": str(REPO / "examples" / "magnetic_tile"), "layout": "magnetic-tile",
                    "split": "train"},
        "instance_limit": 2, "num_class_images": 2, "resolution": 64, "batch_size": 2,
        "max_steps": 2, "lr": 1e-2, "threads": 1, "log_every": 0}))
    assert main(["finetune", str(config), "--out", str(tmp_path / "ft")]) == 0
    s = Session(tmp_path / "ui", data=REPO / "examples" / "magnetic_tile", layout="magnetic-tile")
    page = {"defects": [{"name": "crack", "prompt": "sks magnetic tile", "count": 0,
                         "region_kind": "real-masks", "region_set": "crack"}],
            "generator": {"kind": "diffusion", "model": str(tiny_model), "steps": 2}}
    image = s.samples()["negatives"][0].id

    def candidate(adapter: str | None) -> bytes:
        s.update_spec({**page, "generator": {**page["generator"], "adapter": adapter}})
        c = s.preview(Job("j", "preview"), "crack", image, seeds=[7])[0]
        return (tmp_path / "ui" / c["files"]["image"]).read_bytes()

    plain = candidate(None)
    tuned = candidate(str(tmp_path / "ft"))
    assert tuned != plain
    assert yaml.safe_load(s.spec_yaml())["generator"]["adapter"] == str(tmp_path / "ft")
    assert candidate(None) == plain
    with pytest.raises(DiagError, match="holds no pytorch_lora_weights.safetensors"):
        s.update_spec({**page, "generator": {**page["generator"], "adapter": str(tmp_path)}})


def test_preview_progress_moves_with_the_denoising_steps(tmp_path: Path, tiny_model: Path
                                                         ) -> None:
    """A diffusion preview's job advances after every denoising step, not only per candidate,
    and the step reports change nothing: the accepted sample equals its preview."""

    class Recording(Job):
        def __setattr__(self, name: str, value: object) -> None:
            if name == "done":
                seen.append(value)
            super().__setattr__(name, value)

    seen: list[object] = []
    s = Session(tmp_path / "ui", data=REPO / "examples" / "magnetic_tile", layout="magnetic-tile")
    s.update_spec({"defects": [{"name": "crack", "prompt": "a crack", "count": 0,
                                "region_kind": "real-masks", "region_set": "crack"}],
                   "generator": {"kind": "diffusion", "model": str(tiny_model), "steps": 4}})
    image = s.samples()["negatives"][0].id
    cands = s.preview(Recording("j", "preview"), "crack", image, seeds=[1, 2])
    steps = [v for v in seen if v not in (0, 0.0)]
    assert steps == sorted(steps) and steps[-1] == 2
    assert any(0 < float(v) < 1 for v in steps) and any(1 < float(v) < 2 for v in steps)
    assert s.generator(s.parsed()).on_step is None  # the hook is gone after the preview
    assert s.accept(Job("a", "accept"), cands[0]["id"])["same_as_preview"]
