"""SDXL-inpainting generation speed: the reference code's way against diag's fastest, and the
FLOP floor, with a full-size model of random weights (no download).

    python benchmarks/bench_sdxl.py                      # full size, needs a CUDA GPU
    python benchmarks/bench_sdxl.py --compile --batch 8  # torch.compile the UNet too
    python benchmarks/bench_sdxl.py --small              # tiny configs on the CPU (CI)
    python benchmarks/bench_sdxl.py --count-only         # full-size params and FLOPs, any CPU

The UNet, VAE and both text encoders are built from the published configs of
``diffusers/stable-diffusion-xl-1.0-inpainting-0.1`` (written out below, with where each comes
from) and initialised at random: the same layers, shapes and so the same compute as the real
model. Only the tokenizer differs (a byte-level CLIP tokenizer, since the real vocabulary is a
download); it still makes 77-token sequences, as the real one does, so the text encoders'
compute is the same too.

Ways measured, each in one process after one untimed warm-up call, over ``--images`` images:

* ``reference``: what ``generate_augmented_images.py`` of intelligolabs/DIAG does: one image
  per pipeline call, float16, 30 steps, guidance 20, strength 0.99, 1024 x 1024,
  ``padding_mask_crop=2``, the prompt encoded in every call, diffusers' defaults otherwise (its
  VAE decodes in float32: the published VAE config has ``force_upcast: true``);
* ``diag``: ``DiffusionGenerator`` with ``batch_size`` images per call, bfloat16, PyTorch SDPA
  attention, channels-last weights, cached prompt embeddings, and (``--compile``)
  ``torch.compile`` of the UNet; ``resize: crop`` with a region whose window is the whole
  1024 x 1024 image, so both ways run the model at 1024 x 1024.

The FLOP floor: the UNet's FLOPs for one call on one latent (counted with
``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy, so no compute is spent),
times the UNet calls per image (counted during the reference way's warm-up), times 2 for
classifier-free guidance, over the device's measured matmul rate (bfloat16 on a GPU, float32 on
a CPU). It leaves out the VAE and the text encoders, so no way can reach it; each way's
``x_floor`` says how far it is. Goal on a GPU: diag >= 3x the reference's images/s and within
2x of the floor.

On a CPU (``--small``) both ways run in float32 (half precision is not what CPUs are fast at),
with the tiny configs of :mod:`diag.generators.diffusion.tiny`, 4 steps and 128 px: this checks
the script, it measures nothing about SDXL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# --- the published configs -----------------------------------------------------------------
# diffusers/stable-diffusion-xl-1.0-inpainting-0.1, unet/config.json (UNet2DConditionModel):
# the SDXL base 1.0 UNet with in_channels 9 (4 latent + 1 mask + 4 masked-image latent).
# Fields left out have diffusers' defaults, which are the values in that file (act_fn silu,
# norm_num_groups 32, norm_eps 1e-5, flip_sin_to_cos true, freq_shift 0, mid_block_type
# UNetMidBlock2DCrossAttn, time_embedding_type positional, ...).
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 9,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (5, 10, 20),
    "transformer_layers_per_block": (1, 2, 10),
    "use_linear_projection": True,
    "cross_attention_dim": 2048,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + 1280 pooled text
}
# vae/config.json (AutoencoderKL): the SDXL VAE.
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
# text_encoder/config.json (CLIPTextModel): the text tower of OpenAI CLIP ViT-L/14.
CLIP_L_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# text_encoder_2/config.json (CLIPTextModelWithProjection): the text tower of OpenCLIP
# ViT-bigG/14 (laion2b_s39b_b160k).
OPENCLIP_BIGG_TEXT: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
# Parameter counts of the published weights, which the configs above must reproduce (the
# inpainting UNet: SDXL base's 2,567,463,684 + 14,400 for its 5 extra input channels into
# conv_in's 320 3x3 filters).
PUBLISHED_PARAMS = {"unet": 2_567_478_084, "vae": 83_653_863, "text_encoder": 123_060_480,
                    "text_encoder_2": 694_659_840}

# The reference code's settings (generate_augmented_images.py of intelligolabs/DIAG).
PROMPT = "a thin dark crack on the metal surface"
NEGATIVE = "smooth, plain, black, dark, shadow"
STEPS, GUIDANCE, STRENGTH, PADDING_MASK_CROP = 30, 20.0, 0.99, 2
GOAL_SPEEDUP, GOAL_X_FLOOR = 3.0, 2.0
H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's spec sheet, dense (no sparsity): not a measurement


def configs(small: bool) -> dict[str, dict[str, Any]]:
    """The four sub-model configs: full size, or the tiny ones (``--small``)."""
    if small:
        from diag.generators.diffusion.tiny import TINY_TEXT, TINY_UNET, TINY_VAE

        return {"unet": TINY_UNET, "vae": TINY_VAE, "text": TINY_TEXT, "text_2": TINY_TEXT}
    return {"unet": SDXL_UNET, "vae": SDXL_VAE, "text": CLIP_L_TEXT,
            "text_2": OPENCLIP_BIGG_TEXT}


def build(cfg: dict[str, dict[str, Any]], device: str, dtype: Any) -> Any:
    """The SDXL-inpainting pipeline with random weights, on ``device`` in ``dtype``."""
    from diag.generators.diffusion.tiny import build_sdxl_inpainting

    pipe = build_sdxl_inpainting(cfg["unet"], cfg["vae"], cfg["text"], cfg["text_2"],
                                 device=device)
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def count_params(cfg: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Parameters of each sub-model, built on the meta device (no memory, no time)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**cfg["unet"]),
                  "vae": AutoencoderKL(**cfg["vae"]),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text"])),
                  "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_2"]))}
    return {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}


def unet_flops(cfg: dict[str, dict[str, Any]], side: int) -> int:
    """FLOPs of one UNet call on one ``side x side`` image's latent (batch 1), counted with
    ``FlopCounterMode`` on the meta device (attention counted as its two matmuls)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    u = cfg["unet"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**u)
        latent = torch.empty(1, u["in_channels"], side // 8, side // 8)
        text = torch.empty(1, 77, u["cross_attention_dim"])
        pooled = torch.empty(1, cfg["text_2"]["projection_dim"])
        time_ids = torch.empty(1, 6)
        with FlopCounterMode(display=False) as counter:
            unet(latent, torch.tensor([999.0]), encoder_hidden_states=text,
                 added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids})
    return int(counter.get_total_flops())


