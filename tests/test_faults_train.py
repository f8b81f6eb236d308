"""diag train and diag evaluate under faults: bad output paths, read-only folders, a full disk,
runs killed with SIGKILL at random moments and resumed. Each bad case ends with exit 2 and one
``error:`` line naming the path and the fix, no traceback; nothing finished is lost, no
temporary file is left, and a resumed run is identical to an uninterrupted one.

Read-only cases: root ignores file permissions, so as root a folder is made read-only by a
read-only bind mount (skipped where mounting is not allowed); other users get ``chmod a-w``.
The full disk is simulated in-process (``OSError(ENOSPC)`` from a write or a rename): the
thing under test is the error handling, not the disk.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from diag.files import TEMP_RE, lock_folder
from tests.test_classify_train import _sep_config, _separable

EPOCHS = 3
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# --- helpers shared by the fault tests of train, fidelity and sheet -----------------------


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def diag_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "diag", *map(str, args)]


def error_line(code: int, err: str, *, only: bool = True) -> str:
    """The one ``error:`` line of a failed command (exit 2, no traceback). ``only``: nothing
    else on stderr (lines of progress before a failure mid-run are allowed otherwise)."""
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("note:")]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if only:
        assert len(lines) == 1, err
    return errors[0]


def temp_files(*folders: Path) -> list[Path]:
    """Temporary files (``.<name>.<random>.tmp`` and older forms) in the folders."""
    return [p for f in folders if f.is_dir() for p in f.iterdir() if TEMP_RE.match(p.name)]


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` (a folder) read-only for the duration.

    Root ignores permissions, so for root the folder is bind-mounted read-only on itself
    (skipped where mounting is not allowed); other users get ``chmod a-w`` on everything
    inside, restored afterwards."""
    path = Path(path)
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if not p.is_symlink()}
        for p, mode in modes.items():
            p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    r = _mount("--bind", str(path), str(path))
    if r.returncode:
        pytest.skip(f"running as root (which ignores permissions) and cannot bind-mount "
                    f"{path} read-only: {r.stderr.strip()}")
    try:
        r = _mount("-o", "remount,ro,bind", str(path), str(path))
        if r.returncode:
            pytest.skip(f"running as root and cannot remount {path} read-only: "
                        f"{r.stderr.strip()}")
        try:
            (path / ".probe").write_bytes(b"")
        except OSError:
            pass
        else:
            (path / ".probe").unlink()
            pytest.skip(f"the read-only bind mount of {path} still takes writes")
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def kill_at_random(cmds: list[list[str]], markers: list[Path], delays: list[float],
                   cwds: list[Path] | None = None, timeout: float = 300) -> list[bool]:
    """Start every command at once (in ``cwds``, if given; the machine's cores are shared);
    kill each with SIGKILL ``delay`` seconds after its ``marker`` path appears. Returns, per
    command, whether it was killed (False: it finished first)."""
    procs = [subprocess.Popen(c, env=ENV, cwd=cwds[i] if cwds else None,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i, c in enumerate(cmds)]
    seen: list[float | None] = [None] * len(cmds)
    killed = [False] * len(cmds)
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            now = time.time()
            for i, p in enumerate(procs):
                if p.poll() is not None or killed[i]:
                    continue
                if seen[i] is None and markers[i].exists():
                    seen[i] = now
                if seen[i] is not None and now - seen[i] >= delays[i]:
                    p.send_signal(signal.SIGKILL)
                    killed[i] = True
            time.sleep(0.01)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            _, err = p.communicate()
            assert b"Traceback" not in err, err.decode(errors="replace")
    for p, k in zip(procs, killed, strict=True):
        assert k or p.returncode == 0, p.returncode
    return killed


# --- a tiny training run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny data, a config (efficientnet-lite0 from scratch, 32x32, 3 epochs, 1 thread,
    deterministic), and the reference: an uninterrupted run."""
    from diag.classify.config import parse_train_config
    from diag.classify.train import train_run

    base = tmp_path_factory.mktemp("faults-train")
    tr, te = _separable(base / "tr", 8), _separable(base / "te", 4, seed=1)
    cfg = _sep_config(tr, te, epochs=EPOCHS)
    cfg["model"]["backbone"] = "efficientnet-lite0"  # small checkpoints (40 MB), dropout RNG
    cfg["data"]["augment"] = True  # augmentation RNG too
    (base / "train.yaml").write_text(yaml.safe_dump(cfg))
    train_run(parse_train_config(cfg), base / "reference", progress=False)
    return {"base": base, "config": base / "train.yaml", "reference": base / "reference",
            "test": te}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_run(run: Path, ref: Path) -> None:
    """``run`` holds exactly what the uninterrupted ``ref`` holds: same files, bit-identical
    weights, same metrics and scores (timings aside), nothing doubled, no temporary file."""
    assert not temp_files(run, run / "checkpoints"), temp_files(run, run / "checkpoints")
    names = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert names == sorted(str(p.relative_to(ref)) for p in ref.rglob("*"))
    a, b = _load(run / "model.pt"), _load(ref / "model.pt")
    assert a.keys() == b.keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert {k: v for k, v in a.items() if k != "model"} == {k: v for k, v in b.items()
                                                            if k != "model"}
    last = _load(run / "checkpoints" / "last.pt")
    assert last["epoch"] == EPOCHS and [h["epoch"] for h in last["history"]] == [1, 2, 3]
    m, mr = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    m.pop("seconds"), mr.pop("seconds")
    assert m == mr
    for name in ("scores.csv", "pr_curve.png", "config.yaml", "training_files.json"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    meta, metar = (json.loads((d / "metadata.json").read_text()) for d in (run, ref))
    for d in (meta, metar):
        d.pop("created"), d.pop("command")
    assert meta == metar


# --- output paths -------------------------------------------------------------------------


def test_out_is_a_file(setup, tmp_path: Path, cli) -> None:
    (tmp_path / "taken").write_text("x")
    msg = error_line(*cli("train", setup["config"], "--out", tmp_path / "taken")[::2])
    assert "taken" in msg and "is a file" in msg and "--out" in msg
    assert (tmp_path / "taken").read_text() == "x"


def test_out_inside_a_file(setup, tmp_path: Path, cli) -> None:
    (tmp_path / "taken").write_text("x")
    msg = error_line(*cli("train", setup["config"], "--out", tmp_path / "taken" / "run")[::2])
    assert "taken" in msg and "is a file" in msg


@pytest.mark.parametrize("what", ["metrics.json", "checkpoints"])
def test_something_in_the_way_inside_the_run_folder(setup, tmp_path: Path, cli, what) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if what == "checkpoints":
        (run / what).write_text("x")  # a file where the checkpoint folder goes
    else:
        (run / what).mkdir()  # a folder where a file goes
    msg = error_line(*cli("train", setup["config"], "--out", run)[::2])
    assert what in msg and "choose another --out" in msg


def test_out_name_too_long(setup, tmp_path: Path, cli) -> None:
    msg = error_line(*cli("train", setup["config"], "--out", tmp_path / ("r" * 300))[::2])
    assert "rrrr" in msg and "longer than the file system allows" in msg


def test_read_only_parent(setup, tmp_path: Path, cli) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        msg = error_line(*cli("train", setup["config"], "--out", parent / "run")[::2])
        assert "ro" in msg and ("read-only" in msg or "not writable" in msg)
    assert not (parent / "run").exists()
    for args in (["--seeds", "0,1"], ["--resume"]):
        with read_only(parent):
            msg = error_line(*cli("train", setup["config"], "--out", parent / "run", *args)[::2])
            assert "--out" in msg and "'ro'" in msg.replace(str(tmp_path) + "/", "")


def test_resume_of_a_finished_read_only_run_has_nothing_to_do(setup, tmp_path: Path,
                                                               cli) -> None:
    box = tmp_path / "box"
    shutil.copytree(setup["reference"], box / "run")
    before = {p: p.read_bytes() for p in (box / "run").rglob("*") if p.is_file()}
    with read_only(box):
        code, out, err = cli("train", setup["config"], "--out", box / "run", "--resume")
        assert code == 0, err
        assert "test: AP" in out and "nothing to do" in err
        # more epochs would have to write: one line up front
        msg = error_line(*cli("train", setup["config"], "--out", box / "run", "--resume",
                              "--set", "train.epochs=4")[::2])
        assert "run" in msg and ("read-only" in msg or "not writable" in msg)
    assert {p: p.read_bytes() for p in (box / "run").rglob("*") if p.is_file()} == before


def test_resume_of_a_finished_run_removes_temporary_files(setup, tmp_path: Path, cli) -> None:
    """Killed after metrics.json was written, while a temporary file was still around."""
    run = tmp_path / "run"
    shutil.copytree(setup["reference"], run)
    (run / "checkpoints" / ".last.pt.x1y2z3.tmp").write_bytes(b"half")
    (run / ".pr_curve.png.tmp.png").write_bytes(b"half")
    code, _, err = cli("train", setup["config"], "--out", run, "--resume")
    assert code == 0 and "nothing to do" in err, err
    assert_same_run(run, setup["reference"])


def test_seeds_resume_when_all_done_on_a_read_only_folder(setup, tmp_path: Path, cli) -> None:
    runs = tmp_path / "box" / "runs"
    code, _, err = cli("train", setup["config"], "--out", runs, "--seeds", "0",
                       "--set", "train.epochs=1")
    assert code == 0, err
    summary = (runs / "summary.json").read_bytes()
    with read_only(tmp_path / "box"):
        code, out, err = cli("train", setup["config"], "--out", runs, "--seeds", "0", "--resume",
                             "--set", "train.epochs=1")
        assert code == 0, err
        assert "ap:" in out
    assert (runs / "summary.json").read_bytes() == summary


def test_a_second_process_on_the_same_run_is_refused(setup, tmp_path: Path, cli) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with lock_folder(run, "the training run"):  # as if another diag train were writing there
        msg = error_line(*cli("train", setup["config"], "--out", run)[::2])
    assert "another process" in msg and "run" in msg
    assert not list(run.iterdir())


def test_damaged_generate_manifest_in_data_generated(setup, tmp_path: Path, cli) -> None:
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "manifest.jsonl").write_bytes(b'{"id": "a"}\n\xff\xfe\x00junk\n')
    msg = error_line(*cli("train", setup["config"], "--out", tmp_path / "run",
                          "--set", f"data.generated=[{gen}]")[::2])
    assert "data.generated" in msg and str(gen) in msg and "manifest" in msg
    assert not (tmp_path / "run").exists()


# --- a full disk --------------------------------------------------------------------------


def _fail_nth(monkeypatch: pytest.MonkeyPatch, where: str, name: str, n: int) -> None:
    """The ``n``-th write of a file called ``name`` fails with ENOSPC: in the middle of writing
    (``write``: the checkpoint's torch.save) or when renamed into place (``replace``)."""
    count = {"n": 0}
    if where == "replace":
        real = os.replace

        def replace(src, dst, *a, **kw):  # noqa: ANN001, ANN202
            if Path(dst).name == name:
                count["n"] += 1
                if count["n"] == n:
                    raise enospc()
            return real(src, dst, *a, **kw)

        monkeypatch.setattr(os, "replace", replace)
    else:
        real_save = torch.save

        def save(obj, f, *a, **kw):  # noqa: ANN001, ANN202
            target = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else ""
            if Path(target).name.startswith(f".{name}."):
                count["n"] += 1
                if count["n"] == n:
                    f.write(b"half a checkpoint")
                    raise enospc()
            return real_save(obj, f, *a, **kw)

        monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("where, name", [("write", "last.pt"), ("replace", "metrics.json")])
def test_disk_full_keeps_finished_epochs_and_resumes(setup, tmp_path: Path, cli, monkeypatch,
                                                      where: str, name: str) -> None:
    run = tmp_path / "run"
    _fail_nth(monkeypatch, where, name, 2 if name == "last.pt" else 1)
    code, _, err = cli("train", setup["config"], "--out", run)
    msg = error_line(code, err, only=False)
    assert name in msg and "No space left on device" in msg and "--resume" in msg
    assert not temp_files(run, run / "checkpoints")
    last = _load(run / "checkpoints" / "last.pt")  # the finished epochs are intact
    assert last["epoch"] == (1 if name == "last.pt" else EPOCHS)
    if name == "metrics.json":
        assert (run / "model.pt").is_file() and not (run / "metrics.json").exists()
    monkeypatch.undo()  # space freed
    code, _, err = cli("train", setup["config"], "--out", run, "--resume")
    assert code == 0, err
    assert_same_run(run, setup["reference"])


# --- kill -9 at a random moment, then --resume ---------------------------------------------


def state_of(run: Path) -> str:
    """Where a killed run had got to, from what it left on disk."""
    if (run / "metrics.json").is_file():
        return "finished"
    if (run / "model.pt").is_file():
        return "model.pt written, metrics.json not"
    if (run / "checkpoints" / "last.pt").is_file():
        return f"epoch {_load(run / 'checkpoints' / 'last.pt')['epoch']} saved"
    return "no checkpoint yet"


def _kill_trials(setup, tmp_path: Path, cli, seed: int, trials: int, parallel: int,
                 longest: float, twice: bool = False) -> tuple[int, set[str]]:
    """``trials`` runs killed ``U(0, longest)`` s after they start training (with
    ``twice``, every other one is killed again while resuming), resumed and compared with the
    uninterrupted reference; returns how many kills hit a running process, and the states the
    killed runs were left in."""
    rng = random.Random(seed)
    killed_total = 0
    states: set[str] = set()
    for start in range(0, trials, parallel):
        n = min(parallel, trials - start)
        runs = [tmp_path / f"run{start + i}" for i in range(n)]
        cmds = [diag_cmd("train", setup["config"], "--out", r) for r in runs]
        delays = [rng.uniform(0, longest) for _ in runs]
        # timed from the start of training (config.yaml written) or, every other trial, from
        # the first checkpoint, so that some kills land late in the run on a busy machine too
        markers = [r / ("config.yaml" if (start + i) % 2 == 0 else "checkpoints/last.pt")
                   for i, r in enumerate(runs)]
        killed = kill_at_random(cmds, markers, delays)
        killed_total += sum(killed)
        again = [r for i, r in enumerate(runs) if twice and (start + i) % 2 and killed[i]]
        if again:  # the resumed run is killed too (its folder exists: timed from its start)
            killed_total += sum(kill_at_random(
                [diag_cmd("train", setup["config"], "--out", r, "--resume") for r in again],
                [r for r in again], [rng.uniform(2.0, 2.0 + longest) for _ in again]))
        for i, run in enumerate(runs):
            states.add(state_of(run))
            if (start + i) % 3 == 0 and (run / "checkpoints").is_dir():  # as if killed mid-write
                (run / "checkpoints" / ".last.pt.x1y2z3.tmp").write_bytes(b"half")
                (run / ".metrics.json.tmp").write_bytes(b"half")
            code, _, err = cli("train", setup["config"], "--out", run, "--resume")
            assert code == 0, (delays[i], err)
            assert_same_run(run, setup["reference"])
            shutil.rmtree(run)
    print(f"{killed_total} kills in {trials} trials; killed runs left: {sorted(states)}")
    return killed_total, states


def test_killed_runs_resume_to_the_same_result(setup, tmp_path: Path, cli) -> None:
    killed, _ = _kill_trials(setup, tmp_path, cli, seed=1, trials=2, parallel=2, longest=1.5)
    assert killed >= 1


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_result_many_times(setup, tmp_path: Path, cli) -> None:
    killed, states = _kill_trials(setup, tmp_path, cli, seed=2, trials=24, parallel=2,
                                  longest=3.5, twice=True)
    assert killed >= 12 and len(states) >= 3, states


# --- diag evaluate -------------------------------------------------------------------------


def _eval_args(setup, *more: object) -> list[object]:
    return ["evaluate", setup["reference"], "--data", setup["test"], "--layout", "folder",
            "--split", "all", "--set", "images=images", "--set", "masks=masks", *more]


def test_evaluate_bad_out(setup, tmp_path: Path, cli) -> None:
    (tmp_path / "taken").write_text("x")
    msg = error_line(*cli(*_eval_args(setup, "--out", tmp_path / "taken"))[::2])
    assert "taken" in msg and "is a file" in msg
    (tmp_path / "ev" / "metrics.json").mkdir(parents=True)
    msg = error_line(*cli(*_eval_args(setup, "--out", tmp_path / "ev"))[::2])
    assert "metrics.json" in msg and "is a folder" in msg


def test_evaluate_read_only(setup, tmp_path: Path, cli) -> None:
    box = tmp_path / "box"
    shutil.copytree(setup["reference"], box / "run")
    args = ["evaluate", box / "run", *_eval_args(setup)[2:]]
    with read_only(box):  # the default output folder is inside the read-only run
        msg = error_line(*cli(*args)[::2])
        assert "eval-te-all" in msg and "--out" in msg
    code, _, err = cli(*args)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in (box / "run" / "eval-te-all").iterdir()}
    with read_only(box):  # a rerun with nothing new to write succeeds
        code, _, err = cli(*args)
        assert code == 0, err
    assert {p.name: p.read_bytes() for p in (box / "run" / "eval-te-all").iterdir()} == before


def test_evaluate_disk_full_keeps_the_previous_result(setup, tmp_path: Path, cli,
                                                      monkeypatch) -> None:
    out = tmp_path / "ev"
    code, _, err = cli(*_eval_args(setup, "--out", out, "--threshold", "0"))
    assert code == 0, err
    before = (out / "metrics.json").read_bytes()
    _fail_nth(monkeypatch, "replace", "metrics.json", 1)
    code, _, err = cli(*_eval_args(setup, "--out", out))
    msg = error_line(code, err)
    assert "metrics.json" in msg and "No space left on device" in msg
    assert (out / "metrics.json").read_bytes() == before and not temp_files(out)
