"""Choosing the torch device, with a clear error when CUDA is asked for but absent."""

from __future__ import annotations

from diag.errors import DiagError


def resolve_device(name: str | None = "auto") -> str:
    """Turn ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` into a usable device string.

    ``auto`` picks CUDA when available, else CPU.

    Raises:
        DiagError: CUDA (or MPS) was asked for and is not available.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        index = name[5:] if name.startswith("cuda:") else None
        if name != "cuda" and not (index and index.isdigit()):
            raise DiagError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N (N a GPU "
                            "number)")
        if not torch.cuda.is_available():
            raise DiagError(f"device '{name}' was asked for but CUDA is not available on this "
                            "machine: use --device cpu (or auto), or install a CUDA build of torch")
        if index is not None:
            idx = int(index)
            if idx >= torch.cuda.device_count():
                raise DiagError(f"device '{name}' does not exist: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
        return name
    if name == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DiagError("device 'mps' was asked for but is not available: use --device cpu")
        return name
    if name == "cpu":
        return name
    raise DiagError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N")
