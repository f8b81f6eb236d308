"""diag fidelity under faults: bad ``--out`` paths, read-only folders, a full disk, runs killed
with SIGKILL at random moments and rerun. Each bad case ends with exit 2 and one ``error:``
line naming the path and the fix, no traceback; a previous result is never lost, no temporary
file is left, and a rerun after a kill gives the uninterrupted run's result (timings aside).
Read-only folders and the full disk: see tests/test_faults_train.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from diag.data.manifest import ManifestWriter
from diag.imageio import write_image, write_mask
from tests.test_faults_train import (
    _fail_nth,
    diag_cmd,
    error_line,
    kill_at_random,
    read_only,
    temp_files,
)
from tests.test_fidelity import texture

TIMINGS = ("seconds", "images_per_s")


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 real images (a plain folder) and a diag-generate-style folder of 8 (its manifest),
    and the uninterrupted reference result (``ref/f.json``, written from inside ``ref``)."""
    from diag.cli import main

    base = tmp_path_factory.mktemp("faults-fidelity")
    real = base / "real"
    for i in range(8):
        write_image(real / f"{i}.png", texture(i, 48))
    gen = base / "gen"
    mask = np.zeros((48, 48), bool)
    mask[10:30, 12:20] = True
    with ManifestWriter(gen / "manifest.jsonl") as w:
        for i in range(8):
            write_image(gen / "images" / f"g{i}.png", texture(100 + i, 48))
            write_mask(gen / "masks" / f"g{i}.png", mask)
            w.append({"id": f"g{i}", "index": i, "image": f"images/g{i}.png",
                      "mask": f"masks/g{i}.png", "generator": "test"})
    (base / "ref").mkdir()
    cwd = os.getcwd()
    os.chdir(base / "ref")
    try:
        assert main(args(real, gen, "f.json")) == 0
    finally:
        os.chdir(cwd)
    return {"base": base, "real": real, "gen": gen, "ref": base / "ref" / "f.json"}


def args(real: Path, gen: Path, out: Path | str | None = None) -> list[str]:
    return ["fidelity", "--real", str(real), "--generated", str(gen), "--dims", "64",
            "--quiet", "--no-lpips", *(["--out", str(out)] if out is not None else [])]


def same_result(a: Path, b: Path) -> bool:
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    for d in (ja, jb):
        for k in TIMINGS:
            d.pop(k)
    return ja == jb


def test_out_is_a_folder(sets, tmp_path: Path, cli) -> None:
    msg = error_line(*cli(*args(sets["real"], sets["gen"], tmp_path))[::2])
    assert str(tmp_path) in msg and "is a folder" in msg and "fidelity.json" in msg


def test_out_inside_a_file(sets, tmp_path: Path, cli) -> None:
    (tmp_path / "taken").write_text("x")
    msg = error_line(*cli(*args(sets["real"], sets["gen"], tmp_path / "taken" / "f.json"))[::2])
    assert "taken" in msg and "is a file" in msg


def test_out_name_too_long(sets, tmp_path: Path, cli) -> None:
    msg = error_line(*cli(*args(sets["real"], sets["gen"], tmp_path / ("f" * 300)))[::2])
    assert "ffff" in msg and "longer than the file system allows" in msg


def test_read_only_out_folder(sets, tmp_path: Path, cli) -> None:
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        msg = error_line(*cli(*args(sets["real"], sets["gen"], tmp_path / "ro" / "f.json"))[::2])
        assert "'ro'" in msg.replace(str(tmp_path) + "/", "") and "--out" in msg
        # with a folder that does not exist yet, its nearest existing parent is named
        msg = error_line(*cli(*args(sets["real"], sets["gen"],
                                    tmp_path / "ro" / "new" / "f.json"))[::2])
        assert "'ro'" in msg.replace(str(tmp_path) + "/", "")


def test_default_out_in_a_read_only_generate_folder(sets, tmp_path: Path, cli) -> None:
    gen = tmp_path / "box" / "gen"
    shutil.copytree(sets["gen"], gen)
    with read_only(tmp_path / "box"):
        msg = error_line(*cli(*args(sets["real"], gen))[::2])
        assert "fidelity.json" in msg and "--out" in msg


