"""Training, validation and test sets for the classifier, and the tensors fed to it.

A training set is built from parts: the real negatives of ``data.train``, its real positives
(all = full-shot, none = zero-shot, or a number), and ``naug`` generated positives taken from
one or more ``diag generate`` folders. A stratified, seeded share of it is held out for
validation. Every image is checked (readable, mask the same size as its image) before training
starts, so a bad file fails in seconds with its name, not an hour into a run.

>>> order = epoch_order([0, 0, 1, 1], balance=False, seed=0, epoch=0)
>>> sorted(order)
[0, 1, 2, 3]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diag.classify.config import DEFAULT_VAL_FRACTION, DataConfig, share_counts
from diag.classify.models import MEAN_STD
from diag.data import DatasetRef, Sample, load_dataset
from diag.errors import DiagError, where
from diag.imageio import image_size, read_image


@dataclass(frozen=True)
class Item:
    """One image of a classifier set: the sample, its label, and where it came from."""

    key: str
    sample: Sample
    label: int
    source: str


@dataclass
class SplitData:
    """The sets of one run and how they were made (for the metadata)."""

    train: list[Item]
    val: list[Item]
    test: list[Item] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _hash01(*parts: object) -> float:
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def real_items(ref: DatasetRef, positives: int | str, seed: int = 0) -> list[Item]:
    """Real negatives of ``ref`` plus its positives per ``positives`` (all / none / a number)."""
    samples = ref.load()
    neg = [s for s in samples if s.label == 0]
    pos = [s for s in samples if s.label == 1]
    if positives == "none":
        pos = []
    elif isinstance(positives, int):
        if positives > len(pos):
            raise DiagError(f"data.real_positives is {positives} but {where(ref.root)} has only "
                            f"{len(pos)} positives in split '{ref.split}': lower it or use all")
        pos = sorted(pos, key=lambda s: _hash01(seed, "real", s.id))[:positives]
    return [Item(f"real/{s.id}", s, s.label, "real") for s in sorted(neg + pos, key=lambda s: s.id)]


def load_generated(root: str | Path, what: str) -> list[Sample]:
    """The samples of a ``diag generate`` folder (damaged manifest lines are skipped); an
    error says how the user gave the folder (``what``: ``data.generated``, ``--generated``)."""
    try:
        return load_dataset("generated", root, "all")
    except DiagError as exc:
        raise DiagError(f"{what}: {exc}") from None


def generated_items(folders: list[str], naug: int | None, seed: int = 0,
                    shares: list[float] | None = None) -> list[Item]:
    """``naug`` positives over all generate folders (all when None), chosen by a seeded hash;
    with ``shares``, ``share_counts(naug, shares)`` from each folder in turn.

    The hash order makes the choice independent of file order, and a smaller ``naug`` a
    subset of a larger one.

    Raises:
        DiagError: a folder or its manifest is missing, or ``naug`` exceeds what is there.
    """
    names = [Path(f).name for f in folders]
    items: list[Item] = []
    if shares is not None and naug is not None:
        picked: list[Item] = []
        for i, (folder, count) in enumerate(zip(folders, share_counts(naug, shares),
                                                strict=True)):
            one = generated_items([folder], None, seed)
            if count > len(one):
                raise DiagError(f"data.naug {naug} with naug_shares {shares} takes {count} "
                                f"images from {where(Path(folder))}, which holds only "
                                f"{len(one)}: lower naug or generate more")
            tag = names[i] if names.count(names[i]) == 1 else f"{i}-{names[i]}"
            chosen = sorted(one, key=lambda it: _hash01(seed, it.key))[:count]
            picked += [Item(f"gen/{tag}/{it.sample.id}", it.sample, 1, f"generated:{tag}")
                       for it in chosen]
        return sorted(picked, key=lambda it: it.key)
    for i, folder in enumerate(folders):
        root = Path(folder)
        if not root.is_dir():
            raise DiagError(f"generated folder {where(root)} does not exist: make it with "
                            "`diag generate SPEC --out DIR` or fix data.generated")
        if not (root / "manifest.jsonl").is_file() and not any(root.glob("manifest-*.jsonl")):
            raise DiagError(f"generated folder {where(root)} has no manifest.jsonl: it is not a "
                            "finished diag generate output; run (or resume) diag generate there")
        tag = names[i] if names.count(names[i]) == 1 else f"{i}-{names[i]}"
        for s in load_generated(root, "data.generated"):
            items.append(Item(f"gen/{tag}/{s.id}", s, 1, f"generated:{tag}"))
    if naug is not None:
        if naug > len(items):
            raise DiagError(f"data.naug is {naug} but the generated folders hold only "
                            f"{len(items)} images: lower naug or generate more")
        items = sorted(items, key=lambda it: _hash01(seed, it.key))[:naug]
    return sorted(items, key=lambda it: it.key)


def split_validation(items: list[Item], fraction: float, seed: int
                     ) -> tuple[list[Item], list[Item]]:
    """Hold out ``fraction`` of every (source, label) group, chosen by a seeded hash."""
    if fraction <= 0:
        return list(items), []
    groups: dict[tuple[str, int], list[Item]] = {}
    for it in items:
        groups.setdefault((it.source, it.label), []).append(it)
    val_keys: set[str] = set()
    for group in groups.values():
        n_val = int(round(fraction * len(group)))
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        ordered = sorted(group, key=lambda it: _hash01(seed, "val", it.key))
        val_keys.update(it.key for it in ordered[:n_val])
    return ([it for it in items if it.key not in val_keys],
            [it for it in items if it.key in val_keys])


def check_items(items: list[Item], what: str) -> None:
    """Every image readable by its header, every mask the size of its image.

    Raises:
        DiagError: naming the first bad file.
    """
    for it in items:
        h, w = image_size(it.sample.path)
        if it.sample.mask_path is not None:
            mh, mw = image_size(it.sample.mask_path)
            if (mh, mw) != (h, w):
                raise DiagError(f"{what}: mask {where(it.sample.mask_path)} is {mw}x{mh} but its "
                                f"image {where(it.sample.path)} is {w}x{h}: masks must match "
                                "their image's size; fix or remove the pair")


def counts(items: list[Item]) -> dict[str, Any]:
    """Totals by label and by source."""
    by_source: dict[str, int] = {}
    for it in items:
        by_source[it.source] = by_source.get(it.source, 0) + 1
    pos = sum(it.label for it in items)
    return {"total": len(items), "positive": pos, "negative": len(items) - pos,
            "by_source": by_source}


def build_sets(data: DataConfig, need_test: bool = True, val_fraction: float | None = None
               ) -> SplitData:
    """Make the train / validation / test sets of a config and check them.

    Args:
        data: The ``data`` part of the config.
        need_test: Read the test set too (False: leave ``test`` empty).
        val_fraction: The validation share to hold out; None: ``data.val_fraction``, or 0.2
            when that is null too (the protocol decides it, see
            :attr:`~diag.classify.config.TrainConfig.effective_val_fraction`).

    Raises:
        DiagError: empty or one-class training or validation set, test set without positives,
            unreadable images, mismatched mask sizes, missing generated folders.
    """
    items: list[Item] = []
    if data.train is not None:
        items += real_items(data.train, data.real_positives, data.naug_seed)
    items += generated_items(data.generated, data.naug, data.naug_seed, data.naug_shares)
    c = counts(items)
    if c["total"] == 0:
        raise DiagError("the training set is empty: set data.train and/or data.generated")
    if c["positive"] == 0 or c["negative"] == 0:
        missing = "positive (defective)" if c["positive"] == 0 else "negative (defect-free)"
        fix = ("add generated folders (data.generated) or real positives (real_positives: all)"
               if c["positive"] == 0 else "set data.train to a dataset with defect-free images")
        raise DiagError(f"the training set has no {missing} images ({c['total']} images, all one "
                        f"class): {fix}")
    val_generated = data.val_generated
    if val_generated == "auto":
        val_generated = not any(it.label and it.source == "real" for it in items)
    held = items if val_generated else [it for it in items if it.source == "real"]
    if val_fraction is None:
        val_fraction = data.val_fraction if data.val_fraction is not None else DEFAULT_VAL_FRACTION
    _, val = split_validation(held, val_fraction, data.val_seed)
    val_keys = {it.key for it in val}
    train = [it for it in items if it.key not in val_keys]
    if val_fraction > 0:
        vc = counts(val)
        if vc["positive"] == 0 or vc["negative"] == 0:
            raise DiagError(f"the validation split ({vc['total']} images) holds only one class: "
                            "raise data.val_fraction, add training images, or set "
                            "data.val_generated: true")
    test: list[Item] = []
    if data.test is not None and need_test:
        test = [Item(f"test/{s.id}", s, s.label, "test") for s in data.test.load()]
        if not any(it.label for it in test):
            raise DiagError(f"the test set {where(data.test.root)} (split '{data.test.split}') has "
                            "no positive images, so AP is undefined: use a test set with defects")
    check_items(train + val, "training set")
    check_items(test, "test set")
    info = {"val_fraction": val_fraction, "train": counts(train), "validation": counts(val),
            "test": counts(test),
            "generated_available": len(generated_items(data.generated, None))
            if data.generated else 0}
    return SplitData(train, val, test, info)


def epoch_order(labels: list[int], balance: bool, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a seeded permutation, or balanced sampling.

    With ``balance``, each position draws a class with probability 1/2, then a sample of that
    class uniformly (with replacement), for as many draws as there are samples.
    """
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    n = len(labels)
    if not balance:
        return torch.randperm(n, generator=g).tolist()
    lab = torch.tensor(labels)
    weights = torch.where(lab == 1, 0.5 / max(int(lab.sum()), 1),
                          0.5 / max(int((lab == 0).sum()), 1)).double()
    return torch.multinomial(weights, n, replacement=True, generator=g).tolist()


