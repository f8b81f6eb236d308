"""Loading a diffusers inpainting pipeline by hub id or local folder, offline-first.

The same code loads the 7 GB SDXL-inpainting weights for users and the 9 MB tiny test model
(``diag tiny-model``) for the tests. A hub id is looked up in the local Hugging Face cache
first and downloaded only when it is missing and the hub can be reached; a failure is one line
saying how to provide the weights.

``variant: auto`` (the default) loads the half-precision weight files (``fp16``, as the
reference DIAG code does) when the pipeline runs in float16 on a GPU: about 6.9 GB to
download for SDXL inpainting instead of 13.9 GB. A repository or folder without such files is
loaded in full precision instead.

>>> from diag.generators.diffusion.generator import DiffusionConfig
>>> pipe = load_pipeline(DiffusionConfig(model="out/tiny-model"), "cpu")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diag.errors import DiagError, warn, where

if TYPE_CHECKING:
    from diag.generators.diffusion.generator import DiffusionConfig

DEFAULT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
HALF_VARIANT = "fp16"


def quiet_libraries() -> None:
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


def torch_dtype(config: DiffusionConfig, device: str) -> Any:
    """The torch dtype of ``config.dtype`` (``auto``: float16 on CUDA, float32 elsewhere)."""
    import torch

    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
            "auto": torch.float16 if device.startswith("cuda") else torch.float32}[config.dtype]


def _has_variant_files(folder: Path, variant: str) -> bool:
    return any(folder.rglob(f"*.{variant}.safetensors")) or any(folder.rglob(f"*.{variant}.bin"))


def resolve_variant(config: DiffusionConfig, device: str, local: Path | None) -> str | None:
    """The weight variant to ask for first: ``auto`` means ``fp16`` when running in float16
    (the local folder must hold fp16 files; a hub repository is tried and falls back)."""
    import torch

    if config.variant != "auto":
        return config.variant or None
    if torch_dtype(config, device) != torch.float16:
        return None
    if local is not None:
        return HALF_VARIANT if _has_variant_files(local, HALF_VARIANT) else None
    return HALF_VARIANT


def _looks_local(model: str) -> bool:
    return (Path(model).expanduser().exists() or model.startswith((".", "/", "~"))
            or model.count("/") != 1)


def check_model_folder(model: str, field: str, what: str, example: str, tiny: str) -> bool:
    """Whether ``model`` names a local folder (else a hub id); a local one must be a
    diffusers pipeline (one-line errors naming ``field``, a hub id ``example`` and the
    ``tiny`` command that writes a test model)."""
    local = Path(model).expanduser()
    if not _looks_local(model):
        return False
    if not local.is_dir():
        raise DiagError(f"model folder {where(local)} does not exist: set {field} to a diffusers "
                        f"{what} folder or a hub id such as {example}")
    if not (local / "model_index.json").is_file():
        raise DiagError(f"model folder {where(local)} has no model_index.json: it is not a "
                        f"diffusers pipeline (save one with pipe.save_pretrained, or run `{tiny}` "
                        "for a test model)")
    return True


def load_error(exc: Exception, model: str, local: Path | None, label: str, what: str,
               field: str) -> DiagError:
    """The one-line error for a pipeline that did not load: from the folder ``local`` (check
    it is complete), or from the hub (download it elsewhere, or set ``field`` to a folder)."""
    reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if local is not None:
        return DiagError(f"cannot load the pipeline in {where(local)} ({reason}): check it is a "
                         f"complete diffusers {what} pipeline")
    return DiagError(f"cannot load {label} '{model}' ({reason}): on a machine with internet run "
                     f"`hf download {model}` (or check the id), or set {field} to a local folder "
                     "holding the pipeline")


def load_pipeline(config: DiffusionConfig, device: str) -> Any:
    """Load the inpainting pipeline named by ``config.model`` (hub id or local folder).

    The variant actually loaded is kept as ``pipe.diag_variant`` (for the manifest).

    Raises:
        DiagError: the folder is not a diffusers pipeline, or the weights cannot be had.
    """
    from diffusers import AutoPipelineForInpainting

    quiet_libraries()
    local = Path(config.model).expanduser()
    looks_local = check_model_folder(config.model, "generator.model", "pipeline",
                                     DEFAULT_MODEL, "diag tiny-model DIR")
    variant = resolve_variant(config, device, local if looks_local else None)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(config, device)}
    if config.revision:
        kwargs["revision"] = config.revision
    if config.local_files_only:
        kwargs["local_files_only"] = True
    name = str(local) if looks_local else config.model
    try:
        pipe, variant = _load_with_variant(AutoPipelineForInpainting, name, kwargs, variant,
                                           fallback=config.variant == "auto",
                                           hub=not looks_local)
    except Exception as exc:  # hub, network, and format errors all end here
        raise load_error(exc, config.model, local if looks_local else None, "diffusion model",
                         "inpainting", "generator.model") from None
    pipe.diag_variant = variant
    if config.adapter is not None:
        from diag.generators.lora import load_adapter

        load_adapter(pipe, config.adapter, config.model, config.lora_scale)
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
    prepare_pipeline(pipe, config, device)
    return pipe


def attention_mode(config: DiffusionConfig, device: str) -> str:
    """``sdpa`` or ``sliced``: what ``attention: auto`` means here (sliced with low_vram on a
    GPU, where low_vram applies, else PyTorch's scaled-dot-product attention)."""
    if config.attention != "auto":
        return config.attention
    return "sliced" if config.low_vram and device.startswith("cuda") else "sdpa"


def prepare_pipeline(pipe: Any, config: DiffusionConfig, device: str) -> Any:
    """Apply the speed and memory options of ``config`` to a loaded pipeline, in place.

    * ``attention``: ``sdpa`` makes every plain attention layer of the UNet and the VAE use
      diffusers' ``AttnProcessor2_0`` (PyTorch ``scaled_dot_product_attention``: flash /
      memory-efficient kernels on a GPU); ``sliced`` computes attention in slices;
    * ``channels_last``: UNet and VAE weights in NHWC memory layout (faster convolutions on
      recent GPUs, above all with ``compile``);
    * ``low_vram`` (CUDA only; elsewhere a one-line warning says it is ignored): model CPU
      offload (each sub-model moves to the GPU only while it runs), VAE slicing and tiling;
    * ``compile``: ``torch.compile`` of the UNet (the first call at each model size compiles,
      which takes a minute or more; later calls are faster).

    With the defaults (``attention: auto``, the rest off) the pipeline's images are those of
    the pipeline as diffusers loads it: diffusers already uses ``AttnProcessor2_0`` on
    PyTorch 2, and nothing else changes.
    """
    import torch

    low_vram = config.low_vram and device.startswith("cuda")
    if config.low_vram and not low_vram:
        warn(f"generator.low_vram is ignored on device '{device}': it offloads sub-models from "
             "a CUDA GPU to the CPU, which saves GPU memory only")
    mode = attention_mode(config, device)
    models = [m for m in (getattr(pipe, "unet", None), getattr(pipe, "vae", None))
              if hasattr(m, "attn_processors")]
    if mode == "sdpa":  # the plain processor becomes its SDPA twin; special ones stay
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        for model in models:
            processors = model.attn_processors
            if any(type(p) is AttnProcessor for p in processors.values()):
                model.set_attn_processor({k: AttnProcessor2_0() if type(p) is AttnProcessor
                                          else p for k, p in processors.items()})
    elif hasattr(pipe, "enable_attention_slicing"):
        pipe.enable_attention_slicing("auto")
    if config.channels_last:
        for model in (getattr(pipe, "unet", None), getattr(pipe, "vae", None)):
            if model is not None:
                model.to(memory_format=torch.channels_last)
    if low_vram:
        pipe.enable_model_cpu_offload(device=device)
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    else:
        pipe.to(device)
    if config.compile and not hasattr(pipe.unet, "_orig_mod"):  # not compiled already
        pipe.unet = torch.compile(pipe.unet)
    return pipe


def _load_with_variant(cls: Any, name: str, kwargs: dict[str, Any], variant: str | None,
                       fallback: bool, hub: bool) -> tuple[Any, str | None]:
    """Load with ``variant``; with ``fallback``, a repository without it loads in full."""
    load = _from_hub if hub else (lambda c, n, kw: c.from_pretrained(n, **kw))
    if variant is None:
        return load(cls, name, kwargs), None
    try:
        return load(cls, name, {**kwargs, "variant": variant}), variant
    except ValueError as exc:
        if not (fallback and "variant" in str(exc)):
            raise
    return load(cls, name, kwargs), None


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
    except ValueError as exc:
        if "variant" in str(exc):
            raise  # the cached snapshot has no such variant: let the caller fall back
        if kwargs.get("local_files_only"):
            raise
    except Exception:
        if kwargs.get("local_files_only"):
            raise
    if not _hub_reachable():
        raise OSError(f"'{name}' is not in the local Hugging Face cache and the hub cannot be "
                      "reached from this machine")
    return cls.from_pretrained(name, **kwargs)


def model_revision(pipe: Any, config: DiffusionConfig) -> str | None:
    """The commit of a hub snapshot, a content fingerprint of a local folder, or the pinned
    revision."""
    name = str(pipe.config.get("_name_or_path", "") or "")
    if not name:  # built in memory (tests, benchmarks): Path("") would be the working folder
        return config.revision
    path = Path(name)
    m = re.search(r"snapshots/([0-9a-f]{40})", path.as_posix())
    if m:
        return m.group(1)
    if path.is_dir():
        return f"local:{model_fingerprint(path)}"
    return config.revision
