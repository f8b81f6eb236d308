"""diag generate under faults: bad output paths, read-only and full disks, huge plans, killed and
concurrent runs, changed inputs. Each bad case ends with exit 2 and one line naming the file or
field and the fix; nothing finished is lost and nothing is left that blocks a corrected rerun."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from diag.data.manifest import read_manifest
from tests.test_bad_input import one_line_error, spec_file

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def diag_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "diag", *map(str, args)]


def files_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*.tmp")]


# --- output paths ------------------------------------------------------------------------


def test_out_is_a_file(tmp_path: Path, mt_copy: Path, cli) -> None:
    (tmp_path / "taken").write_text("not a folder")
    msg = one_line_error(cli, "generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "taken")
    assert "taken" in msg and "is a file, not a folder" in msg
    msg = one_line_error(cli, "generate", spec_file(tmp_path, mt_copy), "--out",
                         tmp_path / "taken" / "sub")
    assert "taken" in msg and "is a file" in msg


def test_read_only_disk(tmp_path: Path, mt_copy: Path, tmpfs, cli) -> None:
    disk = tmpfs("ro", "4m")
    path = spec_file(tmp_path, mt_copy)
    assert cli("generate", path, "--out", disk / "set")[0] == 0
    before = files_of(disk / "set")
    tmpfs.readonly(disk)
    code, _, err = cli("generate", path, "--out", disk / "set")
    assert code == 0 and "0 generated, 3 already done" in err, "a finished set reruns fine"
    grown = spec_file(tmp_path, mt_copy, name="grown.yaml",
                      defects=[{"name": "crack", "prompt": "a crack", "count": 4}])
    msg = one_line_error(cli, "generate", grown, "--out", disk / "set")
    assert "cannot write to" in msg and "set" in msg and "writable --out" in msg
    msg = one_line_error(cli, "generate", path, "--out", disk / "new")
    assert "cannot write to" in msg
    assert files_of(disk / "set") == before


def test_disk_full_keeps_finished_samples_and_resumes(tmp_path: Path, mt_copy: Path, tmpfs,
                                                      cli) -> None:
    path = spec_file(tmp_path, mt_copy, defects=[{"name": "crack", "prompt": "a crack",
                                                  "count": 8}])
    assert cli("generate", path, "--out", tmp_path / "reference")[0] == 0
    disk = tmpfs("full", "400k")
    msg = one_line_error(cli, "generate", path, "--out", disk / "set")
    assert "No space left on device" in msg and "free some disk space" in msg and "crack_" in msg
    records = read_manifest(disk / "set")
    assert 0 < len(records) < 8
    for r in records:  # everything recorded is whole
        assert (disk / "set" / r["image"]).read_bytes() == (
            tmp_path / "reference" / r["image"]).read_bytes()
    assert no_temp_files(disk / "set")
    tmpfs.resize(disk, "8m")
    assert cli("generate", path, "--out", disk / "set")[0] == 0
    assert files_of(disk / "set") == files_of(tmp_path / "reference")
    assert len((disk / "set" / "manifest.jsonl").read_text().splitlines()) == 8


def test_outputs_are_readable_by_the_group(tmp_path: Path, mt_copy: Path, cli) -> None:
    old = os.umask(0o022)
    try:
        assert cli("generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o")[0] == 0
    finally:
        os.umask(old)
    for p in (tmp_path / "o").rglob("*"):
        if p.is_file() and not p.name.endswith(".lock"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


# --- bad values ----------------------------------------------------------------------------


def test_image_over_the_pixel_limit(tmp_path: Path, mt_copy: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("DIAG_MAX_IMAGE_PIXELS", "1000")  # every bundled image is over 2 x 1000
    msg = one_line_error(cli, "generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o")
    assert "safety limit" in msg and "DIAG_MAX_IMAGE_PIXELS" in msg and "/Imgs/exp" in msg
    monkeypatch.setenv("DIAG_MAX_IMAGE_PIXELS", "lots")
    msg = one_line_error(cli, "generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o")
    assert "DIAG_MAX_IMAGE_PIXELS='lots' is not a number" in msg
    monkeypatch.setenv("DIAG_MAX_IMAGE_PIXELS", "0")  # no limit: fine
    assert cli("generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o")[0] == 0


def test_defect_name_too_long_for_a_file_name(tmp_path: Path, mt_copy: Path, cli) -> None:
    path = spec_file(tmp_path, mt_copy, defects=[{"name": "c" * 300, "count": 1}])
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert "defects[0].name is 300 characters long: use at most 100" in msg
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_limit_must_be_positive(tmp_path: Path, mt_copy: Path, cli, limit: str) -> None:
    msg = one_line_error(cli, "generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o",
                         "--limit", limit)
    assert f"--limit {limit}" in msg and "at least 1" in msg


def test_all_counts_zero(tmp_path: Path, mt_copy: Path, cli) -> None:
    path = spec_file(tmp_path, mt_copy, defects=[{"name": "crack", "count": 0}])
    msg = one_line_error(cli, "generate", path, "--out", tmp_path / "o")
    assert "nothing to generate" in msg and "count" in msg
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(120)  # planning a billion items up front would hang here
def test_a_billion_planned_with_a_limit_starts_at_once(tmp_path: Path, mt_copy: Path,
                                                       cli) -> None:
    path = spec_file(tmp_path, mt_copy, defects=[{"name": "crack", "count": 1_000_000_000}])
    code, out, _ = cli("generate", path, "--out", tmp_path / "o", "--dry-run", "--shard", "1/3")
    assert code == 0 and "plan: 333333333 samples" in out
    code, _, err = cli("generate", path, "--out", tmp_path / "o", "--limit", "2")
    assert code == 0 and "2 generated, 0 already done, of 1000000000 planned" in err
    code, _, err = cli("generate", path, "--out", tmp_path / "o", "--limit", "2")
    assert code == 0 and "2 generated, 2 already done" in err
    assert [r["id"] for r in read_manifest(tmp_path / "o")] == [f"crack_{k:05d}" for k in range(4)]


# --- killed, failed and concurrent runs --------------------------------------------------------


def test_temporary_files_of_a_killed_run_are_removed(tmp_path: Path, mt_copy: Path,
                                                     cli) -> None:
    path = spec_file(tmp_path, mt_copy)
    out = tmp_path / "o"
    assert cli("generate", path, "--out", out, "--limit", "1")[0] == 0
    for leftover in ("images/.crack_00001.png.k9x2_a.tmp", "masks/.crack_00002.png.zz.tmp",
                     ".spec.yaml.q1.tmp", ".inputs.json.q2.tmp"):
        (out / leftover).write_bytes(b"half a file")
    assert cli("generate", path, "--out", out)[0] == 0
    assert no_temp_files(out)
    assert len(read_manifest(out)) == 3


def test_a_run_that_made_nothing_does_not_block_the_corrected_one(tmp_path: Path, mt_copy: Path,
                                                                 cli) -> None:
    typo = spec_file(tmp_path, mt_copy, name="typo.yaml", regions={"source": "real-masks"},
                     generator={"kind": "diffusion", "model": str(tmp_path / "no-such-model")})
    msg = one_line_error(cli, "generate", typo, "--out", tmp_path / "o")
    assert "no-such-model" in msg
    left = sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith("."))
    assert left == ["generate.log"], "only the log, which says why it stopped"
    assert "no-such-model" in (tmp_path / "o/generate.log").read_text()
    code, _, err = cli("generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o")
    assert code == 0 and "3 generated" in err and "replacing" not in err
    assert yaml.safe_load((tmp_path / "o/spec.yaml").read_text())["generator"]["kind"] == "memseg"


def test_a_killed_run_that_made_nothing_does_not_block_either(tmp_path: Path, mt_copy: Path,
                                                              cli) -> None:
    """kill -9 cannot clean up: the spec it left is replaced, with a warning."""
    out = tmp_path / "o"
    out.mkdir()
    other = spec_file(tmp_path, mt_copy, name="other.yaml",
                      defects=[{"name": "blowhole", "prompt": "a pit", "count": 2}])
    (out / "spec.yaml").write_text(
        yaml.safe_dump(yaml.safe_load(Path(other).read_text()) | {"seed": 7}))
    code, _, err = cli("generate", spec_file(tmp_path, mt_copy), "--out", out)
    assert code == 0 and "3 generated" in err and "made no sample: replacing it" in err


def test_overwrite_starts_afresh(tmp_path: Path, mt_copy: Path, cli) -> None:
    out = tmp_path / "o"
    assert cli("generate", spec_file(tmp_path, mt_copy), "--out", out)[0] == 0
    other = spec_file(tmp_path, mt_copy, name="other.yaml",
                      defects=[{"name": "blowhole", "prompt": "a pit", "count": 2}])
    msg = one_line_error(cli, "generate", other, "--out", out)
    assert "different spec" in msg and "--overwrite" in msg
    before = files_of(out)
    code, _, err = cli("generate", other, "--out", out, "--overwrite")
    assert code == 0 and "2 generated, 0 already done" in err
    assert sorted(r["id"] for r in read_manifest(out)) == ["blowhole_00000", "blowhole_00001"]
    assert not [k for k in files_of(out) if "crack" in k] and before
    # only diag's own files: a folder with anything else is refused, and nothing is deleted
    (out / "notes.txt").write_text("mine")
    msg = one_line_error(cli, "generate", other, "--out", out, "--overwrite")
    assert "notes.txt" in msg and "did not write" in msg
    assert len(read_manifest(out)) == 2 and (out / "notes.txt").is_file()
    msg = one_line_error(cli, "generate", other, "--out", out, "--overwrite", "--shard", "0/2")
    assert "--shard" in msg


def _two_at_once(cmd_a: list[str], cmd_b: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen(c, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c in (cmd_a, cmd_b)]
    outs = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e)
            for p, (o, e) in zip(procs, outs, strict=True)]


def test_the_same_command_twice_at_once(tmp_path: Path, example_root: Path,
                                        tiny_model: Path) -> None:
    path = spec_file(tmp_path, example_root, regions={"source": "real-masks"},
                     dataset={"layout": "magnetic-tile", "root": str(example_root),
                              "split": "train"},
                     generator={"kind": "diffusion", "model": str(tiny_model), "steps": 3,
                                "resolution": 128},
                     defects=[{"name": "crack", "prompt": "a crack", "count": 6}])
    cmd = diag_cmd("generate", path, "--out", tmp_path / "o")
    a, b = _two_at_once(cmd, cmd)
    codes = sorted([a.returncode, b.returncode])
    assert codes in ([0, 0], [0, 2]), (a.stderr, b.stderr)
    if codes == [0, 2]:
        loser = a if a.returncode else b
        assert "another diag generate run is writing" in loser.stderr
    lines = (tmp_path / "o/manifest.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert sorted(ids) == [f"crack_{k:05d}" for k in range(6)], "each sample once"


def test_two_different_specs_into_one_new_folder(tmp_path: Path, mt_copy: Path) -> None:
    a = spec_file(tmp_path, mt_copy, name="a.yaml",
                  defects=[{"name": "crack", "prompt": "a crack", "count": 12}])
    b = spec_file(tmp_path, mt_copy, name="b.yaml", seed=5,
                  defects=[{"name": "crack", "prompt": "a crack", "count": 12}])
    out = tmp_path / "o"
    ra, rb = _two_at_once(diag_cmd("generate", a, "--out", out), diag_cmd("generate", b, "--out",
                                                                           out))
    assert sorted([ra.returncode, rb.returncode]) == [0, 2], (ra.stderr, rb.stderr)
    loser = ra if ra.returncode else rb
    assert "different spec" in loser.stderr and "seed" in loser.stderr
    seed = yaml.safe_load((out / "spec.yaml").read_text())["seed"]
    assert {r["spec_seed"] for r in read_manifest(out)} == {seed}, "one run's samples only"


# --- changed inputs --------------------------------------------------------------------------


def test_a_changed_dataset_is_refused_unless_allowed(tmp_path: Path, mt_copy: Path, cli) -> None:
    path = spec_file(tmp_path, mt_copy, defects=[{"name": "crack", "prompt": "a crack",
                                                  "count": 6}])
    out = tmp_path / "o"
    assert cli("generate", path, "--out", out, "--limit", "2")[0] == 0
    free = mt_copy / "MT_Free" / "Imgs"
    shutil.copy(next(free.glob("*.jpg")), free / "added_0001.jpg")
    msg = one_line_error(cli, "generate", path, "--out", out)
    assert "changed since its samples were made: 1 file added" in msg
    assert "added_0001.jpg" in msg and "--allow-changed-inputs" in msg
    assert len(read_manifest(out)) == 2, "nothing lost"
    code, _, err = cli("generate", path, "--out", out, "--allow-changed-inputs")
    assert code == 0 and "4 generated" in err
    accepted = json.loads((out / "inputs.json").read_text())["accepted_changes"]
    assert len(accepted) == 1 and "1 file added" in accepted[0]["changes"]


def test_a_changed_source_of_a_finished_sample_is_refused(tmp_path: Path, mt_copy: Path,
                                                          cli) -> None:
    path = spec_file(tmp_path, mt_copy)
    out = tmp_path / "o"
    assert cli("generate", path, "--out", out, "--limit", "1")[0] == 0
    used = Path(read_manifest(out)[0]["source"])
    Image.fromarray(255 - np.asarray(Image.open(used))).save(used, format="JPEG")
    msg = one_line_error(cli, "generate", path, "--out", out)
    assert "1 file changed" in msg and used.name in msg


def test_a_changed_model_is_refused_unless_allowed(tmp_path: Path, example_root: Path,
                                                   tiny_model: Path, cli) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    path = spec_file(tmp_path, example_root, regions={"source": "real-masks"},
                     dataset={"layout": "magnetic-tile", "root": str(example_root),
                              "split": "train"},
                     generator={"kind": "diffusion", "model": str(model), "steps": 2,
                                "resolution": 128})
    out = tmp_path / "o"
    assert cli("generate", path, "--out", out, "--limit", "1")[0] == 0
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"steps_offset": 1', '"steps_offset": 0'))
    msg = one_line_error(cli, "generate", path, "--out", out)
    assert "samples made by another generator" in msg and "model_revision" in msg
    assert cli("generate", path, "--out", out, "--allow-changed-inputs")[0] == 0
    assert len(read_manifest(out)) == 3


def test_the_run_log_says_what_happened(tmp_path: Path, mt_copy: Path, cli, monkeypatch) -> None:
    path = spec_file(tmp_path, mt_copy)
    out = tmp_path / "o"
    assert cli("generate", path, "--out", out, "--limit", "2")[0] == 0
    monkeypatch.setenv("DIAG_MAX_IMAGE_PIXELS", "1000")
    one_line_error(cli, "generate", path, "--out", out)
    monkeypatch.delenv("DIAG_MAX_IMAGE_PIXELS")
    assert cli("generate", path, "--out", out)[0] == 0
    lines = (out / "generate.log").read_text().splitlines()
    assert "start: 2 to generate, 0 of 3 already done" in lines[0] and "shard 0/1" in lines[0]
    assert "end: 2 generated" in lines[1]
    assert "start: 1 to generate, 2 of 3 already done" in lines[-2]
    assert "end: 1 generated" in lines[-1]


@pytest.mark.parametrize("device", ["cudax", "cuda:x", "cuda:", "gpu"])
def test_bad_device_names(tmp_path: Path, mt_copy: Path, cli, device: str) -> None:
    msg = one_line_error(cli, "generate", spec_file(tmp_path, mt_copy), "--out", tmp_path / "o",
                         "--device", device)
    assert f"unknown device '{device}'" in msg and "cuda:N" in msg


def test_a_damaged_manifest_loses_no_good_record(tmp_path: Path, mt_copy: Path, cli) -> None:
    path = spec_file(tmp_path, mt_copy, defects=[{"name": "crack", "prompt": "a crack",
                                                  "count": 4}])
    out = tmp_path / "o"
    assert cli("generate", path, "--out", out, "--limit", "3")[0] == 0
    manifest = out / "manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    junk = [b"\xff\xfe binary junk\n", b'{"id": 5, "image": 3}\n', b"[1, 2]\n",
            b'{"id": "x", "index": "first"}\n']
    manifest.write_bytes(lines[0] + b"".join(junk) + b"".join(lines[1:]) + b'{"id": "cra')
    assert [r["id"] for r in read_manifest(out)][:3] == ["crack_00000", "crack_00001",
                                                         "crack_00002"]
    code, _, err = cli("generate", path, "--out", out)
    assert code == 0 and "1 generated, 3 already done" in err
    assert len(read_manifest(out)) == 5  # the 4 samples and the stray "x" record
    code, _, err = cli("sheet", out, "--out", tmp_path / "sheet.png")
    assert code == 0 and (tmp_path / "sheet.png").is_file()
