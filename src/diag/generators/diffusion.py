"""Zero-shot defect inpainting with a pretrained latent-diffusion model (the DIAG method).

Any diffusers inpainting pipeline works (``AutoPipelineForInpainting``): SDXL inpainting by
default, SD 1.5 / 2 inpainting or others by hub id or local folder. Weights are never
fine-tuned: the prompt describes the defect and the region says where it goes.

>>> from diag.generators import make_generator, Request
>>> gen = make_generator("diffusion", {"model": "out/tiny-model", "steps": 10})  # doctest: +SKIP
>>> result = gen.generate(Request(image=img, region=mask, seed=0, prompt="a thin crack"))  # doctest: +SKIP

Defaults are the reference code's (steps 30, guidance 20, strength 0.99; fp16 on CUDA, fp32 on
CPU). Unlike the reference code, the model sees a window around the region at its native
resolution and the window's aspect ratio (``resize: crop``), and only the region is pasted back,
so the output mask is exact and every other pixel is untouched. ``resize: paper`` stretches the
whole image to a square as the reference code did.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from diag.compose import crop_for_model, paste_back, paste_mask, plan_window
from diag.errors import DiagError, where
from diag.generators.base import Request, Result, register

DEFAULT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"


@dataclass
class DiffusionConfig:
    """Parameters of the diffusion inpainting generator.

    Attributes:
        model: Hub id or local folder of a diffusers inpainting pipeline.
        revision: Hub revision (branch, tag or commit) to pin.
        variant: Weight variant to load (e.g. ``fp16``), if the repository has one.
        dtype: ``auto`` (fp16 on CUDA, fp32 on CPU), ``float16``, ``bfloat16`` or ``float32``.
        steps: Denoising steps (reference: 30).
        guidance_scale: Classifier-free guidance; higher follows the prompt harder (ref: 20).
        strength: How much of the region is re-noised, 0..1 (reference: 0.99).
        resize: ``crop`` (window around the region, native resolution, aspect kept) or
            ``paper`` (whole image stretched to a square, as the reference code).
        resolution: Model side in pixels; default is the model's own (1024 for SDXL).
        context: Margin around the region's box as a fraction of its larger side.
        min_window: Smallest crop side in source pixels.
        dilate: Grow the pasted region by this many pixels.
        feather: Soft edge of this many pixels outside the region when pasting back.
        scheduler: Replace the scheduler by this diffusers class name (e.g.
            ``DPMSolverMultistepScheduler``); default keeps the model's.
        low_vram: Offload idle sub-models to the CPU and decode the VAE in tiles/slices.
        local_files_only: Never touch the network; load from the local folder or HF cache.
        batch_size: Samples per pipeline call (those sharing a model input size); raise it on
            a large GPU for throughput.
    """

    model: str = DEFAULT_MODEL
    revision: str | None = None
    variant: str | None = None
    dtype: str = "auto"
    steps: int = 30
    guidance_scale: float = 20.0
    strength: float = 0.99
    resize: str = "crop"
    resolution: int | None = None
    context: float = 1.0
    min_window: int = 64
    dilate: int = 0
    feather: int = 0
    scheduler: str | None = None
    low_vram: bool = False
    local_files_only: bool = False
    batch_size: int = 1

    def validate(self, source: str, prefix: str) -> None:
        if self.resize not in ("crop", "paper"):
            raise DiagError(f"{source}: {prefix}resize is '{self.resize}', expected crop or paper")
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise DiagError(f"{source}: {prefix}dtype is '{self.dtype}', expected auto, float16, "
                            "bfloat16 or float32")
        if self.steps < 1:
            raise DiagError(f"{source}: {prefix}steps must be >= 1")
        if not 0 < self.strength <= 1:
            raise DiagError(f"{source}: {prefix}strength must be in (0, 1]")
        if int(self.steps * self.strength) < 1:
            raise DiagError(f"{source}: {prefix}steps x strength must be at least 1 (got "
                            f"{self.steps} x {self.strength}): raise steps or strength")
        if self.resolution is not None and self.resolution < 64:
            raise DiagError(f"{source}: {prefix}resolution must be at least 64")
        if self.batch_size < 1:
            raise DiagError(f"{source}: {prefix}batch_size must be >= 1")
        if self.context < 0 or self.dilate < 0 or self.feather < 0:
            raise DiagError(f"{source}: {prefix}context, dilate and feather must be >= 0")


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def model_fingerprint(folder: Path) -> str:
    """A short content hash of a local pipeline: its configs, and its weight files' sizes."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = p.relative_to(folder).as_posix()
        if p.suffix in (".json", ".txt"):
            h.update(rel.encode() + b"\0" + p.read_bytes())
        elif p.suffix in (".safetensors", ".bin", ".ckpt", ".pt"):
            h.update(f"{rel}\0{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def load_pipeline(config: DiffusionConfig, device: str):  # noqa: ANN201 (diffusers pipeline)
    """Load the inpainting pipeline named by ``config.model`` (hub id or local folder).

    Raises:
        DiagError: the folder is not a diffusers pipeline, or the weights cannot be had.
    """
    import torch
    from diffusers import AutoPipelineForInpainting

    _quiet_libraries()
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
             "auto": torch.float16 if device.startswith("cuda") else torch.float32}[config.dtype]
    local = Path(config.model).expanduser()
    looks_local = local.exists() or config.model.startswith((".", "/", "~")) or (
        config.model.count("/") != 1)
    if looks_local:
        if not local.is_dir():
            raise DiagError(f"model folder {where(local)} does not exist: set generator.model to "
                            "a diffusers pipeline folder or a hub id such as " + DEFAULT_MODEL)
        if not (local / "model_index.json").is_file():
            raise DiagError(f"model folder {where(local)} has no model_index.json: it is not a "
                            "diffusers pipeline (save one with pipe.save_pretrained, or run "
                            "`diag tiny-model DIR` for a test model)")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.revision:
        kwargs["revision"] = config.revision
    if config.variant:
        kwargs["variant"] = config.variant
    if config.local_files_only:
        kwargs["local_files_only"] = True
    name = str(local) if looks_local else config.model
    try:
        if looks_local:
            pipe = AutoPipelineForInpainting.from_pretrained(name, **kwargs)
        else:
            pipe = _from_hub(AutoPipelineForInpainting, name, kwargs)
    except Exception as exc:  # hub, network, and format errors all end here
        reason = " ".join(str(exc).split())[:200]
        if looks_local:
            raise DiagError(f"cannot load the pipeline in {where(local)} ({type(exc).__name__}: "
                            f"{reason}): check it is a complete diffusers inpainting "
                            "pipeline") from None
        raise DiagError(
            f"cannot load diffusion model '{config.model}' ({type(exc).__name__}: {reason}): "
            f"on a machine with internet run `hf download {config.model}` (or check the id), "
            "or set generator.model to a local folder holding the pipeline") from None
    if config.scheduler:
        import diffusers

        cls = getattr(diffusers, config.scheduler, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise DiagError(f"unknown scheduler '{config.scheduler}': use a diffusers scheduler "
                            "class name such as DPMSolverMultistepScheduler")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    if hasattr(pipe, "watermark"):
        pipe.watermark = None
    pipe.set_progress_bar_config(disable=True)
    if config.low_vram and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    else:
        pipe.to(device)
    return pipe


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host resolves and accepts a connection (fast check, so an
    offline machine fails in seconds instead of retrying for half a minute)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(cls: Any, name: str, kwargs: dict[str, Any]) -> Any:
    """Load from the local HF cache first; go online only if needed and the hub is reachable."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(name, **{**kwargs, "local_files_only": True})
    except Exception:
        if kwargs.get("local_files_only"):
            raise
    if not _hub_reachable():
        raise OSError(f"'{name}' is not in the local Hugging Face cache and the hub cannot be "
                      "reached from this machine")
    return cls.from_pretrained(name, **kwargs)


def _revision(pipe: Any, config: DiffusionConfig) -> str | None:
    path = Path(str(pipe.config.get("_name_or_path", "")))
    m = re.search(r"snapshots/([0-9a-f]{40})", path.as_posix())
    if m:
        return m.group(1)
    if path.is_dir():
        return f"local:{model_fingerprint(path)}"
    return config.revision


@register
class DiffusionGenerator:
    """Zero-shot inpainting of defects with a pretrained diffusion model (DIAG)."""

    kind: ClassVar[str] = "diffusion"
    Config: ClassVar[type] = DiffusionConfig

    def __init__(self, config: DiffusionConfig, device: str = "cpu", pipeline: Any = None
                 ) -> None:
        self.config = config
        self.device = device
        self.pipe = pipeline if pipeline is not None else load_pipeline(config, device)
        self.revision = _revision(self.pipe, config)
        unet_size = getattr(getattr(self.pipe, "unet", None), "config", {}).get("sample_size", 128)
        self.native = int(unet_size) * int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    def resolution(self) -> int:
        return self.config.resolution or self.native

    def describe(self) -> dict[str, Any]:
        return {"generator": self.kind, "model": self.config.model,
                "model_revision": self.revision, "pipeline": type(self.pipe).__name__,
                "scheduler": type(self.pipe.scheduler).__name__}

    def generate(self, request: Request) -> Result:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Result]:
        """Generate several samples, in pipeline calls of up to ``batch_size`` images that share
        a model input size. Each sample keeps its own seeded noise, so results do not depend on
        which samples share a call (up to floating-point differences of batched kernels)."""
        import torch

        c = self.config
        prepared = []
        for r in requests:
            if r.region is None or not r.region.any():
                raise DiagError("the diffusion generator needs a region: add a regions section "
                                "to the spec (real-masks, drawn or shapes)")
            alpha = paste_mask(r.region, c.dilate, c.feather)
            window = plan_window(alpha > 0, self.resolution, c.resize, c.context, c.min_window)
            prepared.append((alpha, window, *crop_for_model(r.image, alpha > 0, window)))
        results: list[Result | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (_, window, _, _) in enumerate(prepared):
            groups.setdefault(window.size, []).append(i)
        for size, members in groups.items():
            for k in range(0, len(members), max(1, c.batch_size)):
                chunk = members[k:k + max(1, c.batch_size)]
                negatives = [requests[i].negative_prompt for i in chunk]
                start = time.perf_counter()
                with torch.inference_mode():
                    images = self.pipe(
                        prompt=[requests[i].prompt for i in chunk],
                        negative_prompt=negatives if any(negatives) else None,
                        image=[prepared[i][2] for i in chunk],
                        mask_image=[prepared[i][3] for i in chunk],
                        height=size[0], width=size[1], num_inference_steps=c.steps,
                        guidance_scale=c.guidance_scale, strength=c.strength,
                        generator=[torch.Generator("cpu").manual_seed(int(requests[i].seed) % 2**63)
                                   for i in chunk],
                    ).images
                seconds = (time.perf_counter() - start) / len(chunk)
                for i, out in zip(chunk, images, strict=True):
                    alpha, window = prepared[i][0], prepared[i][1]
                    info = {"resize": c.resize, "crop_box": list(window.box),
                            "model_size": list(window.size), "batch": len(chunk),
                            "inference_seconds": round(seconds, 3)}
                    results[i] = Result(paste_back(requests[i].image, out, window, alpha),
                                        alpha > 0, info)
        return [r for r in results if r is not None]
