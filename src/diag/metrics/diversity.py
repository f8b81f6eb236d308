"""Diversity of a generated set: mean pairwise feature distance and IC-LPIPS.

A generator can reach a low FID by copying a few real defects; diversity tells that apart.

* :func:`mean_pairwise_distance`: mean Euclidean distance between all pairs of distinct images
  in Inception feature space (report it next to the same number for the real set, for scale).
* :func:`ic_lpips`: intra-cluster LPIPS (Ojha et al., CVPR 2021): each generated image joins
  the cluster of its nearest of ``k`` real images (by LPIPS); the mean pairwise LPIPS inside
  each cluster (of at least 2 members) is averaged over clusters. Needs the ``lpips`` package
  and its backbone weights (torchvision's ImageNet AlexNet, from the torch hub cache or a
  download); when they are not there, :func:`ic_lpips_or_reason` says so instead of a value.

>>> import numpy as np
>>> round(mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])), 6)
5.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

LPIPS_SIZE = 256
LPIPS_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth",
                        "squeeze": "squeezenet1_1-b8a52dc0.pth"}


def mean_pairwise_distance(feats: np.ndarray) -> float:
    """Mean Euclidean distance over all ``N (N - 1) / 2`` pairs of rows of ``feats``."""
    import torch

    x = torch.as_tensor(np.asarray(feats), dtype=torch.float64)
    n = x.shape[0]
    if n < 2:
        return float("nan")
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return float(d.triu(diagonal=1).sum() / (n * (n - 1) / 2))


def ic_lpips(generated: Sequence[Any], centers: Sequence[Any],
             distance: Callable[[Any, Any], float]) -> dict[str, Any]:
    """Intra-cluster diversity with any distance (LPIPS in :func:`ic_lpips_or_reason`).

    Args:
        generated: Generated items (images or tensors).
        centers: Cluster centres (real items).
        distance: Symmetric distance of two items.

    Returns:
        ``{"value", "clusters_used", "cluster_sizes"}``; ``value`` is NaN when no cluster has
        two members.
    """
    assign = [int(np.argmin([distance(g, c) for c in centers])) for g in generated]
    sizes = [assign.count(k) for k in range(len(centers))]
    means = []
    for k in range(len(centers)):
        members = [g for g, a in zip(generated, assign, strict=True) if a == k]
        if len(members) < 2:
            continue
        dists = [distance(members[i], members[j])
                 for i in range(len(members)) for j in range(i + 1, len(members))]
        means.append(float(np.mean(dists)))
    return {"value": float(np.mean(means)) if means else float("nan"),
            "clusters_used": len(means), "cluster_sizes": sizes}


def lpips_status(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS can run here, and why not."""
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        return False, "the lpips package is not installed (pip install 'diag[lpips]')"
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILES[net]
    if not cached.is_file():
        return True, f"backbone weights {cached.name} not in the torch hub cache: will download"
    return True, "ok"


def load_lpips(net: str = "alex", device: str = "cpu") -> Any:
    """The ``lpips.LPIPS`` model (linear weights from the package, backbone from torchvision)."""
    import lpips

    return lpips.LPIPS(net=net, verbose=False).eval().to(device)


def to_lpips_input(img: np.ndarray, size: int = LPIPS_SIZE) -> np.ndarray:
    """Resize a ``uint8`` image to ``size`` x ``size`` RGB (what LPIPS is computed on)."""
    from PIL import Image

    arr = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))


def ic_lpips_or_reason(generated: Sequence[np.ndarray], real: Sequence[np.ndarray],
                       k: int = 10, seed: int = 0, device: str = "cpu", net: str = "alex"
                       ) -> dict[str, Any]:
    """IC-LPIPS of ``generated`` with ``min(k, len(real))`` seeded real images as centres.

    Returns:
        ``{"value", "net", "clusters", ...}``, or ``{"value": None, "reason": ...}`` when LPIPS
        cannot run (package or weights missing).
    """
    ok, why = lpips_status(net)
    if not ok:
        return {"value": None, "reason": why}
    import torch

    try:
        model = load_lpips(net, device)
    except Exception as exc:  # no cached backbone and no internet, ...
        return {"value": None, "reason": f"LPIPS could not be loaded ({type(exc).__name__}: "
                                         f"{str(exc).splitlines()[0][:160]})"}
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(real), min(k, len(real)), replace=False)

    def tensor(img: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(to_lpips_input(img)).permute(2, 0, 1)[None].float() / 255.0
        return t.to(device)

    gen_t = [tensor(g) for g in generated]
    cen_t = [tensor(real[i]) for i in picks]

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:
        with torch.inference_mode():
            return float(model(a, b, normalize=True).item())

    out = ic_lpips(gen_t, cen_t, distance)
    return {**out, "net": net, "clusters": len(cen_t), "size": LPIPS_SIZE}
