"""kill -9 at seeded random moments of a real `diag generate` process, then rerun: the set is
byte-identical to an uninterrupted run, no temporary file remains, no record is doubled.

A few trials run in the default suite; ``-m slow`` (``make test-all``) runs many more."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from diag.data.manifest import read_manifest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
COUNT = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, example_root: Path, tiny_model: Path):
    """A spec (tiny diffusion model, 8 samples, batch 2) and its uninterrupted reference set."""
    tmp = tmp_path_factory.mktemp("kill")
    spec = {"dataset": {"layout": "magnetic-tile", "root": str(example_root), "split": "train"},
            "regions": {"source": "real-masks", "flip": True},
            "defects": [{"name": "crack", "prompt": "a crack", "count": COUNT // 2},
                        {"name": "blowhole", "prompt": "a pit", "negative_prompt": "smooth",
                         "count": COUNT // 2}],
            "generator": {"kind": "diffusion", "model": str(tiny_model), "steps": 3,
                          "resolution": 128, "batch_size": 2},
            "seed": 3}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    subprocess.run(cmd(path, tmp / "reference"), env=ENV, check=True, capture_output=True)
    return path, tmp / "reference"


def cmd(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "diag", "generate", str(spec), "--out", str(out)]


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def kill_and_resume(spec: Path, reference: Path, out: Path, seed: int) -> int:
    """Start a run, kill -9 it after a seeded random number of finished samples plus a random
    delay, then rerun to completion; check the set. Returns the samples done before the kill."""
    rng = random.Random(seed)
    wait_for, extra = rng.randrange(0, COUNT), rng.uniform(0.0, 0.4)
    proc = subprocess.Popen(cmd(spec, out), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(read_manifest(out)) >= wait_for:
            break
        time.sleep(0.01)
    time.sleep(extra)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(read_manifest(out)) if out.exists() else 0
    done = subprocess.run(cmd(spec, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert files(out) == files(reference), f"trial {seed}: not byte-identical"
    lines = (out / "manifest.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert len(ids) == len(set(ids)) == COUNT, f"trial {seed}: records lost or doubled"
    assert not list(out.rglob("*.tmp")), f"trial {seed}: temporary files left"
    return before


@pytest.mark.parametrize("seed", range(2))
def test_kill_and_resume(setup, tmp_path: Path, seed: int) -> None:
    spec, reference = setup
    kill_and_resume(spec, reference, tmp_path / "out", seed)


@pytest.mark.slow
def test_kill_and_resume_many(setup, tmp_path: Path) -> None:
    """25 seeded trials, killed anywhere from before the first sample to after the fourth."""
    spec, reference = setup
    made = [kill_and_resume(spec, reference, tmp_path / f"out{s}", 100 + s) for s in range(25)]
    assert min(made) == 0 and max(made) >= COUNT // 2, made
