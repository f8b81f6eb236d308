"""resize: crop: windows around masks, aspect ratios, exact paste-back, grayscale in and out."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diag.generators.diffusion.window import crop_for_model, paste_back, paste_mask, plan_window


def _mask(shape, box):
    m = np.zeros(shape, bool)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize(("shape", "box"), [
    ((256, 640), (100, 110, 300, 420)),   # a horizontal scratch
    ((640, 256), (10, 600, 120, 121)),    # a 1-pixel-wide crack along the whole height
    ((300, 300), (0, 3, 0, 3)),           # a tiny defect in a corner
    ((1024, 2048), (500, 540, 900, 1000)),
])
def test_window_contains_mask_and_keeps_aspect(shape, box) -> None:
    mask = _mask(shape, box)
    w = plan_window(mask, resolution=1024)
    t, b, l, r = w.box
    assert 0 <= t < b <= shape[0] and 0 <= l < r <= shape[1]
    assert mask[t:b, l:r].sum() == mask.sum(), "the window holds the whole mask"
    mh, mw = w.size
    assert mh % 64 == 0 and mw % 64 == 0
    assert 0.5 * 1024**2 <= mh * mw <= 1.5 * 1024**2, "about the model's native area"
    crop_aspect, model_aspect = (r - l) / (b - t), mw / mh
    limited = max(crop_aspect, 1 / crop_aspect) > 4.0 * 1.01 and (b - t == shape[0] or
                                                                   r - l == shape[1])
    assert limited or abs(np.log(crop_aspect / model_aspect)) < 0.1, "aspect ratio kept"


def test_context_grows_the_window() -> None:
    mask = _mask((1000, 1000), (480, 520, 480, 520))
    tight = plan_window(mask, 512, context=0.0, min_size=8)
    wide = plan_window(mask, 512, context=2.0, min_size=8)
    assert tight.crop_shape[0] < wide.crop_shape[0]
    assert wide.crop_shape == (200, 200)


def test_model_mask_stays_binary() -> None:
    img = np.random.default_rng(0).integers(0, 255, (97, 203), dtype=np.uint8)
    mask = _mask(img.shape, (40, 41, 10, 190))
    w = plan_window(mask, 256)
    crop, m = crop_for_model(img, mask, w)
    assert crop.mode == "RGB" and crop.size == (w.size[1], w.size[0])
    assert set(np.unique(np.asarray(m))) <= {0, 255}


@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("feather", [0, 3])
def test_paste_back_is_exact_outside_the_mask(channels, feather) -> None:
    rng = np.random.default_rng(1)
    shape = (120, 90) if channels is None else (120, 90, 3)
    src = rng.integers(0, 255, shape, dtype=np.uint8)
    mask = _mask(src.shape[:2], (50, 60, 20, 70))
    alpha = paste_mask(mask, dilate=1, feather=feather)
    w = plan_window(alpha > 0, 128)
    generated = Image.fromarray(rng.integers(0, 255, (*w.size, 3), dtype=np.uint8))
    out = paste_back(src, generated, w, alpha)
    assert out.shape == src.shape and out.dtype == np.uint8
    outside = alpha == 0
    assert np.array_equal(out[outside], src[outside])
    assert (out[mask] != src[mask]).mean() > 0.9
    assert (alpha[mask] == 1).all() and ((alpha > 0) & ~mask).any()