class ImageSet(torch.utils.data.Dataset):
    """Images resized to the input size, replicated to 3 channels, normalised.

    ``__getitem__`` returns ``(image float 3xHxW, label float, index)``. Augmentation (flips,
    +-10% brightness and contrast) draws from a generator seeded by (seed, epoch, index), so it
    is the same in any worker and after a resume.
    """

    def __init__(self, items: list[Item], input_size: tuple[int, int], normalize: str,
                 augment: bool = False, seed: int = 0, cache: bool = True,
                 progress: bool | None = None, desc: str = "loading images") -> None:
        self.items = items
        self.height, self.width = int(input_size[0]), int(input_size[1])
        mean, std = MEAN_STD[normalize]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self._cache: list[np.ndarray] | None = None
        if cache:
            self._cache = [self._load(i) for i in tqdm(range(len(items)), desc=desc, unit="img",
                                                       disable=True if progress is False else None,
                                                       leave=False)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, i: int) -> np.ndarray:
        arr = read_image(self.items[i].sample.path)
        img = Image.fromarray(arr)
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.BILINEAR)
        return np.array(img, dtype=np.uint8)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        arr = self._cache[i] if self._cache is not None else self._load(i)
        x = torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0)
        x = x.unsqueeze(0).expand(3, -1, -1) if x.ndim == 2 else x.permute(2, 0, 1)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if rng.random() < 0.5:
                x = x.flip(2)
            if rng.random() < 0.5:
                x = x.flip(1)
            brightness, contrast = rng.uniform(-0.1, 0.1), rng.uniform(0.9, 1.1)
            x = ((x - x.mean()) * contrast + x.mean() + brightness).clamp(0.0, 1.0)
        x = (x - self.mean) / self.std
        return x.contiguous(), torch.tensor(float(self.items[i].label)), i
