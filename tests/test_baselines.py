"""The classical baselines (memseg, cutpaste, draem, nsa, copy-paste) on real Magnetic-tile images.

Every generator is called directly, the way the job runner calls it, and checked against the
generator contract: the mask covers every changed pixel and nothing outside it changed; the same
seed gives the same bytes; size and grayscale are kept; a given region is respected.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest

from diag.data import Sample, load_dataset
from diag.errors import DiagError
from diag.generators import GENERATORS, Request, make_generator
from diag.imageio import to_rgb, write_image
from diag.regions import RegionSpec, make_regions

KINDS = ("memseg", "cutpaste", "draem", "nsa", "copy-paste")


@pytest.fixture(scope="module")
def mt(mt_root: Path) -> dict[str, list[Sample]]:
    """A few real negatives and positives of several defect classes (train split)."""
    samples = load_dataset("magnetic-tile", mt_root, split="train")
    neg = [s for s in samples if not s.label]
    pos = [s for s in samples if s.label]
    by_class: dict[str, list[Sample]] = {}
    for p in pos:
        by_class.setdefault(p.defect, []).append(p)
    positives = [p for cls in sorted(by_class) for p in by_class[cls][:2]]
    return {"negatives": neg[:4], "donors": neg[4:10], "positives": positives}


@pytest.fixture(scope="module")
def texture_dir(tmp_path_factory: pytest.TempPathFactory, mt: dict[str, list[Sample]]) -> Path:
    """A small texture folder: crops of real defect images plus a procedural colour texture."""
    root = tmp_path_factory.mktemp("textures")
    (root / "sub").mkdir()
    for i, p in enumerate(mt["positives"][:3]):
        img = p.image
        write_image(root / f"crop{i}.png", img[: img.shape[0] // 2, : img.shape[1] // 2])
    yy, xx = np.mgrid[0:128, 0:160]
    stripes = np.stack([(np.sin(xx / 3.0) * 120 + 128), (np.cos(yy / 5.0) * 120 + 128),
                        ((xx + yy) % 64) * 4.0], axis=-1)
    write_image(root / "sub" / "stripes.png", np.clip(stripes, 0, 255).astype(np.uint8))
    return root


def request(mt: dict[str, list[Sample]], i: int, seed: int, region: np.ndarray | None = None,
            image: np.ndarray | None = None) -> Request:
    return Request(image=mt["negatives"][i].image if image is None else image, region=region,
                   seed=seed, donors=mt["donors"], defects=mt["positives"])


def check_contract(req: Request, res, region: np.ndarray | None = None) -> None:
    src = req.image
    assert res.image.shape == src.shape and res.image.dtype == np.uint8
    assert res.mask.dtype == bool and res.mask.shape == src.shape[:2]
    assert res.mask.any()
    changed = res.image != src
    if changed.ndim == 3:
        changed = changed.any(axis=2)
    assert not changed[~res.mask].any(), "a pixel outside the mask changed"
    assert changed.any(), "nothing changed"
    # tight: the mask is what was pasted, not a loose box around it
    assert changed.sum() >= 0.3 * res.mask.sum(), (int(changed.sum()), int(res.mask.sum()))
    if region is not None:
        assert not res.mask[~region].any(), "the mask leaves the given region"


@pytest.mark.parametrize("kind", KINDS)
def test_contract_on_real_images(kind: str, mt: dict[str, list[Sample]]) -> None:
    gen = make_generator(kind, {})
    for i in range(3):
        for seed in (0, 7):
            req = request(mt, i, seed)
            res = gen.generate(req)
            check_contract(req, res)
            assert res.image.ndim == 2  # Magnetic-tile is grayscale and stays so


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes(kind: str, mt: dict[str, list[Sample]]) -> None:
    a = make_generator(kind, {}).generate(request(mt, 0, 123))
    b = make_generator(kind, {}).generate(request(mt, 0, 123))  # a fresh instance, too
    c = make_generator(kind, {}).generate(request(mt, 0, 124))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.info == b.info
    assert not (np.array_equal(a.image, c.image) and np.array_equal(a.mask, c.mask))


@pytest.mark.parametrize("kind", KINDS)
def test_colour_images_stay_colour(kind: str, mt: dict[str, list[Sample]]) -> None:
    rgb = to_rgb(mt["negatives"][1].image).copy()
    rgb[..., 0] //= 2  # make it really colour
    req = request(mt, 1, 5, image=rgb)
    res = make_generator(kind, {}).generate(req)
    assert res.image.shape == rgb.shape
    check_contract(req, res)


def real_mask_regions(mt: dict[str, list[Sample]]) -> list[tuple[int, np.ndarray]]:
    src = make_regions(RegionSpec(source="real-masks", flip=True, shift=0.05), mt["positives"])
    out = []
    for i in range(3):
        neg = mt["negatives"][i]
        region, _ = src.sample_shape(np.random.default_rng(i), neg.size, neg.path.stem)
        out.append((i, region))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_region_mode_fills_exactly_the_given_region(kind: str,
                                                    mt: dict[str, list[Sample]]) -> None:
    gen = make_generator(kind, {})
    shapes = make_regions(RegionSpec(source="shapes", shapes=["blob", "stroke", "ellipse"]))
    cases = real_mask_regions(mt)
    for i in range(3):
        neg = mt["negatives"][i]
        region, _ = shapes.sample_shape(np.random.default_rng(10 + i), neg.size, neg.path.stem)
        cases.append((i, region))
    for n, (i, region) in enumerate(cases):
        req = request(mt, i, n, region=region)
        res = gen.generate(req)
        check_contract(req, res, region)
        # the region is the defect, so that methods can be compared on the same masks
        assert np.array_equal(res.mask, region)


@pytest.mark.parametrize("kind", ["memseg", "draem"])
def test_perlin_in_region_stays_inside(kind: str, mt: dict[str, list[Sample]]) -> None:
    gen = make_generator(kind, {"perlin_in_region": True, "threshold": 0.3})
    for n, (i, region) in enumerate(real_mask_regions(mt)):
        res = gen.generate(request(mt, i, n, region=region))
        assert res.mask.any() and not res.mask[~region].any()


def test_region_of_wrong_size_or_empty_is_a_clear_error(mt: dict[str, list[Sample]]) -> None:
    img = mt["negatives"][0].image
    for kind in KINDS:
        gen = make_generator(kind, {})
        with pytest.raises(DiagError, match="region"):
            gen.generate(request(mt, 0, 0, region=np.ones((5, 5), bool)))
        with pytest.raises(DiagError, match="empty"):
            gen.generate(request(mt, 0, 0, region=np.zeros(img.shape[:2], bool)))


def test_copy_paste_puts_the_very_defect_of_a_real_mask_region(mt: dict[str, list[Sample]]
                                                               ) -> None:
    """A region that is a real positive's mask gets that positive's own defect pixels."""
    gen = make_generator("copy-paste", {})
    neg = mt["negatives"][0].image
    hits = 0
    for pos in mt["positives"]:
        ph, pw = pos.size
        if ph > neg.shape[0] or pw > neg.shape[1]:
            continue
        image = np.ascontiguousarray(neg[:ph, :pw])  # a negative of the positive's size
        mask = pos.mask
        req = request(mt, 0, 1, region=mask, image=image)
        res = gen.generate(req)
        check_contract(req, res, mask)
        assert res.info["match_iou"] == 1.0 and res.info["defect_from"] == pos.id
        assert np.array_equal(res.image[mask], pos.image[mask])
        hits += 1
    assert hits >= 2


def test_copy_paste_without_region_keeps_real_defect_pixels(mt: dict[str, list[Sample]]) -> None:
    gen = make_generator("copy-paste", {"placement": "random"})
    by_id = {p.id: p for p in mt["positives"]}
    for seed in range(4):
        req = request(mt, 2, seed)
        res = gen.generate(req)
        check_contract(req, res)
        assert res.info["defect_from"] in by_id
        if res.info["scale"] == 1.0 and not res.info["flip"]:
            pos = by_id[res.info["defect_from"]]
            t, left, h, w = res.info["cut_box"]
            pt, pl = res.info["paste_box"][:2]
            cut = pos.mask[t:t + h, left:left + w]
            assert np.array_equal(res.image[pt:pt + h, pl:pl + w][cut],
                                  pos.image[t:t + h, left:left + w][cut])


def test_copy_paste_needs_positives(mt: dict[str, list[Sample]]) -> None:
    gen = make_generator("copy-paste", {})
    with pytest.raises(DiagError, match="real defective images"):
        gen.generate(Request(image=mt["negatives"][0].image, region=None, seed=0))
    gen = make_generator("copy-paste", {"defects": ["no-such-class"]})
    with pytest.raises(DiagError, match="no-such-class"):
        gen.generate(request(mt, 0, 0))


def test_copy_paste_class_filter(mt: dict[str, list[Sample]]) -> None:
    gen = make_generator("copy-paste", {"defects": ["crack"]})
    for seed in range(3):
        assert gen.generate(request(mt, 0, seed)).info["defect_class"] == "crack"


def test_cutpaste_variants_have_their_papers_geometry(mt: dict[str, list[Sample]]) -> None:
    img = mt["negatives"][0].image
    area = img.shape[0] * img.shape[1]
    scar = make_generator("cutpaste", {"variants": ["scar"]})
    normal = make_generator("cutpaste", {"variants": ["normal"]})
    for seed in range(5):
        s = scar.generate(request(mt, 0, seed))
        assert s.info["variant"] == "scar"
        assert s.mask.sum() <= 16 * 25 * 1.1  # width 2-16 x length 10-25, rotated
        n = normal.generate(request(mt, 0, seed))
        assert n.info["variant"] == "normal"
        assert 0.015 * area <= n.mask.sum() <= 0.16 * area
        t, left, h, w = n.info["paste_box"]
        assert n.mask[t:t + h, left:left + w].all()  # a full rectangle


def test_draem_texture_folder(mt: dict[str, list[Sample]], texture_dir: Path) -> None:
    gen = make_generator("draem", {"textures": str(texture_dir)})
    seen = set()
    for seed in range(8):
        req = request(mt, 0, seed)
        res = gen.generate(req)
        check_contract(req, res)
        assert Path(res.info["texture"]).parent in (texture_dir, texture_dir / "sub")
        assert len(res.info["augment"]) == 3
        seen.add(res.info["texture"])
    assert len(seen) > 1
    res = make_generator("draem", {}).generate(request(mt, 0, 0))
    assert res.info["texture"].startswith("donor:")  # no folder: other dataset images


def test_texture_source_folder_without_folder_is_an_error(mt: dict[str, list[Sample]]) -> None:
    for kind in ("memseg", "draem"):
        gen = make_generator(kind, {"texture_source": "folder"})
        with pytest.raises(DiagError, match="textures"):
            gen.generate(request(mt, 0, 0))
    with pytest.raises(DiagError, match="does not exist"):
        make_generator("draem", {"textures": "/no/such/folder"})


def test_nsa_takes_patches_from_other_images_and_blends_seamlessly(
        mt: dict[str, list[Sample]]) -> None:
    gen = make_generator("nsa", {})
    donor_ids = {d.id for d in mt["donors"]}
    for seed in range(3):
        res = gen.generate(request(mt, 0, seed))
        assert res.info["donor"] in donor_ids
        assert 1 <= len(res.info["patches"]) <= 3
    # Poisson vs plain paste of the same patch: the seam is much weaker
    img = mt["negatives"][0].image
    bright = np.clip(mt["donors"][0].image.astype(int) + 60, 0, 255).astype(np.uint8)
    bright = bright[: img.shape[0], : img.shape[1]]
    region = np.zeros(img.shape, bool)
    region[40:120, 50:150] = True
    poisson = make_generator("nsa", {"resize": [1, 1]}).generate(
        Request(image=img, region=region, seed=0, donors=[_array_sample(bright)]))
    pasted = make_generator("nsa", {"resize": [1, 1], "blend": "alpha"}).generate(
        Request(image=img, region=region, seed=0, donors=[_array_sample(bright)]))
    assert _seam(poisson.image, region) < 0.5 * _seam(pasted.image, region)


class _ArraySample(Sample):
    """A Sample whose pixels are given (for one hand-made donor image)."""

    @property
    def image(self) -> np.ndarray:  # type: ignore[override]
        return self.meta["array"]


def _array_sample(arr: np.ndarray) -> Sample:
    return _ArraySample("bright", Path("bright.png"), meta={"array": arr})


def _seam(img: np.ndarray, region: np.ndarray) -> float:
    """Mean absolute step across the region's border."""
    a = img.astype(float)
    steps = [np.abs(a[1:] - a[:-1])[region[1:] != region[:-1]],
             np.abs(a[:, 1:] - a[:, :-1])[region[:, 1:] != region[:, :-1]]]
    return float(np.concatenate(steps).mean())


