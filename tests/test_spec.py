"""The spec: defaults, --set overrides, paths relative to the spec file, switching generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from diag.errors import DiagError
from diag.generate.spec import load_spec, parse_spec


def test_example_spec_defaults_are_the_reference_codes(example_root: Path) -> None:
    spec = load_spec(example_root.parent / "magnetic_tile.yaml")
    g = spec.generator.params
    assert spec.generator.kind == "diffusion"
    assert g.model == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert (g.steps, g.guidance_scale, g.strength) == (30, 20.0, 0.99)
    assert Path(spec.dataset.root) == example_root.resolve()  # relative to the spec file
    assert spec.total == 12 and spec.seed == 0


def test_set_overrides_and_kind_switch(example_root: Path, capsys) -> None:
    spec = load_spec(example_root.parent / "magnetic_tile.yaml",
                     ["generator.steps=12", "seed=7", "regions.flip=false"])
    assert spec.generator.params.steps == 12 and spec.seed == 7 and not spec.regions.flip
    spec = load_spec(example_root.parent / "magnetic_tile.yaml", ["generator.kind=memseg"])
    assert spec.generator.kind == "memseg"
    assert "ignores" in capsys.readouterr().err


def test_roundtrip_through_yaml() -> None:
    import yaml

    spec = parse_spec({"dataset": {"root": "d"}, "defects": [{"name": "a", "count": 1}],
                       "generator": {"kind": "diffusion", "steps": 5}})
    again = parse_spec(yaml.safe_load(spec.to_yaml()))
    assert again.to_dict() == spec.to_dict()


def test_validation_messages() -> None:
    with pytest.raises(DiagError, match="steps x strength must be at least 1"):
        parse_spec({"dataset": {"root": "d"}, "defects": [{"name": "a"}],
                    "generator": {"kind": "diffusion", "steps": 2, "strength": 0.3}})
    with pytest.raises(DiagError, match="two defects are named 'a'"):
        parse_spec({"dataset": {"root": "d"}, "defects": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(DiagError, match="missing required field 'dataset.root'"):
        parse_spec({"dataset": {}, "defects": [{"name": "a"}]})


def test_set_picks_list_items_by_index(example_root: Path) -> None:
    spec = load_spec(example_root.parent / "magnetic_tile.yaml",
                     ["defects.0.count=40", "defects.1.prompt=a pit", "defects.-1.count=3"])
    assert [d.count for d in spec.defects] == [40, 3]
    assert spec.defects[1].prompt == "a pit"
    with pytest.raises(DiagError, match="defects is a list of 2 items: use an index from 0 to 1"):
        load_spec(example_root.parent / "magnetic_tile.yaml", ["defects.2.count=1"])
    with pytest.raises(DiagError, match="is a list of 2 items"):
        load_spec(example_root.parent / "magnetic_tile.yaml", ["defects.name=x"])


def test_a_plain_folder_is_not_split_unless_asked(tmp_path: Path, example_root: Path) -> None:
    """A folder used only as a source of defect-free images: every image is a source; layouts
    with training and test data keep generating from train only."""
    from PIL import Image

    from diag.generate import load_inputs

    for i in range(6):
        Image.new("L", (32, 32), 100 + i).save(tmp_path / f"good_{i}.png")
    base = {"defects": [{"name": "a", "count": 1}], "generator": {"kind": "cutpaste"},
            "regions": {"source": "shapes"}}
    for layout in ("folder", "auto"):
        spec = parse_spec({**base, "dataset": {"root": str(tmp_path), "layout": layout}})
        assert spec.dataset.split == "all"
        assert len(load_inputs(spec).negatives) == 6
    asked = parse_spec({**base, "dataset": {"root": str(tmp_path), "layout": "folder",
                                            "split": "train"}})
    assert asked.dataset.split == "train" and len(load_inputs(asked).negatives) < 6
    mt = parse_spec({**base, "dataset": {"root": str(example_root),
                                         "layout": "magnetic-tile"}})
    assert mt.dataset.split == "train"
    assert parse_spec(yaml_roundtrip(asked.to_dict())).dataset.split == "train"


def yaml_roundtrip(d: dict) -> dict:
    import yaml

    return yaml.safe_load(yaml.safe_dump(d))
