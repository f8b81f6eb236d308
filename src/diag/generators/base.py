"""The one interface every defect generator obeys.

A generator is built from its :class:`Config` dataclass (every parameter lives in the spec)
and turns a :class:`Request` (a defect-free image, a region mask, a prompt and a seed) into a
:class:`Result` (the new image and the binary mask of every pixel it changed). Generators are
registered by name, so ``generator: {kind: memseg}`` in a spec finds the class.

>>> import numpy as np
>>> from diag.generators import make_generator, Request
>>> gen = make_generator("memseg", {})
>>> img = np.full((64, 64), 128, np.uint8); region = np.zeros((64, 64), bool); region[20:40, 20:40] = True
>>> res = gen.generate(Request(image=img, region=region, seed=0))
>>> bool((res.image != img)[~res.mask].any())
False

Contract (checked by :func:`check_result` for every sample ``diag generate`` makes; a broken
contract is an error naming the generator, never silently repaired):

* ``result.image`` has the shape and dtype of ``request.image`` (grayscale stays ``HxW``).
* every pixel outside ``result.mask`` equals the source pixel, byte for byte;
* the same request (same seed) gives the same result on the same machine, whichever other
  requests share its :meth:`Generator.generate_batch` call.

A generator that makes whole images (``text2img``, the In&Out baseline) declares it with
``Result(image, mask=None, background="whole")``: no pixel of the source is kept, there is no
mask, and the manifest records ``mask: null``. Only that pairing may leave the mask out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from diag.data.sample import Sample
from diag.errors import DiagError


@dataclass
class Request:
    """What to generate.

    Attributes:
        image: The defect-free source image, ``uint8`` ``HxW`` or ``HxWx3``.
        region: Boolean ``HxW`` mask of where the defect goes.
        seed: Seeds every random choice of the generator for this sample.
        prompt: Text description of the defect (used by text-guided generators).
        negative_prompt: What the defect should not look like.
        donors: Other defect-free images a generator may borrow from (textures, patches).
        defects: Real defective images a generator may borrow from (copy-paste).
        defect: The planned defect type's name (``crack``), for generators that match it to
            dataset classes.
        name: What to call the sample in messages (its id and source file).
    """

    image: np.ndarray
    region: np.ndarray
    seed: int
    prompt: str = ""
    negative_prompt: str = ""
    donors: Sequence[Sample] = ()
    defects: Sequence[Sample] = ()
    defect: str = ""
    name: str = "a sample"


@dataclass
class Result:
    """What a generator made.

    Attributes:
        image: The new image, same shape and dtype as the request's.
        mask: Boolean ``HxW``: every changed pixel is inside it.
        info: Facts worth recording in the manifest (crop box, texture file, ...).
        background: ``exact`` (the contract: no pixel outside ``mask`` changed) or
            ``resampled`` (the whole image went through a resize, as the reference DIAG code
            does; only the diffusion generator's ``paper_overlay: diffusers`` declares it, and
            the manifest records it), or ``whole`` (a whole generated image with no
            mask, ``mask`` None: only the ``text2img`` generator declares it).
    """

    image: np.ndarray
    mask: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)
    background: str = "exact"


class GeneratorError(DiagError):
    """A generator broke its contract (wrong shape, or pixels changed outside its mask)."""


class Generator:
    """Base class of every defect generator.

    A subclass sets ``kind`` (its name in specs) and ``Config`` (its parameter dataclass) and
    implements :meth:`generate`; it is made available by name with :func:`register`. The base
    class keeps the config and device, describes the generator for the manifest, and runs
    batches one sample at a time unless the subclass batches for real (diffusion).
    """

    kind: ClassVar[str] = ""
    Config: ClassVar[type]

    def __init__(self, config: Any, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        # progress of a model call for displays (the web tool): the diffusion generator calls it
        # with (steps done, steps of the call) after every denoising step; others do not call
        # it. It never changes what is made
        self.on_step: Callable[[int, int], None] | None = None

    @property
    def batch_size(self) -> int:
        """Samples the runner hands over per :meth:`generate_batch` call."""
        return max(1, int(getattr(self.config, "batch_size", 1)))

    def identity(self) -> dict[str, Any]:
        """Extra manifest fields naming what the generator was made of (weights, textures)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Identity of the generator for the manifest: kind, model, and :meth:`identity`."""
        return {"generator": self.kind, "model": None, **self.identity()}

    def generate(self, request: Request) -> Result:
        """Make one sample (see the module docstring for the contract)."""
        raise NotImplementedError

    def generate_batch(self, requests: Sequence[Request]) -> list[Result]:
        """Make several samples; each result must equal what :meth:`generate` gives alone."""
        return [self.generate(r) for r in requests]


GENERATORS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a generator available by its ``kind`` name."""
    GENERATORS[cls.kind] = cls
    return cls