def test_invalid_parameters_are_one_line_errors() -> None:
    bad = [("cutpaste", {"variants": ["huge"]}), ("cutpaste", {"area_ratio": [0.5, 0.1]}),
           ("draem", {"opacity": [0.2, 1.5]}), ("draem", {"texture_source": "dtd"}),
           ("nsa", {"blend": "seamless"}), ("nsa", {"patches": [0, 2]}),
           ("copy-paste", {"placement": "anywhere"}), ("copy-paste", {"dilate": -1}),
           ("memseg", {"texture_source": "dtd"}), ("memseg", {"jitter": 2})]
    for kind, params in bad:
        with pytest.raises(DiagError) as exc:
            make_generator(kind, params)
        assert "\n" not in str(exc.value) and "generator." in str(exc.value), (kind, str(exc.value))


def test_shared_parameter_names_mean_the_same_everywhere() -> None:
    """A parameter name used by several generators has one type everywhere."""
    types: dict[str, dict[str, object]] = {}
    for kind in KINDS:
        cls = GENERATORS[kind].Config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            types.setdefault(f.name, {})[kind] = hints[f.name]
    for name, by_kind in types.items():
        assert len(set(map(str, by_kind.values()))) == 1, (name, by_kind)
    for name in ("opacity", "jitter"):
        assert len(types[name]) >= 4, name
    for name in ("textures", "texture_source", "perlin_scale", "threshold", "perlin_in_region"):
        assert set(types[name]) == {"memseg", "draem"}, name
    for name in ("blend", "feather"):
        assert set(types[name]) == {"cutpaste", "nsa", "copy-paste"}, name


