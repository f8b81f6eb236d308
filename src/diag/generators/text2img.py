"""The text-to-image generator: whole defective images from a prompt (the In&Out baseline).

In&Out (Girella et al.) fine-tunes Stable Diffusion on a handful of real defects with
DreamBooth + LoRA (``diag finetune`` writes the adapter) and then generates whole defective
images from the prompt ``sks <item>``. Without an adapter the pretrained model is used as is
(the zero-shot variant).

>>> from diag.generators import make_generator, Request
>>> gen = make_generator("text2img", {"model": "out/tiny-sd15", "adapter": "out/ft",
...                                   "size": 64, "steps": 2})  # doctest: +SKIP
>>> res = gen.generate(Request(image=img, region=None, seed=0, prompt="sks magnetic tile"))  # doctest: +SKIP
>>> res.mask is None and res.background == "whole"  # doctest: +SKIP
True

The image the pipeline makes (``size`` x ``size``) is resized (bicubic) to the source image's
size and converted to its mode (grayscale stays ``HxW``), so it takes the planned source's
place in the dataset and the classifier. The result has no mask (``background: whole``): the
manifest records ``mask: null`` and no mask file is written. A regions section of the spec is
ignored: the defect is wherever the model puts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from diag.errors import DiagError
from diag.generators.base import Generator, Request, Result, register
from diag.generators.lora import adapter_identity, check_adapter, load_adapter

DEFAULT_TEXT2IMG_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@dataclass
class Text2ImgConfig:
    """Parameters of the text-to-image generator.

    Attributes:
        model: Hub id or local folder of a diffusers text-to-image pipeline (SD 1.5 as In&Out).
        revision: Hub revision to pin.
        adapter: A ``diag finetune`` OUT folder (or its ``adapter`` folder, or the
            ``pytorch_lora_weights.safetensors`` file): the LoRA adapter to load; null uses the
            pretrained model as is.
        lora_scale: Weight of the adapter (1.0: as trained; 0: none).
        size: Side of the square image the model makes, a multiple of 8 (SD 1.5: 512).
        steps: Denoising steps.
        guidance_scale: Classifier-free guidance.
        dtype: ``auto`` (fp16 on CUDA, fp32 elsewhere), ``float16``, ``bfloat16`` or
            ``float32``.
        local_files_only: Never touch the network; load from the local folder or HF cache.
        batch_size: Samples per pipeline call (those with and without a negative prompt never
            share one).
    """

    model: str = DEFAULT_TEXT2IMG_MODEL
    revision: str | None = None
    adapter: str | None = None
    lora_scale: float = 1.0
    size: int = 512
    steps: int = 30
    guidance_scale: float = 7.5
    dtype: str = "auto"
    local_files_only: bool = False
    batch_size: int = 1

    def validate(self, source: str, prefix: str) -> None:
        if self.size < 64 or self.size % 8:
            raise DiagError(f"{source}: {prefix}size must be a multiple of 8, at least 64 (got "
                            f"{self.size})")
        if self.steps < 1:
            raise DiagError(f"{source}: {prefix}steps must be >= 1")
        if self.batch_size < 1:
            raise DiagError(f"{source}: {prefix}batch_size must be >= 1")
        if not math.isfinite(self.lora_scale) or not math.isfinite(self.guidance_scale):
            raise DiagError(f"{source}: {prefix}lora_scale and guidance_scale must be numbers")
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise DiagError(f"{source}: {prefix}dtype is '{self.dtype}', expected auto, float16, "
                            "bfloat16 or float32")
        check_adapter(self.adapter, source, prefix)


def load_text2img(config: Text2ImgConfig, device: str) -> Any:
    """Load the text-to-image pipeline of ``config`` (and its adapter) onto ``device``."""
    from diffusers import AutoPipelineForText2Image

    from diag.generators.diffusion.pipeline import (
        _from_hub,
        check_model_folder,
        load_error,
        quiet_libraries,
        torch_dtype,
    )

    quiet_libraries()
    local = Path(config.model).expanduser()
    looks_local = check_model_folder(config.model, "generator.model", "text-to-image pipeline",
                                     DEFAULT_TEXT2IMG_MODEL, "diag tiny-model DIR --kind text2img")
    kwargs: dict[str, Any] = {"dtype": torch_dtype(config, device), "safety_checker": None,
                              "requires_safety_checker": False}
    if config.revision:
        kwargs["revision"] = config.revision
    if config.local_files_only:
        kwargs["local_files_only"] = True
    try:
        if looks_local:
            pipe = AutoPipelineForText2Image.from_pretrained(str(local), **kwargs)
        else:
            pipe = _from_hub(AutoPipelineForText2Image, config.model, kwargs)
    except Exception as exc:  # hub, network and format errors all end here
        raise load_error(exc, config.model, local if looks_local else None,
                         "text-to-image model", "text-to-image", "generator.model") from None
    if config.adapter is not None:
        load_adapter(pipe, config.adapter, config.model, config.lora_scale)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return pipe


@register
class Text2ImgGenerator(Generator):
    """Whole defective images from a text-to-image model, optionally LoRA-fine-tuned (In&Out)."""

    kind: ClassVar[str] = "text2img"
    Config: ClassVar[type] = Text2ImgConfig

    def __init__(self, config: Text2ImgConfig, device: str = "cpu", pipeline: Any = None
                 ) -> None:
        super().__init__(config, device)
        self.pipe = pipeline if pipeline is not None else load_text2img(config, device)

    def identity(self) -> dict[str, Any]:
        return adapter_identity(self.config.adapter, self.config.lora_scale)

    def describe(self) -> dict[str, Any]:
        from diag.generators.diffusion.pipeline import model_revision

        return {"generator": self.kind, "model": self.config.model,
                "model_revision": model_revision(self.pipe, self.config),
                "pipeline": type(self.pipe).__name__,
                "scheduler": type(self.pipe.scheduler).__name__, **self.identity()}

    def generate(self, request: Request) -> Result:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Result]:
        """Requests with and without a negative prompt go to separate pipeline calls."""
        results: list[Result | None] = [None] * len(requests)
        groups: dict[bool, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(bool(r.negative_prompt), []).append(i)
        for members in groups.values():
            for k in range(0, len(members), self.batch_size):
                chunk = members[k:k + self.batch_size]
                images = self._call([requests[i] for i in chunk])
                for i, out in zip(chunk, images, strict=True):
                    results[i] = Result(_fit(out, requests[i].image), None,
                                        {"model_size": [self.config.size, self.config.size],
                                         "batch": len(chunk)}, "whole")
        return [r for r in results if r is not None]

    def _call(self, requests: Sequence[Request]) -> list[Any]:
        import torch

        c = self.config
        generators = [torch.Generator(self.device).manual_seed(int(r.seed) % 2**63)
                      for r in requests]
        negatives = [r.negative_prompt for r in requests]
        with torch.inference_mode():
            return list(self.pipe(
                prompt=[r.prompt for r in requests],
                negative_prompt=negatives if all(negatives) else None,
                height=c.size, width=c.size, num_inference_steps=c.steps,
                guidance_scale=c.guidance_scale, generator=generators,
                output_type="pil").images)


def _fit(image: Any, source: np.ndarray) -> np.ndarray:
    """The generated PIL image resized (bicubic) to ``source``'s size, in its mode."""
    from PIL import Image

    h, w = source.shape[:2]
    mode = "L" if source.ndim == 2 else "RGB"
    out = image.convert("RGB").resize((w, h), Image.Resampling.BICUBIC).convert(mode)
    return np.asarray(out, dtype=np.uint8).copy()
