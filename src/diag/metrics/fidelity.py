"""Fidelity of generated images to real ones: FID at several Inception dims, KID, diversity.

The math is in small functions on feature arrays (:func:`fid_from_features`,
:func:`kid_from_features`) so it can be checked against other implementations; the image side
(reading samples, cropping defect regions, extracting features) is in :func:`score_fidelity`,
which the ``diag fidelity`` command calls.

Protocol (recorded in every result):

* FID: Frechet distance between Gaussians fitted to the two feature sets (``float64``, sample
  covariance with ``N - 1``), the matrix square root taken through symmetric eigendecompositions
  (``tr sqrt(S1 S2) = tr sqrt(sqrt(S1) S2 sqrt(S1))``), which is exact for the singular
  covariances that small sets give. Same definition as pytorch-fid.
* KID: unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged
  over ``num_subsets`` random subsets of ``subset_size = min(1000, n_real, n_gen)`` images
  drawn without replacement from each set (seeded); mean and standard deviation reported.
* With fewer images than ``dim + 1`` a covariance is rank-deficient: FID is still defined but
  is biased upwards and noisy, so a warning names the dims affected.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a, b = rng.normal(size=(500, 8)), rng.normal(0.5, 1, size=(500, 8))
>>> round(fid_from_features(a, a), 6)
0.0
>>> fid_from_features(a, b) > 1.5
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from diag.errors import DiagError

KID_MAX_SUBSET = 1000
KID_SUBSETS = 100


class RankWarning(UserWarning):
    """Fewer images than a feature dimension needs for a full-rank covariance."""


# --------------------------------------------------------------------------------------------
# FID


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (``N - 1``) of ``(N, D)`` features, in ``float64``."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise DiagError(f"need at least 2 feature vectors for a covariance, got shape "
                        f"{feats.shape}: score at least 2 images per set")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Frechet distance between two Gaussians, ``|mu1-mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2))``.

    The trace of the square root uses ``float64`` symmetric eigendecompositions (torch), exact
    for positive semi-definite, possibly singular, covariances.
    """
    import torch

    m1 = torch.as_tensor(np.atleast_1d(mu1), dtype=torch.float64)
    m2 = torch.as_tensor(np.atleast_1d(mu2), dtype=torch.float64)
    s1 = torch.as_tensor(np.atleast_2d(sigma1), dtype=torch.float64)
    s2 = torch.as_tensor(np.atleast_2d(sigma2), dtype=torch.float64)
    if m1.shape != m2.shape or s1.shape != s2.shape or s1.shape[0] != m1.shape[0]:
        raise ValueError(f"mismatched statistics: {tuple(m1.shape)}, {tuple(s1.shape)} vs "
                         f"{tuple(m2.shape)}, {tuple(s2.shape)}")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    eps = torch.finfo(torch.float64).eps * s1.shape[0]
    w1, v1 = torch.linalg.eigh(s1)
    w1 = torch.where(w1 > w1.max().clamp(min=0) * eps, w1, torch.zeros_like(w1))
    root1 = (v1 * w1.sqrt()) @ v1.T
    inner = root1 @ s2 @ root1
    w = torch.linalg.eigvalsh((inner + inner.T) / 2)
    # eigenvalues that are zero up to round-off would add sqrt(1e-16)-sized noise: drop them
    w = torch.where(w > w.max().clamp(min=0) * eps, w, torch.zeros_like(w))
    tr_covmean = w.sqrt().sum()
    diff = m1 - m2
    value = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return float(value)


def fid_from_features(real: np.ndarray, gen: np.ndarray) -> float:
    """FID between two ``(N, D)`` feature sets (see :func:`frechet_distance`).

    With fewer images than dims (``min(N1, N2) <= D``) the trace term is computed exactly in
    the images' space instead: with centred features ``A1``, ``A2``,
    ``tr sqrt(S1 S2) = ||A1 A2^T||_* / sqrt((N1 - 1)(N2 - 1))`` (the nuclear norm, since the
    eigenvalues of ``S1 S2`` are the squared singular values of that matrix). It is the same
    number, cheaper, and free of the round-off of square roots of zero eigenvalues.
    """
    import torch

    feature_stats(real[:2]), feature_stats(gen[:2])  # shape checks with a clear error
    a = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(gen), dtype=torch.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    (n1, d), n2 = a.shape, b.shape[0]
    if min(n1, n2) > d:
        return frechet_distance(*feature_stats(real), *feature_stats(gen))
    mu1, mu2 = a.mean(0), b.mean(0)
    a1, a2 = a - mu1, b - mu2
    tr1 = (a1 * a1).sum() / (n1 - 1)
    tr2 = (a2 * a2).sum() / (n2 - 1)
    tr_covmean = torch.linalg.svdvals(a1 @ a2.T).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2 * tr_covmean)


