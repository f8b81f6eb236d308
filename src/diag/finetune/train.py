"""DreamBooth + LoRA fine-tuning, the diffusers / peft way (as diffusers'
``train_dreambooth_lora.py``), with the In&Out reference's settings.

LoRA goes where kohya's ``networks.lora`` (the reference's trainer) puts it: the UNet's
linear layers and 1x1 convolutions (``rank`` / ``alpha``) and 3x3 convolutions (``conv_rank``
/ ``conv_alpha``, peft's LoRA on ``Conv2d``), and the text encoder's attention and MLP layers
(``train_text_encoder``). The VAE stays frozen, so the images' latent distributions are
computed once (and, with a frozen text encoder, the prompts' embeddings). Each step takes
``batch_size`` instance images and as many class images, draws noise and timesteps from one
seeded generator, and minimises the min-SNR weighted noise prediction error (instance +
``prior_loss_weight`` x class). ``mode: inpainting`` trains an inpainting pipeline the same
way on windows around the real defects, with their masks (:mod:`diag.finetune.data`).

Every ``checkpoint_every`` steps (and at the end) a checkpoint folder is written whole and then
renamed into place: ``OUT/checkpoints/step-N/`` with the LoRA weights (safetensors) and
``state.pt`` (optimizer, LR schedule, grad scaler, generator state, losses). Rerunning the
same command continues from it; a changed config is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from diag.device import resolve_device
from diag.errors import DiagError, where
from diag.files import check_folder, lock_folder, save_torch, sha256_file, write_json
from diag.finetune.config import (
    DEFAULT_INPAINTING_MODEL,
    DEFAULT_MODEL,
    Config,
    config_dict,
    identity,
)
from diag.finetune.data import (
    ensure_class_images,
    inpainting_class_examples,
    inpainting_examples,
    instance_samples,
    load_images,
    load_instances,
)

RUN_FILE = "run.json"
CKPT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
LOG_FILE = "finetune.log"
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


class _Log:
    """Lines to OUT/finetune.log, and to stderr when no progress bar is shown."""

    def __init__(self, out: Path, echo: bool) -> None:
        self.path = out / LOG_FILE
        self.echo = echo

    def __call__(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo:
            print(f"finetune: {message}", file=sys.stderr, flush=True)


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


def _trains_text_encoder(cfg: Config, pipe: Any) -> bool:
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


def _optimizer(cfg: Config, groups: list[dict[str, Any]]) -> Any:
    """AdamW over the parameter groups: bitsandbytes' 8-bit one (the reference's) or torch's."""
    import torch

    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # noqa: BLE001 - missing, or no build for this platform
        raise DiagError(f"optimizer adamw8bit needs bitsandbytes, which does not import here "
                        f"({type(exc).__name__}: {exc}): pip install bitsandbytes, or set "
                        "optimizer: adamw") from None
    return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)


def _precision(cfg: Config, device: str) -> tuple[Any, bool]:
    """(frozen weights' dtype, use a grad scaler)."""
    import torch

    mode = cfg.mixed_precision
    if mode == "auto":
        mode = "fp16" if device.startswith("cuda") else "no"
    if mode == "fp16" and not device.startswith("cuda"):
        raise DiagError(f"mixed_precision fp16 needs a CUDA device, but the device is {device}: "
                        "set mixed_precision: auto, no or bf16")
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mode], mode == "fp16"


def _check_run(out: Path, cfg: Config, overwrite: bool) -> None:
    """Refuse a changed config in a run folder (unless overwrite: then start afresh)."""
    path = out / RUN_FILE
    new = identity(cfg)
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != new and not overwrite:
            changed = [k for k in new if not isinstance(old, dict) or old.get(k) != new[k]]
            what = f"'{changed[0]}' was {old.get(changed[0])!r}, now {new[changed[0]]!r}" \
                if changed and isinstance(old, dict) else "another config"
            raise DiagError(f"--out {where(out)} holds a fine-tuning run with another config "
                            f"({what}): rerun with the same config to resume, add --overwrite to "
                            "start afresh, or choose another --out")
        if old != new:
            for name in (CKPT_DIR, ADAPTER_DIR):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "finetune.json").unlink(missing_ok=True)
    write_json(path, new)


