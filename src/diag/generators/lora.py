"""LoRA adapters written by ``diag finetune``, loaded into a generator's pipeline.

Both diffusion generators take ``adapter`` (a ``diag finetune`` OUT folder, its ``adapter``
folder or the weights file) and ``lora_scale``: ``text2img`` with a ``mode: text2img``
adapter (In&Out), ``diffusion`` with a ``mode: inpainting`` one. The adapter's path and
content hash belong to the generator's identity (the manifest's ``generator`` record), so a
retrained adapter is another generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diag.errors import DiagError, where

ADAPTER_DIR = "adapter"
ADAPTER_FILE = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "diag"


def adapter_file(path: str | Path) -> Path | None:
    """The LoRA weights file of ``path``: a ``diag finetune`` OUT folder, its ``adapter``
    folder, or the ``.safetensors`` file itself; None when none is there."""
    p = Path(path).expanduser()
    for candidate in (p / ADAPTER_DIR / ADAPTER_FILE, p / ADAPTER_FILE):
        if candidate.is_file():
            return candidate
    if p.is_file() and p.suffix == ".safetensors":
        return p
    return None


def check_adapter(adapter: str | None, source: str, prefix: str) -> None:
    """A config check: ``adapter`` is null or holds a weights file."""
    if adapter is not None and adapter_file(adapter) is None:
        raise DiagError(f"{source}: {prefix}adapter {where(Path(adapter))} holds no "
                        f"{ADAPTER_FILE}: set it to a `diag finetune` OUT folder (run diag "
                        "finetune first) or its adapter folder, or null for the pretrained model")


def load_adapter(pipe: Any, adapter: str, model: str, scale: float = 1.0) -> Path:
    """Load the adapter into ``pipe`` (as adapter ``diag``) at weight ``scale`` (its
    ``lora_scale``: the same images as passing that scale to every call); returns its weights
    file."""
    weights = adapter_file(adapter)
    if weights is None:
        raise DiagError(f"generator.adapter {where(Path(adapter))} holds no {ADAPTER_FILE}: run "
                        "`diag finetune` first and set it to its OUT folder")
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(weights.parent), weight_name=weights.name,
                                   adapter_name=ADAPTER_NAME)
        partial = [w for w in caught if "inconsistency" in str(w.message)]
        unet = getattr(pipe, "unet", None)
        if unet is not None and any(p.is_meta for p in unet.parameters()):
            raise ValueError("the file's layers do not all match the model's: some LoRA "
                             "weights are missing from it")
        for w in caught:
            if w not in partial:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if partial:  # peft only warns when part of the adapter found no place in the model
            raise ValueError("the file's layers do not all match the model's: "
                             + " ".join(str(partial[0].message).split())[:120])
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DiagError(f"cannot load the LoRA adapter {where(weights)} into '{model}' "
                        f"({type(exc).__name__}: {reason}): the adapter must be trained by `diag "
                        "finetune` on this model (mode: text2img for text2img, mode: inpainting "
                        "for diffusion)") from None
    pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
    return weights


def adapter_identity(adapter: str | None, lora_scale: float) -> dict[str, Any]:
    """What the manifest records of an adapter: its file, content hash and scale."""
    from diag.files import sha256_file

    weights = adapter_file(adapter) if adapter else None
    return {"adapter": str(weights) if weights else None,
            "adapter_sha256": sha256_file(weights) if weights else None,
            "lora_scale": lora_scale if weights else None}