def matmul_tflops(device: str, dtype: Any, n: int, seconds: float = 1.0) -> float:
    """Measured dense matmul rate (TFLOP/s) of ``n x n`` matrices in ``dtype`` on ``device``."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or reps < 3:
        a @ b
        reps += 1
        if reps % 10 == 0:
            sync()
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def inputs(n: int, side: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` random grey-textured RGB sources and one centred square region whose ``crop``
    window (context 1.0) is the whole image."""
    rng = np.random.default_rng(0)
    images = [rng.integers(60, 180, (side, side, 3), dtype=np.uint8) for _ in range(n)]
    region = np.zeros((side, side), bool)
    r = side // 3 + 2
    lo = (side - r) // 2
    region[lo:lo + r, lo:lo + r] = True
    return images, region


class Way:
    """One way of generating: a name, its settings, and a function making k images."""

    def __init__(self, name: str, settings: dict[str, Any],
                 run: Callable[[Sequence[int]], dict[str, Any]], batch: int) -> None:
        self.name, self.settings, self.run, self.batch = name, settings, run, batch


def reference_way(pipe: Any, images: list[np.ndarray], region: np.ndarray, side: int,
                  steps: int) -> Way:
    """The reference code's call, one image per call (its own stretch to ``side`` is a no-op
    here: the sources are ``side`` square already)."""
    import torch
    from PIL import Image

    mask = Image.fromarray(region.astype(np.uint8) * 255).convert("RGB")

    def run(seeds: Sequence[int]) -> dict[str, Any]:
        for s in seeds:
            image = Image.fromarray(images[s % len(images)])
            pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, mask_image=mask,
                 guidance_scale=GUIDANCE, num_inference_steps=steps, strength=STRENGTH,
                 generator=torch.Generator("cpu").manual_seed(s), height=side, width=side,
                 original_size=(side, side), target_size=(side, side),
                 padding_mask_crop=PADDING_MASK_CROP)
        return {"model_size": [side, side]}

    settings = {"batch": 1, "dtype": str(pipe.unet.dtype).removeprefix("torch."),
                "attention": "diffusers default", "prompt_cache": False, "compile": False,
                "channels_last": False, "padding_mask_crop": PADDING_MASK_CROP}
    return Way("reference", settings, run, 1)


