"""Texture sources for texture-filling generators (MemSeg, DRAEM): a folder, donors, or the image.

>>> import numpy as np
>>> img = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)
>>> structure_texture(img, np.random.default_rng(0), grid=4).shape
(64, 64)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from diag.data.sample import Sample
from diag.errors import DiagError, where
from diag.imageio import list_images, read_image, to_gray, to_rgb


def texture_files(folder: str | Path) -> list[Path]:
    """Image files of a texture folder (searched recursively), sorted; error when none."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DiagError(f"texture folder {where(folder)} does not exist: set generator.textures "
                        "to a folder of texture images (e.g. DTD's images/), or leave it empty")
    files = sorted(p for d in [folder, *sorted(x for x in folder.rglob("*") if x.is_dir())]
                   for p in list_images(d))
    if not files:
        raise DiagError(f"texture folder {where(folder)} holds no images: add some or unset it")
    return files


def fit_like(texture: np.ndarray, like: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop / resize ``texture`` to the shape and channel count of ``like``."""
    h, w = like.shape[:2]
    th, tw = texture.shape[:2]
    scale = max(h / th, w / tw)
    if scale > 1:
        img = Image.fromarray(texture).resize((max(w, round(tw * scale)), max(h, round(th * scale))),
                                              Image.BICUBIC)
        texture = np.asarray(img)
        th, tw = texture.shape[:2]
    y = int(rng.integers(0, th - h + 1))
    x = int(rng.integers(0, tw - w + 1))
    crop = texture[y:y + h, x:x + w]
    return to_gray(crop) if like.ndim == 2 else to_rgb(crop)


def _ramp_blend(base: int, factor: float) -> np.ndarray:
    """What ``Image.blend`` makes of every byte value ``v`` blended over the constant ``base``
    with ``factor`` (a 256-entry table: Pillow blends each byte alone, in every mode)."""
    ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
    return np.asarray(Image.blend(Image.new("L", (256, 1), base), ramp, factor)).reshape(256)


def jitter(texture: np.ndarray, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """Random brightness, contrast and gamma changes (the usual DRAEM/MemSeg perturbations).

    The same bytes as Pillow's ``ImageEnhance.Brightness`` then ``ImageEnhance.Contrast``
    (whose grey level is the mean luminance of the brightened texture) then the gamma curve
    ``255 * (v / 255) ** gamma`` in float32, applied as one 256-entry lookup table: each step
    maps byte values to byte values, so only the contrast's mean needs the whole texture.
    """
    img = Image.fromarray(texture)
    bands = len(img.getbands())
    bright = _ramp_blend(0, float(rng.uniform(1 - strength, 1 + strength)))
    if bands == 1:  # its luminance is itself
        hist = np.bincount(texture.ravel(), minlength=256)
        total = int(bright.astype(np.int64) @ hist)
    else:  # Pillow's luminance of the brightened colours
        hist = np.asarray(img.point(bright.tolist() * bands).convert("L").histogram())
        total = int(np.arange(256, dtype=np.int64) @ hist)
    contrast = _ramp_blend(int(total / (img.width * img.height) + 0.5),
                           float(rng.uniform(1 - strength, 1 + strength)))
    gamma = float(rng.uniform(1 - strength, 1 + strength))
    return _lookup(texture, [_gamma_table(gamma)[contrast][bright]])


def structure_texture(image: np.ndarray, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    """MemSeg's structural texture: the image mirrored/rotated, cut into a grid and shuffled."""
    arr = image
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if rng.random() < 0.5:
        arr = arr[::-1, :]
    h, w = arr.shape[:2]
    grid = max(1, min(grid, h, w))  # images smaller than the grid: fewer, 1-pixel tiles
    gh, gw = h // grid, w // grid
    tiles = [arr[i * gh:(i + 1) * gh, j * gw:(j + 1) * gw] for i in range(grid) for j in range(grid)]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[i * grid + j]] for j in range(grid)], axis=1)
            for i in range(grid)]
    shuffled = np.concatenate(rows, axis=0)
    out = arr.copy()
    out[: shuffled.shape[0], : shuffled.shape[1]] = shuffled
    return np.ascontiguousarray(out)


def pick_texture(image: np.ndarray, rng: np.random.Generator, files: Sequence[Path],
                 donors: Sequence[Sample], source: str) -> tuple[np.ndarray, str]:
    """A texture the shape of ``image`` and where it came from.

    ``source`` is ``folder`` (a file of ``files``), ``donors`` (another defect-free image),
    ``structure`` (the image itself, shuffled), or ``auto`` (folder if any files, else donors if
    any, else structure).
    """
    if source == "auto":
        source = "folder" if files else ("donors" if donors else "structure")
    if source == "folder":
        if not files:
            raise DiagError("texture source 'folder' needs generator.textures set to a folder of "
                            "images")
        path = files[int(rng.integers(0, len(files)))]
        return fit_like(read_image(path), image, rng), str(path)
    if source == "donors":
        if not donors:
            return structure_texture(image, rng), "structure"
        donor = donors[int(rng.integers(0, len(donors)))]
        return fit_like(donor.image, image, rng), f"donor:{donor.id}"
    if source == "structure":
        return structure_texture(image, rng), "structure"
    raise DiagError(f"unknown texture source '{source}': use auto, folder, donors or structure")


