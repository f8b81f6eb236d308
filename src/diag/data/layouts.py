"""Readers for the dataset layouts users bring, all producing :class:`~diag.data.Sample` lists.

>>> from diag.data import load_dataset
>>> samples = load_dataset("magnetic-tile", "../shared/data/magnetic_tile", split="train")  # doctest: +SKIP
>>> sum(s.label for s in samples)  # doctest: +SKIP

Layouts:

``ksdd2``
    KolektorSDD2: flat ``train/`` and ``test/`` folders of ``<id>.png`` with ``<id>_GT.png``.
    Files that are not such a pair (the official download ships ``10301 (copy).png`` and
    ``10301_GT (copy).png``) are skipped with one warning naming them.
``mvtec``
    MVTec AD (one category): ``train/good``, ``test/<defect>``,
    ``ground_truth/<defect>/<stem>_mask.png``.
``magnetic-tile``
    ``MT_<Class>/Imgs/<name>.jpg`` with the mask ``<name>.png`` beside it; ``MT_Free`` holds the
    defect-free images. There is no official split: ``train``/``test`` is a fixed, seeded,
    per-class split (``test_fraction`` of each class goes to test).
``folder``
    Any folder of images, with an optional folder of masks matched by stem plus a suffix
    (``mask_suffix``, default ``""``). Images without a mask are defect-free.
``anomalib-folder``
    anomalib's ``Folder`` layout, with its option names (:func:`read_anomalib_folder`):
    ``normal_dir`` (required), ``abnormal_dir``, ``mask_dir``, ``normal_test_dir``, each a
    folder (or a list of folders) relative to the root, read recursively. Never guessed by
    ``auto``: it needs these options.
``generated``
    The output folder of ``diag generate`` (read from its manifest).

Labels come from the binary mask (``mask > 127`` has any pixel), never from folder names
alone, so an empty mask in a defect folder is a negative, and a 1-pixel-wide defect is a
positive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from diag.data.sample import Sample
from diag.errors import DiagError, some, warn, where
from diag.imageio import IMAGE_SUFFIXES, image_size, list_images, read_mask

SPLITS = ("train", "test", "all")


def _positive(mask_path: Path | None, image_path: Path) -> int:
    """1 if the mask has a defect pixel; checks the mask's size against its image's."""
    if mask_path is None:
        return 0
    mask = read_mask(mask_path)
    size = image_size(image_path)
    if mask.shape != size:
        raise DiagError(f"mask {where(mask_path)} is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{where(image_path)} is {size[1]}x{size[0]}: masks must match their "
                        "image's size; fix or remove the pair")
    return int(mask.any())


def _check_root(root: Path, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DiagError(f"dataset root {where(root)} does not exist: set dataset.root to the folder "
                        f"that holds the {layout} data")
    if not root.is_dir():
        raise DiagError(f"dataset root {where(root)} is a file, not a folder: point it at the "
                        f"{layout} dataset folder")
    return root


def _in_test(key: str, test_fraction: float, seed: int) -> bool:
    """A stable split: hash of (seed, key) decides, independent of file order and machine."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < test_fraction


def _find_mask(folder: Path, stem: str, suffix: str) -> Path | None:
    for ext in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
        p = folder / f"{stem}{suffix}{ext}"
        if p.is_file():
            return p
    return None


def read_ksdd2(root: Path, split: str = "train", **_: object) -> list[Sample]:
    root = _check_root(root, "ksdd2")
    splits = ["train", "test"] if split == "all" else [split]
    out: list[Sample] = []
    stray: list[str] = []
    for sp in splits:
        folder = root / sp
        if not folder.is_dir():
            raise DiagError(f"ksdd2 layout expects a folder {where(folder)}: the root must hold "
                            "train/ and test/ with <id>.png and <id>_GT.png")
        files = list_images(folder)
        masks = {p.stem[:-3]: p for p in files if p.stem.endswith("_GT")}
        paired: set[str] = set()
        for img in files:
            mask = masks.get(img.stem)
            if img.stem.endswith("_GT") or mask is None:
                continue
            paired.add(img.stem)
            out.append(Sample(f"{sp}/{img.stem}", img, mask, _positive(mask, img)))
        stray += [f"{sp}/{p.name}" for p in files if p.stem not in paired
                  and not (p.stem.endswith("_GT") and p.stem[:-3] in paired)]
    if stray:
        warn(f"ksdd2 {where(root)}: skipped {len(stray)} file(s) that are not an <id>.png + "
             f"<id>_GT.png pair: {some(stray)} (the official download ships such copies; "
             "delete them to silence this)")
    return out


