"""Shared fixtures: real data locations, the bundled example, a tiny diffusion model on disk."""

from __future__ import annotations

import os
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


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``diag ARGS...`` in-process; returns ``(exit_code, stdout, stderr)``."""
    from diag.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
