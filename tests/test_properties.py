"""Property-based tests of the compose, mask and region code, and of the generators' contract.

Random masks (single pixels, thin lines, boxes, sparse noise), random image sizes (1 to 300
pixels a side, odd sizes included), grayscale and colour ``uint8`` images, random windows and
model resolutions. Each property is what the code promises in its docstring or in
docs/generate.md: nothing outside a mask changes, masks stay binary and keep thin defects,
windows hold their region, and the same seed gives the same bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diag.errors import DiagError
from diag.generators import Request, Result, make_generator
from diag.generators.base import GeneratorError, check_result
from diag.generators.diffusion.paper import compose_back, stretch_inputs
from diag.generators.diffusion.window import (
    MULTIPLE,
    Window,
    crop_for_model,
    paste_back,
    paste_mask,
    plan_window,
)
from diag.imageio import resize_mask
from diag.regions import dilate, place_mask, polygons_to_mask, random_shape, sample_shapes
from diag.regions.shapes import SHAPES

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

sides = st.integers(1, 300)
seeds = st.integers(0, 2**32 - 1)


def line(mask: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> None:
    """Draw an 8-connected 1-pixel line into ``mask``."""
    n = max(abs(y1 - y0), abs(x1 - x0)) + 1
    ys = np.rint(np.linspace(y0, y1, n)).astype(int)
    xs = np.rint(np.linspace(x0, x1, n)).astype(int)
    mask[ys, xs] = True


@st.composite
def masks(draw, h: int | None = None, w: int | None = None, max_side: int = 300
          ) -> np.ndarray:
    """A non-empty boolean mask: a pixel, a thin line, a box, or sparse noise."""
    h = h if h is not None else draw(st.integers(1, max_side))
    w = w if w is not None else draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(seeds))
    kind = draw(st.sampled_from(["pixel", "line", "box", "noise", "full"]))
    m = np.zeros((h, w), bool)
    if kind == "pixel":
        m[rng.integers(h), rng.integers(w)] = True
    elif kind == "line":
        line(m, rng.integers(h), rng.integers(w), rng.integers(h), rng.integers(w))
    elif kind == "box":
        y0, x0 = rng.integers(h), rng.integers(w)
        m[y0:rng.integers(y0 + 1, h + 1), x0:rng.integers(x0 + 1, w + 1)] = True
    elif kind == "noise":
        m = rng.random((h, w)) < draw(st.floats(0.001, 0.5))
        m[rng.integers(h), rng.integers(w)] = True
    else:
        m[:] = True
    return m


@st.composite
def images(draw, h: int, w: int, colour: bool | None = None) -> np.ndarray:
    colour = draw(st.booleans()) if colour is None else colour
    rng = np.random.default_rng(draw(seeds))
    return rng.integers(0, 256, (h, w, 3) if colour else (h, w), dtype=np.uint8)


@st.composite
def image_and_mask(draw, max_side: int = 300) -> tuple[np.ndarray, np.ndarray]:
    mask = draw(masks(max_side=max_side))
    return draw(images(*mask.shape)), mask


resolutions = st.sampled_from([64, 128, 256, 512, 768, 1024]) | st.integers(8, 160).map(
    lambda k: 8 * k)


# --- diag.generators.diffusion.window ---------------------------------------------------------


@FAST
@given(mask=masks(), resolution=resolutions, context=st.floats(0, 3),
       min_size=st.integers(1, 320), max_aspect=st.floats(1, 8))
def test_plan_window(mask, resolution, context, min_size, max_aspect) -> None:
    h, w = mask.shape
    win = plan_window(mask, resolution, context, min_size, max_aspect)
    t, b, left, r = win.box
    assert 0 <= t < b <= h and 0 <= left < r <= w, "inside the image"
    assert mask[t:b, left:r].sum() == mask.sum(), "holds the whole mask"
    mh, mw = win.size
    assert mh % MULTIPLE == 0 and mw % MULTIPLE == 0 and mh >= MULTIPLE and mw >= MULTIPLE
    ch, cw = win.crop_shape
    assert ch >= min(min_size, h) and cw >= min(min_size, w), "at least min_size"
    # the crop has the model input's aspect (to a pixel of rounding), unless the image stopped
    # it from growing the side that had to grow
    kept = abs(cw - ch * mw / mh) <= 0.5 + 1e-9 or abs(ch - cw * mh / mw) <= 0.5 + 1e-9
    assert kept or cw == w or ch == h, (win, mask.shape)
    if resolution >= 512 and max(ch / cw, cw / ch) <= max_aspect:
        assert 0.5 * resolution**2 <= mh * mw <= 1.5 * resolution**2, "about the native area"


@FAST
@given(data=st.data(), resolution=st.sampled_from([64, 128, 256]),
       min_size=st.integers(1, 300))
def test_crop_for_model_mask_stays_binary_and_keeps_thin_regions(data, resolution,
                                                                 min_size) -> None:
    image, mask = data.draw(image_and_mask())
    win = plan_window(mask, resolution, 1.0, min_size)
    crop, model_mask = crop_for_model(image, mask, win)
    mh, mw = win.size
    assert crop.mode == "RGB" and crop.size == (mw, mh)
    assert model_mask.mode == "L" and model_mask.size == (mw, mh)
    m = np.asarray(model_mask)
    assert set(np.unique(m).tolist()) <= {0, 255}, "binary"
    assert m.any(), "the model is shown the region, however thin"


@FAST
@given(mask=masks(), dilate_px=st.integers(0, 5) | st.just(10**9),
       feather=st.integers(0, 6))
def test_paste_mask(mask, dilate_px, feather) -> None:
    alpha = paste_mask(mask, dilate_px, feather)
    assert alpha.shape == mask.shape and alpha.dtype == np.float32
    assert alpha.min() >= 0 and alpha.max() <= 1
    assert (alpha[mask] == 1).all(), "opaque on the region"
    if dilate_px == 0 and feather == 0:
        assert np.array_equal(alpha > 0, mask)
    if dilate_px >= sum(mask.shape):
        assert (alpha == 1).all()


@FAST
@given(data=st.data(), dilate_px=st.integers(0, 3), feather=st.integers(0, 4),
       resolution=st.sampled_from([64, 128]))
def test_paste_back_keeps_everything_outside_alpha(data, dilate_px, feather,
                                                    resolution) -> None:
    source, mask = data.draw(image_and_mask(max_side=200))
    alpha = paste_mask(mask, dilate_px, feather)
    win = plan_window(alpha > 0, resolution)
    rng = np.random.default_rng(data.draw(seeds))
    generated = Image.fromarray(rng.integers(0, 256, (*win.size, 3), dtype=np.uint8))
    out = paste_back(source, generated, win, alpha)
    assert out.shape == source.shape and out.dtype == source.dtype, "grayscale stays HxW"
    outside = alpha == 0
    assert np.array_equal(out[outside], source[outside]), "byte-identical outside the paste"


# --- diag.generators.diffusion.paper ----------------------------------------------------------


@FAST
@given(data=st.data(), resolution=st.sampled_from([64, 96, 128, 256]))
def test_stretch_inputs(data, resolution) -> None:
    image, region = data.draw(image_and_mask(max_side=200))
    img, mask = stretch_inputs(image, region, resolution)
    assert img.size == (resolution, resolution) and img.mode == "RGB"
    assert mask.size == (resolution, resolution) and mask.mode == "RGB"
    m = np.asarray(mask)
    assert np.array_equal(m[..., 0], m[..., 1]) and np.array_equal(m[..., 1], m[..., 2])


@FAST
@given(data=st.data(), resolution=st.sampled_from([64, 128]), feather=st.integers(0, 3))
def test_compose_back(data, resolution, feather) -> None:
    source, region = data.draw(image_and_mask(max_side=200))
    alpha = paste_mask(region, 0, feather)
    rng = np.random.default_rng(data.draw(seeds))
    output = Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8))
    out, background = compose_back(source, output, alpha, "exact")
    assert background == "exact"
    assert out.shape == source.shape and out.dtype == np.uint8
    assert np.array_equal(out[alpha == 0], source[alpha == 0]), "background byte-identical"
    out, background = compose_back(source, output, alpha, "diffusers")
    assert background == "resampled" and out.shape == source.shape and out.dtype == np.uint8


# --- diag.imageio.resize_mask -----------------------------------------------------------------


def overlap(n_out: int, n_src: int) -> np.ndarray:
    """``[a, i]``: output pixel ``a`` and source pixel ``i`` overlap (as intervals)."""
    a = np.arange(n_out)[:, None]
    i = np.arange(n_src)[None, :]
    return (i < (a + 1) * n_src / n_out) & (i + 1 > a * n_src / n_out)


@FAST
@given(mask=masks(), h=sides, w=sides)
def test_resize_mask(mask, h, w) -> None:
    out = resize_mask(mask, (h, w))
    assert out.shape == (h, w) and out.dtype == bool
    oy, ox = overlap(h, mask.shape[0]).astype(int), overlap(w, mask.shape[1]).astype(int)
    # every set source pixel lands in a set output pixel that covers it
    reached = (oy.T @ out.astype(int) @ ox) > 0
    assert not (mask & ~reached).any(), "a defect pixel vanished"
    # an output pixel is set only where a source pixel it covers was
    covered = (oy @ mask.astype(int) @ ox.T) > 0
    assert not (out & ~covered).any(), "a pixel appeared where there was no defect"
    if h >= mask.shape[0] and w >= mask.shape[1]:  # nearest neighbour of pixel centres
        rows = (2 * np.arange(h) + 1) * mask.shape[0] // (2 * h)
        cols = (2 * np.arange(w) + 1) * mask.shape[1] // (2 * w)
        assert np.array_equal(out, mask[np.ix_(rows, cols)]), "growing is nearest neighbour"


# --- diag.regions -----------------------------------------------------------------------------


@FAST
@given(mask=masks(), h=sides, w=sides, flip=st.booleans(), shift=st.floats(0, 1),
       seed=seeds)
def test_place_mask(mask, h, w, flip, shift, seed) -> None:
    placed, info = place_mask(mask, (h, w), np.random.default_rng(seed), flip, shift)
    assert placed.shape == (h, w) and placed.dtype == bool
    assert placed.any(), "never empty"
    assert placed.sum() <= mask.sum() or info["scale"] == 1.0 and placed.sum() == mask.sum()
    same, _ = place_mask(mask, mask.shape, np.random.default_rng(seed))
    assert np.array_equal(same, mask), "the same size without flip or shift: unchanged"


@FAST
@given(src=st.tuples(st.integers(50, 600), st.integers(50, 600)), h=sides, w=sides,
       seed=seeds, flip=st.booleans())
def test_place_mask_keeps_thin_masks_thin(src, h, w, seed, flip) -> None:
    rng = np.random.default_rng(seed)
    m = np.zeros(src, bool)
    line(m, rng.integers(src[0]), rng.integers(src[1]), rng.integers(src[0]),
         rng.integers(src[1]))
    placed, _ = place_mask(m, (h, w), rng, flip)
    ys, xs = np.nonzero(placed)
    bh, bw = np.ptp(ys) + 1, np.ptp(xs) + 1
    assert placed.sum() <= 3 * max(bh, bw), "a line stays a line"
    if min(bh, bw) >= 3:
        assert placed.sum() < bh * bw, "never a filled box"


@FAST
@given(h=sides, w=sides, kind=st.sampled_from(SHAPES), seed=seeds,
       size=st.tuples(st.floats(0.01, 1), st.floats(0.01, 1)).map(sorted),
       width=st.tuples(st.integers(1, 10), st.integers(1, 10)).map(sorted))
def test_random_shape(h, w, kind, seed, size, width) -> None:
    m = random_shape((h, w), kind, np.random.default_rng(seed), tuple(size), tuple(width))
    assert m.shape == (h, w) and m.dtype == bool
    assert m.any(), "a shape centred in the image has a pixel in it"


@FAST
@given(data=st.data(), kinds=st.lists(st.sampled_from(SHAPES), min_size=1, unique=True),
       count=st.tuples(st.integers(1, 3), st.integers(1, 3)).map(sorted), seed=seeds,
       with_area=st.booleans())
def test_sample_shapes_stay_inside_the_area(data, kinds, count, seed, with_area) -> None:
    area = data.draw(masks())
    shape = area.shape
    m = sample_shapes(shape, np.random.default_rng(seed), kinds, (0.05, 0.3), (1, 4),
                      tuple(count), area if with_area else None)
    assert m.shape == shape and m.dtype == bool and m.any()
    if with_area:
        assert not (m & ~area).any(), "inside the area"


@FAST
@given(mask=masks(), pixels=st.integers(1, 4) | st.just(10**30))
def test_dilate(mask, pixels) -> None:
    grown = dilate(mask, pixels)
    assert grown.shape == mask.shape and not (mask & ~grown).any()
    if pixels >= sum(mask.shape):
        assert grown.all()


@FAST
@given(h=sides, w=sides, data=st.data())
def test_polygons_to_mask(h, w, data) -> None:
    pts = data.draw(st.lists(st.tuples(st.integers(0, w - 1), st.integers(0, h - 1)),
                             min_size=3, max_size=8))
    m = polygons_to_mask({"polygons": [[list(p) for p in pts]]}, (h, w))
    assert m.shape == (h, w) and m.dtype == bool
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    for x, y in pts:
        assert m[y, x], "every vertex is drawn"
    inside = np.zeros((h, w), bool)
    inside[min(ys):max(ys) + 1, min(xs):max(xs) + 1] = True
    assert not (m & ~inside).any(), "nothing outside the polygon's box"
    # the same polygon normalised to the image size gives the same mask
    norm = {"polygons": [[[x / w, y / h] for x, y in pts]], "normalized": True}
    assert np.array_equal(polygons_to_mask(norm, (h, w)), m)
    # labelme rectangles are exact boxes
    (x0, y0), (x1, y1) = pts[:2]
    box = polygons_to_mask({"shapes": [{"shape_type": "rectangle",
                                        "points": [[x0, y0], [x1, y1]]}]}, (h, w))
    want = np.zeros((h, w), bool)
    want[min(y0, y1):max(y0, y1) + 1, min(x0, x1):max(x0, x1) + 1] = True
    assert np.array_equal(box, want)


@FAST
@given(junk=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(
    max_size=5), lambda c: st.lists(c, max_size=4) | st.dictionaries(
        st.sampled_from(["polygons", "shapes", "points", "shape_type", "normalized",
                         "imageWidth", "imageHeight", "width"]), c, max_size=4), max_leaves=12))
def test_polygons_to_mask_never_crashes_on_junk(junk) -> None:
    """Whatever JSON a region file holds, the answer is a mask or one DiagError line."""
    data = junk if isinstance(junk, dict) else {"polygons": junk}
    try:
        m = polygons_to_mask(data, (20, 30), "region file 'x.json'")
    except DiagError as exc:
        assert "\n" not in str(exc) and "x.json" in str(exc)
    else:
        assert m.shape == (20, 30) and m.dtype == bool


# --- diag.generators.base.check_result --------------------------------------------------------


@FAST
@given(data=st.data())
def test_check_result_finds_any_change_outside_the_mask(data) -> None:
    image, mask = data.draw(image_and_mask(max_side=120))
    changed = data.draw(masks(*mask.shape))
    out = image.copy()
    out[changed] = 255 - out[changed]  # every pixel of ``changed`` really changes
    leak = changed & ~mask
    request = Request(image=image, region=mask, seed=0)
    if leak.any():
        with pytest.raises(GeneratorError, match="outside its mask") as exc:
            check_result("x", request, Result(out, mask), "s")
        y, x = (int(v[0]) for v in np.nonzero(leak))
        assert f"row {y}, column {x}" in str(exc.value)
    else:
        assert np.array_equal(check_result("x", request, Result(out, mask), "s"), mask)
    with pytest.raises(GeneratorError):  # another shape or dtype
        check_result("x", request, Result(out.astype(np.int16), mask), "s")
    with pytest.raises(GeneratorError):
        check_result("x", request, Result(out[..., None] if out.ndim == 2 else out[..., 0],
                                          mask), "s")


# --- the generators' contract -----------------------------------------------------------------


@SLOW
@given(data=st.data(), kind=st.sampled_from(["memseg", "cutpaste", "draem", "nsa"]),
       with_region=st.booleans(), seed=seeds)
def test_generator_contract(data, kind, with_region, seed) -> None:
    side = 96 if kind == "nsa" else 300  # Poisson blending solves a system per masked pixel
    h, w = data.draw(st.integers(1, side)), data.draw(st.integers(1, side))
    image = data.draw(images(h, w))
    region = data.draw(masks(h, w)) if with_region else None
    gen = make_generator(kind, {})
    request = Request(image=image, region=region, seed=seed)
    result = gen.generate(request)
    mask = check_result(kind, request, result, "a sample")  # shape, dtype, nothing outside
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    if region is not None:
        assert not (mask & ~region).any(), "the defect stays inside the given region"
    again = gen.generate(Request(image=image.copy(), region=None if region is None
                                 else region.copy(), seed=seed))
    assert again.image.tobytes() == result.image.tobytes(), "same seed, same bytes"
    assert np.array_equal(np.asarray(again.mask, bool), mask)


def test_window_of_a_whole_tiny_image() -> None:
    """The smallest input: a 1x1 image's window is the image, at the smallest model size."""
    win = plan_window(np.ones((1, 1), bool), 64)
    assert win == Window((0, 1, 0, 1), (64, 64)) and win.crop_shape == (1, 1)
