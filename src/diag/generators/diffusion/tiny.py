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


def build_tiny_sdxl_inpainting(seed: int = 0):  # noqa: ANN201 (diffusers pipeline)
    """Build the tiny pipeline in memory (random weights from ``seed``)."""
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    text_config = CLIPTextConfig(
        vocab_size=1000, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=5, projection_dim=32, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=9, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=2, attention_head_dim=(2, 4),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
        transformer_layers_per_block=(1, 2), cross_attention_dim=64,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    vae = AutoencoderKL(
        block_out_channels=[16, 16, 32, 32], norm_num_groups=16, latent_channels=4,
        in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        force_upcast=False,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler, requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def write_tiny_sdxl_inpainting(folder: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it to ``folder`` (diffusers format); return the path."""
    from diag.generators.diffusion.pipeline import quiet_libraries

    folder = Path(folder)
    pipe = build_tiny_sdxl_inpainting(seed)
    quiet_libraries()
    pipe.save_pretrained(folder)
    (folder / "README.md").write_text(
        "# Tiny SDXL-inpainting pipeline (random weights)\n\n"
        "Written by `diag tiny-model`. Same architecture as "
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1 at ~2.4M parameters, randomly "
        "initialised: for dry runs and tests, its images are noise.\n", encoding="utf-8")
    return folder