def diag_way(pipe: Any, images: list[np.ndarray], region: np.ndarray, device: str,
             dtype_name: str, batch: int, compile_unet: bool, steps: int) -> Way:
    """diag's ``DiffusionGenerator`` with the speed options on."""
    from diag.generators import Request
    from diag.generators.diffusion import DiffusionConfig, DiffusionGenerator
    from diag.generators.diffusion.pipeline import prepare_pipeline

    config = DiffusionConfig(model="random weights", dtype=dtype_name, steps=steps,
                             guidance_scale=GUIDANCE, strength=STRENGTH, batch_size=batch,
                             resolution=region.shape[0],
                             attention="sdpa", channels_last=True, compile=compile_unet,
                             prompt_cache=True)
    prepare_pipeline(pipe, config, device)
    gen = DiffusionGenerator(config, device, pipeline=pipe)

    def run(seeds: Sequence[int]) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for k in range(0, len(seeds), batch):
            reqs = [Request(image=images[s % len(images)], region=region, seed=s, prompt=PROMPT,
                            negative_prompt=NEGATIVE) for s in seeds[k:k + batch]]
            info = gen.generate_batch(reqs)[-1].info
        return {"model_size": info.get("model_size")}

    settings = {"batch": batch, "dtype": dtype_name, "attention": "sdpa", "prompt_cache": True,
                "compile": compile_unet, "channels_last": True, "resize": "crop"}
    return Way("diag", settings, run, batch)


