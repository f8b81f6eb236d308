"""The one record every dataset reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diag.errors import DiagError, where
from diag.imageio import image_size, read_image, read_mask


@dataclass(frozen=True)
class Sample:
    """One image of a dataset, with its defect mask and label.

    Pixels are loaded on demand (``sample.image``, ``sample.mask``) so that a dataset of
    thousands of images costs only its file list until it is used.

    Attributes:
        id: Unique, filesystem-safe name within its dataset (e.g. ``MT_Crack/exp1_num_4``).
        path: The image file.
        mask_path: The mask file, or None for a defect-free image without a mask file.
        label: 1 for a defective (positive) image, 0 for a defect-free one. Readers set it
            from the binary mask (any defect pixel makes a positive) where a mask exists.
        defect: Defect class name where the layout has one (``crack``), else ``""``.
        meta: Free-form extras a reader or the generate manifest attaches.
    """

    id: str
    path: Path
    mask_path: Path | None = None
    label: int = 0
    defect: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def image(self) -> np.ndarray:
        """The image as ``uint8`` (``HxW`` grayscale or ``HxWx3`` colour)."""
        return read_image(self.path)

    @property
    def mask(self) -> np.ndarray:
        """The binary defect mask (``bool HxW``); all False when the sample has no mask file
        (also for a positive without one, e.g. anomalib-folder without ``mask_dir``: its defect
        pixels are unknown, so real-masks regions and copy-paste skip it)."""
        if self.mask_path is None:
            return np.zeros(self.size, dtype=bool)
        mask = read_mask(self.mask_path)
        if mask.shape != self.size:
            raise DiagError(
                f"mask {where(self.mask_path)} is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{where(self.path)} is {self.size[1]}x{self.size[0]}: masks must match their "
                "image's size; fix or remove the pair"
            )
        return mask

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the image, read from the file header."""
        return image_size(self.path)