def _gamma_table(gamma: float) -> np.ndarray:
    """``255 * (v / 255) ** gamma`` in float32, rounded, for every byte value ``v``."""
    values = np.arange(256, dtype=np.float32) / 255.0
    return np.clip(np.rint(255.0 * values**gamma), 0, 255).astype(np.uint8)


def _lookup(arr: np.ndarray, tables: Sequence[np.ndarray]) -> np.ndarray:
    """``arr`` (``HxW`` or ``HxWx3``) with each channel's bytes mapped through its 256-entry
    table (one table for all channels, or one per channel)."""
    img = Image.fromarray(arr)
    bands = len(img.getbands())
    flat = np.concatenate(list(tables) * (bands // len(tables)))
    return np.array(img.point(flat.tolist()))


def _draem_op(arr: np.ndarray, op: str, rng: np.random.Generator) -> np.ndarray:
    """One of DRAEM's ten texture augmentations (imgaug names in the comments)."""
    from PIL import ImageOps

    if op == "gamma":  # iaa.GammaContrast((0.5, 2.0), per_channel=True)
        return _lookup(arr, [_gamma_table(float(rng.uniform(0.5, 2.0)))
                             for _ in range(1 if arr.ndim == 2 else 3)])
    if op == "brightness":  # iaa.MultiplyAndAddToBrightness(mul=(0.8, 1.2), add=(-30, 30))
        out = (np.arange(256, dtype=np.float32) * float(rng.uniform(0.8, 1.2))
               + float(rng.uniform(-30, 30)))
        return _lookup(arr, [np.clip(np.rint(out), 0, 255).astype(np.uint8)])
    img = Image.fromarray(arr)
    if op == "sharpness":  # iaa.pillike.EnhanceSharpness() (factor 0..2)
        return np.asarray(ImageEnhance.Sharpness(img).enhance(float(rng.uniform(0.0, 2.0))))
    if op == "hue-saturation":  # iaa.AddToHueAndSaturation((-50, 50), per_channel=True)
        if arr.ndim == 2:
            return arr
        hsv = np.asarray(img.convert("HSV")).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-50, 51))) % 256
        hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-50, 51)), 0, 255)
        return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))
    if op == "solarize":  # iaa.Solarize(0.5, threshold=(32, 128))
        if rng.random() >= 0.5:
            return arr
        return np.asarray(ImageOps.solarize(img, int(rng.integers(32, 129))))
    if op == "posterize":  # iaa.Posterize() (1 to 8 bits)
        return np.asarray(ImageOps.posterize(img, int(rng.integers(1, 9))))
    if op == "invert":  # iaa.Invert()
        return 255 - arr
    if op == "autocontrast":  # iaa.pillike.Autocontrast() (cutoff 0..20 %)
        return np.asarray(ImageOps.autocontrast(img, cutoff=float(rng.uniform(0, 20))))
    if op == "equalize":  # iaa.pillike.Equalize()
        return np.asarray(ImageOps.equalize(img))
    if op == "rotate":  # iaa.Affine(rotate=(-45, 45)); corners filled with the mean, not black
        fill = int(arr.mean()) if arr.ndim == 2 else tuple(int(v) for v in arr.mean((0, 1)))
        return np.asarray(img.rotate(float(rng.uniform(-45, 45)), Image.BILINEAR, fillcolor=fill))
    raise ValueError(f"unknown DRAEM augmentation '{op}'")


DRAEM_OPS = ("gamma", "brightness", "sharpness", "hue-saturation", "solarize", "posterize",
             "invert", "autocontrast", "equalize", "rotate")


def draem_augment(texture: np.ndarray, rng: np.random.Generator, count: int = 3
                  ) -> tuple[np.ndarray, list[str]]:
    """DRAEM's texture perturbation: ``count`` of its ten augmentations, distinct, random order.

    DRAEM (Zavrtanik et al., ICCV 2021, ``data_loader.py``) draws three of: gamma contrast,
    brightness multiply/add, sharpness, hue/saturation, solarize, posterize, invert,
    autocontrast, equalize and rotation, and applies them in sequence to the anomaly source
    image. Returns the texture and the names of the operations applied (for the manifest).
    """
    count = max(0, min(int(count), len(DRAEM_OPS)))
    ops = [DRAEM_OPS[i] for i in rng.choice(len(DRAEM_OPS), size=count, replace=False)]
    out = texture
    for op in ops:
        out = np.ascontiguousarray(_draem_op(out, op, rng), dtype=np.uint8)
    return out, ops
