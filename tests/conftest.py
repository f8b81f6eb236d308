"""Shared fixtures: real data locations, the bundled example, a tiny diffusion model on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MT_ROOT = Path(os.environ.get("DIAG_MAGNETIC_TILE", REPO.parent / "shared" / "data" / "magnetic_tile"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def example_root() -> Path:
    """The 20 bundled Magnetic-tile images (always present in a clone)."""
    return EXAMPLES / "magnetic_tile"


@pytest.fixture(scope="session")
def mt_root() -> Path:
    """The full Magnetic-tile dataset beside the repository; skips the test when absent."""
    if not (MT_ROOT / "MT_Free" / "Imgs").is_dir():
        pytest.skip(f"full Magnetic-tile dataset not found at {MT_ROOT} (set DIAG_MAGNETIC_TILE)")
    return MT_ROOT


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SDXL-inpainting pipeline saved in diffusers format (loaded by path)."""
    from diag.cli import main

    path = tmp_path_factory.mktemp("models") / "tiny-sdxl-inpainting"
    assert main(["tiny-model", str(path)]) == 0
    return path


@pytest.fixture(scope="session")
def tiny_text2img(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random SD-1.5-architecture text-to-image pipeline (diffusers format)."""
    from diag.cli import main

    path = tmp_path_factory.mktemp("models") / "tiny-sd15"
    assert main(["tiny-model", str(path), "--kind", "text2img"]) == 0
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module: a busy 2-core machine is many times faster so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``diag ARGS...`` in-process; returns ``(exit_code, stdout, stderr)``."""
    from diag.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def tmpfs(tmp_path: Path):
    """``tmpfs(name, size="1m")``: a small RAM disk mounted at ``tmp_path / name`` (for full-disk
    and read-only tests); ``tmpfs.readonly(path)`` remounts it read-only and
    ``tmpfs.resize(path, size)`` changes its size. Skips where mounting is not allowed (not
    root, or a container without the capability)."""
    import subprocess

    mounted: list[Path] = []

    def run(*args: str) -> None:
        r = subprocess.run(list(args), capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({' '.join(args[:3])}: "
                        f"{r.stderr.strip() or r.returncode})")

    def mount(name: str, size: str = "1m") -> Path:
        path = tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
        mounted.append(path)
        return path

    mount.readonly = lambda path: run("mount", "-o", "remount,ro", str(path))
    mount.resize = lambda path, size: run("mount", "-o", f"remount,size={size}", str(path))
    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def mt_copy(tmp_path: Path, example_root: Path) -> Path:
    """A writable copy of the bundled Magnetic-tile example (tests that damage or add files)."""
    import shutil

    shutil.copytree(example_root, tmp_path / "mt")
    return tmp_path / "mt"