def rank_note(n: int, dims: int | Sequence[int]) -> str | None:
    """A one-line explanation when ``n`` images cannot give full-rank covariances at ``dims``.

    None when every dim is below ``n`` (full rank is possible).
    """
    low = [d for d in ([dims] if isinstance(dims, int) else dims) if n <= d]
    if not low:
        return None
    what = f"FID-{low[0]} is" if len(low) == 1 else f"FID-{'/'.join(map(str, low))} are"
    return (f"{n} images give covariances of rank at most {n - 1}, below the "
            f"{'/'.join(map(str, low))} feature dims: {what} defined but biased upwards and "
            f"noisy; compare only between sets of the same size, or use KID, a smaller --dims, "
            f"or more than {max(low)} images")


# --------------------------------------------------------------------------------------------
# KID


def kid_subset_size(n_real: int, n_gen: int, max_subset: int = KID_MAX_SUBSET) -> int:
    """``min(max_subset, n_real, n_gen)``: the whole smaller set when sets are small."""
    return int(min(max_subset, n_real, n_gen))


def kid_subsets(n_real: int, n_gen: int, subset_size: int, num_subsets: int = KID_SUBSETS,
                seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Seeded ``(real_idx, gen_idx)`` index pairs, each drawn without replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(num_subsets):
        yield (rng.choice(n_real, subset_size, replace=False),
               rng.choice(n_gen, subset_size, replace=False))


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size feature sets, kernel ``(x.y / d + 1)^3``.

    Diagonals of the within-set kernels are left out; the cross term is the full mean.
    """
    import torch

    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    m, d = xt.shape
    if m < 2:
        raise DiagError("KID needs at least 2 images in each set")
    kxx = (xt @ xt.T / d + 1) ** 3
    kyy = (yt @ yt.T / d + 1) ** 3
    kxy = (xt @ yt.T / d + 1) ** 3
    off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(off - 2 * kxy.mean())


def kid_from_features(real: np.ndarray, gen: np.ndarray, subset_size: int | None = None,
                      num_subsets: int = KID_SUBSETS, seed: int = 0) -> dict[str, float]:
    """KID (unbiased, polynomial kernel) with its standard deviation over subsets.

    Args:
        real: ``(N, D)`` features of real images.
        gen: ``(M, D)`` features of generated images.
        subset_size: Images per subset; default :func:`kid_subset_size`.
        num_subsets: Number of random subsets.
        seed: Seed of the subset draws.

    Returns:
        ``{"mean", "std", "subset_size", "num_subsets", "seed"}``.
    """
    real = np.asarray(real, dtype=np.float64)
    gen = np.asarray(gen, dtype=np.float64)
    size = subset_size or kid_subset_size(len(real), len(gen))
    if size < 2 or size > min(len(real), len(gen)):
        raise DiagError(f"KID subset size {size} does not fit sets of {len(real)} real and "
                        f"{len(gen)} generated images: it must be 2..min of the two")
    # when both subsets are the whole sets, every draw gives the same value: compute it once
    n_draws = 1 if size == len(real) == len(gen) else num_subsets
    values = np.array([polynomial_mmd2_unbiased(real[i], gen[j])
                       for i, j in kid_subsets(len(real), len(gen), size, n_draws, seed)])
    return {"mean": float(values.mean()), "std": float(values.std()), "subset_size": int(size),
            "num_subsets": int(n_draws), "seed": int(seed)}


# --------------------------------------------------------------------------------------------
# defect-region crops


def region_box(mask: np.ndarray, margin: float = 0.25, min_size: int = 64
               ) -> tuple[int, int, int, int] | None:
    """A square box ``(top, left, bottom, right)`` around all defect pixels of ``mask``.

    The box is the mask's bounding box grown by ``margin`` times its longer side on every side,
    made square (so the 299x299 resize keeps the aspect ratio), at least ``min_size`` pixels,
    shifted to lie inside the image (and cut to it where the image is smaller). None when the
    mask has no defect pixel.
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    h, w = mask.shape
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = max(y1 - y0, x1 - x0)
    side = max(int(math.ceil(side * (1 + 2 * margin))), min_size)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    sh, sw = min(side, h), min(side, w)
    top = int(round(cy - sh / 2))
    left = int(round(cx - sw / 2))
    top = min(max(top, 0), h - sh)
    left = min(max(left, 0), w - sw)
    return top, left, top + sh, left + sw


def crop_region(image: np.ndarray, mask: np.ndarray, margin: float = 0.25,
                min_size: int = 64) -> np.ndarray | None:
    """The crop of ``image`` around the defect of ``mask`` (:func:`region_box`), or None."""
    if mask.shape != image.shape[:2]:
        raise DiagError(f"mask of size {mask.shape[1]}x{mask.shape[0]} does not match its image "
                        f"{image.shape[1]}x{image.shape[0]}: fix the pair")
    box = region_box(mask, margin, min_size)
    if box is None:
        return None
    t, left, b, r = box
    return image[t:b, left:r]


# --------------------------------------------------------------------------------------------
# scoring sample sets


def _shape_summary(shapes: list[tuple[int, ...]]) -> dict[str, Any]:
    hw = {(s[0], s[1]) for s in shapes}
    channels = {1 if len(s) == 2 else s[2] for s in shapes}
    sizes = sorted(hw)
    return {"sizes": [f"{w}x{h}" for h, w in sizes[:5]] + (["..."] if len(sizes) > 5 else []),
            "mixed_sizes": len(sizes) > 1,
            "grayscale": sorted(channels) == [1], "mixed_channels": len(channels) > 1}


def iter_images(samples: Sequence[Any], region: bool, margin: float, min_size: int,
                shapes: list[tuple[int, ...]], used: list[str]) -> Iterator[np.ndarray]:
    """Images of ``samples`` (or their defect crops), recording shapes and used ids."""
    for s in samples:
        img = s.image
        if region:
            img = crop_region(img, s.mask, margin, min_size)
            if img is None:
                continue
        shapes.append(img.shape)
        used.append(s.id)
        yield img


def score_fidelity(real: Sequence[Any], gen: Sequence[Any], extractor: Any,
                   kid: bool = False, region: bool = False, region_margin: float = 0.25,
                   region_min_size: int = 64, batch_size: int = 16, kid_subsets: int = KID_SUBSETS,
                   seed: int = 0, diversity: bool = True, lpips: str | None = "auto",
                   progress: bool = True, warn: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Score generated samples against real ones.

    Args:
        real: Real :class:`~diag.data.Sample` objects (usually the positives of a dataset).
        gen: Generated samples.
        extractor: An :class:`~diag.metrics.inception.InceptionExtractor`.
        kid: Also compute KID.
        region: Score crops around each sample's defect mask instead of whole images.
        region_margin: Margin of region crops, as a fraction of the defect's longer side.
        region_min_size: Smallest crop side in pixels.
        batch_size: Images per forward pass.
        kid_subsets: Number of KID subsets.
        seed: Seed for KID subsets and IC-LPIPS cluster centres.
        diversity: Compute the diversity of the generated set (and of the real one, for scale).
        lpips: ``"auto"`` to add IC-LPIPS when LPIPS weights are available, None to skip.
        progress: Show progress bars.
        warn: Where warnings go (default :func:`warnings.warn`).

    Returns:
        A JSON-ready dict (see ``docs/fidelity.md``).

    Raises:
        DiagError: an empty set, or fewer than 2 images (or defect crops) in a set.
    """
    from diag.metrics import diversity as div

    def _warn(msg: str) -> None:
        if warn is not None:
            warn(msg)
        else:
            warnings.warn(msg, RankWarning, stacklevel=3)

    for name, samples in (("real", real), ("generated", gen)):
        if not samples:
            raise DiagError(f"the {name} set is empty: point --{'real' if name == 'real' else 'generated'} "
                            "at a folder with images")
        if region:
            no_mask = [s.id for s in samples if s.mask_path is None]
            if len(no_mask) == len(samples):
                raise DiagError(f"--region needs defect masks but no {name} image has one (e.g. "
                                f"'{no_mask[0]}'): give a layout with masks or leave --region out")

    feats: dict[str, dict[int, np.ndarray]] = {}
    info: dict[str, dict[str, Any]] = {}
    keep_images = diversity and lpips is not None and div.lpips_status()[0]
    kept: dict[str, list[np.ndarray]] = {"real": [], "generated": []}
    for name, samples in (("real", real), ("generated", gen)):
        shapes: list[tuple[int, ...]] = []
        used: list[str] = []
        images = iter_images(samples, region, region_margin, region_min_size, shapes, used)
        if keep_images:
            images = _tee(images, kept[name])
        feats[name] = extractor.extract(images, batch_size=batch_size,
                                        progress=f"{name} features" if progress else None,
                                        total=len(samples))
        n = len(used)
        info[name] = {"samples": len(samples), "scored": n, **_shape_summary(shapes)}
        if region:
            info[name]["skipped_without_defect"] = len(samples) - n
        if n < 2:
            what = "defect crops (images with a non-empty mask)" if region else "images"
            raise DiagError(f"the {name} set has {n} {what}; FID and KID need at least 2")

    warnings_out: list[str] = []

    def note(msg: str) -> None:
        warnings_out.append(msg)
        _warn(msg)

    for name in ("real", "generated"):
        if info[name]["mixed_sizes"] and not region:  # region crops are square: no distortion
            note(f"{name} images have mixed sizes ({', '.join(info[name]['sizes'])}): each is "
                 "resized to 299x299 on its own, so aspect ratios are distorted differently")
        if info[name]["mixed_channels"]:
            note(f"{name} images mix grayscale and colour: grayscale ones are replicated to RGB")
    if info["real"]["grayscale"] != info["generated"]["grayscale"]:
        gray = "real" if info["real"]["grayscale"] else "generated"
        note(f"the {gray} images are grayscale and the others colour: colour alone raises FID; "
             "convert both sets to the same mode for a fair score")
    if (not region and not info["real"]["mixed_sizes"] and not info["generated"]["mixed_sizes"]
            and info["real"]["sizes"] != info["generated"]["sizes"]):
        note(f"real images are {', '.join(info['real']['sizes'])} and generated "
             f"{', '.join(info['generated']['sizes'])}: both are resized to 299x299, and "
             "resolution differences alone change FID")

    n_min = min(info["real"]["scored"], info["generated"]["scored"])
    rank_msg = rank_note(n_min, extractor.dims)
    if rank_msg:
        note(rank_msg)
    fid = {str(d): fid_from_features(feats["real"][d], feats["generated"][d])
           for d in extractor.dims}
    result: dict[str, Any] = {"fid": fid}
    if kid:
        result["kid"] = {str(d): kid_from_features(feats["real"][d], feats["generated"][d],
                                                   num_subsets=kid_subsets, seed=seed)
                         for d in extractor.dims}
    if diversity:
        dmax = max(extractor.dims)
        result["diversity"] = {
            "feature_dim": dmax,
            "generated_mean_pairwise_distance": div.mean_pairwise_distance(
                feats["generated"][dmax]),
            "real_mean_pairwise_distance": div.mean_pairwise_distance(feats["real"][dmax]),
        }
        if lpips is not None and not keep_images:
            result["diversity"]["ic_lpips"] = {"value": None, "reason": div.lpips_status()[1]}
        elif lpips is not None:
            result["diversity"]["ic_lpips"] = div.ic_lpips_or_reason(
                kept["generated"], kept["real"], seed=seed, device=extractor.device)
    result["sets"] = info
    result["warnings"] = warnings_out
    result["_features"] = feats
    return result


def _tee(images: Iterator[np.ndarray], store: list[np.ndarray]) -> Iterator[np.ndarray]:
    from diag.metrics.diversity import to_lpips_input

    for img in images:
        store.append(to_lpips_input(img))  # small copies for IC-LPIPS, not full images
        yield img
