"""The base pipeline of ``diag finetune`` and what it computes once: LoRA placement (kohya's,
as the In&Out reference), the VAE's latent distributions, the inpainting inputs (mask and
masked-image latents) and the prompts' conditioning (with ``clip_skip``; SDXL's pooled
embedding and time ids)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diag.errors import DiagError
from diag.finetune.config import DEFAULT_INPAINTING_MODEL, DEFAULT_MODEL, Config

# kohya's networks.lora (the reference's): every linear layer and 1x1 convolution of the UNet's
# transformer blocks; with conv_dim, also the ResNet blocks' (3x3 convolutions at conv rank)
# and the down/up-samplers'; in the text encoder, the attention and MLP layers
TRANSFORMER = (r".*attentions\.\d+\.(proj_in|proj_out)$"
               r"|.*transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$"
               r"|.*transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)$")
TARGETS = (TRANSFORMER + r"|.*resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)$"
           r"|.*(downsamplers|upsamplers)\.\d+\.conv$")
CONV_3X3 = ("resnets\\.\\d+\\.conv1", "resnets\\.\\d+\\.conv2", "downsamplers\\.\\d+\\.conv",
            "upsamplers\\.\\d+\\.conv")
TEXT_TARGETS = r".*layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))$"


def load_base(model: str, mode: str = "text2img") -> Any:
    """The base pipeline (hub id or local folder), in float32 on the CPU: a text-to-image one
    for ``mode: text2img``, an inpainting one (9-channel UNet) for ``mode: inpainting``."""
    from diffusers import DiffusionPipeline

    from diag.generators.diffusion.pipeline import (
        _from_hub,
        check_model_folder,
        load_error,
        quiet_libraries,
    )

    quiet_libraries()
    local = Path(model).expanduser()
    inpaint = mode == "inpainting"
    looks_local = check_model_folder(
        model, "model", "inpainting pipeline" if inpaint else "text-to-image pipeline",
        DEFAULT_INPAINTING_MODEL if inpaint else DEFAULT_MODEL,
        "diag tiny-model DIR" if inpaint else "diag tiny-model DIR --kind text2img")
    kwargs: dict[str, Any] = {"safety_checker": None, "requires_safety_checker": False}
    try:
        if looks_local:
            pipe = DiffusionPipeline.from_pretrained(str(local), **kwargs)
        else:
            pipe = _from_hub(DiffusionPipeline, model, kwargs)
    except Exception as exc:  # hub, network and format errors all end here
        raise load_error(exc, model, local if looks_local else None, "the base model",
                         "inpainting" if inpaint else "text-to-image", "model") from None
    unet = getattr(pipe, "unet", None)
    if inpaint:
        if (unet is None or getattr(pipe, "text_encoder", None) is None
                or getattr(unet.config, "in_channels", None) != 9):
            raise DiagError(f"model '{model}' is a {type(pipe).__name__}, not an inpainting "
                            "pipeline with a 9-channel UNet: with mode: inpainting set model to "
                            f"one, e.g. {DEFAULT_INPAINTING_MODEL}")
    elif (unet is None or getattr(pipe, "text_encoder", None) is None
            or getattr(pipe, "text_encoder_2", None) is not None
            or unet.config.in_channels != 4 or unet.config.addition_embed_type is not None):
        raise DiagError(f"model '{model}' is a {type(pipe).__name__}: diag finetune trains "
                        "Stable Diffusion 1.x / 2.x text-to-image pipelines (one text encoder, a "
                        "4-channel UNet) with mode: text2img: set model to one, e.g. "
                        f"{DEFAULT_MODEL}"
                        + (", or set mode: inpainting" if unet is not None
                           and unet.config.in_channels == 9 else ""))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_config(cfg: Config) -> Any:
    """peft's LoraConfig of the UNet: rank/alpha on the linear layers and 1x1 convolutions,
    conv_rank/conv_alpha on the 3x3 convolutions (peft matches ``rank_pattern`` keys at the
    end of module names)."""
    from peft import LoraConfig

    if cfg.conv_rank == 0:
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                          target_modules=TRANSFORMER)
    pattern = dict.fromkeys(CONV_3X3, cfg.conv_rank)
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                      target_modules=TARGETS, rank_pattern=pattern,
                      alpha_pattern=dict.fromkeys(CONV_3X3, cfg.conv_alpha))


def text_lora_config(cfg: Config) -> Any:
    """peft's LoraConfig of the text encoder (kohya's: attention and MLP, rank / alpha)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                      target_modules=TEXT_TARGETS)


