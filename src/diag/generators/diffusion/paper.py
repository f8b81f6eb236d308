"""``resize: paper``: the reference DIAG code's way through the diffusion model, step for step.

What ``generate_augmented_images.py`` of intelligolabs/DIAG does with each sample, and what
diag does with ``resize: paper``:

1. the defect-free image (as RGB) and the mask (0/255, as RGB) are each stretched to
   ``R x R`` (``R`` = 1024 for SDXL) with PIL's default bicubic filter, ignoring the aspect
   ratio, so the mask's edges turn grey;
2. the pipeline is called with ``height = width = R`` and ``padding_mask_crop = 2``: diffusers
   takes the box around every non-zero mask pixel, pads it by 2 px, grows it to the aspect of
   ``R x R`` (a square) inside the image, crops image and mask to it, resizes both to
   ``R x R`` keeping their aspect (``fill``; the mask is then binarised at 0.5), inpaints,
   resizes the result back into the box and lays it over the stretched image with the grey
   mask as alpha (``image_processor.apply_overlay``): the model never sees the whole image;
3. the ``R x R`` result is stretched back to the source's size (bicubic).

``paper_overlay: diffusers`` keeps that image as it is: the reference's output, its whole
background resampled twice (the manifest records ``background: resampled``).
``paper_overlay: exact`` (the default) pastes only the region of it into the untouched source,
so the mask is exact and every other pixel byte-identical. docs/generate.md lists every
difference between ``paper``, ``crop`` and the reference code.

>>> import numpy as np
>>> region = np.zeros((630, 230), bool); region[300:340, 100:104] = True
>>> image, mask = stretch_inputs(np.zeros((630, 230), np.uint8), region, 1024)
>>> image.size, mask.mode
((1024, 1024), 'RGB')
>>> model_crop_box(mask, 1024, pad=2)  # the square the model sees, in the stretched image
(419, 485, 489, 555)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from diag.errors import DiagError
from diag.generators.diffusion.window import Window, paste_back
from diag.imageio import to_gray, to_rgb

RESAMPLE = Image.BICUBIC  # PIL's default for Image.resize, which the reference code relies on
OVERLAYS = ("exact", "diffusers")


def stretch_inputs(image: np.ndarray, region: np.ndarray, resolution: int
                   ) -> tuple[Image.Image, Image.Image]:
    """Image and mask as the reference gives them to the pipeline: RGB, stretched to a square."""
    size = (resolution, resolution)
    img = Image.fromarray(to_rgb(image)).resize(size, RESAMPLE)
    mask = Image.fromarray(to_rgb(region.astype(np.uint8) * 255)).resize(size, RESAMPLE)
    return img, mask


def model_crop_box(mask: Image.Image, resolution: int, pad: int) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` of the box diffusers crops around ``mask`` for ``padding_mask_crop``
    (its own ``get_crop_region``, so the manifest records exactly what the model saw)."""
    from diffusers.image_processor import VaeImageProcessor

    return tuple(int(v) for v in VaeImageProcessor.get_crop_region(mask, resolution, resolution,
                                                                     pad=pad))


def check_mask_survives(mask: Image.Image, sample: str) -> None:
    """Raise when no pixel of the stretched mask reaches 0.5, where diffusers binarises it: the
    model would repaint nothing (a thin region of a large image shrinks away)."""
    if int(np.asarray(mask).max()) < 128:
        raise DiagError(f"the region of {sample} vanishes when stretched to the model's square "
                        "(resize: paper): use resize: crop, or grow regions with "
                        "regions.dilate")


def compose_back(source: np.ndarray, output: Image.Image, alpha: np.ndarray, overlay: str
                 ) -> tuple[np.ndarray, str]:
    """The model's ``R x R`` output at the source's size; returns ``(image, background)``.

    ``diffusers``: the whole output stretched back, as the reference does (background
    ``resampled``). ``exact``: only where ``alpha > 0`` is it blended into the source
    (background ``exact``).
    """
    h, w = source.shape[:2]
    if overlay == "diffusers":
        back = np.asarray(output.convert("RGB").resize((w, h), RESAMPLE))
        return (to_gray(back) if source.ndim == 2 else back.copy()), "resampled"
    if overlay != "exact":
        raise ValueError(f"unknown paper_overlay '{overlay}'; use one of {', '.join(OVERLAYS)}")
    whole = Window((0, h, 0, w), (output.height, output.width))
    return paste_back(source, output, whole, alpha, RESAMPLE), "exact"
