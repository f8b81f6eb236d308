"""Instance images (real defects of the training split) and class images (made by the base
model, for prior preservation), as training tensors.

Only ``split: train`` is read (the config refuses test and all), and only its defective
images (label 1): the instance images' ids are recorded in ``finetune.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from diag.data.sample import Sample
from diag.errors import DiagError, where
from diag.files import remove_temp_files, write_json
from diag.finetune.config import Config
from diag.imageio import read_image, to_rgb, write_image

CLASS_DIR = "class_images"
CLASS_INFO = "class_images.json"


def instance_samples(cfg: Config) -> list[Sample]:
    """The defective images (label 1) of the config's training split, sorted by id."""
    assert cfg.dataset is not None
    if cfg.dataset.split != "train":  # the config refuses it; never read test images here
        raise DiagError(f"dataset.split is '{cfg.dataset.split}': fine-tuning reads the training "
                        "split only: set dataset.split: train")
    samples = [s for s in cfg.dataset.load() if s.label == 1]
    if not samples:
        raise DiagError(f"dataset {where(cfg.dataset.root)} has no defective (label 1) images in "
                        "its training split: the instance images are the real defects; check "
                        "dataset.root and dataset.layout")
    samples = sorted(samples, key=lambda s: s.id)
    return samples[:cfg.instance_limit] if cfg.instance_limit else samples


def _unit(img: Any) -> Any:
    """A PIL RGB image as a ``3 x H x W`` float tensor in [-1, 1]."""
    import torch

    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return x / 127.5 - 1.0


def _cover(img: Any, width: int, height: int) -> Any:
    """A PIL image resized (bicubic) to cover ``width x height``, then centre-cropped to it."""
    from PIL import Image

    w, h = img.size
    scale = height / h if w / h > width / height else width / w
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - width) // 2, (nh - height) // 2
    return img.crop((left, top, left + width, top + height))


def to_tensor(arr: np.ndarray, size: int, center_crop: bool) -> Any:
    """A ``uint8`` image as a ``3 x size x size`` float tensor in [-1, 1]: the shorter side
    resized to ``size`` and centre-cropped, or the whole image resized to a square."""
    from PIL import Image

    img = Image.fromarray(to_rgb(arr))
    if center_crop:
        return _unit(_cover(img, size, size))
    return _unit(img.resize((size, size), Image.Resampling.BICUBIC))