def generator_config(kind: str, params: dict[str, Any], source: str = "spec") -> Any:
    """Validate generator parameters against the generator's ``Config`` dataclass."""
    from diag.config import from_dict

    cls = _lookup(kind)
    return from_dict(cls.Config, params, source, prefix="generator.")


def make_generator(kind: str, params: dict[str, Any] | Any | None = None, device: str = "cpu",
                   source: str = "spec") -> Generator:
    """Build a registered generator from its name and parameters (dict or Config)."""
    cls = _lookup(kind)
    config = params if dataclasses.is_dataclass(params) else generator_config(
        kind, dict(params or {}), source)
    return cls(config, device=device)


def _lookup(kind: str) -> type:
    from diag import generators  # noqa: F401  (registers the built-in generators)

    if kind not in GENERATORS:
        raise DiagError(f"unknown generator kind '{kind}': use one of "
                        f"{', '.join(sorted(GENERATORS))}")
    return GENERATORS[kind]


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    """A NumPy generator for one sample (and an optional sub-stream), stable across machines."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF,
                                                         *stream]))


def check_result(kind: str, request: Request, result: Result, sample: str = "a sample"
                 ) -> np.ndarray | None:
    """Check a generator's result against the contract; return its mask as ``bool``.

    A whole image (``background: whole`` with ``mask`` None) has its shape and dtype checked
    and returns None.

    Raises:
        GeneratorError: wrong shape or dtype, a mask of another size, a pixel changed outside
            the mask (unless the result declares ``background: resampled``), no change, or a
            missing mask without ``background: whole`` (or ``whole`` with a mask).
    """
    image = request.image
    if result.image.shape != image.shape or result.image.dtype != image.dtype:
        raise GeneratorError(f"generator '{kind}' returned a {result.image.shape} "
                             f"{result.image.dtype} image for the {image.shape} {image.dtype} "
                             f"source of {sample}: it must keep the source's shape and dtype")
    if result.background == "whole" or result.mask is None:
        if result.background != "whole" or result.mask is not None:
            raise GeneratorError(f"generator '{kind}' returned mask "
                                 f"{'None' if result.mask is None else 'an array'} with "
                                 f"background '{result.background}' for {sample}: a whole "
                                 "image has mask None and background whole, any other result a "
                                 "mask")
        return None
    mask = np.asarray(result.mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise GeneratorError(f"generator '{kind}' returned a {mask.shape} mask for the "
                             f"{image.shape[:2]} image of {sample}")
    if result.background not in ("exact", "resampled"):
        raise GeneratorError(f"generator '{kind}' declared background '{result.background}' for "
                             f"{sample}: use exact or resampled")
    if result.background == "exact":
        changed = result.image != image
        if changed.ndim == 3:
            changed = changed.any(axis=2)
        leak = changed & ~mask
        if leak.any():
            y, x = (int(v[0]) for v in np.nonzero(leak))
            raise GeneratorError(
                f"generator '{kind}' changed {int(leak.sum())} pixels outside its mask in "
                f"{sample} (first at row {y}, column {x}): its mask must cover every pixel it "
                "changes")
    if not mask.any():
        raise GeneratorError(f"generator '{kind}' changed no pixel of {sample} (empty mask): "
                             "check the regions section and the generator's parameters")
    return mask


def paste(source: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep ``generated`` inside ``mask`` and ``source`` everywhere else, exactly."""
    m = mask if source.ndim == 2 else mask[..., None]
    return np.where(m, generated, source).astype(source.dtype)


def blend(source: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha-blend ``other`` over ``source`` (alpha ``HxW`` in [0, 1]); exact where alpha is 0.

    Only the pixels with ``alpha > 0`` are computed (a defect is usually a small part of the
    image); the others are copied from ``source``.
    """
    inside = np.flatnonzero(alpha > 0)  # flat pixel indices: np.take is faster than a bool mask
    a = alpha.reshape(-1)[inside][:, None]
    channels = 1 if source.ndim == 2 else source.shape[2]
    mixed = (np.take(source.reshape(-1, channels), inside, axis=0).astype(np.float32) * (1.0 - a)
             + np.take(other.reshape(-1, channels), inside, axis=0).astype(np.float32) * a)
    out = np.array(source, order="C")
    out.reshape(-1, channels)[inside] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out
