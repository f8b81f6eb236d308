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
way on windows around the real defects, with their masks (:mod:`diag.finetune.data`). The
model side (LoRA placement, encodings) is in :mod:`diag.finetune.model`, the files
(run identity, checkpoints, adapter) in :mod:`diag.finetune.store`.

Every ``checkpoint_every`` steps (and at the end) a checkpoint folder is written whole and then
renamed into place: ``OUT/checkpoints/step-N/`` with the LoRA weights (safetensors) and
``state.pt`` (optimizer, LR schedule, grad scaler, generator state, losses). Rerunning the
same command continues from it; a changed config is refused unless ``overwrite``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from diag.device import resolve_device
from diag.errors import DiagError
from diag.files import check_folder, lock_folder, sha256_file, write_json
from diag.finetune.config import Config, config_dict, identity
from diag.finetune.data import (
    ensure_class_images,
    inpainting_class_examples,
    inpainting_examples,
    instance_samples,
    load_images,
    load_instances,
)
from diag.finetune.model import (
    TARGETS,
    TEXT_TARGETS,
    TRANSFORMER,
    condition,
    encode,
    encode_each,
    load_base,
    lora_config,
    mask_inputs,
    text_embeddings,
    text_lora_config,
    tokens,
    trains_text_encoder,
)
from diag.finetune.store import (
    ADAPTER_DIR,
    ADAPTER_FILE,
    check_run,
    latest_checkpoint,
    save_adapter,
    save_checkpoint,
)

LOG_FILE = "finetune.log"


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


def _versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    from diag import __version__

    return {"diag": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def _take(store: Any, idx: Any) -> Any:
    """Rows ``idx`` of a tensor, or items ``idx`` of a list of equally shaped tensors, as one
    tensor."""
    import torch

    return torch.stack([store[i] for i in idx.tolist()])


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
    check_run(out, cfg, overwrite)
    log = _Log(out, echo=not progress)
    log(f"fine-tuning {cfg.model} on {len(samples)} instance images ('{cfg.instance_prompt}') "
        f"on {device}")
    pipe.to(device, dtype if device.startswith("cuda") else torch.float32)
    if getattr(pipe.vae.config, "force_upcast", False):  # SDXL's VAE overflows in fp16
        pipe.vae.to(torch.float32)
    train_te = trains_text_encoder(cfg, pipe)
    class_paths: list[Path] = []
    generated = 0
    if cfg.prior_preservation and not inpaint:
        class_paths, generated = ensure_class_images(out, cfg, pipe, log)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    vae_dtype = pipe.vae.dtype
    if inpaint:  # windows of one size: one tensor
        inst_mean, inst_std = encode(pipe, inst, device, vae_dtype)
        flip_images = inst.flip(-1)
    else:  # aspect-ratio buckets: a list, one tensor per image
        inst = load_instances([s.path for s in samples], cfg)
        inst_mean, inst_std = encode_each(pipe, inst, device, vae_dtype)
        flip_images = [x.flip(-1) for x in inst]
    flip_mean = flip_std = None
    if cfg.random_flip:
        flip_mean, flip_std = (encode(pipe, flip_images, device, vae_dtype) if inpaint
                               else encode_each(pipe, flip_images, device, vae_dtype))
    vae_factor = pipe.vae_scale_factor
    buckets: dict[tuple[int, ...], list[int]] = {}  # latent shape -> instance indices
    for i in range(len(samples)):
        buckets.setdefault(tuple(inst_mean[i].shape), []).append(i)
    cls_mean = cls_std = None
    if class_paths:
        cls_mean, cls_std = encode(pipe, load_images(class_paths, cfg), device, vae_dtype)
    # inpainting: the UNet also sees the mask and the masked image's latents (9 channels)
    cond: dict[str, Any] = {}
    if inpaint:
        latent = cfg.resolution // pipe.vae_scale_factor
        cond["inst"] = mask_inputs(pipe, inst, inst_masks, latent, device, vae_dtype)
        if cfg.random_flip:
            cond["flip"] = mask_inputs(pipe, inst.flip(-1), inst_masks.flip(-1), latent,
                                        device, vae_dtype)
        if cfg.prior_preservation:
            cls_mean, cls_std = encode(pipe, cls_images, device, vae_dtype)
            cond["cls"] = mask_inputs(pipe, cls_images, cls_masks, latent, device, vae_dtype)
    inst_emb, inst_pooled, time_ids = condition(pipe, cfg.instance_prompt or "", device,
                                                 cfg.resolution, cfg.skip)
    cls_emb, cls_pooled, _ = condition(pipe, cfg.class_prompt or "", device, cfg.resolution,
                                        cfg.skip)
    prompt_ids = torch.cat([tokens(pipe, cfg.instance_prompt or ""),
                            tokens(pipe, cfg.class_prompt or "")]).to(device)
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

    ckpt = latest_checkpoint(out)
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
                    both = text_embeddings(text_encoder, prompt_ids, cfg.skip)
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
                save_checkpoint(out, unet, state_now(), text_encoder)
                last_saved = step
    finally:
        bar.close()
    if last_saved != step:
        save_checkpoint(out, unet, state_now(), text_encoder)
    adapter = save_adapter(out, unet, lora, pipeline_class, text_encoder, text_lora)
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
