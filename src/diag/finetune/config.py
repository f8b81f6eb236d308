"""The fine-tuning config: a YAML file turned into a validated :class:`Config`.

Example (``docs/finetune.md``)::

    model: stable-diffusion-v1-5/stable-diffusion-v1-5
    dataset: {root: examples/magnetic_tile, layout: magnetic-tile, split: train}
    item: magnetic tile          # instance prompt "sks magnetic tile", class prompt "magnetic tile"
    num_class_images: 200
    epochs: 50

>>> cfg = parse_config({"dataset": {"root": "d"}, "item": "tile"}, ["rank=8"])
>>> cfg.rank, cfg.instance_prompt, cfg.class_prompt
(8, 'sks tile', 'tile')

Defaults are the In&Out reference's (Capogrosso et al., VISAPP 2024: kohya LoRA, dim 32,
alpha 16, conv dim 4, conv alpha 1, lr 1e-5, cosine with 3 restarts, min-SNR gamma 5,
batch 12, 50 epochs, seed 1234, 512 px), done the diffusers / peft way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diag.config import apply_overrides, from_dict, load_yaml, resolve_path, to_dict
from diag.data.ref import DatasetRef
from diag.errors import DiagError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_INPAINTING_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"  # diag's generator
MODES = ("text2img", "inpainting")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup")
PRECISIONS = ("auto", "no", "fp16", "bf16")
OPTIMIZERS = ("adamw8bit", "adamw")
# Fields that may change between a run and its resumption: they do not change what is trained.
RUN_FIELDS = ("max_steps", "checkpoint_every", "log_every", "device", "class_batch_size",
              "threads")


@dataclass
class Config:
    """What ``diag finetune`` trains, on what, and how.

    Attributes:
        mode: ``text2img`` (In&Out: the whole image from the prompt) or ``inpainting`` (an
            inpainting pipeline learns to paint the real defects into their masks: each
            instance image is cropped to a square window around its defect, the defect's mask
            is the inpainting mask and the image without it the masked image; the adapter
            then serves the ``diffusion`` generator, whose outputs keep their masks).
        model: Base pipeline: hub id or local diffusers folder. ``text2img``: Stable Diffusion
            1.x / 2.x (one text encoder, a 4-channel UNet; default SD 1.5). ``inpainting``: an
            SD 1.x / 2.x or SDXL inpainting pipeline (a 9-channel UNet; default SDXL
            inpainting, the diffusion generator's model).
        dataset: The real dataset; its defective images (label 1) of ``split: train`` are the
            instance images. ``test`` and ``all`` are refused (test images are never read).
        instance_limit: Use only the first this many instance images (by id); null: all.
        item: What the images show, e.g. ``magnetic tile``: the class prompt.
        token: The rare token naming this item's defects: instance prompt ``"<token> <item>"``.
        instance_prompt: Override of the instance prompt (default: ``"<token> <item>"``).
        class_prompt: Override of the class prompt (default: ``item``).
        prior_preservation: Train on class images too (DreamBooth's prior preservation loss).
        num_class_images: ``text2img``: class images the base model generates (once, cached in
            ``OUT/class_images``). ``inpainting``: defect-free images of the training split
            (the first this many by id), each with an instance mask, which the model learns
            to fill with the undamaged surface under the class prompt (no generation).
        class_steps: Inference steps per class image.
        class_guidance: Classifier-free guidance scale of the class images.
        class_batch_size: Class images generated per pipeline call.
        prior_loss_weight: Weight of the prior (class image) loss.
        rank: LoRA rank of the linear layers (and 1x1 convolutions), as kohya's ``networks.lora``
            (the reference's): in the UNet's transformer blocks (attention projections,
            feed-forward, proj_in / proj_out) and, with ``conv_rank``, the ResNet blocks'
            time embedding projections and shortcuts; in the text encoder(s) the attention
            and MLP layers.
        alpha: Their LoRA alpha (scale alpha / rank).
        conv_rank: LoRA rank of the UNet's 3x3 convolutions (ResNet conv1 / conv2, down- and
            up-samplers); 0: none (and no LoRA in the ResNet blocks at all).
        conv_alpha: Their LoRA alpha.
        train_text_encoder: Train LoRA on the text encoder too (kohya's default, as the
            reference). ``auto``: yes for one-text-encoder pipelines (SD 1.x / 2.x), no for
            SDXL (two encoders: not supported).
        text_encoder_lr: Learning rate of the text encoder's LoRA (null: ``lr``).
        clip_skip: Text embeddings from this many layers before the text encoder's last
            (kohya's numbering: 1 = the last layer, 2 = the penultimate one, then the final
            layer norm). ``auto``: 2 for ``text2img`` (the reference's), 1 for ``inpainting``
            (what the diffusion generator's SD pipelines use; SDXL always takes its own
            penultimate layer).
        optimizer: ``adamw8bit`` (bitsandbytes' 8-bit AdamW, the reference's; CPU and CUDA)
            or ``adamw`` (torch's).
        lr: Learning rate of the UNet's LoRA weights.
        weight_decay: AdamW weight decay.
        lr_scheduler: diffusers ``get_scheduler`` name.
        lr_cycles: Cycles of ``cosine_with_restarts``.
        lr_warmup_steps: Warm-up steps.
        max_grad_norm: Gradient clipping norm (0: none).
        min_snr_gamma: Min-SNR loss weighting gamma (0: off).
        noise_offset: Noise offset (0: off).
        batch_size: Instance images per step (each paired with a class image).
        repeats: Times each instance image comes per epoch (kohya's ``num_repeats``; the
            reference's dataset config: 10).
        epochs: Epochs of ``repeats`` passes over the instance images; the schedule's length
            is epochs x steps per epoch.
        max_steps: Stop after this many steps in all (null: run every epoch); raise it and
            rerun to continue the same run.
        resolution: Square training (and class image) size in pixels, a multiple of 8.
        buckets: ``text2img``: train each instance image at the aspect ratio of its own
            (kohya's aspect-ratio buckets, the reference's ``enable_bucket``): sides
            ``bucket_min`` to ``bucket_max`` in steps of ``bucket_step``, area at most
            ``resolution`` squared; the image is resized to cover its bucket and
            centre-cropped, so nothing of a long image is lost. A batch holds one bucket.
            False: squares (``center_crop``).
        bucket_min: Smallest bucket side (null: half of ``resolution``; 256 at 512, the
            reference's).
        bucket_max: Largest bucket side (null: twice ``resolution``; 1024 at 512).
        bucket_step: Bucket sides are multiples of this (null: 64, or half of ``resolution``
            when smaller).
        center_crop: ``text2img`` without buckets: centre-crop to a square after resizing the
            shorter side (false: resize the whole image to a square).
        context: ``inpainting``: margin around the defect's box in the square window, as a
            fraction of the box's larger side (as the diffusion generator's ``context``).
        min_window: ``inpainting``: smallest window side in source pixels.
        random_flip: Flip instance images horizontally at random.
        mixed_precision: auto (fp16 on CUDA, full precision on CPU), no, fp16 or bf16.
        gradient_checkpointing: auto (on GPU), true or false.
        seed: Seed of the LoRA init, data order, noise, timesteps and class images.
        device: auto, cpu, cuda or cuda:N.
        checkpoint_every: Save a resumable checkpoint every this many steps (and at the end).
        log_every: Seconds between log lines when stderr is not a terminal.
        threads: torch CPU threads (0: torch's default, one per core). On a busy shared
            machine 1 can be many times faster than 2.
    """

    mode: str = "text2img"
    model: str = ""
    dataset: DatasetRef | None = None
    instance_limit: int | None = None
    item: str = ""
    token: str = "sks"
    instance_prompt: str | None = None
    class_prompt: str | None = None
    prior_preservation: bool = True
    num_class_images: int = 200
    class_steps: int = 50
    class_guidance: float = 7.5
    class_batch_size: int = 4
    prior_loss_weight: float = 1.0
    rank: int = 32
    alpha: float = 16.0
    conv_rank: int = 4
    conv_alpha: float = 1.0
    train_text_encoder: bool | str = "auto"
    text_encoder_lr: float | None = None
    clip_skip: int | str = "auto"
    optimizer: str = "adamw8bit"
    lr: float = 1e-5
    weight_decay: float = 1e-2
    lr_scheduler: str = "cosine_with_restarts"
    lr_cycles: int = 3
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    min_snr_gamma: float = 5.0
    noise_offset: float = 0.0
    batch_size: int = 12
    repeats: int = 10
    epochs: int = 50
    max_steps: int | None = None
    resolution: int = 512
    buckets: bool = True
    bucket_min: int | None = None
    bucket_max: int | None = None
    bucket_step: int | None = None
    center_crop: bool = True
    context: float = 1.0
    min_window: int = 64
    random_flip: bool = False
    mixed_precision: str = "auto"
    gradient_checkpointing: bool | str = "auto"
    seed: int = 1234
    device: str = "auto"
    checkpoint_every: int = 500
    log_every: float = 10.0
    threads: int = 0

    @property
    def skip(self) -> int:
        """``clip_skip`` with ``auto`` resolved (kohya's numbering)."""
        if self.clip_skip == "auto":
            return 2 if self.mode == "text2img" else 1
        return int(self.clip_skip)

    def __post_init__(self) -> None:
        if self.bucket_min is None:
            self.bucket_min = max(8, self.resolution // 2)
        if self.bucket_max is None:
            self.bucket_max = self.resolution * 2
        if self.bucket_step is None:
            self.bucket_step = max(8, min(64, self.resolution // 2))
        if not self.model.strip():  # unset: the mode's default
            self.model = DEFAULT_INPAINTING_MODEL if self.mode == "inpainting" else DEFAULT_MODEL
        if self.instance_prompt is None and self.item.strip():
            self.instance_prompt = f"{self.token} {self.item}".strip()
        if self.class_prompt is None and self.item.strip():
            self.class_prompt = self.item

    def validate(self, source: str, prefix: str) -> None:
        def bad(name: str, why: str) -> DiagError:
            return DiagError(f"{source}: {prefix}{name} {why}")

        if self.dataset is None:
            raise bad("dataset", "is missing: set dataset.root (and layout) to the real dataset; "
                                 "its training split's defective images are the instance images")
        if self.dataset.split != "train":
            raise bad("dataset.split", f"is '{self.dataset.split}': fine-tuning reads the "
                      "training split only (test images must stay unseen): set dataset.split: train")
        if self.mode not in MODES:
            raise bad("mode", f"is '{self.mode}', expected text2img or inpainting")
        if self.bucket_step < 8 or self.bucket_step % 8 or not (
                self.bucket_step <= self.bucket_min <= self.bucket_max):
            raise bad("bucket_step", f"must be a multiple of 8 with bucket_step <= bucket_min <= "
                                     f"bucket_max (got {self.bucket_step}, {self.bucket_min}, "
                                     f"{self.bucket_max})")
        if self.buckets and self.mode == "text2img" and self.bucket_min > self.resolution:
            raise bad("bucket_min", f"({self.bucket_min}) must be at most resolution "
                                    f"({self.resolution}), or set buckets: false")
        if self.context < 0 or self.min_window < 8:
            raise bad("context", "must be >= 0 and min_window >= 8")
        if not self.item.strip():
            raise bad("item", "is missing: set it to what the images show, e.g. item: magnetic tile")
        if self.instance_limit is not None and self.instance_limit < 1:
            raise bad("instance_limit", f"must be >= 1 or null (all), got {self.instance_limit}")
        for name in ("num_class_images", "conv_rank", "lr_warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("rank", "batch_size", "epochs", "class_steps", "class_batch_size", "repeats",
                     "checkpoint_every", "lr_cycles"):
            if getattr(self, name) < 1:
                raise bad(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "alpha"):
            if getattr(self, name) <= 0:
                raise bad(name, f"must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "prior_loss_weight", "max_grad_norm", "min_snr_gamma",
                     "noise_offset", "conv_alpha", "log_every"):
            if getattr(self, name) < 0:
                raise bad(name, f"must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", f"must be >= 1 or null (all epochs), got {self.max_steps}")
        if self.resolution < 8 or self.resolution % 8:
            raise bad("resolution", f"must be a positive multiple of 8, got {self.resolution}")
        if self.lr_scheduler not in SCHEDULERS:
            raise bad("lr_scheduler", f"is '{self.lr_scheduler}', expected one of "
                                      f"{', '.join(SCHEDULERS)}")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"is '{self.optimizer}', expected adamw8bit or adamw")
        if self.text_encoder_lr is not None and self.text_encoder_lr <= 0:
            raise bad("text_encoder_lr", f"must be > 0 or null (lr), got {self.text_encoder_lr}")
        if isinstance(self.train_text_encoder, str) and self.train_text_encoder != "auto":
            raise bad("train_text_encoder", f"is '{self.train_text_encoder}', expected auto, "
                                            "true or false")
        if (isinstance(self.clip_skip, str) and self.clip_skip != "auto") or (
                not isinstance(self.clip_skip, str) and self.clip_skip < 1):
            raise bad("clip_skip", f"is {self.clip_skip!r}, expected auto or a whole number >= "
                                   "1 (1: the last layer, 2: the penultimate one)")
        if self.mixed_precision not in PRECISIONS:
            raise bad("mixed_precision", f"is '{self.mixed_precision}', expected one of "
                                         f"{', '.join(PRECISIONS)}")
        if isinstance(self.gradient_checkpointing, str) and self.gradient_checkpointing != "auto":
            raise bad("gradient_checkpointing", f"is '{self.gradient_checkpointing}', expected "
                                                "auto, true or false")
        if self.prior_preservation and self.num_class_images < 1:
            raise bad("num_class_images", "must be >= 1 with prior_preservation: true (or set "
                                          "prior_preservation: false)")


def parse_config(data: dict[str, Any], overrides: list[str] | None = None,
                 source: str = "config", base: Path | None = None) -> Config:
    """Validate a config dict (after ``--set`` overrides); resolve paths against ``base``."""
    data = apply_overrides(copy.deepcopy(data), overrides)
    cfg = from_dict(Config, data, source)
    if base is not None and cfg.dataset is not None:
        cfg.dataset.root = resolve_path(cfg.dataset.root, base)
        if cfg.dataset.split_file:
            cfg.dataset.split_file = resolve_path(cfg.dataset.split_file, base)
        local = Path(cfg.model).expanduser()
        if cfg.model.startswith((".", "~")) or (not local.is_absolute() and (base / local).is_dir()):
            cfg.model = resolve_path(cfg.model, base)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read and validate a fine-tuning config file (relative paths: against its folder)."""
    path = Path(path)
    return parse_config(load_yaml(path), overrides, f"config '{path}'", path.parent)



def config_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data (for finetune.json and the run identity)."""
    return to_dict(cfg)


def identity(cfg: Config) -> dict[str, Any]:
    """The fields that define the run: a rerun with other values is another run."""
    data = config_dict(cfg)
    for name in RUN_FIELDS:
        data.pop(name, None)
    if data.get("mode") == "text2img":  # runs made before the modes existed stay the same run
        for name in ("mode", "context", "min_window"):
            data.pop(name, None)
    return data
