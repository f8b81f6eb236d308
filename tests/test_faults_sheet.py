"""diag sheet (and diag demo's output checks) under faults: garbage manifests, bad ``--out``
paths, read-only folders, a full disk. Unusable manifest records are skipped with one warning
line naming the manifest and the count; with nothing usable left, and for every bad path, the
command ends with exit 2 and one ``error:`` line naming the path, no traceback.
Read-only folders and the full disk: see tests/test_faults_train.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from diag.imageio import read_image, write_image, write_mask
from tests.test_faults_train import _fail_nth, error_line, read_only, temp_files
from tests.test_fidelity import texture


def good_output(out: Path, n: int = 3, manifest: str = "manifest.jsonl") -> list[str]:
    """A diag-generate-style folder with ``n`` good records; returns their manifest lines."""
    lines = []
    mask = np.zeros((40, 40), bool)
    mask[8:20, 10:30] = True
    for i in range(n):
        write_image(out / "src" / f"{i}.png", texture(i, 40))
        write_image(out / "images" / f"{i}.png", texture(50 + i, 40))
        write_mask(out / "masks" / f"{i}.png", mask)
        lines.append(json.dumps({"id": f"s{i}", "index": i, "image": f"images/{i}.png",
                                 "mask": f"masks/{i}.png", "source": str(out / "src" / f"{i}.png"),
                                 "generator": "memseg"}))
    (out / manifest).write_text("".join(line + "\n" for line in lines))
    return lines


GARBAGE: dict[str, list[bytes]] = {
    "missing keys": [b'{"id": "a"}', b'{"image": "images/0.png", "mask": "masks/0.png"}'],
    "wrong types": [b'{"id": 1, "image": ["x"], "mask": null}',
                    b'{"id": "b", "image": "images/0.png", "mask": "masks/0.png", "index": "3"}',
                    b'{"id": "c", "image": 7, "mask": "masks/0.png"}'],
    "missing files": [b'{"id": "d", "image": "images/nope.png", "mask": "masks/nope.png"}',
                      b'{"id": "e", "image": "/no/such/dir/x.png", "mask": "m.png"}'],
    "odd paths": [b'{"id": "f", "image": "images", "mask": "masks"}',
                  b'{"id": "g", "image": "a\\u0000b.png", "mask": "m.png"}',
                  b'{"id": "h", "image": "' + b"x" * 400 + b'.png", "mask": "m.png"}'],
    "corrupt image": [b'{"id": "i", "image": "junk.png", "mask": "masks/0.png"}'],
    "binary junk": [b"\xff\xfe\x00\x01garbage\x80", b"\x89PNG\r\x1a\x00\x00", b"{{{{"],
    "not objects": [b"[1, 2]", b'"text"', b"42", b"null", b"[" * 100_000],
}


def _garbage_folder(folder: Path, kind: str) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "junk.png").write_bytes(b"not a png at all")
    lines = GARBAGE[kind]
    (folder / "manifest.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    return len(lines)


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_only_garbage_is_one_error(tmp_path: Path, cli, kind: str) -> None:
    n = _garbage_folder(tmp_path / "g", kind)
    msg = error_line(*cli("sheet", tmp_path / "g", "--out", tmp_path / "s.png")[::2])
    assert "'" + str(tmp_path / "g") + "'" in msg and "no usable manifest records" in msg
    assert f"{n} in" in msg and "manifest.jsonl" in msg
    assert not (tmp_path / "s.png").exists()


def test_garbage_among_good_records_is_one_warning(tmp_path: Path, cli) -> None:
    out = tmp_path / "g"
    good = good_output(out, 3)
    bad = [line for kind in sorted(GARBAGE) for line in GARBAGE[kind]]
    (out / "junk.png").write_bytes(b"not a png at all")
    mixed = [good[0].encode(), *bad[:9], good[1].encode(), *bad[9:], good[2].encode(),
             b'{"id": "torn", "ima']  # and a torn last line
    (out / "manifest.jsonl").write_bytes(b"\n".join(mixed))
    code, _, err = cli("sheet", out, "--out", tmp_path / "s.png", "--n", "3", "--tile", "32")
    assert code == 0, err
    lines = err.strip().splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "manifest.jsonl" in warnings[0], err
    assert f"skipped {len(bad) + 1} unusable records" in warnings[0]
    assert "Traceback" not in err
    assert read_image(tmp_path / "s.png").ndim == 3


def test_a_damaged_shard_manifest_is_named(tmp_path: Path, cli) -> None:
    out = tmp_path / "g"
    good_output(out, 2, manifest="manifest-0-of-2.jsonl")
    with open(out / "manifest-1-of-2.jsonl", "wb") as fh:
        fh.write(b'{"id": "x"}\n\xff\xff\n')
    code, _, err = cli("sheet", out, "--out", tmp_path / "s.png", "--tile", "32")
    assert code == 0, err
    assert err.count("warning:") == 1 and "manifest-1-of-2.jsonl" in err and "skipped 2" in err


def test_empty_manifest_and_manifest_folder(tmp_path: Path, cli) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.jsonl").write_bytes(b"")
    (tmp_path / "b" / "manifest.jsonl").mkdir(parents=True)
    for folder in ("a", "b"):
        msg = error_line(*cli("sheet", tmp_path / folder, "--out", tmp_path / "s.png")[::2])
        assert folder in msg and "no manifest records" in msg


def test_unreadable_mask_and_source_are_placeholders(tmp_path: Path, cli) -> None:
    out = tmp_path / "g"
    good_output(out, 2)
    (out / "masks" / "0.png").write_bytes(b"broken")
    (out / "src" / "1.png").unlink()
    code, _, err = cli("sheet", out, "--out", tmp_path / "s.png", "--tile", "32")
    assert code == 0 and not err.count("warning:"), err


# --- the output path -------------------------------------------------------------------------


@pytest.fixture
def one(tmp_path: Path) -> Path:
    good_output(tmp_path / "g", 2)
    return tmp_path / "g"


def test_out_is_a_folder(one: Path, tmp_path: Path, cli) -> None:
    (tmp_path / "d.png").mkdir()
    msg = error_line(*cli("sheet", one, "--out", tmp_path / "d.png")[::2])
    assert "d.png" in msg and "is a folder" in msg


def test_out_inside_a_file(one: Path, tmp_path: Path, cli) -> None:
    (tmp_path / "taken").write_text("x")
    msg = error_line(*cli("sheet", one, "--out", tmp_path / "taken" / "s.png")[::2])
    assert "taken" in msg and "is a file" in msg


@pytest.mark.parametrize("name, needle", [("s.jpg", ".png"), ("s" * 300 + ".png", "longer")])
def test_out_bad_name(one: Path, tmp_path: Path, cli, name: str, needle: str) -> None:
    msg = error_line(*cli("sheet", one, "--out", tmp_path / name)[::2])
    assert needle in msg


def test_out_not_writable_is_checked_before_reading(tmp_path: Path, cli) -> None:
    _garbage_folder(tmp_path / "g", "binary junk")
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        msg = error_line(*cli("sheet", tmp_path / "g", "--out", tmp_path / "ro" / "s.png")[::2])
    assert "'ro'" in msg.replace(str(tmp_path) + "/", "") and "--out" in msg


def test_rerun_on_a_finished_read_only_sheet(one: Path, tmp_path: Path, cli) -> None:
    (tmp_path / "box").mkdir()
    assert cli("sheet", one, "--out", tmp_path / "box" / "s.png")[0] == 0
    before = (tmp_path / "box" / "s.png").read_bytes()
    with read_only(tmp_path / "box"):
        code, _, err = cli("sheet", one, "--out", tmp_path / "box" / "s.png")
        assert code == 0, err  # the same sheet: nothing to write
        msg = error_line(*cli("sheet", one, "--out", tmp_path / "box" / "s.png", "--n", "1")[::2])
        assert "s.png" in msg and "Read-only file system" in msg
    assert (tmp_path / "box" / "s.png").read_bytes() == before


def test_disk_full_keeps_the_previous_sheet(one: Path, tmp_path: Path, cli, monkeypatch) -> None:
    assert cli("sheet", one, "--out", tmp_path / "s.png", "--n", "1")[0] == 0
    before = (tmp_path / "s.png").read_bytes()
    _fail_nth(monkeypatch, "replace", "s.png", 1)
    msg = error_line(*cli("sheet", one, "--out", tmp_path / "s.png")[::2])
    assert "s.png" in msg and "No space left on device" in msg
    assert (tmp_path / "s.png").read_bytes() == before and not temp_files(tmp_path)


def test_stale_temporary_file_is_removed(one: Path, tmp_path: Path, cli) -> None:
    stale = tmp_path / ".s.png.k1ll3d.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))  # left long ago by a killed run
    assert cli("sheet", one, "--out", tmp_path / "s.png")[0] == 0
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("tile", ["8", "100000"])
def test_tile_out_of_range(one: Path, tmp_path: Path, cli, tile: str) -> None:
    assert "--tile" in error_line(*cli("sheet", one, "--out", tmp_path / "s.png",
                                       "--tile", tile)[::2])


# --- diag demo: its output folder is checked before anything is loaded -------------------------


def test_demo_out_is_a_file(tmp_path: Path, cli) -> None:
    (tmp_path / "taken").write_text("x")
    msg = error_line(*cli("demo", "--out", tmp_path / "taken", "--generator", "memseg")[::2])
    assert "taken" in msg and "is a file" in msg


def test_demo_contact_sheet_is_a_folder(tmp_path: Path, cli) -> None:
    (tmp_path / "demo" / "contact_sheet.png").mkdir(parents=True)
    msg = error_line(*cli("demo", "--out", tmp_path / "demo", "--generator", "memseg")[::2])
    assert "contact_sheet.png" in msg and "is a folder" in msg


def test_demo_read_only_parent(tmp_path: Path, cli) -> None:
    (tmp_path / "ro").mkdir()
    with read_only(tmp_path / "ro"):
        msg = error_line(*cli("demo", "--out", tmp_path / "ro" / "demo", "--generator",
                              "memseg")[::2])
    assert "'ro'" in msg.replace(str(tmp_path) + "/", "")
    assert not (tmp_path / "ro" / "demo").exists()


def test_demo_finished_output_sheet_is_kept(tmp_path: Path, example_root: Path) -> None:
    """The demo's contact sheet goes through the same checked, atomic write."""
    from diag.generate.sheet import save_contact_sheet

    out = tmp_path / "demo"
    good_output(out, 2)
    path = save_contact_sheet([out], out / "contact_sheet.png", n=2)
    before = path.read_bytes()
    with read_only(out):
        assert save_contact_sheet([out], out / "contact_sheet.png", n=2) == path
    assert path.read_bytes() == before
    shutil.rmtree(out)