def test_describe_names_the_kind() -> None:
    for kind in KINDS:
        assert make_generator(kind, {}).describe()["generator"] == kind


def _perlin_per_pixel(shape: tuple[int, int], angles: np.ndarray) -> np.ndarray:
    """DRAEM's Perlin noise written pixel-wise (four gathered gradients, dot products, quintic
    fades), the reference for diag's separable computation."""
    sy, sx = angles.shape[0] - 1, angles.shape[1] - 1
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    ys = np.linspace(0, sy, shape[0], endpoint=False)
    xs = np.linspace(0, sx, shape[1], endpoint=False)
    yi, xi = np.meshgrid(np.floor(ys).astype(int), np.floor(xs).astype(int), indexing="ij")
    yf, xf = np.meshgrid(ys % 1, xs % 1, indexing="ij")

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[yi + dy, xi + dx]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(xf), fade(yf)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return np.sqrt(2.0) * (top * (1 - v) + bottom * v)


@pytest.mark.parametrize("shape", [(256, 640), (289, 240), (1, 1), (3, 17), (40, 1200)])
def test_perlin_noise_matches_the_per_pixel_formula(shape: tuple[int, int]) -> None:
    from diag.generators.perlin import perlin_noise

    for seed, scale in enumerate([(1, 1), (2, 32), (32, 2), (16, 16), (64, 8), (3, 5)]):
        angles = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, (scale[0] + 1,
                                                                         scale[1] + 1))
        noise = perlin_noise(shape, scale, np.random.default_rng(seed))
        assert noise.shape == shape
        np.testing.assert_allclose(noise, _perlin_per_pixel(shape, angles), rtol=0, atol=1e-12)


