"""FID / KID / diversity math and region crops, on plain arrays (no Inception)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import pdist

from diag.errors import DiagError
from diag.metrics.diversity import ic_lpips, mean_pairwise_distance
from diag.metrics.fidelity import (
    crop_region,
    feature_stats,
    fid_from_features,
    frechet_distance,
    kid_from_features,
    kid_subset_size,
    kid_subsets,
    rank_note,
    region_box,
)
from diag.metrics.inception import parse_dims


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance, written independently with NumPy/SciPy."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products (few images) are expected here
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def numpy_kid(real: np.ndarray, gen: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]
              ) -> tuple[float, float]:
    """Unbiased polynomial-kernel MMD^2 (clean-fid / torch-fidelity formula), plain NumPy."""
    d = real.shape[1]
    vals = []
    for i, j in pairs:
        x, y = gen[j], real[i]
        m = len(i)
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        vals.append((a.sum() - np.diag(a).sum()) / (m - 1) / m - b.sum() * 2 / m / m)
    return float(np.mean(vals)), float(np.std(vals))


def relu_features(n: int, d: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d)
    return np.maximum(rng.normal(shift, 1.0 + shift, size=(n, d)) @ mix, 0)


@pytest.mark.parametrize("n,d", [(300, 16), (80, 64), (40, 64), (30, 256)])
def test_fid_agrees_with_scipy(n: int, d: int) -> None:
    a, b = relu_features(n, d, 0.0, 1), relu_features(n + 7, d, 0.3, 2)
    ours, ref = fid_from_features(a, b), scipy_fid(a, b)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_symmetric() -> None:
    a, b = relu_features(100, 32, 0.0, 1), relu_features(120, 32, 0.5, 2)
    assert abs(fid_from_features(a, a)) < 1e-8
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-9)


def test_fid_of_gaussians_has_closed_form() -> None:
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    s1, s2 = np.eye(3), 4 * np.eye(3)
    # |mu1-mu2|^2 + tr(I + 4I - 2*2I) = 9 + 3
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(12.0, abs=1e-12)


def test_feature_stats_needs_two_rows() -> None:
    with pytest.raises(DiagError, match="at least 2"):
        feature_stats(np.zeros((1, 4)))


def test_kid_agrees_with_numpy_on_the_same_subsets() -> None:
    real, gen = relu_features(150, 64, 0.0, 3), relu_features(90, 64, 0.2, 4)
    size = kid_subset_size(len(real), len(gen))
    assert size == 90
    out = kid_from_features(real, gen, num_subsets=20, seed=7)
    pairs = list(kid_subsets(len(real), len(gen), size, 20, seed=7))
    mean, std = numpy_kid(real, gen, pairs)
    assert out["mean"] == pytest.approx(mean, rel=1e-6)
    assert out["std"] == pytest.approx(std, rel=1e-6)
    assert out["subset_size"] == 90 and out["num_subsets"] == 20 and out["std"] > 0


def test_kid_subset_size_rule_and_small_equal_sets() -> None:
    assert kid_subset_size(5000, 3000) == 1000
    assert kid_subset_size(40, 3000) == 40
    a, b = relu_features(12, 8, 0.0, 1), relu_features(12, 8, 1.0, 2)
    out = kid_from_features(a, b)  # both whole sets: one exact value, std 0
    assert out["num_subsets"] == 1 and out["std"] == 0.0
    assert out["mean"] == pytest.approx(numpy_kid(a, b, [(np.arange(12), np.arange(12))])[0],
                                        rel=1e-9)
    same = kid_from_features(a, a)
    assert abs(same["mean"]) < out["mean"] / 100


def test_kid_is_unbiased_near_zero_for_same_distribution() -> None:
    a, b = relu_features(400, 16, 0.0, 1), relu_features(400, 16, 0.0, 2)
    same = kid_from_features(a, b, num_subsets=10)["mean"]
    diff = kid_from_features(a, relu_features(400, 16, 0.5, 3), num_subsets=10)["mean"]
    assert abs(same) < diff / 20


def test_kid_rejects_bad_subset_size() -> None:
    a = relu_features(10, 4, 0.0, 1)
    with pytest.raises(DiagError, match="subset size"):
        kid_from_features(a, a, subset_size=11)


def test_rank_note() -> None:
    assert rank_note(100, (64, 2048)) is not None
    assert rank_note(100, 64) is None
    msg = rank_note(50, (64, 192, 2048))
    assert "rank at most 49" in msg and "64/192/2048" in msg and "\n" not in msg


def test_parse_dims() -> None:
    assert parse_dims("2048, 64,192,64") == (64, 192, 2048)
    with pytest.raises(DiagError, match="not an Inception feature size"):
        parse_dims("64,100")
    with pytest.raises(DiagError, match="not a number"):
        parse_dims("64,x")


def test_mean_pairwise_distance_matches_scipy() -> None:
    x = relu_features(30, 10, 0.0, 5)
    assert mean_pairwise_distance(x) == pytest.approx(pdist(x).mean(), rel=1e-10)
    assert np.isnan(mean_pairwise_distance(x[:1]))


def test_ic_lpips_clusters_by_nearest_centre() -> None:
    centres = [np.array([0.0]), np.array([100.0])]
    gen = [np.array([v]) for v in (1.0, 3.0, 99.0, 95.0, 50.1)]

    def dist(a: np.ndarray, b: np.ndarray) -> float:
        return float(abs(a - b).sum())

    out = ic_lpips(gen, centres, dist)
    assert out["cluster_sizes"] == [2, 3]
    # cluster 0: |1-3| = 2; cluster 1: |99-95|, |99-50.1|, |95-50.1| -> mean 32.6
    assert out["value"] == pytest.approx((2 + (4 + 48.9 + 44.9) / 3) / 2)
    collapsed = ic_lpips([np.array([0.0])] * 4, centres, dist)
    assert collapsed["value"] == 0.0


def test_region_box_is_square_inside_and_covers_the_defect() -> None:
    mask = np.zeros((200, 300), bool)
    mask[50:60, 100:140] = True
    t, left, b, r = region_box(mask, margin=0.25, min_size=16)
    assert b - t == r - left == 60  # 40 * 1.5
    assert t <= 50 and b >= 60 and left <= 100 and r >= 140
    # near a corner the box is shifted inside, not cut
    corner = np.zeros((200, 300), bool)
    corner[0:4, 296:300] = True
    t, left, b, r = region_box(corner, margin=0.25, min_size=64)
    assert (t, b, r, b - t, r - left) == (0, 64, 300, 64, 64)
    # a box larger than the image is cut to it
    big = np.ones((40, 300), bool)
    assert region_box(big) == (0, 0, 40, 300)
    assert region_box(np.zeros((10, 10), bool)) is None


def test_crop_region() -> None:
    img = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100).astype(np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[40:42, 40:42] = True
    crop = crop_region(img, mask, min_size=20)
    assert crop.shape == (20, 20)
    assert crop_region(img, np.zeros((100, 100), bool)) is None
    with pytest.raises(DiagError, match="does not match"):
        crop_region(img, np.zeros((50, 100), bool))
