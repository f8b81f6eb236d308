"""A dataset named in a config file: folder, layout, split and layout options.

The generation spec (``dataset:``) and the training config (``data.train``, ``data.test``) both
use it, so a dataset is written the same way everywhere.

>>> ref = DatasetRef(root="data/mt", layout="magnetic-tile", split="test")
>>> ref.options()["test_fraction"]
0.3
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diag.data.layouts import READERS, SPLITS, load_dataset
from diag.data.sample import Sample
from diag.errors import DiagError

OMIT_NONE = {"omit_none": True}  # diag.config.to_dict leaves the field out while it is None
ANOMALIB_FIELDS = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir", "extensions")


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
        normal_dir: anomalib-folder layout (anomalib's ``Folder`` option names): folder(s) of
            defect-free images, relative to ``root``; required.
        abnormal_dir: anomalib-folder: folder(s) of defective images (the defect class is the
            image's folder name).
        mask_dir: anomalib-folder: folder(s) of masks, paired with the abnormal images as
            anomalib pairs them (sorted file lists; an image's stem must be in its mask's).
        normal_test_dir: anomalib-folder: folder(s) of defect-free test images; without it a
            seeded ``test_fraction`` of ``normal_dir`` is held out as test.
        extensions: anomalib-folder: image file endings to read (default: every image type
            diag reads).
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
    # anomalib-folder only; left out of spec.yaml / config.yaml when unset (older files match)
    normal_dir: str | list[str] | None = field(default=None, metadata=OMIT_NONE)
    abnormal_dir: str | list[str] | None = field(default=None, metadata=OMIT_NONE)
    mask_dir: str | list[str] | None = field(default=None, metadata=OMIT_NONE)
    normal_test_dir: str | list[str] | None = field(default=None, metadata=OMIT_NONE)
    extensions: list[str] | None = field(default=None, metadata=OMIT_NONE)

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
        self._validate_anomalib(source, prefix)

    def _validate_anomalib(self, source: str, prefix: str) -> None:
        given = [n for n in ANOMALIB_FIELDS if getattr(self, n) is not None]
        if self.layout != "anomalib-folder":
            if given:
                raise DiagError(f"{source}: {prefix}{given[0]} is an option of layout "
                                f"anomalib-folder, but layout is '{self.layout}': set "
                                f"{prefix}layout: anomalib-folder, or remove {prefix}{given[0]}")
            return
        for name in ANOMALIB_FIELDS[:4]:
            value = getattr(self, name)
            folders = value if isinstance(value, list) else [value] if value is not None else []
            if value is not None and (not folders or any(not f.strip() for f in folders)):
                raise DiagError(f"{source}: {prefix}{name} is empty: give a folder relative to "
                                f"{prefix}root (or a list of folders)")
        if self.normal_dir is None:
            raise DiagError(f"{source}: {prefix}normal_dir is required for layout anomalib-folder: "
                            f"set it to the folder of defect-free images, relative to {prefix}root")
        if self.mask_dir is not None and self.abnormal_dir is None:
            raise DiagError(f"{source}: {prefix}mask_dir is set but abnormal_dir is not: set "
                            f"{prefix}abnormal_dir to the folder of defective images the masks "
                            "belong to")
        bad = [e for e in self.extensions or [] if not e.startswith(".") or len(e) < 2]
        if self.extensions is not None and (bad or not self.extensions):
            raise DiagError(f"{source}: {prefix}extensions must be a list of file endings that "
                            f"start with a dot (e.g. ['.png', '.jpg']), got {self.extensions!r}")

    def options(self) -> dict[str, Any]:
        """Keyword options for :func:`diag.data.load_dataset`."""
        opts: dict[str, Any] = {
            "test_fraction": self.test_fraction, "split_seed": self.split_seed,
            "images": self.images, "masks": self.masks, "mask_suffix": self.mask_suffix}
        opts.update({n: getattr(self, n) for n in ANOMALIB_FIELDS if getattr(self, n) is not None})
        return opts

    def load(self) -> list[Sample]:
        """Read the samples this reference points at, sorted by id."""
        if self.split_file:
            from diag.data.split import apply_split

            samples = load_dataset(self.layout, self.root, "all", **self.options())
            return apply_split(samples, self.split_file, self.split)
        return load_dataset(self.layout, self.root, self.split, **self.options())
