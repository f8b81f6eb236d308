"""Reading and writing images and masks, safely.

Images are returned as ``uint8`` arrays, ``HxW`` for grayscale and ``HxWx3`` for colour; masks
as ``bool`` arrays ``HxW`` (anything above the threshold is defect). Every write is atomic
(:mod:`diag.files`): a killed process never leaves a half-written file behind.

>>> import numpy as np, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "m.png"
>>> write_mask(p, np.eye(4, dtype=bool))
>>> read_mask(p).sum()
np.int64(4)
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from diag.errors import DiagError, where
from diag.files import write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_THRESHOLD = 127
MAX_PIXELS_ENV = "DIAG_MAX_IMAGE_PIXELS"
_PILLOW_MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def _pixel_limit() -> None:
    """Pillow refuses images over ``Image.MAX_IMAGE_PIXELS`` x 2 (decompression bombs); a user
    with genuinely huge images (line-scan cameras) raises the limit with DIAG_MAX_IMAGE_PIXELS
    (0: no limit)."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    Image.MAX_IMAGE_PIXELS = _PILLOW_MAX_PIXELS
    if value:
        try:
            n = int(float(value))
        except ValueError:
            raise DiagError(f"{MAX_PIXELS_ENV}={value!r} is not a number of pixels: set it to an "
                            "integer (0 for no limit) or unset it") from None
        Image.MAX_IMAGE_PIXELS = n if n > 0 else None


@contextlib.contextmanager
def _no_bomb_warning() -> Iterator[None]:
    """Pillow warns (several lines on stderr) over ``MAX_IMAGE_PIXELS`` and refuses over twice
    that; diag keeps the refusal (one line, :func:`_too_big`) and drops the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _too_big(path: Path, exc: Exception) -> DiagError:
    return DiagError(f"image {where(path)} is larger than Pillow's safety limit against "
                     f"decompression bombs ({exc}): if the file is genuine, raise the limit with "
                     f"{MAX_PIXELS_ENV}=<pixels> (0 for none), else replace or remove it")


def _open(path: Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DiagError(f"image file {where(path)} does not exist: check the path or the dataset root")
    _pixel_limit()
    try:
        with _no_bomb_warning():
            img = Image.open(path)
            img.load()
    except Image.DecompressionBombError as exc:
        raise _too_big(path, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DiagError(
            f"cannot read image {where(path)} ({type(exc).__name__}: {exc}): the file is corrupt or "
            "not an image; replace or remove it"
        ) from None
    return img


def to_array(img: Image.Image) -> np.ndarray:
    """Convert a PIL image to ``uint8``: ``HxW`` for grayscale modes, ``HxWx3`` otherwise.

    16- and 32-bit images are read as 0..65535 when a value exceeds 255, else as 0..255; float
    images as 0..1 when no value exceeds 1 (NaN as 0), else like integer images. Palette
    images stay grayscale when their palette is; alpha is dropped.
    """
    if img.mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F", "P") and not _palette_is_colour(img):
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
            top = arr.max(initial=0.0)
            hi = 65535.0 if top > 255 else 1.0 if img.mode == "F" and top <= 1.0 else 255.0
            return np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    if img.mode == "LA":
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _palette_is_colour(img: Image.Image) -> bool:
    if img.mode != "P":
        return False
    rgb = np.asarray(img.convert("RGB"))
    return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as ``uint8``: ``HxW`` if it is grayscale, ``HxWx3`` otherwise."""
    return to_array(_open(Path(path)))


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(height, width)`` of an image file without decoding its pixels."""
    path = Path(path)
    _pixel_limit()
    try:
        with _no_bomb_warning(), Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise DiagError(f"image file {where(path)} does not exist: check the path") from None
    except Image.DecompressionBombError as exc:
        raise _too_big(path, exc) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DiagError(f"cannot read image {where(path)} ({exc}): replace or remove it") from None
    return h, w


def read_mask(path: str | Path, threshold: int = MASK_THRESHOLD) -> np.ndarray:
    """Read a mask as a boolean ``HxW`` array: a pixel is defect when its value exceeds threshold.

    Colour masks count a pixel as defect when any channel exceeds the threshold, so thin
    anti-aliased strokes of any colour survive. A label mask holding only 0 and 1 (the class
    index convention of segmentation tools) counts its 1s as defect.
    """
    arr = to_array(_open(Path(path)))
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.max(initial=0) == 1:
        return arr > 0
    return arr > threshold


def _resize_axis(mask: np.ndarray, n: int, axis: int) -> np.ndarray:
    size = mask.shape[axis]
    if n == size:
        return mask
    if n > size:  # enlarge: nearest neighbour (pixel centres), as PIL's NEAREST
        idx = np.minimum(((np.arange(n) + 0.5) * size / n).astype(np.int64), size - 1)
        return np.take(mask, idx, axis=axis)
    starts = (np.arange(n) * size) // n  # shrink: each source pixel falls in exactly one bin
    return np.logical_or.reduceat(mask, starts, axis=axis)


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask to ``shape`` (``(H, W)``), keeping it binary and keeping every
    defect: along an axis that shrinks, an output pixel is set when any source pixel it covers
    is set, so a 1-pixel scratch stays a connected 1-pixel scratch instead of vanishing;
    along an axis that grows, nearest neighbour.

    >>> m = np.zeros((10, 40), bool); m[4, :] = True  # a 1-pixel line
    >>> small = resize_mask(m, (3, 13))
    >>> small.sum(axis=1).tolist()
    [0, 13, 0]
    """
    h, w = max(1, int(shape[0])), max(1, int(shape[1]))
    mask = np.asarray(mask, dtype=bool)
    return np.ascontiguousarray(_resize_axis(_resize_axis(mask, h, 0), w, 1))


def encode_png(arr: np.ndarray) -> bytes:
    """Encode a ``uint8`` array (``HxW`` or ``HxWx3``) as PNG bytes, deterministically."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(f"expected uint8 image, got {arr.dtype}")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_image(path: str | Path, arr: np.ndarray) -> None:
    """Write a ``uint8`` image as PNG, atomically."""
    write_bytes(path, encode_png(arr))


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write a boolean mask as a binary 0/255 single-channel PNG, atomically."""
    write_bytes(path, encode_png(np.asarray(mask, dtype=bool).astype(np.uint8) * 255))


def list_images(folder: Path, exclude_suffixes: Iterable[str] = ()) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name, skipping stems ending in any of
    ``exclude_suffixes`` (used to skip masks stored beside images)."""
    excl = tuple(exclude_suffixes)
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if excl and p.stem.endswith(excl):
                continue
            out.append(p)
    return out


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """Replicate a grayscale image to three channels (colour images pass through)."""
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def to_gray(arr: np.ndarray) -> np.ndarray:
    """Convert an RGB ``uint8`` image to luminance the way Pillow does (ITU-R 601-2)."""
    if arr.ndim == 2:
        return arr
    return np.asarray(Image.fromarray(arr).convert("L"), dtype=np.uint8)