def test_perlin_mask_draw_order_and_turns() -> None:
    """Scales, gradients, turn, then (a non-square image turned by 90 or 270 degrees) the
    transposed lattice's gradients: the mask is the turned per-pixel noise, and the generator
    is left where the draws after the mask (texture, opacity) expect it."""
    from diag.generators.perlin import perlin_mask

    shape, turns = (48, 80), set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        sy, sx = (2 ** int(rng.integers(0, 6)) for _ in range(2))
        first = rng.uniform(0.0, 2.0 * np.pi, (sy + 1, sx + 1))
        k = int(rng.integers(0, 4))
        turns.add(k)
        if k % 2:
            second = rng.uniform(0.0, 2.0 * np.pi, (sx + 1, sy + 1))
            expected = np.rot90(_perlin_per_pixel(shape[::-1], second), k) > 0.5
        else:
            expected = np.rot90(_perlin_per_pixel(shape, first), k) > 0.5
        after = rng.random()
        rng = np.random.default_rng(seed)
        mask = perlin_mask(shape, rng)
        assert mask.shape == shape and np.array_equal(mask, expected), seed
        assert rng.random() == after
    assert turns == {0, 1, 2, 3}


def test_jitter_is_pillows_brightness_contrast_then_gamma(mt: dict[str, list[Sample]]) -> None:
    from PIL import Image, ImageEnhance

    from diag.generators.textures import jitter

    gray = mt["negatives"][0].image
    colour = np.stack([gray, gray[::-1], gray // 2], axis=-1)
    noisy = np.random.default_rng(0).integers(0, 256, (37, 53, 3)).astype(np.uint8)
    for arr in (gray, to_rgb(gray), colour, noisy, noisy[..., 1]):
        for seed, strength in enumerate((0.3, 0.9)):
            rng = np.random.default_rng(seed)
            img = Image.fromarray(arr)
            img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(1 - strength,
                                                                         1 + strength)))
            img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(1 - strength,
                                                                       1 + strength)))
            gamma = float(rng.uniform(1 - strength, 1 + strength))
            expected = np.clip(np.rint(255.0 * (np.asarray(img).astype(np.float32) / 255.0)
                                       ** gamma), 0, 255).astype(np.uint8)
            out = jitter(arr, np.random.default_rng(seed), strength)
            assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_blend_equals_the_whole_image_formula_and_keeps_the_rest() -> None:
    from diag.generators.base import blend

    rng = np.random.default_rng(0)
    for shape in [(40, 60), (40, 60, 3)]:
        src = rng.integers(0, 256, shape).astype(np.uint8)
        other = rng.integers(0, 256, shape).astype(np.uint8)[::-1]  # not contiguous
        for alpha in (rng.uniform(-0.5, 1, shape[:2]).clip(0, 1).astype(np.float32),
                      np.zeros(shape[:2], np.float32), np.ones(shape[:2])):
            a = alpha if src.ndim == 2 else alpha[..., None]
            whole = np.clip(np.rint(src.astype(np.float32) * (1.0 - a)
                                    + other.astype(np.float32) * a), 0, 255).astype(np.uint8)
            m = alpha > 0 if src.ndim == 2 else (alpha > 0)[..., None]
            out = blend(src, other, alpha)
            assert out.dtype == np.uint8 and np.array_equal(out, np.where(m, whole, src))


