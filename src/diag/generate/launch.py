"""Which shard and device a process takes, from the launcher that started it. Pure: no files.

``torchrun`` and ``accelerate launch`` give each process ``RANK`` (0..n-1) and ``WORLD_SIZE``
(n), and ``LOCAL_RANK`` (its number on its machine); a Slurm job array gives each task
``SLURM_ARRAY_TASK_ID`` with ``SLURM_ARRAY_TASK_COUNT`` or ``SLURM_ARRAY_TASK_MIN`` /
``SLURM_ARRAY_TASK_MAX`` (and ``SLURM_ARRAY_TASK_STEP`` for ``--array=0-15:4``). ``diag
generate`` without ``--shard`` runs the shard these name; an explicit ``--shard`` wins. An
array task that runs torchrun in turn (one task per machine, one process per GPU) takes shard
``task * WORLD_SIZE + RANK`` of ``tasks * WORLD_SIZE``.

>>> shard_from_env({"RANK": "1", "WORLD_SIZE": "4"})
((1, 4), 'torchrun/accelerate: RANK=1, WORLD_SIZE=4')
>>> shard_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
...                 "SLURM_ARRAY_TASK_MAX": "8"})
((2, 4), 'Slurm array: SLURM_ARRAY_TASK_ID=7 of 5..8')
>>> shard_from_env({}) is None
True
>>> device_from_env("auto", {"LOCAL_RANK": "3"}, gpus=8)
('cuda:3', 'LOCAL_RANK=3')
>>> device_from_env("cpu", {"LOCAL_RANK": "3"}, gpus=8)
('cpu', None)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from diag.errors import DiagError
from diag.generate.plan import parse_shard

TORCH_VARS = ("RANK", "WORLD_SIZE")
SLURM_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
              "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP")
FIX = "or give --shard i/n yourself"


def _int(env: Mapping[str, str], name: str, minimum: int = 0) -> int | None:
    """``env[name]`` as a whole number (None when unset or empty).

    >>> _int({"RANK": " 2"}, "RANK")
    2
    >>> _int({"RANK": "two"}, "RANK")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    diag.errors.DiagError: RANK='two' in the environment is not a whole number >= 0: fix ...
    """
    text = env.get(name)
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DiagError(f"{name}={text!r} in the environment is not a whole number >= {minimum}: "
                        f"fix or unset it (it is set by torchrun / accelerate / Slurm), {FIX}")
    return value


def torch_shard(env: Mapping[str, str]) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` of a torchrun / accelerate process, None outside one.

    >>> torch_shard({"RANK": "0", "WORLD_SIZE": "2"}), torch_shard({"LOCAL_RANK": "0"})
    ((0, 2), None)
    >>> torch_shard({"RANK": "2", "WORLD_SIZE": "2"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    diag.errors.DiagError: RANK=2 is not below WORLD_SIZE=2 in the environment: ...
    """
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE", minimum=1)
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        have, miss = ("RANK", "WORLD_SIZE") if world is None else ("WORLD_SIZE", "RANK")
        raise DiagError(f"{have} is set in the environment but {miss} is not: set both (torchrun "
                        f"and accelerate launch do), unset {have}, {FIX}")
    if rank >= world:
        raise DiagError(f"RANK={rank} is not below WORLD_SIZE={world} in the environment: fix the "
                        f"launcher's settings, {FIX}")
    return rank, world