def measure(way: Way, n: int, device: str) -> dict[str, Any]:
    """Warm up with one call, then time ``n`` images (rounded up to whole batches)."""
    import torch

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n = -(-n // way.batch) * way.batch
    start = time.perf_counter()
    way.run(list(range(10_000, 10_000 + way.batch)))
    sync()
    warmup = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    seen = way.run(list(range(n)))
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return {"name": way.name, **way.settings, "images": n, "warmup_s": round(warmup, 3),
            "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 4),
            "s_per_image": round(seconds / n, 4),
            "peak_gpu_memory_gib": None if peak is None else round(peak, 2),
            "model_size": seen.get("model_size")}


def count_unet_calls(pipe: Any, run: Callable[[Sequence[int]], Any], seeds: Sequence[int]
                     ) -> int:
    """UNet calls while ``run(seeds)`` makes one image (its denoising steps)."""
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    handle = pipe.unet.register_forward_pre_hook(hook)
    try:
        run(seeds)
    finally:
        handle.remove()
    return calls[0]


def machine(device: str) -> dict[str, Any]:
    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    return {"device": device, "gpu": gpu, "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__}


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    where = m["gpu"] or f"{m['cpu']} ({m['cores']} cores, no GPU used)"
    lines = [f"Machine: {where}; torch {m['torch']}, diffusers {m['diffusers']}. "
             f"Size: {result['size']} ({result['side']} px, {result['steps']} steps, guidance "
             f"{result['guidance_scale']}, strength {result['strength']}).",
             f"UNet: {result['unet_flops_per_call'] / 1e9:.5g} GFLOP per call per latent, "
             f"{result['unet_calls_per_image']} calls per image, x2 guidance = "
             f"{result['unet_flops_per_image'] / 1e9:.5g} GFLOP per image; measured "
             f"{result['matmul_dtype']} matmul {result['matmul_tflops']:.4g} TFLOP/s; floor "
             f"{result['floor_s_per_image']:.4g} s/image.", "",
             "| way | batch | dtype | compile | images/s | s/image | peak GPU GiB | x floor "
             "| x reference |", "|---|---|---|---|---|---|---|---|---|"]
    for w in result["ways"]:
        peak = "-" if w["peak_gpu_memory_gib"] is None else f"{w['peak_gpu_memory_gib']:.2f}"
        lines.append(f"| {w['name']} | {w['batch']} | {w['dtype']} | {w['compile']} | "
                     f"{w['images_per_s']:.4g} | {w['s_per_image']:.4g} | {peak} | "
                     f"{w['x_floor']:.2f} | {w['speedup']:.2f} |")
    goal = result["goal"]
    lines += ["", f"Goal (GPU, full size): diag >= {goal['speedup_min']}x the reference and "
              f"within {goal['x_floor_max']}x of the floor: " + (
                  "not applicable (not a full-size GPU run)" if goal["met"] is None
                  else "met" if goal["met"] else "NOT met") + "."]
    return "\n".join(lines) + "\n"


def count_only() -> dict[str, Any]:
    """Full-size parameters and UNet FLOPs, from the configs alone (meta device)."""
    cfg = configs(small=False)
    flops = unet_flops(cfg, 1024)
    calls = int(STEPS * STRENGTH)  # diffusers' img2img/inpaint steps (as counted in a run)
    per_image = flops * calls * 2
    return {"params": count_params(cfg), "published_params": PUBLISHED_PARAMS,
            "side": 1024, "unet_flops_per_call": flops, "unet_calls_per_image": calls,
            "unet_flops_per_image": per_image,
            "unet_flops_per_call_by_side": {side: unet_flops(cfg, side) for side in (768, 512)},
            "floor_s_per_image_at_h200_spec": per_image / (H200_BF16_DENSE_TFLOPS * 1e12),
            "note": f"floor at {H200_BF16_DENSE_TFLOPS:g} TFLOP/s (H200 spec sheet, dense "
                    "bf16), not a measured rate; UNet only"}


def run(small: bool, device: str, n: int, batch: int, compile_unet: bool,
        steps: int | None = None, side: int | None = None) -> dict[str, Any]:
    import torch

    cuda = device.startswith("cuda")
    cfg = configs(small)
    side = side or (128 if small else 1024)
    steps = steps or (4 if small else STEPS)
    ref_dtype, diag_dtype = ((torch.float16, "bfloat16") if cuda else (torch.float32, "float32"))
    mm_dtype = torch.bfloat16 if cuda else torch.float32
    images, region = inputs(max(n, batch), side)
    params = count_params(cfg)
    flops = unet_flops(cfg, side)
    rate = matmul_tflops(device, mm_dtype, 8192 if cuda else 1024)

    ways = []
    pipe = build(cfg, device, ref_dtype)
    ref = reference_way(pipe, images, region, side, steps)
    calls = count_unet_calls(pipe, ref.run, [0])
    ways.append(measure(ref, n, device))
    del pipe, ref
    if cuda:
        torch.cuda.empty_cache()
    pipe = build(cfg, device, getattr(torch, diag_dtype))
    ways.append(measure(diag_way(pipe, images, region, device, diag_dtype, batch, compile_unet,
                                 steps), n, device))
    del pipe

    per_image = flops * calls * 2  # each call runs the guided and unguided latent
    floor = per_image / (rate * 1e12)
    base = ways[0]["s_per_image"]
    for w in ways:
        w["x_floor"] = round(w["s_per_image"] / floor, 3)
        w["speedup"] = round(base / w["s_per_image"], 3)
    full_gpu = cuda and not small
    met = (ways[1]["speedup"] >= GOAL_SPEEDUP and ways[1]["x_floor"] <= GOAL_X_FLOOR
           if full_gpu else None)
    return {"size": "small" if small else "full", "side": side, "steps": steps,
            "guidance_scale": GUIDANCE, "strength": STRENGTH, "machine": machine(device),
            "params": params, "unet_flops_per_call": flops, "unet_calls_per_image": calls,
            "unet_flops_per_image": per_image, "matmul_dtype": str(mm_dtype).removeprefix(
                "torch."), "matmul_tflops": round(rate, 4), "floor_s_per_image": floor,
            "ways": ways, "goal": {"speedup_min": GOAL_SPEEDUP, "x_floor_max": GOAL_X_FLOOR,
                                   "met": met}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny configs, 4 steps, 128 px (CPU)")
    ap.add_argument("--count-only", action="store_true",
                    help="print full-size parameter counts and UNet FLOPs, run nothing")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--images", type=int, default=None, help="images timed per way")
    ap.add_argument("--batch", type=int, default=None, help="diag's batch size")
    ap.add_argument("--steps", type=int, default=None, help="default 30 (full) or 4 (small)")
    ap.add_argument("--side", type=int, default=None, help="default 1024 (full) or 128 (small)")
    ap.add_argument("--compile", action="store_true", help="torch.compile diag's UNet")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="write the result here as JSON")
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    args = ap.parse_args(argv)

    import torch

    warnings.filterwarnings("ignore")
    from diag.generators.diffusion.pipeline import quiet_libraries

    quiet_libraries()
    if args.count_only:
        result = count_only()
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        return result
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {device}: no CUDA GPU here; use --device cpu --small")
    if not args.small and not device.startswith("cuda"):
        sys.exit("error: the full-size model needs a CUDA GPU (a CPU would take hours per "
                 "image): use --small on a CPU, or --count-only for FLOPs and parameters")
    n = args.images or (4 if args.small else 8)
    batch = args.batch or (2 if args.small else 8)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args.small, device, n, batch, args.compile, args.steps, args.side)
    finally:
        torch.set_num_threads(threads)
    text = markdown(result)
    print(text, end="")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        args.md.write_text(text)
    return result


if __name__ == "__main__":
    main()