def test_draem_gamma_and_brightness_are_the_float_formulas(mt: dict[str, list[Sample]]) -> None:
    """The two pixel-wise DRAEM augmentations, computed as byte tables, give the bytes of their
    float32 formulas (gamma per channel, brightness multiply-and-add)."""
    from diag.generators.textures import _draem_op

    gray = mt["negatives"][0].image
    for arr in (gray, np.stack([gray, gray[::-1], gray // 2], axis=-1)):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            gammas = [float(rng.uniform(0.5, 2.0)) for _ in range(1 if arr.ndim == 2 else 3)]
            planes = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(3)]
            curves = [np.clip(np.rint(255.0 * (p.astype(np.float32) / 255.0) ** g), 0, 255)
                      for p, g in zip(planes, gammas, strict=True)]
            expected = (curves[0] if arr.ndim == 2 else np.stack(curves, -1)).astype(np.uint8)
            assert np.array_equal(_draem_op(arr, "gamma", np.random.default_rng(seed)), expected)
            rng = np.random.default_rng(seed + 100)
            mul, add = float(rng.uniform(0.8, 1.2)), float(rng.uniform(-30, 30))
            expected = np.clip(np.rint(arr.astype(np.float32) * mul + add), 0, 255).astype(
                np.uint8)
            assert np.array_equal(_draem_op(arr, "brightness", np.random.default_rng(seed + 100)),
                                  expected)