def test_rerun_on_a_finished_read_only_result(sets, tmp_path: Path, cli, monkeypatch) -> None:
    box = tmp_path / "box"
    box.mkdir()
    shutil.copy(sets["ref"], box / "f.json")
    before = (box / "f.json").read_bytes()
    with read_only(box):
        monkeypatch.chdir(box)  # the same command as the reference's, from the same place
        code, out, err = cli(*args(sets["real"], sets["gen"], "f.json"))
        assert code == 0 and "unchanged" in out, err  # nothing new to write
        # a different result cannot be written: one error line after the run's warnings
        code, _, err = cli(*args(sets["real"], sets["gen"], "f.json"), "--kid")
        msg = error_line(code, err, only=False)
        assert "f.json" in msg and "Read-only file system" in msg
    assert (box / "f.json").read_bytes() == before


def test_disk_full_keeps_the_previous_result(sets, tmp_path: Path, cli, monkeypatch) -> None:
    out = tmp_path / "f.json"
    shutil.copy(sets["ref"], out)
    before = out.read_bytes()
    _fail_nth(monkeypatch, "replace", "f.json", 1)
    code, _, err = cli(*args(sets["real"], sets["gen"], out), "--kid")
    msg = error_line(code, err, only=False)
    assert "f.json" in msg and "No space left on device" in msg and "free some disk space" in msg
    assert out.read_bytes() == before and not temp_files(tmp_path)


def _kill_trials(sets, tmp_path: Path, cli, monkeypatch, seed: int, trials: int,
                 longest: float) -> int:
    """Kill ``trials`` runs (two at a time) ``U(0, longest)`` s after they start, rerun each
    and compare with the reference; returns how many were killed before they ended."""
    rng = random.Random(seed)
    killed_total = 0
    for start in range(0, trials, 2):
        dirs = [tmp_path / f"t{start + i}" for i in range(min(2, trials - start))]
        for d in dirs:
            d.mkdir()
        delays = [rng.uniform(0, longest) for _ in dirs]
        killed = kill_at_random([diag_cmd(*args(sets["real"], sets["gen"], "f.json"))] * len(dirs),
                                dirs, delays, cwds=dirs)
        killed_total += sum(killed)
        for i, d in enumerate(dirs):
            if i == 0:  # as if killed while writing, long ago
                stale = d / ".f.json.k1ll3d.tmp"
                stale.write_bytes(b'{"fid": ')
                os.utime(stale, (time.time() - 60, time.time() - 60))
            monkeypatch.chdir(d)
            code, _, err = cli(*args(sets["real"], sets["gen"], "f.json"))
            assert code == 0, (delays[i], err)
            assert same_result(d / "f.json", sets["ref"])
            assert not temp_files(d), temp_files(d)
    return killed_total


def test_killed_runs_rerun_to_the_same_result(sets, tmp_path: Path, cli, monkeypatch) -> None:
    assert _kill_trials(sets, tmp_path, cli, monkeypatch, seed=1, trials=2, longest=2.5) >= 1


@pytest.mark.slow
def test_killed_runs_rerun_to_the_same_result_many_times(sets, tmp_path: Path, cli,
                                                         monkeypatch) -> None:
    assert _kill_trials(sets, tmp_path, cli, monkeypatch, seed=2, trials=12, longest=4.0) >= 6


@pytest.mark.parametrize("lines", [[b'{"id": "a"}'], [b'{"id": ["x"], "image": 1}'],
                                   [b"\xff\xfe\x00junk"]], ids=["keys", "types", "binary"])
def test_damaged_generate_manifest(sets, tmp_path: Path, cli, lines: list[bytes]) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "manifest.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    msg = error_line(*cli(*args(sets["real"], gen, tmp_path / "f.json"))[::2])
    assert "--generated" in msg and str(gen) in msg and "manifest" in msg