def bucket_sizes(resolution: int, low: int, high: int, step: int) -> list[tuple[int, int]]:
    """Aspect-ratio buckets ``(width, height)`` as kohya's ``make_bucket_resolutions``: sides
    from ``low`` to ``high`` in multiples of ``step``, each bucket's area at most
    ``resolution`` squared, plus the square.

    >>> sizes = bucket_sizes(512, 256, 1024, 64)
    >>> (512, 512) in sizes, (256, 1024) in sizes, (1024, 256) in sizes, len(sizes)
    (True, True, True, 17)
    """
    area = resolution * resolution
    sizes = {(int(math.sqrt(area) // step) * step,) * 2}
    for width in range(low, high + 1, step):
        height = min(high, int((area // width) // step) * step)
        if height >= low:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes)


def to_bucket(arr: np.ndarray, sizes: list[tuple[int, int]]) -> Any:
    """A ``uint8`` image in the bucket of the nearest aspect ratio (kohya's way): resized to
    cover it (bicubic), centre-cropped to it; a ``3 x H x W`` float tensor in [-1, 1]."""
    from PIL import Image

    img = Image.fromarray(to_rgb(arr))
    w, h = img.size
    ratios = np.array([bw / bh for bw, bh in sizes])
    return _unit(_cover(img, *sizes[int(np.argmin(np.abs(ratios - w / h)))]))


def load_instances(paths: list[Path], cfg: Config) -> list[Any]:
    """The instance images as ``3 x H x W`` tensors: in aspect-ratio buckets
    (``buckets: true``), else squares of ``resolution`` (:func:`to_tensor`)."""
    if cfg.buckets:
        sizes = bucket_sizes(cfg.resolution, cfg.bucket_min, cfg.bucket_max, cfg.bucket_step)
        return [to_bucket(read_image(p), sizes) for p in paths]
    return list(load_images(paths, cfg))


def load_images(paths: list[Path], cfg: Config) -> Any:
    """The images as one ``N x 3 x R x R`` tensor."""
    import torch

    return torch.stack([to_tensor(read_image(p), cfg.resolution, cfg.center_crop)
                        for p in paths])


def class_info(cfg: Config) -> dict[str, Any]:
    """What the cached class images depend on (other values: they are made again)."""
    return {"model": cfg.model, "class_prompt": cfg.class_prompt, "resolution": cfg.resolution,
            "steps": cfg.class_steps, "guidance": cfg.class_guidance, "seed": cfg.seed}


def class_image_paths(out: Path, cfg: Config) -> list[Path]:
    return [out / CLASS_DIR / f"class-{i:05d}.png" for i in range(cfg.num_class_images)]


def ensure_class_images(out: Path, cfg: Config, pipe: Any, log: Any) -> tuple[
        list[Path], int]:
    """Generate the missing class images into ``OUT/class_images`` (each from its own seed, so
    an interrupted run resumes and a rerun reuses them); returns the paths and how many were
    generated now. Images made with other settings are replaced."""
    import torch
    from tqdm import tqdm

    folder = out / CLASS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    remove_temp_files(folder)
    info = class_info(cfg)
    info_path = out / CLASS_INFO
    old = None
    if info_path.is_file():
        import json

        try:
            old = json.loads(info_path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
    if old != info:
        for p in folder.glob("class-*.png"):
            p.unlink()
        write_json(info_path, info)
    paths = class_image_paths(out, cfg)
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if not todo:
        return paths, 0
    log(f"generating {len(todo)} class images ('{cfg.class_prompt}', {cfg.class_steps} steps) "
        f"into {folder}")
    pipe.set_progress_bar_config(disable=True)
    start = time.monotonic()
    with tqdm(total=len(todo), desc="class images", unit="img", leave=False) as bar:
        for k in range(0, len(todo), cfg.class_batch_size):
            chunk = todo[k:k + cfg.class_batch_size]
            gens = [torch.Generator("cpu").manual_seed(cfg.seed * 100003 + i) for i in chunk]
            with torch.no_grad():
                images = pipe([cfg.class_prompt] * len(chunk), num_inference_steps=cfg.class_steps,
                              guidance_scale=cfg.class_guidance, height=cfg.resolution,
                              width=cfg.resolution, generator=gens, output_type="np").images
            for i, img in zip(chunk, images, strict=True):
                arr = (np.clip(np.nan_to_num(img), 0, 1) * 255).round().astype(np.uint8)
                write_image(paths[i], arr)
            bar.update(len(chunk))
    log(f"{len(todo)} class images in {time.monotonic() - start:.1f} s")
    return paths, len(todo)


def square_window(mask: np.ndarray, context: float, min_window: int) -> tuple[int, int, int]:
    """``(top, left, side)``: a square around the mask's box with ``context`` margin (a
    fraction of the box's larger side), at least ``min_window`` and at most the image's
    shorter side, moved inside the image.

    >>> m = np.zeros((100, 300), bool); m[40:50, 200:220] = True
    >>> square_window(m, 1.0, 16)
    (25, 190, 40)
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    t, b, left, r = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = int(round(max(b - t, r - left) * (1 + context)))
    side = min(max(side, min_window), h, w)
    top = min(max(int(round((t + b - side) / 2)), 0), h - side)
    left = min(max(int(round((left + r - side) / 2)), 0), w - side)
    return top, left, side


def _crop_pair(image: np.ndarray, mask: np.ndarray, top: int, left: int, side: int,
               size: int) -> tuple[Any, Any]:
    """An image crop as a ``3 x size x size`` tensor in [-1, 1] and its mask crop as a
    ``1 x size x size`` 0/1 tensor (thin defects kept: :func:`diag.imageio.resize_mask`)."""
    import torch
    from PIL import Image

    from diag.imageio import resize_mask

    crop = to_rgb(image)[top:top + side, left:left + side]
    x = _unit(Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC))
    m = resize_mask(mask[top:top + side, left:left + side], (size, size))
    return x, torch.from_numpy(m.astype(np.float32))[None]


def inpainting_examples(samples: list[Sample], cfg: Config) -> tuple[Any, Any, list[int]]:
    """The instance images of the ``inpainting`` mode: each defect image cropped to a square
    window around its mask (:func:`square_window`), as ``N x 3 x R x R`` images, ``N x 1 x R
    x R`` masks, and the windows' sides in source pixels."""
    import torch

    images, masks, sides = [], [], []
    for s in samples:
        if s.mask_path is None:
            raise DiagError(f"defect image {where(s.path)} has no mask file: mode: inpainting "
                            "trains on the defects' masks; give a dataset layout with masks "
                            "(or use mode: text2img)")
        mask = s.mask
        if not mask.any():
            raise DiagError(f"the mask {where(s.mask_path)} of defect image {where(s.path)} is "
                            "empty: fix the mask or drop the image")
        top, left, side = square_window(mask, cfg.context, cfg.min_window)
        x, m = _crop_pair(read_image(s.path), mask, top, left, side, cfg.resolution)
        images.append(x)
        masks.append(m)
        sides.append(side)
    return torch.stack(images), torch.stack(masks), sides


def inpainting_class_examples(cfg: Config, masks: Any, sides: list[int]) -> tuple[
        Any, Any, list[str]]:
    """The class examples of the ``inpainting`` mode: the first ``num_class_images``
    defect-free images of the training split (by id), each cropped to a square of an instance
    window's side at a seeded position and paired with that instance's mask, so the model
    keeps filling a mask with undamaged surface under the class prompt."""
    import torch

    assert cfg.dataset is not None
    free = sorted((s for s in cfg.dataset.load() if s.label == 0), key=lambda s: s.id)
    free = free[:cfg.num_class_images]
    if not free:
        raise DiagError(f"dataset {where(cfg.dataset.root)} has no defect-free (label 0) images "
                        "in its training split: mode: inpainting's prior preservation uses "
                        "them; add some or set prior_preservation: false")
    rng = np.random.default_rng(cfg.seed)
    images, out_masks = [], []
    for j, s in enumerate(free):
        k = j % len(sides)
        arr = read_image(s.path)
        h, w = arr.shape[:2]
        side = min(sides[k], h, w)
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        x, _ = _crop_pair(arr, np.zeros((h, w), bool), top, left, side, cfg.resolution)
        images.append(x)
        out_masks.append(masks[k])
    return torch.stack(images), torch.stack(out_masks), [s.id for s in free]
