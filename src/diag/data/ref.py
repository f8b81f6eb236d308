"""A dataset named in a config file: folder, layout, split and layout options.

The generation spec (``dataset:``) and the training config (``data.train``, ``data.test``) both
use it, so a dataset is written the same way everywhere.

>>> ref = DatasetRef(root="data/mt", layout="magnetic-tile", split="test")
>>> ref.options()["test_fraction"]
0.3
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diag.data.layouts import READERS, SPLITS, load_dataset
from diag.data.sample import Sample
from diag.errors import DiagError


@dataclass
class DatasetRef:
    """A dataset folder read by :func:`diag.data.load_dataset`.

    Attributes:
        root: Dataset folder (relative paths: relative to the config file).
        layout: ksdd2, mvtec, magnetic-tile, folder, generated, or auto.
        split: train, test or all (generate from training images only, to keep test honest).
        test_fraction: Layouts without an official split: share of images held out as test.
        split_seed: Seed of that split.
        split_file: A saved split (:mod:`diag.data.split`): ``split`` takes its ``train`` or
            ``test`` ids, whatever the layout (``diag bench`` writes one per experiment).
        images: folder layout: image subfolder.
        masks: folder layout: mask subfolder (none: every image is defect-free).
        mask_suffix: folder layout: mask stem = image stem + this suffix.
    """

    root: str
    layout: str = "auto"
    split: str = "train"
    test_fraction: float = 0.3
    split_seed: int = 0
    split_file: str | None = None
    images: str = "."
    masks: str | None = None
    mask_suffix: str = ""

    def validate(self, source: str, prefix: str) -> None:
        if not self.root.strip():
            raise DiagError(f"{source}: {prefix}root is empty: set it to the dataset folder")
        if self.layout != "auto" and self.layout not in READERS:
            raise DiagError(f"{source}: {prefix}layout is '{self.layout}', expected one of auto, "
                            f"{', '.join(READERS)}")
        if self.split not in SPLITS:
            raise DiagError(f"{source}: {prefix}split is '{self.split}', expected one of "
                            f"{', '.join(SPLITS)}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise DiagError(f"{source}: {prefix}test_fraction must be in [0, 1), "
                            f"got {self.test_fraction}")

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`diag.data.load_dataset`."""
        return {"test_fraction": self.test_fraction, "split_seed": self.split_seed,
                "images": self.images, "masks": self.masks, "mask_suffix": self.mask_suffix}

    def load(self) -> list[Sample]:
        """Read the samples this reference points at, sorted by id."""
        if self.split_file:
            from diag.data.split import apply_split

            samples = load_dataset(self.layout, self.root, "all", **self.options())
            return apply_split(samples, self.split_file, self.split)
        return load_dataset(self.layout, self.root, self.split, **self.options())