def read_mvtec(root: Path, split: str = "train", **_: object) -> list[Sample]:
    root = _check_root(root, "mvtec")
    out: list[Sample] = []
    if split in ("train", "all"):
        good = root / "train" / "good"
        if not good.is_dir():
            raise DiagError(f"mvtec layout expects {where(good)}: point dataset.root at one "
                            "category folder (e.g. mvtec/bottle)")
        out += [Sample(f"train/good/{p.stem}", p) for p in list_images(good)]
    if split in ("test", "all"):
        test = root / "test"
        if not test.is_dir():
            raise DiagError(f"mvtec layout expects {where(test)}: point dataset.root at one "
                            "category folder (e.g. mvtec/bottle)")
        for cls in sorted(d for d in test.iterdir() if d.is_dir()):
            for p in list_images(cls):
                if cls.name == "good":
                    out.append(Sample(f"test/good/{p.stem}", p))
                    continue
                mask = _find_mask(root / "ground_truth" / cls.name, p.stem, "_mask")
                if mask is None:
                    raise DiagError(f"defect image {where(p)} has no mask ground_truth/{cls.name}/"
                                    f"{p.stem}_mask.png: add it, or move the image out")
                out.append(Sample(f"test/{cls.name}/{p.stem}", p, mask, _positive(mask, p), cls.name))
    return out


def read_magnetic_tile(root: Path, split: str = "train", test_fraction: float = 0.3,
                       split_seed: int = 0, **_: object) -> list[Sample]:
    root = _check_root(root, "magnetic-tile")
    class_dirs = sorted(d for d in root.glob("MT_*") if (d / "Imgs").is_dir())
    if not class_dirs:
        raise DiagError(f"no MT_<Class>/Imgs folders under {where(root)}: the magnetic-tile layout "
                        "needs e.g. MT_Free/Imgs and MT_Crack/Imgs")
    out: list[Sample] = []
    for d in class_dirs:
        cls = d.name[3:].lower()
        imgs = d / "Imgs"
        for p in sorted(imgs.iterdir()):
            if (p.suffix.lower() not in (".jpg", ".jpeg", ".bmp") or p.name.startswith(".")
                    or p.is_dir()):
                continue
            if split != "all" and _in_test(f"{d.name}/{p.stem}", test_fraction, split_seed) != (
                    split == "test"):
                continue
            mask = imgs / f"{p.stem}.png"
            mask_path = mask if mask.is_file() else None
            if mask_path is None and cls != "free":
                raise DiagError(f"defect image {where(p)} has no mask {p.stem}.png beside it: "
                                "add the mask or move the image to MT_Free")
            label = _positive(mask_path, p)
            out.append(Sample(f"{d.name}/{p.stem}", p, mask_path, label,
                              cls if label else ""))
    return out


def read_folder(root: Path, split: str = "all", images: str = ".", masks: str | None = None,
                mask_suffix: str = "", test_fraction: float = 0.3, split_seed: int = 0,
                **_: object) -> list[Sample]:
    root = _check_root(root, "folder")
    img_dir = root / images
    if not img_dir.is_dir():
        state = "is a file, not a folder" if img_dir.exists() else "does not exist"
        raise DiagError(f"images folder {where(img_dir)} {state}: set dataset.images")
    mask_dir = root / masks if masks else None
    if mask_dir is not None and not mask_dir.is_dir():
        state = "is a file, not a folder" if mask_dir.exists() else "does not exist"
        raise DiagError(f"masks folder {where(mask_dir)} {state}: set dataset.masks")
    exclude = (mask_suffix,) if mask_suffix and (mask_dir is None or mask_dir == img_dir) else ()
    out: list[Sample] = []
    for p in list_images(img_dir, exclude_suffixes=exclude):
        if split != "all" and _in_test(p.stem, test_fraction, split_seed) != (split == "test"):
            continue
        mask = _find_mask(mask_dir, p.stem, mask_suffix) if mask_dir is not None else None
        out.append(Sample(p.stem, p, mask, _positive(mask, p)))
    return out


def _anomalib_dirs(root: Path, value: object, field: str) -> list[Path]:
    """The folders of one anomalib-folder option (a folder or a list), each checked."""
    if value is None:
        return []
    names = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    out = []
    for name in names:
        folder = (root / Path(name).expanduser()).resolve()
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise DiagError(f"anomalib-folder {field} {where(folder)} {state}: set dataset.{field} "
                            f"to a folder relative to the root {where(root)}")
        out.append(folder)
    return out