def trains_text_encoder(cfg: Config, pipe: Any) -> bool:
    """Whether the text encoder gets LoRA (``auto``: one-encoder pipelines); checks that
    ``train_text_encoder`` and ``clip_skip`` suit the pipeline."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    if sdxl and cfg.train_text_encoder is True:
        raise DiagError(f"train_text_encoder: true is not supported for '{cfg.model}' (SDXL: two "
                        "text encoders): set train_text_encoder: false (or auto)")
    if sdxl and cfg.skip != 1:
        raise DiagError(f"clip_skip {cfg.clip_skip} does not apply to '{cfg.model}' (SDXL takes "
                        "its text encoders' penultimate layers itself): set clip_skip: auto")
    return bool(cfg.train_text_encoder) and not sdxl


def encode(pipe: Any, images: Any, device: str, dtype: Any, batch: int = 8) -> tuple[Any, Any]:
    """Mean and std of the VAE's latent distribution of each image (CPU, float32), scaled."""
    import torch

    means, stds = [], []
    scale = pipe.vae.config.scaling_factor
    shift = getattr(pipe.vae.config, "shift_factor", None) or 0.0
    with torch.no_grad():
        for k in range(0, len(images), batch):
            dist = pipe.vae.encode(images[k:k + batch].to(device, dtype)).latent_dist
            means.append(((dist.mean.float() - shift) * scale).cpu())
            stds.append((dist.std.float() * scale).cpu())
    return torch.cat(means), torch.cat(stds)


def condition(pipe: Any, prompt: str, device: str, resolution: int, skip: int = 1
               ) -> tuple[Any, Any, Any]:
    """A prompt's conditioning (CPU, float32): the text embeddings, and for SDXL UNets the
    pooled embedding and the time ids (original size = target size = ``resolution``, no
    crop), exactly as the SDXL pipelines build them at inference; else None, None."""
    import torch

    if getattr(pipe, "text_encoder_2", None) is None:
        with torch.no_grad():
            return text_embeddings(pipe.text_encoder, tokens(pipe, prompt).to(device),
                                    skip).float().cpu(), None, None
    with torch.no_grad():
        emb, _, pooled, _ = pipe.encode_prompt(prompt=prompt, device=device,
                                               num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
    unet = pipe.unet
    n = ((unet.add_embedding.linear_1.in_features - pipe.text_encoder_2.config.projection_dim)
         // unet.config.addition_time_embed_dim)
    ids = [resolution, resolution, 0, 0] + ([resolution, resolution] if n == 6 else [6.0])
    return emb.float().cpu(), pooled.float().cpu(), torch.tensor([ids], dtype=torch.float32)


def encode_each(pipe: Any, images: list[Any], device: str, dtype: Any) -> tuple[
        list[Any], list[Any]]:
    """:func:`encode` of images of several sizes (encoded in batches of one size)."""
    import torch

    means: list[Any] = [None] * len(images)
    stds: list[Any] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(images):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    for members in by_shape.values():
        m, s = encode(pipe, torch.stack([images[i] for i in members]), device, dtype)
        for j, i in enumerate(members):
            means[i], stds[i] = m[j], s[j]
    return means, stds


def mask_inputs(pipe: Any, images: Any, masks: Any, latent: int, device: str,
                 dtype: Any) -> Any:
    """The extra UNet inputs of inpainting (CPU, float32): the mask at latent size (a latent
    pixel is masked when any of its pixels is: thin defects stay) and the latents of the image
    with the mask blanked out (``image * (mask < 0.5)``, as the pipelines), concatenated."""
    import torch

    small = torch.nn.functional.adaptive_max_pool2d(masks, (latent, latent))
    masked, _ = encode(pipe, images * (masks < 0.5), device, dtype)
    return torch.cat([small, masked], dim=1)


def tokens(pipe: Any, prompt: str) -> Any:
    return pipe.tokenizer(prompt, padding="max_length",
                          max_length=pipe.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids


def text_embeddings(text_encoder: Any, ids: Any, skip: int) -> Any:
    """The text encoder's output ``skip`` layers from the end (kohya's clip_skip: 1 is the
    last layer; more takes that hidden state through the final layer norm, as kohya does)."""
    if skip == 1:
        return text_encoder(ids)[0]
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-skip]
    # transformers 5 keeps the final layer norm on the model itself, 4.x on its text_model
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