def _latest_checkpoint(out: Path) -> Path | None:
    folder = out / CKPT_DIR
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("step-*") if (p / "state.pt").is_file()
                  and (p / "lora.safetensors").is_file() and p.name[5:].isdigit())
    return done[-1] if done else None


def _lora_weights(model: Any) -> dict[str, Any]:
    """A model's LoRA weights (peft's key format), float32 on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous()
            for k, v in get_peft_model_state_dict(model).items()}


def _save_checkpoint(out: Path, unet: Any, state: dict[str, Any], text_encoder: Any = None
                     ) -> Path:
    from safetensors.torch import save_file

    folder = out / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state['step']:07d}"
    tmp = folder / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {"lora.safetensors": unet}
    if text_encoder is not None:
        files["text_encoder_lora.safetensors"] = text_encoder
    for name, model in files.items():
        save_file(_lora_weights(model), str(tmp / name))
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    save_torch(tmp / "state.pt", state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in folder.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _save_adapter(out: Path, unet: Any, lora: Any, pipeline_class: Any,
                  text_encoder: Any = None, text_lora: Any = None) -> Path:
    """The adapter in diffusers form: ``OUT/adapter/pytorch_lora_weights.safetensors`` (UNet
    and, when trained, text encoder LoRA), which the base pipeline's ``load_lora_weights``
    loads (ranks and alphas in its metadata)."""
    tmp = out / f".{ADAPTER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # peft's key format (lora_A / lora_B) throughout: diffusers' conversion to its older
    # format renames only the attention keys, and a file mixing both formats loads without
    # its attention LoRA (silently, for SDXL and SD 1.5 alike)
    extra: dict[str, Any] = {}
    if text_encoder is not None:
        extra = {"text_encoder_lora_layers": _lora_weights(text_encoder),
                 "text_encoder_lora_adapter_metadata": text_lora.to_dict()}
    pipeline_class.save_lora_weights(
        tmp, unet_lora_layers=_lora_weights(unet), safe_serialization=True,
        unet_lora_adapter_metadata=lora.to_dict(), **extra)
    with open(tmp / ADAPTER_FILE, "rb") as fh:
        os.fsync(fh.fileno())
    final = out / ADAPTER_DIR
    old = out / f".{ADAPTER_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final / ADAPTER_FILE


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    from diag import __version__

    return {"diag": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def _encode(pipe: Any, images: Any, device: str, dtype: Any, batch: int = 8) -> tuple[Any, Any]:
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


def _condition(pipe: Any, prompt: str, device: str, resolution: int, skip: int = 1
               ) -> tuple[Any, Any, Any]:
    """A prompt's conditioning (CPU, float32): the text embeddings, and for SDXL UNets the
    pooled embedding and the time ids (original size = target size = ``resolution``, no
    crop), exactly as the SDXL pipelines build them at inference; else None, None."""
    import torch

    if getattr(pipe, "text_encoder_2", None) is None:
        with torch.no_grad():
            return _text_embeddings(pipe.text_encoder, _tokens(pipe, prompt).to(device),
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


def _take(store: Any, idx: Any) -> Any:
    """Rows ``idx`` of a tensor, or items ``idx`` of a list of equally shaped tensors, as one
    tensor."""
    import torch

    return torch.stack([store[i] for i in idx.tolist()])


def _encode_each(pipe: Any, images: list[Any], device: str, dtype: Any) -> tuple[
        list[Any], list[Any]]:
    """:func:`_encode` of images of several sizes (encoded in batches of one size)."""
    import torch

    means: list[Any] = [None] * len(images)
    stds: list[Any] = [None] * len(images)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(images):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    for members in by_shape.values():
        m, s = _encode(pipe, torch.stack([images[i] for i in members]), device, dtype)
        for j, i in enumerate(members):
            means[i], stds[i] = m[j], s[j]
    return means, stds


def _mask_inputs(pipe: Any, images: Any, masks: Any, latent: int, device: str,
                 dtype: Any) -> Any:
    """The extra UNet inputs of inpainting (CPU, float32): the mask at latent size (a latent
    pixel is masked when any of its pixels is: thin defects stay) and the latents of the image
    with the mask blanked out (``image * (mask < 0.5)``, as the pipelines), concatenated."""
    import torch

    small = torch.nn.functional.adaptive_max_pool2d(masks, (latent, latent))
    masked, _ = _encode(pipe, images * (masks < 0.5), device, dtype)
    return torch.cat([small, masked], dim=1)


def _tokens(pipe: Any, prompt: str) -> Any:
    return pipe.tokenizer(prompt, padding="max_length",
                          max_length=pipe.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids


def _text_embeddings(text_encoder: Any, ids: Any, skip: int) -> Any:
    """The text encoder's output ``skip`` layers from the end (kohya's clip_skip: 1 is the
    last layer; more takes that hidden state through the final layer norm, as kohya does)."""
    if skip == 1:
        return text_encoder(ids)[0]
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-skip]
    # transformers 5 keeps the final layer norm on the model itself, 4.x on its text_model
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)


def finetune(cfg: Config, out: str | Path, overwrite: bool = False,
             progress: bool | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` with DreamBooth + LoRA into ``out``; returns finetune.json's
    content. Rerunning with the same config resumes from the last checkpoint."""
    out = Path(out)
    check_folder(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    import torch

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with lock_folder(out, "a fine-tuning run", "--out"):
            return _finetune(cfg, out, overwrite,
                             sys.stderr.isatty() if progress is None else progress)
    finally:
        torch.set_num_threads(threads)


def _finetune(cfg: Config, out: Path, overwrite: bool, progress: bool) -> dict[str, Any]:
    import random

    import numpy as np
    import torch
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from peft import inject_adapter_in_model
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm import tqdm

    started = time.monotonic()
    inpaint = cfg.mode == "inpainting"
    samples = instance_samples(cfg)  # before anything heavy: data errors come first
    if inpaint:
        inst, inst_masks, sides = inpainting_examples(samples, cfg)
        if cfg.prior_preservation:
            cls_images, cls_masks, class_ids = inpainting_class_examples(cfg, inst_masks, sides)
    device = resolve_device(cfg.device)
    dtype, use_scaler = _precision(cfg, device)
    pipe = load_base(cfg.model, cfg.mode)
    _check_run(out, cfg, overwrite)
    log = _Log(out, echo=not progress)
    log(f"fine-tuning {cfg.model} on {len(samples)} instance images ('{cfg.instance_prompt}') "
        f"on {device}")
    pipe.to(device, dtype if device.startswith("cuda") else torch.float32)
    if getattr(pipe.vae.config, "force_upcast", False):  # SDXL's VAE overflows in fp16
        pipe.vae.to(torch.float32)
    train_te = _trains_text_encoder(cfg, pipe)
    class_paths: list[Path] = []
    generated = 0
    if cfg.prior_preservation and not inpaint:
        class_paths, generated = ensure_class_images(out, cfg, pipe, log)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    vae_dtype = pipe.vae.dtype
    if inpaint:  # windows of one size: one tensor
        inst_mean, inst_std = _encode(pipe, inst, device, vae_dtype)
        flip_images = inst.flip(-1)
    else:  # aspect-ratio buckets: a list, one tensor per image
        inst = load_instances([s.path for s in samples], cfg)
        inst_mean, inst_std = _encode_each(pipe, inst, device, vae_dtype)
        flip_images = [x.flip(-1) for x in inst]
    flip_mean = flip_std = None
    if cfg.random_flip:
        flip_mean, flip_std = (_encode(pipe, flip_images, device, vae_dtype) if inpaint
                               else _encode_each(pipe, flip_images, device, vae_dtype))
    vae_factor = pipe.vae_scale_factor
    buckets: dict[tuple[int, ...], list[int]] = {}  # latent shape -> instance indices
    for i in range(len(samples)):
        buckets.setdefault(tuple(inst_mean[i].shape), []).append(i)
    cls_mean = cls_std = None
    if class_paths:
        cls_mean, cls_std = _encode(pipe, load_images(class_paths, cfg), device, vae_dtype)
    # inpainting: the UNet also sees the mask and the masked image's latents (9 channels)
    cond: dict[str, Any] = {}
    if inpaint:
        latent = cfg.resolution // pipe.vae_scale_factor
        cond["inst"] = _mask_inputs(pipe, inst, inst_masks, latent, device, vae_dtype)
        if cfg.random_flip:
            cond["flip"] = _mask_inputs(pipe, inst.flip(-1), inst_masks.flip(-1), latent,
                                        device, vae_dtype)
        if cfg.prior_preservation:
            cls_mean, cls_std = _encode(pipe, cls_images, device, vae_dtype)
            cond["cls"] = _mask_inputs(pipe, cls_images, cls_masks, latent, device, vae_dtype)
    inst_emb, inst_pooled, time_ids = _condition(pipe, cfg.instance_prompt or "", device,
                                                 cfg.resolution, cfg.skip)
    cls_emb, cls_pooled, _ = _condition(pipe, cfg.class_prompt or "", device, cfg.resolution,
                                        cfg.skip)
    prompt_ids = torch.cat([_tokens(pipe, cfg.instance_prompt or ""),
                            _tokens(pipe, cfg.class_prompt or "")]).to(device)
    text_encoder = pipe.text_encoder if train_te else None

    unet = pipe.unet
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction = noise_scheduler.config.prediction_type
    pipeline_class = type(pipe)
    del pipe
    unet.requires_grad_(False)
    unet.to(device, dtype)
    lora = lora_config(cfg)
    torch.manual_seed(cfg.seed)
    unet.add_adapter(lora)
    cast_training_params(unet, dtype=torch.float32)
    checkpointing = cfg.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = device.startswith("cuda")
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    groups = [{"params": params, "lr": cfg.lr}]
    text_lora = None
    if text_encoder is not None:
        text_encoder.requires_grad_(False)
        text_encoder.to(device, dtype)
        text_lora = text_lora_config(cfg)
        torch.manual_seed(cfg.seed + 1)
        # peft directly: transformers' add_adapter asks for a peft newer than any released
        text_encoder = inject_adapter_in_model(text_lora, text_encoder)
        cast_training_params(text_encoder, dtype=torch.float32)
        if checkpointing:
            text_encoder.gradient_checkpointing_enable()
        text_encoder.train()
        te_params = [p for p in text_encoder.parameters() if p.requires_grad]
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr or cfg.lr})
        params = params + te_params

    n = len(samples)
    bs = min(cfg.batch_size, n * cfg.repeats)
    per_epoch = sum(math.ceil(len(m) * cfg.repeats / bs) for m in buckets.values())
    epoch_order: dict[int, list[Any]] = {}

    def batches(epoch: int) -> list[Any]:
        """The epoch's batches of instance indices: every image ``repeats`` times, shuffled
        within its bucket; with several buckets, the batches shuffled too."""
        if epoch not in epoch_order:
            epoch_order.clear()
            g = torch.Generator().manual_seed(cfg.seed + epoch)
            chunks = []
            for members in buckets.values():
                m = torch.tensor(members)
                order = m[torch.randperm(len(m) * cfg.repeats, generator=g) % len(m)]
                chunks += [order[i:i + bs] for i in range(0, len(order), bs)]
            if len(buckets) > 1:
                chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=g)]
            epoch_order[epoch] = chunks
        return epoch_order[epoch]
    total = cfg.epochs * per_epoch
    stop = min(total, cfg.max_steps) if cfg.max_steps else total
    optimizer = _optimizer(cfg, groups)
    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                              num_training_steps=total, num_cycles=cfg.lr_cycles)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    gen = torch.Generator("cpu").manual_seed(cfg.seed)
    step, losses, seconds_before, resumed_from = 0, [], 0.0, None

    ckpt = _latest_checkpoint(out)
    if ckpt is not None:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        set_peft_model_state_dict(unet, load_file(str(ckpt / "lora.safetensors")))
        cast_training_params(unet, dtype=torch.float32)
        if text_encoder is not None:
            set_peft_model_state_dict(text_encoder,
                                      load_file(str(ckpt / "text_encoder_lora.safetensors")))
            cast_training_params(text_encoder, dtype=torch.float32)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        gen.set_state(state["generator"])
        step, losses = state["step"], list(state["losses"])
        seconds_before = state.get("seconds", 0.0)
        resumed_from = step
        log(f"resuming from {ckpt} (step {step})")
    inst_emb, cls_emb = inst_emb.to(device, dtype), cls_emb.to(device, dtype)
    timesteps_n = noise_scheduler.config.num_train_timesteps
    cuda = device.startswith("cuda")
    autocast = torch.autocast("cuda" if cuda else "cpu", dtype=dtype,
                              enabled=dtype != torch.float32)
    session_start = time.monotonic()

    def state_now() -> dict[str, Any]:
        return {"step": step, "losses": losses, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "generator": gen.get_state(),
                "seconds": seconds_before + time.monotonic() - session_start,
                "identity": identity(cfg)}

    def noise_loss(mean: Any, std: Any, emb: Any, pooled: Any, extra: Any) -> Any:
        """The min-SNR weighted noise (or v) prediction error of each sample of a batch of
        latent distributions (noise, timesteps and latents drawn from ``gen``)."""
        latents = mean + std * torch.randn(mean.shape, generator=gen)
        noise = torch.randn(latents.shape, generator=gen)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(
                (len(latents), latents.shape[1], 1, 1), generator=gen)
        t = torch.randint(0, timesteps_n, (len(latents),), generator=gen)
        latents, noise, t = latents.to(device), noise.to(device), t.to(device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        if extra is not None:  # mask and masked-image latents, as the inpainting pipelines
            noisy = torch.cat([noisy, extra.to(device)], dim=1)
        added = None
        if pooled is not None:
            added = {"text_embeds": pooled.to(device, dtype),
                     "time_ids": time_ids.expand(len(pooled), -1).to(device, dtype)}
        with autocast:
            pred = unet(noisy.to(dtype), t, emb, added_cond_kwargs=added).sample
        target = noise_scheduler.get_velocity(latents, noise, t) \
            if prediction == "v_prediction" else noise
        mse = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
        mse = mse.mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            snr = compute_snr(noise_scheduler, t)
            clipped = torch.clamp(snr, max=cfg.min_snr_gamma)
            mse = mse * (clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr)
        return mse

    bar = tqdm(total=stop, initial=step, desc="finetune", unit="step", disable=not progress,
               dynamic_ncols=True)
    last_log = time.monotonic()
    last_saved = step if ckpt is not None else -1
    try:
        while step < stop:
            epoch, k = divmod(step, per_epoch)
            idx = batches(epoch)[k]
            if text_encoder is not None:  # the prompts through the training text encoder
                with autocast:
                    both = _text_embeddings(text_encoder, prompt_ids, cfg.skip)
                inst_emb, cls_emb = both[:1], both[1:]
            mean, std = _take(inst_mean, idx), _take(inst_std, idx)
            extra = cond["inst"][idx] if inpaint else None
            if flip_mean is not None and flip_std is not None:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                mean = torch.where(flip[:, None, None, None], _take(flip_mean, idx), mean)
                std = torch.where(flip[:, None, None, None], _take(flip_std, idx), std)
                if extra is not None:
                    extra = torch.where(flip[:, None, None, None], cond["flip"][idx], extra)
            parts = [[mean, std, inst_emb.expand(len(idx), -1, -1),
                      inst_pooled.expand(len(idx), -1) if inst_pooled is not None else None,
                      extra]]
            if cls_mean is not None and cls_std is not None:
                cidx = torch.arange(step * bs, step * bs + len(idx)) % len(cls_mean)
                cls = [cls_mean[cidx], cls_std[cidx], cls_emb.expand(len(idx), -1, -1),
                       cls_pooled.expand(len(idx), -1) if cls_pooled is not None else None,
                       cond["cls"][cidx] if extra is not None else None]
                if cls[0].shape[1:] == mean.shape[1:]:  # one UNet call for both
                    parts = [[a if a is None else torch.cat([a, b])
                              for a, b in zip(parts[0], cls, strict=True)]]
                else:  # an instance bucket of another shape than the square class images
                    parts.append(cls)
            mse = torch.cat([noise_loss(*part) for part in parts])
            loss = mse[:len(idx)].mean()
            if len(mse) > len(idx):
                loss = loss + cfg.prior_loss_weight * mse[len(idx):].mean()
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DiagError(f"the loss became {value} at step {step}: lower lr (now {cfg.lr}) "
                                "or use mixed_precision: bf16 / no; then rerun with --overwrite")
            losses.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if time.monotonic() - last_log >= cfg.log_every or step == stop:
                last_log = time.monotonic()
                log(f"step {step}/{stop} loss {value:.4f} lr {scheduler.get_last_lr()[0]:.3e}")
            if step % cfg.checkpoint_every == 0 and step < stop:
                _save_checkpoint(out, unet, state_now(), text_encoder)
                last_saved = step
    finally:
        bar.close()
    if last_saved != step:
        _save_checkpoint(out, unet, state_now(), text_encoder)
    adapter = _save_adapter(out, unet, lora, pipeline_class, text_encoder, text_lora)
    seconds = seconds_before + time.monotonic() - session_start
    result = {
        "config": config_dict(cfg),
        "mode": cfg.mode,
        "base_model": cfg.model,
        "pipeline": pipeline_class.__name__,
        "data": {"dataset": cfg.dataset.root if cfg.dataset else None,
                 "split": cfg.dataset.split if cfg.dataset else None,
                 "instance_images": n, "instance_ids": [s.id for s in samples],
                 "class_images": len(class_ids) if inpaint and cfg.prior_preservation
                 else len(class_paths), "class_images_generated_now": generated,
                 **({"class_ids": class_ids} if inpaint and cfg.prior_preservation else {}),
                 **({"window_sides": sides} if inpaint else {}),
                 "instance_prompt": cfg.instance_prompt, "class_prompt": cfg.class_prompt},
        "steps": step, "total_steps": total, "steps_per_epoch": per_epoch,
        "batch_size": bs, "finished": step >= total, "resumed_from": resumed_from,
        "final_loss": losses[-1] if losses else None, "losses": losses,
        "seconds": round(seconds, 3), "session_seconds": round(time.monotonic() - started, 3),
        "device": device, "precision": str(dtype).replace("torch.", ""),
        "gradient_checkpointing": bool(checkpointing),
        "lora": {"trainable_parameters": n_params, "targets": TARGETS if cfg.conv_rank
                 else TRANSFORMER, "rank": cfg.rank, "alpha": cfg.alpha,
                 "conv_rank": cfg.conv_rank, "conv_alpha": cfg.conv_alpha},
        "text_encoder": {"trained": text_encoder is not None, "clip_skip": cfg.skip,
                         **({"targets": TEXT_TARGETS, "lr": cfg.text_encoder_lr or cfg.lr,
                             "trainable_parameters": sum(p.numel() for p in te_params)}
                            if text_encoder is not None else {})},
        "optimizer": cfg.optimizer, "repeats": cfg.repeats,
        "buckets": {f"{shape[-1] * vae_factor}x{shape[-2] * vae_factor}": len(m)
                    for shape, m in buckets.items()},
        "adapter": {"path": f"{ADAPTER_DIR}/{ADAPTER_FILE}", "sha256": sha256_file(adapter)},
        "versions": _versions(),
    }
    write_json(out / "finetune.json", result)
    log(f"done: {step}/{total} steps, loss {result['final_loss']}, adapter {adapter}")
    return result
