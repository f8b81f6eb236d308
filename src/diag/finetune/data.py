"""Instance images (real defects of the training split) and class images (made by the base
model, for prior preservation), as training tensors.

Only ``split: train`` is read (the config refuses test and all), and only its defective
images (label 1): the instance images' ids are recorded in ``finetune.json``.
"""

from __future__ import annotations

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


def to_tensor(arr: np.ndarray, size: int, center_crop: bool) -> Any:
    """A ``uint8`` image as a ``3 x size x size`` float tensor in [-1, 1]: the shorter side
    resized to ``size`` and centre-cropped, or the whole image resized to a square."""
    import torch
    from PIL import Image

    img = Image.fromarray(to_rgb(arr))
    if center_crop:
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return x / 127.5 - 1.0


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
