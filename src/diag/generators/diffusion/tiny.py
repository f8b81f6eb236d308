"""A tiny, randomly initialised SDXL-inpainting pipeline, saved in diffusers format.

It has the real SDXL inpainting architecture (two CLIP text encoders, a 9-channel UNet with
text-time conditioning, a 4-block VAE, an Euler scheduler) at about 2.4 M parameters, so a spec
can be dry-run, and the real diffusion code path tested, without downloading 7 GB of weights.
Its images are noise-like: it proves the plumbing, not the looks.

>>> import tempfile
>>> path = write_tiny_sdxl_inpainting(tempfile.mkdtemp())  # doctest: +SKIP
>>> from diffusers import AutoPipelineForInpainting
>>> pipe = AutoPipelineForInpainting.from_pretrained(path)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-to-printable-character table (as in the original BPE tokenizer)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _write_tokenizer(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


# The tiny model's sub-model configs (the real SDXL-inpainting layout at toy widths; the
# full-size configs are in benchmarks/bench_sdxl.py).
TINY_TEXT: dict[str, Any] = {
    "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
    "num_hidden_layers": 5, "projection_dim": 32, "max_position_embeddings": 77,
}
TINY_UNET: dict[str, Any] = {
    "sample_size": 32, "in_channels": 9, "out_channels": 4, "block_out_channels": (32, 64),
    "layers_per_block": 2, "attention_head_dim": (2, 4),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "use_linear_projection": True,
    "transformer_layers_per_block": (1, 2), "cross_attention_dim": 64,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": [16, 16, 32, 32], "norm_num_groups": 16, "latent_channels": 4,
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "force_upcast": False,
}
# SDXL inpainting's scheduler (EulerDiscreteScheduler) settings
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "steps_offset": 1, "timestep_spacing": "leading",
}


def byte_tokenizer():  # noqa: ANN201 (transformers tokenizer)
    """A CLIP tokenizer over bytes (no merges): real CLIP tokenization needs a downloaded
    vocabulary; this one makes the same 77-token sequences from local files."""
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def build_sdxl_inpainting(unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any],
                          text_2: dict[str, Any], seed: int = 0, device: str = "cpu",
                          force_zeros_for_empty_prompt: bool = True):  # noqa: ANN201
    """An SDXL-inpainting pipeline with random weights (from ``seed``) built from sub-model
    configs (keyword dicts of ``UNet2DConditionModel``, ``AutoencoderKL`` and the two
    ``CLIPTextConfig``), its parameters made directly on ``device``, in float32."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(**text, **ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_2, **ids))
        unet_model = UNet2DConditionModel(**unet)
        vae_model = AutoencoderKL(**vae)
    return StableDiffusionXLInpaintPipeline(
        vae=vae_model, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet_model,
        scheduler=EulerDiscreteScheduler(**SCHEDULER), requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=False,
    )


def build_tiny_sdxl_inpainting(seed: int = 0):  # noqa: ANN201 (diffusers pipeline)
    """Build the tiny pipeline in memory (random weights from ``seed``)."""
    return build_sdxl_inpainting(TINY_UNET, TINY_VAE, TINY_TEXT, TINY_TEXT, seed)


def write_tiny_sdxl_inpainting(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it to ``folder`` (diffusers format); return the path."""
    return _save(build_tiny_sdxl_inpainting(seed), folder,
                 "# Tiny SDXL-inpainting pipeline (random weights)\n\n"
                 "Written by `diag tiny-model`. Same architecture as "
                 "diffusers/stable-diffusion-xl-1.0-inpainting-0.1 at ~2.4M parameters, randomly "
                 "initialised: for dry runs and tests, its images are noise.\n")


def _save(pipe: Any, folder: str | Path, readme: str) -> Path:
    """Save a built pipeline to ``folder`` (diffusers format) with a README; return the path."""
    from diag.generators.diffusion.pipeline import quiet_libraries

    folder = Path(folder)
    quiet_libraries()
    pipe.save_pretrained(folder)
    (folder / "README.md").write_text(readme, encoding="utf-8")
    return folder


# The tiny text-to-image model: the Stable Diffusion 1.5 architecture (one CLIP text encoder,
# a 4-channel UNet without added conditioning, the same VAE) at toy widths. The full-size
# SD 1.5 UNet config is in benchmarks/bench_finetune.py.
TINY_SD15_TEXT: dict[str, Any] = {
    "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
    "num_hidden_layers": 5, "max_position_embeddings": 77,
}
TINY_SD15_UNET: dict[str, Any] = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4, "block_out_channels": (32, 64),
    "layers_per_block": 2, "attention_head_dim": (2, 4), "norm_num_groups": 32,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"), "cross_attention_dim": 32,
}
# Stable Diffusion 1.5's scheduler (PNDMScheduler) settings
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "prediction_type": "epsilon",
}


def build_sd15(unet: dict[str, Any], vae: dict[str, Any], text: dict[str, Any], seed: int = 0,
               device: str = "cpu"):  # noqa: ANN201 (diffusers pipeline)
    """A Stable-Diffusion-1.5-architecture text-to-image pipeline with random weights (from
    ``seed``) built from sub-model configs, in float32, without a safety checker."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = byte_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    with torch.device(device):
        text_encoder = CLIPTextModel(CLIPTextConfig(**text, **ids))
        unet_model = UNet2DConditionModel(**unet)
        vae_model = AutoencoderKL(**vae)
    return StableDiffusionPipeline(
        vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_model,
        scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_text2img(seed: int = 0):  # noqa: ANN201 (diffusers pipeline)
    """Build the tiny SD-1.5-architecture text-to-image pipeline in memory."""
    return build_sd15(TINY_SD15_UNET, TINY_VAE, TINY_SD15_TEXT, seed)


def write_tiny_text2img(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny text-to-image pipeline and save it to ``folder`` (diffusers format)."""
    return _save(build_tiny_text2img(seed), folder,
                 "# Tiny Stable-Diffusion-1.5 text-to-image pipeline (random weights)\n\n"
                 "Written by `diag tiny-model --kind text2img`. Same architecture as "
                 "stable-diffusion-v1-5/stable-diffusion-v1-5 at toy widths, randomly "
                 "initialised: for dry runs and tests of `diag finetune`, its images are noise.\n")
