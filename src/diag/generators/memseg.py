"""MemSeg-style defects: a Perlin-noise region filled with a texture, blended into the image.

The paper's baseline (DIAG, Table I), after MemSeg's anomaly simulation (Yang et al., "MemSeg: A
semi-supervised method for image surface defect detection using differences and commonalities",
EAAI 2023, Sec. 3.2): a Perlin noise map is thresholded into a mask ``M``; a texture ``I_n``
(from a texture folder such as DTD, or a "structural" texture made by mirroring and shuffling a
4x4 grid of the image itself) fills it, blended with opacity ``delta``:
``I_a = (1 - M) * I + M * (delta * I_n + (1 - delta) * I)``, ``delta ~ U[0.15, 1]``.

>>> import numpy as np
>>> from diag.generators import make_generator, Request
>>> gen = make_generator("memseg", {"opacity": [0.5, 0.5]})
>>> img = np.full((64, 64), 100, np.uint8)
>>> out = gen.generate(Request(image=img, region=None, seed=3))
>>> out.image.shape, out.mask.dtype
((64, 64), dtype('bool'))

When the spec gives a region, the defect fills exactly that region (so methods can be compared
on the same masks); with ``perlin_in_region: true`` it is the Perlin blobs inside the region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from diag.generators.base import Generator, Request, Result, blend, register, rng_for
from diag.generators.compositing import check_region, check_texture_fill
from diag.generators.perlin import perlin_defect_mask
from diag.generators.textures import draem_augment, jitter, pick_texture, texture_files


@dataclass
class MemSegConfig:
    """Parameters of the MemSeg-style generator.

    Attributes:
        textures: Folder of texture images (DTD in the paper); empty uses ``texture_source``.
        texture_source: ``auto`` (folder, else donors, else structure), ``folder``,
            ``donors`` (other defect-free images) or ``structure`` (the image, shuffled).
        opacity: Range of the texture's blending factor ``delta`` (MemSeg: 0.15 to 1).
        perlin_scale: Range of the Perlin lattice exponent: scale ``2**k``, larger = finer.
        threshold: Perlin threshold; higher gives smaller blobs (MemSeg/DRAEM: 0.5).
        perlin_in_region: With a spec region, use only the Perlin blobs inside it.
        jitter: Strength of random brightness/contrast/gamma changes of the texture.
        max_tries: Redraws of the Perlin mask before falling back to the whole region.
    """

    textures: str | None = None
    texture_source: str = "auto"
    opacity: tuple[float, float] = (0.15, 1.0)
    perlin_scale: tuple[int, int] = (0, 6)
    threshold: float = 0.5
    perlin_in_region: bool = False
    jitter: float = 0.3
    max_tries: int = 10

    def validate(self, source: str, prefix: str) -> None:
        check_texture_fill(self, source, prefix)


class TextureGenerator(Generator):
    """Memseg and draem: Perlin blobs (or the spec's region) filled with a texture, blended in
    with an opacity drawn from ``config.opacity``; draem also augments the texture
    (``config.augment``)."""

    def __init__(self, config: Any, device: str = "cpu") -> None:
        super().__init__(config, device)
        self._files = texture_files(config.textures) if config.textures else []

    def identity(self) -> dict[str, Any]:
        return {"textures": self.config.textures}

    def texture_defect(self, request: Request, augment: int | None = None
                       ) -> tuple[np.random.Generator, np.ndarray, np.ndarray, dict[str, Any]]:
        """The Perlin mask and the texture that fills it.

        Draws, in this order, from the request's seeded generator: the mask (the given region,
        or Perlin blobs), the texture, DRAEM's augmentations (when ``augment`` is not None) and
        the jitter. Returns the generator (for the caller's blending draws), mask, texture and
        what to record in the manifest.
        """
        c = self.config
        region = check_region(self.kind, request.image, request.region)
        rng = rng_for(request.seed)
        mask = perlin_defect_mask(request.image.shape[:2], rng, region, c.perlin_in_region,
                                  c.perlin_scale, c.threshold, c.max_tries, self.kind)
        texture, origin = pick_texture(request.image, rng, self._files, request.donors,
                                       c.texture_source)
        info: dict[str, Any] = {"texture": origin}
        if augment is not None:
            texture, info["augment"] = draem_augment(texture, rng, augment)
        if c.jitter > 0:
            texture = jitter(texture, rng, c.jitter)
        return rng, mask, texture, info

    def generate(self, request: Request) -> Result:
        rng, mask, texture, info = self.texture_defect(request, getattr(self.config, "augment",
                                                                        None))
        opacity = float(rng.uniform(*self.config.opacity))  # MemSeg's delta, DRAEM's beta
        out = blend(request.image, texture, mask.astype(np.float32) * opacity)
        return Result(out, mask, {**info, "opacity": round(opacity, 4)})


@register
class MemSegGenerator(TextureGenerator):
    """Perlin region + texture, the MemSeg-style baseline of the DIAG paper."""

    kind: ClassVar[str] = "memseg"
    Config: ClassVar[type] = MemSegConfig
