"""What ``diag finetune`` keeps on disk: the run's identity (``run.json``), resumable
checkpoints (``checkpoints/step-N/``, written whole and renamed into place) and the adapter
(``adapter/pytorch_lora_weights.safetensors``, in peft's key format, which the base pipeline's
``load_lora_weights`` loads completely)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from diag.errors import DiagError, where
from diag.files import save_torch, write_json
from diag.finetune.config import Config, identity

RUN_FILE = "run.json"
CKPT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def check_run(out: Path, cfg: Config, overwrite: bool) -> None:
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


def latest_checkpoint(out: Path) -> Path | None:
    folder = out / CKPT_DIR
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("step-*") if (p / "state.pt").is_file()
                  and (p / "lora.safetensors").is_file() and p.name[5:].isdigit())
    return done[-1] if done else None


def lora_weights(model: Any) -> dict[str, Any]:
    """A model's LoRA weights (peft's key format), float32 on the CPU."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().float().cpu().contiguous()
            for k, v in get_peft_model_state_dict(model).items()}


def save_checkpoint(out: Path, unet: Any, state: dict[str, Any], text_encoder: Any = None
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
        save_file(lora_weights(model), str(tmp / name))
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    save_torch(tmp / "state.pt", state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in folder.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_adapter(out: Path, unet: Any, lora: Any, pipeline_class: Any,
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
        extra = {"text_encoder_lora_layers": lora_weights(text_encoder),
                 "text_encoder_lora_adapter_metadata": text_lora.to_dict()}
    pipeline_class.save_lora_weights(
        tmp, unet_lora_layers=lora_weights(unet), safe_serialization=True,
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