def _anomalib_files(folders: list[Path], field: str, extensions: tuple[str, ...]) -> list[Path]:
    """Image files under ``folders`` (recursively, as anomalib globs ``**/*``; hidden files and
    folders skipped), sorted by path as anomalib sorts them."""
    files: list[Path] = []
    for folder in folders:
        found = [p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        if not found:
            raise DiagError(f"anomalib-folder {field} {where(folder)} holds no image (files ending "
                            f"in {', '.join(extensions)}): point dataset.{field} at the images, or "
                            "set dataset.extensions")
        files += found
    return sorted(files, key=str)


def _anomalib_masks(images: list[Path], masks: list[Path]) -> list[Path]:
    """Masks paired with abnormal images the way anomalib's ``make_folder_dataset`` pairs them:
    both lists sorted by path, matched one to one, and each image's stem must be part of its
    mask's stem (``000.png`` with ``000.png`` or ``000_mask.png``)."""
    if len(images) != len(masks):
        stems = {m.stem for m in masks}
        lonely = [str(p) for p in images if not any(p.stem in s for s in stems)]
        hint = f" (e.g. no mask for {where(lonely[0])})" if lonely else ""
        raise DiagError(f"anomalib-folder: {len(images)} abnormal image(s) but {len(masks)} "
                        f"mask(s){hint}: anomalib pairs them one to one in sorted order, so "
                        "give every abnormal image a mask of the same name, or drop mask_dir")
    for img, mask in zip(images, masks, strict=True):
        if img.stem not in mask.stem:
            raise DiagError(f"anomalib-folder: abnormal image {where(img)} is paired with mask "
                            f"{where(mask)} (anomalib pairs the sorted lists): name each mask "
                            "after its image (000.png -> 000.png or 000_mask.png)")
    return masks


def read_anomalib_folder(root: Path, split: str = "train", normal_dir: object = None,
                         abnormal_dir: object = None, mask_dir: object = None,
                         normal_test_dir: object = None, extensions: object = None,
                         test_fraction: float = 0.3, split_seed: int = 0,
                         **_: object) -> list[Sample]:
    """anomalib's ``Folder`` layout (anomalib 2.x ``make_folder_dataset``), with its option
    names; every folder option is relative to ``root`` and may be a list of folders.

    * ``train``: the ``normal_dir`` images; without ``normal_test_dir``, a seeded
      ``test_fraction`` of them (``split_seed``, stable per image) is held out as test, as
      anomalib's datamodule samples normal test images from the training set.
    * ``test``: the ``abnormal_dir`` images, plus ``normal_test_dir`` (or the held-out
      normals); ``all``: everything.

    Masks pair with abnormal images as in anomalib (sorted lists, the image's stem inside the
    mask's). Labels follow diag's rule: an abnormal image whose mask is empty is defect-free.
    Without ``mask_dir`` every abnormal image is a positive without a mask file (a mask of
    all False): real-masks regions and copy-paste skip it with a note. The defect class is
    the image's folder name.
    """
    root = _check_root(root, "anomalib-folder")
    if normal_dir is None:
        raise DiagError(f"layout anomalib-folder needs normal_dir (the defect-free images, relative "
                        f"to {where(root)}): set dataset.normal_dir")
    if mask_dir is not None and abnormal_dir is None:
        raise DiagError("anomalib-folder: mask_dir is set but abnormal_dir is not: set "
                        "dataset.abnormal_dir to the defective images the masks belong to")
    exts = tuple(str(e).lower() for e in extensions) if isinstance(extensions, (list, tuple)) \
        else (str(extensions).lower(),) if extensions else IMAGE_SUFFIXES
    base = root.resolve()
    fields = {"normal_dir": normal_dir, "normal_test_dir": normal_test_dir,
              "abnormal_dir": abnormal_dir, "mask_dir": mask_dir}
    files = {f: _anomalib_files(_anomalib_dirs(root, v, f), f, exts) if v is not None else []
             for f, v in fields.items()}
    seen: dict[Path, str] = {}
    for f, paths in files.items():
        for p in paths:
            if p in seen:
                raise DiagError(f"anomalib-folder: {where(p)} is under both {seen[p]} and {f}: "
                                "the folders must not overlap (e.g. normal_dir '.' takes every "
                                "image under the root)")
            seen[p] = f
    masks = _anomalib_masks(files["abnormal_dir"], files["mask_dir"]) if mask_dir is not None \
        else [None] * len(files["abnormal_dir"])

    def ident(p: Path, field: str) -> str:
        try:
            rel = p.relative_to(base)
        except ValueError:  # a folder outside the root
            rel = Path(field, *p.parts[-2:])
        return rel.with_suffix("").as_posix()

    out: list[Sample] = []
    held_out = normal_test_dir is None
    for p in files["normal_dir"]:
        sid = ident(p, "normal_dir")
        in_test = held_out and _in_test(sid, test_fraction, split_seed)
        if split == "all" or in_test == (split == "test"):
            out.append(Sample(sid, p))
    if split in ("test", "all"):
        out += [Sample(ident(p, "normal_test_dir"), p) for p in files["normal_test_dir"]]
        for p, m in zip(files["abnormal_dir"], masks, strict=True):
            label = _positive(m, p) if m is not None else 1
            out.append(Sample(ident(p, "abnormal_dir"), p, m, label, p.parent.name if label else ""))
    return out


def read_generated(root: Path, split: str = "all", **_: object) -> list[Sample]:
    """Samples of a ``diag generate`` output folder (all positives), in plan order."""
    from diag.data.manifest import read_manifest, sample_files

    root = _check_root(root, "generated")
    records = read_manifest(root)
    if not records and not (root / "manifest.jsonl").exists():
        raise DiagError(f"{where(root)} has no manifest.jsonl: it is not a diag generate output "
                        "folder (make one with `diag generate SPEC --out DIR`)")
    out = []
    for r in records:
        files = sample_files(root, r)
        if files is None:
            continue
        defect = r.get("defect") if isinstance(r.get("defect"), str) else ""
        out.append(Sample(r["id"], files[0], files[1], 1, defect, meta=r))
    if not out:
        raise DiagError(f"{where(root)} holds no usable generated sample: none of the "
                        f"{len(records)} readable record(s) of its manifest has its image and "
                        "mask on disk (damaged lines are skipped): run diag generate there "
                        "again to complete it")
    return out


READERS: dict[str, Callable[..., list[Sample]]] = {
    "ksdd2": read_ksdd2,
    "mvtec": read_mvtec,
    "magnetic-tile": read_magnetic_tile,
    "folder": read_folder,
    "anomalib-folder": read_anomalib_folder,
    "generated": read_generated,
}


def load_dataset(layout: str, root: str | Path, split: str = "train", **options: object
                 ) -> list[Sample]:
    """Read a dataset into a list of samples, sorted by id.

    Args:
        layout: One of ``ksdd2``, ``mvtec``, ``magnetic-tile``, ``folder``,
            ``anomalib-folder``, ``generated``, or ``auto`` (guessed from the folder's contents;
            never ``anomalib-folder``, which needs its folder options).
        root: The dataset folder.
        split: ``train``, ``test`` or ``all``.
        **options: Layout options (``test_fraction``, ``split_seed``, ``images``, ``masks``,
            ``mask_suffix``; anomalib-folder: ``normal_dir``, ``abnormal_dir``, ``mask_dir``,
            ``normal_test_dir``, ``extensions``).

    Raises:
        DiagError: unknown layout or split, missing folders, or no images found.
    """
    if layout == "auto":
        layout = detect_layout(Path(root))
    if layout not in READERS:
        raise DiagError(f"unknown dataset layout '{layout}': use one of {', '.join(READERS)}")
    if split not in SPLITS:
        raise DiagError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    samples = READERS[layout](Path(root), split=split, **options)
    if not samples:
        raise DiagError(f"no images found in {where(root)} for layout '{layout}', split '{split}': "
                        f"check dataset.root and dataset.layout (images end in "
                        f"{', '.join(IMAGE_SUFFIXES)})")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DiagError(f"two images in {where(root)} share the id '{dup}': rename one")
    return sorted(samples, key=lambda s: s.id)


def detect_layout(root: Path) -> str:
    """Guess a folder's layout from the names inside it."""
    root = _check_root(root, "dataset")
    if (root / "manifest.jsonl").is_file() or any(root.glob("manifest-*.jsonl")):
        return "generated"
    if any(root.glob("MT_*/Imgs")):
        return "magnetic-tile"
    if (root / "train" / "good").is_dir():
        return "mvtec"
    if (root / "train").is_dir() and any((root / "train").glob("*_GT.png")):
        return "ksdd2"
    return "folder"


def counts(samples: list[Sample]) -> dict[str, int]:
    """Positive and negative counts of a sample list."""
    pos = int(np.sum([s.label for s in samples]))
    return {"total": len(samples), "positive": pos, "negative": len(samples) - pos}


def describe(samples: list[Sample]) -> str:
    c = counts(samples)
    return f"{c['total']} images ({c['positive']} defective, {c['negative']} defect-free)"


