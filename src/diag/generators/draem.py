"""DRAEM defects: Perlin-noise blobs filled with an augmented texture, blended in.

After Zavrtanik, Kristan and Skočaj, "DRAEM - A discriminatively trained reconstruction
embedding for surface anomaly detection" (ICCV 2021, Sec. 3.3, and its ``data_loader.py``):
Perlin noise with lattice scale ``2**k`` (``k`` in ``perlin_scale`` = [0, 6)) along each axis
is thresholded at ``threshold`` (0.5) into a mask ``M``; an anomaly source image ``A`` (a DTD
texture in the paper) is perturbed by three random augmentations out of ten (``augment``: 3)
and blended in with opacity ``beta`` drawn from ``opacity`` (the paper's [0.1, 1.0]):
``I_a = (1 - M) * I + (1 - beta) * M * I + beta * M * A``.

>>> import numpy as np
>>> from diag.generators import make_generator, Request
>>> gen = make_generator("draem", {})
>>> img = np.full((64, 64), 90, np.uint8)
>>> res = gen.generate(Request(image=img, region=None, seed=0))
>>> res.image.shape, bool((res.image != img)[~res.mask].any())
((64, 64), False)

The texture comes from ``textures`` (a folder: DTD's ``images/``, or any folder of images) or,
with none, from another defect-free image of the dataset (``texture_source: auto``). With a spec
region the texture fills exactly that region (``perlin_in_region: true`` keeps only the
Perlin blobs inside it), so methods can be compared on the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from diag.errors import DiagError
from diag.generators.base import register
from diag.generators.compositing import check_texture_fill
from diag.generators.memseg import TextureGenerator


@dataclass
class DraemConfig:
    """Parameters of the DRAEM generator (defaults: the DRAEM paper and code).

    Attributes:
        textures: Folder of texture images (DTD in the paper); empty uses ``texture_source``.
        texture_source: ``auto`` (folder, else donors, else structure), ``folder``,
            ``donors`` (other defect-free images of the dataset) or ``structure`` (the image,
            mirrored and grid-shuffled).
        opacity: Range of the texture's blending factor ``beta`` (DRAEM paper: 0.1 to 1; the
            code's ``1 - U[0, 0.8]`` is [0.2, 1]).
        perlin_scale: Range ``[min, max)`` of the Perlin lattice exponent (DRAEM: 0 to 6);
            the scale is ``2**k`` cells per axis, larger = finer blobs.
        threshold: Perlin threshold (DRAEM: 0.5); higher gives smaller, sparser blobs.
        perlin_in_region: With a spec region, use only the Perlin blobs inside it.
        augment: How many of DRAEM's ten texture augmentations to apply (DRAEM: 3).
        jitter: Extra random brightness/contrast/gamma of the texture (0 = none, as DRAEM).
        max_tries: Redraws of the Perlin mask before falling back (to the region, or an error).
    """

    textures: str | None = None
    texture_source: str = "auto"
    opacity: tuple[float, float] = (0.1, 1.0)
    perlin_scale: tuple[int, int] = (0, 6)
    threshold: float = 0.5
    perlin_in_region: bool = False
    augment: int = 3
    jitter: float = 0.0
    max_tries: int = 10

    def validate(self, source: str, prefix: str) -> None:
        check_texture_fill(self, source, prefix)
        if not 0 <= self.augment <= 10:
            raise DiagError(f"{source}: {prefix}augment must be 0 to 10, got {self.augment}")


@register
class DraemGenerator(TextureGenerator):
    """Perlin blobs + augmented texture, DRAEM's anomaly simulation."""

    kind: ClassVar[str] = "draem"
    Config: ClassVar[type] = DraemConfig
