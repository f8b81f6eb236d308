"""The diffusion inpainting generator: its parameters and the pipeline calls.

Any diffusers inpainting pipeline works (``AutoPipelineForInpainting``): SDXL inpainting by
default, SD 1.5 / 2 inpainting or others by hub id or local folder. Weights are never
fine-tuned: the prompt describes the defect and the region says where it goes.

>>> from diag.generators import make_generator, Request
>>> gen = make_generator("diffusion", {"model": "out/tiny-model", "steps": 10})  # doctest: +SKIP
>>> result = gen.generate(Request(image=img, region=mask, seed=0, prompt="a thin crack"))  # doctest: +SKIP

The parameters default to the reference DIAG code's: 30 steps, guidance 20, strength 0.99,
the model's own scheduler and resolution (1024 for SDXL), fp16 weights on a GPU, and
``padding_mask_crop: 2`` for ``resize: paper``. ``resize`` chooses how the model sees the
region: ``crop`` (default; :mod:`~diag.generators.diffusion.window`) or ``paper`` (the
reference's way, :mod:`~diag.generators.diffusion.paper`).

A sample's image does not depend on which samples share its pipeline call: each has its own
seeded noise, and samples with and without a negative prompt never share a call (SDXL encodes
a missing negative prompt as zeros, an empty one as text).

Speed and memory (:class:`DiffusionConfig`; ``benchmarks/bench_sdxl.py`` measures them): the
prompts are encoded once and their embeddings reused (``prompt_cache``, on by default: same
images); ``batch_size``, ``dtype: bfloat16``, ``compile`` and ``channels_last`` are opt-in
speed-ups; ``low_vram`` trades speed for GPU memory; ``window_sizes`` paints small defects at
a smaller model side. Every sample's ``info`` records ``peak_gpu_memory_mib`` (the call's
``torch.cuda.max_memory_allocated``; null off CUDA) and, with ``resize: crop``,
``model_side``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from diag.errors import DiagError
from diag.generators.base import Generator, Request, Result, register
from diag.generators.diffusion import paper
from diag.generators.diffusion.pipeline import DEFAULT_MODEL, load_pipeline, model_revision
from diag.generators.diffusion.window import choose_window, crop_for_model, paste_back, paste_mask
from diag.generators.lora import adapter_identity, check_adapter

RESIZE_MODES = ("crop", "paper")
ATTENTION_MODES = ("auto", "sdpa", "sliced")
PROMPT_CACHE_SIZE = 32  # distinct calls' prompt lists kept (the oldest goes first)
EMBEDDING_NAMES = {  # what encode_prompt returns, by its length, as __call__ keywords
    4: ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds"),  # SDXL
    2: ("prompt_embeds", "negative_prompt_embeds"),  # SD 1.x / 2.x
}


@dataclass
class DiffusionConfig:
    """Parameters of the diffusion inpainting generator (defaults: the reference DIAG code's).

    Attributes:
        model: Hub id or local folder of a diffusers inpainting pipeline.
        revision: Hub revision (branch, tag or commit) to pin.
        variant: Weight files to load: ``auto`` (``fp16`` when running in float16 on a GPU,
            as the reference, where the repository has them), ``null`` (full precision files)
            or a variant name.
        dtype: ``auto`` (fp16 on CUDA, as the reference; fp32 on CPU), ``float16``,
            ``bfloat16`` (same speed as fp16 on recent GPUs, no overflow, and the VAE needs no
            fp32 upcast) or ``float32``.
        steps: Denoising steps (reference: 30).
        guidance_scale: Classifier-free guidance; higher follows the prompt harder (ref: 20).
        strength: How much of the region is re-noised, 0..1 (reference: 0.99).
        resize: ``crop`` (a window around the region at the model's resolution and the
            window's aspect, pasted back exactly) or ``paper`` (the reference's way: the whole
            image stretched to a square, ``padding_mask_crop``, stretched back).
        paper_overlay: With ``resize: paper``: ``exact`` (only the region is pasted into the
            untouched source) or ``diffusers`` (the reference's output as is: diffusers' soft
            overlay, the whole image resampled).
        padding_mask_crop: With ``resize: paper``: pixels added around the mask's box before
            diffusers crops it (reference: 2); null lets the model see the whole square.
        resolution: Model side in pixels; default is the model's own (1024 for SDXL).
        context: ``crop``: margin around the region's box as a fraction of its larger side.
        min_window: ``crop``: smallest window side in source pixels.
        dilate: Grow the pasted region by this many pixels.
        feather: Soft edge of this many pixels outside the region when pasting back.
        scheduler: Replace the scheduler by this diffusers class name (e.g.
            ``DPMSolverMultistepScheduler``); default keeps the model's (reference).
        low_vram: On CUDA: model CPU offload (idle sub-models wait in CPU memory), VAE
            slicing and tiling, and (with ``attention: auto``) attention slicing: SDXL runs
            in a few GB of GPU memory, more slowly. Ignored, with a one-line warning, on CPU.
        attention: ``auto`` (``sliced`` with ``low_vram`` on CUDA, else ``sdpa``), ``sdpa``
            (PyTorch's scaled-dot-product attention, diffusers' ``AttnProcessor2_0``, on every
            attention layer of the UNet and the VAE: what diffusers uses by default) or
            ``sliced`` (attention computed in slices: less memory, slower).
        compile: ``torch.compile`` the UNet (default false). The first call at each model
            size compiles (a minute or more), later calls run faster; worth it on a GPU for
            runs of hundreds of images at one or few model sizes. Needs a C/C++ compiler.
        channels_last: Keep UNet and VAE weights in channels-last (NHWC) memory layout
            (default false): faster convolutions on recent GPUs, above all with ``compile``.
            Images may differ from the default layout's in the last bits.
        prompt_cache: Encode the prompts once and pass the stored embeddings to every later
            call with the same prompts (default true): the text encoders run once per
            (prompt, negative prompt) pair with ``batch_size: 1``, once per distinct list of
            pairs in a call otherwise (32 lists kept). Byte-identical images to encoding
            them in every call (which batched text encoding would not give if each pair were
            encoded alone: float sums differ in the last bit).
        window_sizes: ``crop``: model sides to choose from per sample, e.g.
            ``[1024, 768, 512]`` for SDXL: each sample is painted at the smallest side whose
            model input has at least as many pixels as its window of the source (small
            defects go faster, and the model never sees less than the source's detail), else
            at the largest. Default null: always ``resolution`` (the model's own side). The
            manifest's ``info.model_side`` records the side used. ``paper`` ignores it.
        local_files_only: Never touch the network; load from the local folder or HF cache.
        batch_size: ``crop``: samples per pipeline call (those sharing a model input size and
            whether they have a negative prompt). ``paper`` calls one sample at a time, since
            diffusers' ``padding_mask_crop`` takes one image.
        adapter: A LoRA adapter from ``diag finetune`` with ``mode: inpainting`` on this model
            (its OUT folder, adapter folder or weights file): the full-shot variant, where the
            model has seen the real defects. Default null: the pretrained model (zero-shot).
        lora_scale: Weight of the adapter (1.0: as trained; 0: none).
    """

    model: str = DEFAULT_MODEL
    revision: str | None = None
    variant: str | None = "auto"
    dtype: str = "auto"
    steps: int = 30
    guidance_scale: float = 20.0
    strength: float = 0.99
    resize: str = "crop"
    paper_overlay: str = "exact"
    padding_mask_crop: int | None = 2
    resolution: int | None = None
    context: float = 1.0
    min_window: int = 64
    dilate: int = 0
    feather: int = 0
    scheduler: str | None = None
    low_vram: bool = False
    local_files_only: bool = False
    batch_size: int = 1
    attention: str = "auto"
    compile: bool = False
    channels_last: bool = False
    prompt_cache: bool = True
    window_sizes: list[int] | None = None
    adapter: str | None = None
    lora_scale: float = 1.0

    def validate(self, source: str, prefix: str) -> None:
        if self.resize not in RESIZE_MODES:
            raise DiagError(f"{source}: {prefix}resize is '{self.resize}', expected crop or paper")
        if self.paper_overlay not in paper.OVERLAYS:
            raise DiagError(f"{source}: {prefix}paper_overlay is '{self.paper_overlay}', "
                            "expected exact or diffusers")
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
        if self.resolution is not None and (self.resolution < 64 or self.resolution % 8):
            raise DiagError(f"{source}: {prefix}resolution must be a multiple of 8, at least 64 "
                            f"(got {self.resolution})")
        if self.padding_mask_crop is not None and self.padding_mask_crop < 0:
            raise DiagError(f"{source}: {prefix}padding_mask_crop must be >= 0 or null")
        if self.batch_size < 1:
            raise DiagError(f"{source}: {prefix}batch_size must be >= 1")
        if self.context < 0 or self.dilate < 0 or self.feather < 0:
            raise DiagError(f"{source}: {prefix}context, dilate and feather must be >= 0")
        check_adapter(self.adapter, source, prefix)
        if not math.isfinite(self.lora_scale):
            raise DiagError(f"{source}: {prefix}lora_scale must be a number")
        if self.attention not in ATTENTION_MODES:
            raise DiagError(f"{source}: {prefix}attention is '{self.attention}', expected auto, "
                            "sdpa or sliced")
        if self.window_sizes is not None:
            if not self.window_sizes:
                raise DiagError(f"{source}: {prefix}window_sizes is empty: list model sides "
                                "such as [1024, 768, 512], or null for the model's own")
            bad = [s for s in self.window_sizes if s < 64 or s % 8]
            if bad:
                raise DiagError(f"{source}: {prefix}window_sizes must hold multiples of 8, at "
                                f"least 64 (got {bad[0]})")


@register
class DiffusionGenerator(Generator):
    """Zero-shot inpainting of defects with a pretrained diffusion model (DIAG)."""

    kind: ClassVar[str] = "diffusion"
    Config: ClassVar[type] = DiffusionConfig

    def __init__(self, config: DiffusionConfig, device: str = "cpu", pipeline: Any = None
                 ) -> None:
        super().__init__(config, device)
        self.pipe = pipeline if pipeline is not None else load_pipeline(config, device)
        self.revision = model_revision(self.pipe, config)
        unet_size = getattr(getattr(self.pipe, "unet", None), "config", {}).get("sample_size", 128)
        self.native = int(unet_size) * int(getattr(self.pipe, "vae_scale_factor", 8))
        self._embeddings: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._can_cache = config.prompt_cache and _encodes_prompts(self.pipe)

    @property
    def resolution(self) -> int:
        """The model side used: ``config.resolution`` or the model's own."""
        return self.config.resolution or self.native

    def identity(self) -> dict[str, Any]:
        if self.config.adapter is None:  # manifests of zero-shot runs stay as they were
            return {}
        return adapter_identity(self.config.adapter, self.config.lora_scale)

    def describe(self) -> dict[str, Any]:
        return {"generator": self.kind, "model": self.config.model,
                "model_revision": self.revision,
                "model_variant": getattr(self.pipe, "diag_variant", None),
                "pipeline": type(self.pipe).__name__,
                "scheduler": type(self.pipe.scheduler).__name__, **self.identity()}

    def generate(self, request: Request) -> Result:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Result]:
        """Generate several samples; ``crop`` groups those that can share a pipeline call."""
        for r in requests:
            if r.region is None or not r.region.any():
                raise DiagError("the diffusion generator needs a region: add a regions section "
                                "to the spec (real-masks, drawn or shapes)")
        if self.config.resize == "paper":
            return [self._paper(r) for r in requests]
        return self._crop(requests)

    def _call(self, requests: Sequence[Request], images: list[Any], masks: list[Any],
              size: tuple[int, int], **extra: Any) -> tuple[list[Any], float | None]:
        """One pipeline call; every request has its own seeded generator. The negative prompt
        is None when no request has one (SDXL then uses zeros), else one string each; with
        ``prompt_cache`` their embeddings are passed instead. Returns the images and
        the peak GPU memory of the call in MiB (None off CUDA)."""
        import torch

        c = self.config
        negatives = [r.negative_prompt for r in requests]
        if any(negatives) and not all(negatives):
            raise ValueError("requests with and without a negative prompt must not share a call")
        seeds = [torch.Generator("cpu").manual_seed(int(r.seed) % 2**63) for r in requests]

        def one(values: list[Any]) -> Any:  # a lone sample is passed as the reference does
            return values[0] if len(values) == 1 else values

        cuda = str(self.device).startswith("cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        text = {"prompt": one([r.prompt for r in requests]),
                "negative_prompt": one(negatives) if all(negatives) else None}
        if self.on_step is not None:
            report = self.on_step

            def step_end(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                report(i + 1, int(getattr(pipe, "num_timesteps", 0) or c.steps))
                return kwargs  # unchanged: the images are those of a call without it

            extra = {**extra, "callback_on_step_end": step_end}
        with torch.inference_mode():
            if self._can_cache:
                text = self._cached_embeddings(text) or text
            images = self.pipe(
                **text, image=one(images), mask_image=one(masks), generator=one(seeds),
                height=size[0], width=size[1], num_inference_steps=c.steps,
                guidance_scale=c.guidance_scale, strength=c.strength, **extra,
            ).images
        peak = (round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1) if cuda
                else None)
        return images, peak

    def _cached_embeddings(self, text: dict[str, Any]) -> dict[str, Any] | None:
        """The embeddings of a call's prompts (``text``: the ``prompt`` and ``negative_prompt``
        keywords), encoded by the pipeline's own ``encode_prompt`` exactly as its ``__call__``
        would (so the images are byte-identical) the first time these prompts come, and taken
        from the cache afterwards. None (and no caching from then on) when ``encode_prompt``
        returns something else than the SD or SDXL pipelines'."""
        key = tuple(tuple(v) if isinstance(v, list) else v for v in text.values())
        if key not in self._embeddings:
            pipe = self.pipe
            guidance = (self.config.guidance_scale > 1
                        and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None)
            out = pipe.encode_prompt(prompt=text["prompt"], device=pipe._execution_device,
                                     num_images_per_prompt=1,
                                     do_classifier_free_guidance=guidance,
                                     negative_prompt=text["negative_prompt"])
            names = EMBEDDING_NAMES.get(len(out)) if isinstance(out, tuple) else None
            if names is None:
                self._can_cache = False
                return None
            if len(self._embeddings) >= PROMPT_CACHE_SIZE:
                self._embeddings.pop(next(iter(self._embeddings)))
            self._embeddings[key] = {n: t for n, t in zip(names, out, strict=True)
                                     if t is not None}
        return self._embeddings[key]

    def _crop(self, requests: Sequence[Request]) -> list[Result]:
        c = self.config
        prepared = []
        sides = c.window_sizes or [self.resolution]
        for r in requests:
            alpha = paste_mask(r.region, c.dilate, c.feather)
            window, side = choose_window(alpha > 0, sides, c.context, c.min_window)
            prepared.append((alpha, window, *crop_for_model(r.image, alpha > 0, window), side))
        results: list[Result | None] = [None] * len(requests)
        groups: dict[tuple[tuple[int, int], bool], list[int]] = {}
        for i, (_, window, _, _, _) in enumerate(prepared):
            groups.setdefault((window.size, bool(requests[i].negative_prompt)), []).append(i)
        for (size, _), members in groups.items():
            for k in range(0, len(members), self.batch_size):
                chunk = members[k:k + self.batch_size]
                start = time.perf_counter()
                outputs, peak = self._call([requests[i] for i in chunk],
                                           [prepared[i][2] for i in chunk],
                                           [prepared[i][3] for i in chunk], size)
                seconds = (time.perf_counter() - start) / len(chunk)
                for i, out in zip(chunk, outputs, strict=True):
                    alpha, window, side = prepared[i][0], prepared[i][1], prepared[i][4]
                    info = {"resize": "crop", "crop_box": list(window.box),
                            "model_size": list(window.size), "model_side": side,
                            "batch": len(chunk), "inference_seconds": round(seconds, 3),
                            "peak_gpu_memory_mib": peak}
                    results[i] = Result(paste_back(requests[i].image, out, window, alpha),
                                        alpha > 0, info)
        return [r for r in results if r is not None]

    def _paper(self, request: Request) -> Result:
        c = self.config
        side = self.resolution
        alpha = paste_mask(request.region, c.dilate, c.feather)
        image, mask = paper.stretch_inputs(request.image, alpha > 0, side)
        paper.check_mask_survives(mask, request.name)
        extra: dict[str, Any] = {}
        info: dict[str, Any] = {"resize": "paper", "paper_overlay": c.paper_overlay,
                                "model_size": [side, side],
                                "padding_mask_crop": c.padding_mask_crop}
        if c.padding_mask_crop is not None:
            extra["padding_mask_crop"] = c.padding_mask_crop
            info["model_crop_box"] = list(paper.model_crop_box(mask, side, c.padding_mask_crop))
        start = time.perf_counter()
        outputs, peak = self._call([request], [image], [mask], (side, side), **extra)
        output = outputs[0]
        info.update(batch=1, inference_seconds=round(time.perf_counter() - start, 3),
                    peak_gpu_memory_mib=peak)
        out, background = paper.compose_back(request.image, output, alpha, c.paper_overlay)
        info["background"] = background
        return Result(out, alpha > 0, info, background)


def _encodes_prompts(pipe: Any) -> bool:
    """Whether ``pipe`` encodes prompts as :meth:`DiffusionGenerator._cached_embeddings` calls
    it (the SD and SDXL pipelines' ``encode_prompt``) and takes the embeddings back in
    ``__call__``."""
    import inspect

    encode = getattr(pipe, "encode_prompt", None)
    if encode is None or not callable(pipe):
        return False
    try:
        takes = set(inspect.signature(encode).parameters)
        call = set(inspect.signature(pipe.__call__).parameters)
    except (TypeError, ValueError):
        return False
    return ({"prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance",
             "negative_prompt"} <= takes and {"prompt_embeds", "negative_prompt_embeds"} <= call)