def slurm_shard(env: Mapping[str, str]) -> tuple[tuple[int, int], str] | None:
    """The shard of a Slurm array task and how it was read, None outside an array job.

    Tasks are numbered from ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``;
    an array given as a list with gaps (``--array=1,3,7``) cannot be numbered this way.

    >>> slurm_shard({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"})
    ((2, 3), 'Slurm array: SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_COUNT=3')
    >>> slurm_shard({"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "0",
    ...              "SLURM_ARRAY_TASK_MAX": "12", "SLURM_ARRAY_TASK_STEP": "4"})[0]
    (2, 4)
    >>> slurm_shard({"SLURM_ARRAY_TASK_ID": "3"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    diag.errors.DiagError: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor ...
    """
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    count = _int(env, "SLURM_ARRAY_TASK_COUNT", minimum=1)
    low, high = _int(env, "SLURM_ARRAY_TASK_MIN"), _int(env, "SLURM_ARRAY_TASK_MAX")
    step = _int(env, "SLURM_ARRAY_TASK_STEP", minimum=1) or 1
    if low is None or high is None:
        if count is None:
            raise DiagError("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor "
                            "SLURM_ARRAY_TASK_MIN/MAX: run inside an sbatch --array job (Slurm "
                            f"sets them), {FIX}")
        if task >= count:
            raise DiagError(f"SLURM_ARRAY_TASK_ID={task} is not below SLURM_ARRAY_TASK_COUNT="
                            f"{count} and SLURM_ARRAY_TASK_MIN is not set: number the array from "
                            f"0 (sbatch --array=0-{count - 1}), {FIX}")
        return (task, count), f"Slurm array: SLURM_ARRAY_TASK_ID={task}, " \
                              f"SLURM_ARRAY_TASK_COUNT={count}"
    span = (high - low) // step + 1 if high >= low else 0
    if span < 1 or not low <= task <= high or (task - low) % step \
            or (count is not None and count != span):
        raise DiagError(f"the Slurm array (SLURM_ARRAY_TASK_ID={task}, MIN={low}, MAX={high}, "
                        f"STEP={step}, COUNT={count}) is not an evenly spaced range, so its tasks "
                        f"cannot be numbered as shards: use --array=0-N (a range), {FIX} "
                        "(e.g. --shard $((SLURM_ARRAY_TASK_ID-1))/N)")
    return ((task - low) // step, span), \
        f"Slurm array: SLURM_ARRAY_TASK_ID={task} of {low}..{high}" + \
        (f" step {step}" if step > 1 else "")


def shard_from_env(env: Mapping[str, str]) -> tuple[tuple[int, int], str] | None:
    """The shard the launcher's environment names and why, None when it names none.

    torchrun / accelerate inside a Slurm array task: shard ``task * WORLD_SIZE + RANK`` of
    ``tasks * WORLD_SIZE``.

    >>> shard_from_env({"RANK": "1", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "1",
    ...                 "SLURM_ARRAY_TASK_COUNT": "3"})[0]
    (3, 6)
    """
    torch, slurm = torch_shard(env), slurm_shard(env)
    if torch is None and slurm is None:
        return None
    if slurm is None:
        assert torch is not None
        return torch, f"torchrun/accelerate: RANK={torch[0]}, WORLD_SIZE={torch[1]}"
    if torch is None:
        return slurm
    (task, tasks), why = slurm
    return (task * torch[1] + torch[0], tasks * torch[1]), \
        f"{why}; torchrun/accelerate: RANK={torch[0]}, WORLD_SIZE={torch[1]}"


def device_from_env(device: str | None, env: Mapping[str, str], gpus: int
                    ) -> tuple[str | None, str | None]:
    """``cuda:LOCAL_RANK`` for a process of a multi-GPU launch when the device is ``auto`` or
    ``cuda`` and this machine shows several GPUs; else ``device`` unchanged. Returns the
    device and the reason (None when unchanged).

    >>> device_from_env("cuda", {"LOCAL_RANK": "1"}, gpus=1)  # one visible GPU per process
    ('cuda', None)
    >>> device_from_env(None, {"LOCAL_RANK": "2"}, gpus=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    diag.errors.DiagError: LOCAL_RANK=2 but this machine shows only 2 GPUs: start at most 2 ...
    """
    local = env.get("LOCAL_RANK")
    if local is None or gpus < 2 or (device or "auto").strip().lower() not in ("auto", "cuda"):
        return device, None
    index = _int(env, "LOCAL_RANK")
    if index is None:
        return device, None
    if index >= gpus:
        raise DiagError(f"LOCAL_RANK={index} but this machine shows only {gpus} GPUs: start at "
                        f"most {gpus} processes per machine (torchrun --nproc_per_node {gpus}), "
                        "or give --device cuda:N")
    return f"cuda:{index}", f"LOCAL_RANK={index}"


@dataclass(frozen=True)
class Launch:
    """The shard and device a ``diag generate`` process runs, and the line that says why
    (None when neither ``--shard`` nor the environment chose anything)."""

    shard: tuple[int, int]
    device: str | None
    message: str | None


def cuda_count() -> int:
    """How many CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_launch(shard: str | None, device: str | None, env: Mapping[str, str] | None = None,
                  gpus: Callable[[], int] = cuda_count) -> Launch:
    """The shard (explicit ``--shard`` first, then the launcher's environment) and device.

    ``device`` is the one asked for (``--device`` or the spec's); ``gpus`` is only called
    when ``LOCAL_RANK`` is set.

    >>> choose_launch(None, "auto", {})
    Launch(shard=(0, 1), device='auto', message=None)
    >>> print(choose_launch("0/3", "auto", {"RANK": "1", "WORLD_SIZE": "2"}).message)
    ... # doctest: +NORMALIZE_WHITESPACE
    shard 0/3 from --shard (the environment also names shard 1/2: torchrun/accelerate:
    RANK=1, WORLD_SIZE=2; --shard wins)
    >>> choose_launch(None, "auto", {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"},
    ...               gpus=lambda: 2).message
    'shard 1/2 from torchrun/accelerate: RANK=1, WORLD_SIZE=2; device cuda:1 from LOCAL_RANK=1'
    """
    env = os.environ if env is None else env
    found = shard_from_env(env)
    dev, dev_why = device_from_env(device, env, gpus()) if "LOCAL_RANK" in env else (device,
                                                                                        None)
    dev_note = f"; device {dev} from {dev_why}" if dev_why else ""
    if shard:
        chosen = parse_shard(shard)
        note = None
        if found:
            note = (f"shard {chosen[0]}/{chosen[1]} from --shard (the environment also names "
                    f"shard {found[0][0]}/{found[0][1]}: {found[1]}; --shard wins){dev_note}")
        return Launch(chosen, dev, note or (dev_note[2:] or None))
    if found is None:
        return Launch((0, 1), dev, dev_note[2:] or None)
    (i, n), why = found
    return Launch((i, n), dev, f"shard {i}/{n} from {why}{dev_note}")
