"""Many processes, many machines: torchrun / accelerate ranks and Slurm array tasks pick their
shard themselves, and ``--engine ray`` runs the plan on a (here local) Ray cluster. Each way
must end with the set one process makes: the same images and masks byte for byte, and the same
manifest records apart from timing and device fields; a killed process or worker loses and
doubles nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diag.generate import load_spec, run_spec
from tests.test_generate import write_spec

VOLATILE = {"seconds", "device", "threads"}  # timing and device fields
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
               "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
               "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "RAY_ADDRESS")
ENV = {**{k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}, "PYTHONUNBUFFERED": "1"}
BIN = Path(sys.executable).parent
COUNTS = (100, 100)  # memseg: about 20 ms a sample, so a chunk lasts long enough to be killed
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed: pip install 'diag[ray]'")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start clean even when the suite itself runs under torchrun or Slurm."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, example_root: Path) -> tuple[Path, Path]:
    """A memseg spec of 200 samples and the set one process makes of it."""
    tmp = tmp_path_factory.mktemp("distributed")
    path = write_spec(tmp, example_root, {"kind": "memseg"}, counts=COUNTS)
    summary = run_spec(load_spec(path), tmp / "one", progress=False)
    assert summary.complete and summary.generated == sum(COUNTS)
    return path, tmp / "one"


def diag(*args: object) -> list[str]:
    return [sys.executable, "-m", "diag", *(str(a) for a in args)]


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes()
            for sub in ("images", "masks") for p in sorted((out / sub).iterdir())}


def records(out: Path) -> list[dict]:
    """manifest.jsonl's records without timing and device fields; ids once each."""
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    recs = [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), "a sample is recorded twice"
    return recs


def assert_same_set(out: Path, one: Path) -> None:
    """``out`` holds exactly the single-process set ``one``, merged, with nothing left over."""
    assert files(out) == files(one), "images and masks differ from one process's"
    assert records(out) == records(one), "manifest records differ from one process's"
    assert not list(out.glob("manifest-*")), "shard manifests were not merged"
    assert not list(out.rglob("*.tmp")), "temporary files were left"


def torchrun(spec: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "diag",
           "generate", str(spec), "--out", str(out)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_torchrun_two_processes_make_the_single_process_set(reference, tmp_path: Path) -> None:
    spec, one = reference
    done = torchrun(spec, tmp_path / "out")
    for rank in (0, 1):
        assert f"shard {rank}/2 from torchrun/accelerate: RANK={rank}, WORLD_SIZE=2" in done.stderr
    assert "set complete" in done.stderr
    assert_same_set(tmp_path / "out", one)


def test_accelerate_launch_two_processes_make_the_single_process_set(reference, tmp_path: Path
                                                                     ) -> None:
    """`accelerate launch --multi_gpu --num_processes 2` (accelerate's distributed launcher;
    without GPUs each process runs on the CPU) gives each process RANK / WORLD_SIZE like
    torchrun: the same set as one process. (`--cpu` alone runs one process; accelerate's
    multi-CPU launch needs MPI.)"""
    spec, one = reference
    out = tmp_path / "out"
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "diag", "generate", str(spec), "--out", str(out)]
    env = {**ENV, "HF_HOME": str(tmp_path / "hf")}  # no accelerate config file of the user's
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"shard {rank}/2 from torchrun/accelerate: RANK={rank}, WORLD_SIZE=2" in done.stderr
    assert_same_set(out, one)


def test_a_crashed_rank_is_redone_by_rerunning(reference, tmp_path: Path, cli,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 stopped after 30 samples, rank 1 finished: the same torchrun command again makes
    only the missing 70, and the set is whole."""
    spec, one = reference
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = cli("generate", spec, "--out", out, "--limit", 30)
    assert code == 0 and "shard 0/2 from torchrun/accelerate: RANK=0" in err
    monkeypatch.setenv("RANK", "1")
    code, _, err = cli("generate", spec, "--out", out)
    assert code == 0 and "100 generated" in err and "incomplete" in err
    done = torchrun(spec, out)
    assert "70 generated, 30 already done, of 100 planned" in done.stderr
    assert "0 generated, 100 already done, of 100 planned" in done.stderr
    assert_same_set(out, one)


def test_slurm_array_tasks_pick_their_shards(reference, tmp_path: Path, cli,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch --array=1-3: SLURM_ARRAY_TASK_ID 1, 2, 3 run shards 0, 1, 2 of 3; an explicit
    --shard still wins (and says so)."""
    spec, one = reference
    out = tmp_path / "out"
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MAX", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    for task in (3, 1):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        code, _, err = cli("generate", spec, "--out", out)
        assert code == 0, err
        assert f"shard {task - 1}/3 from Slurm array: SLURM_ARRAY_TASK_ID={task} of 1..3" in err
        assert "incomplete" in err and (out / f"manifest-{task - 1}-of-3.jsonl").is_file()
    code, _, err = cli("generate", spec, "--out", out, "--shard", "1/3")  # task 2, by hand
    assert code == 0, err
    assert "shard 1/3 from --shard (the environment also names shard 0/3" in err
    assert "set complete" in err
    assert_same_set(out, one)
    # SLURM_ARRAY_TASK_COUNT alone (arrays numbered from 0)
    for name in ("SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    code, out_text, err = cli("generate", spec, "--out", tmp_path / "dry", "--dry-run")
    assert code == 0 and "shard 2/3 from Slurm array" in err and "for shard 2/3" in out_text


@pytest.mark.parametrize(("env", "match"), [
    ({"RANK": "1"}, "RANK is set in the environment but WORLD_SIZE is not"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' in the environment is not a whole number"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "7",
      "SLURM_ARRAY_TASK_COUNT": "3"}, "is not an evenly spaced range"),
])
def test_bad_launcher_variables_are_one_line_errors(reference, tmp_path: Path, cli,
                                                    monkeypatch: pytest.MonkeyPatch, env: dict,
                                                    match: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, _, err = cli("generate", reference[0], "--out", tmp_path / "o")
    assert code == 2 and match in err and "--shard i/n" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "match"), [
    (["--workers", "2"], "--workers goes with --engine ray"),
    (["--address", "auto"], "--address goes with --engine ray"),
    (["--engine", "ray", "--shard", "0/2"], "--shard with --engine ray"),
    (["--engine", "ray", "--limit", "2"], "--limit with --engine ray"),
    (["--engine", "ray", "--workers", "0"], "--workers 0: give the number of Ray workers"),
])
def test_engine_flags_are_checked(reference, tmp_path: Path, cli, args: list[str],
                                  match: str) -> None:
    code, _, err = cli("generate", reference[0], "--out", tmp_path / "o", *args)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_missing_ray_says_how_to_install_it(reference, tmp_path: Path, cli,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import ray fails
    code, _, err = cli("generate", reference[0], "--out", tmp_path / "o", "--engine", "ray")
    assert code == 2 and "pip install 'diag[ray]'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@needs_ray
def test_local_ray_makes_the_single_process_set(reference, tmp_path: Path) -> None:
    spec, one = reference
    out = tmp_path / "out"
    done = subprocess.run(diag("generate", spec, "--out", out, "--engine", "ray", "--workers", 2,
                               "--device", "cpu"),
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray: 2 cpu workers on a local Ray, the plan in 8 chunks" in done.stderr
    assert f"{sum(COUNTS)} generated, 0 already done" in done.stderr
    assert_same_set(out, one)
    log = (out / "generate.log").read_text()
    assert len(set(re.findall(r"\[ray worker \d+ pid (\d+)\] started", log))) == 2
    assert log.count("generator memseg loaded") == 2, "one generator per worker"
    # a rerun finds the set complete without starting Ray
    again = subprocess.run(diag("generate", spec, "--out", out, "--engine", "ray"), env=ENV,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"0 generated, {sum(COUNTS)} already done" in again.stderr
    assert "ray:" not in again.stderr


@needs_ray
def test_a_killed_ray_worker_loses_and_doubles_nothing(reference, tmp_path: Path) -> None:
    """kill -9 a worker in the middle of a chunk: Ray restarts it and runs the chunk again,
    which skips the samples already made; the set is the single-process one."""
    spec, one = reference
    out = tmp_path / "out"
    proc = subprocess.Popen(diag("generate", spec, "--out", out, "--engine", "ray", "--workers", 2,
                                 "--device", "cpu"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = chunk = None
    deadline = time.time() + 120
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
            log = (out / "generate.log").read_text() if (out / "generate.log").exists() else ""
            workers = set(re.findall(r"\[ray worker \d+ pid (\d+)\] started", log))
            running = {(s, p) for s, p in re.findall(r"\[shard (\d+)/8 pid (\d+)\] start", log)
                       if f"[shard {s}/8 pid {p}] end" not in log and p in workers}
            for s, p in sorted(running):
                shard_file = out / f"manifest-{s}-of-8.jsonl"
                if shard_file.exists() and len(shard_file.read_bytes().splitlines()) >= 3:
                    victim, chunk = int(p), s
                    os.kill(victim, signal.SIGKILL)  # a worker of this test's own Ray
                    break
        assert victim is not None, "the run ended before a worker could be killed"
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    log = (out / "generate.log").read_text()
    redone = re.findall(rf"\[shard {chunk}/8 pid (\d+)\] start: \d+ to generate, (\d+) of \d+ "
                        r"already done", log)
    assert len(redone) == 2 and int(redone[1][0]) != victim, "the killed chunk was run again"
    assert int(redone[1][1]) >= 3, "finished samples of the killed chunk were not redone"
    assert_same_set(out, one)


@needs_ray
def test_ray_refuses_another_specs_folder_before_starting(reference, tmp_path: Path, cli,
                                                          example_root: Path) -> None:
    out = tmp_path / "out"
    other = write_spec(tmp_path, example_root, {"kind": "memseg"}, counts=(1, 0), seed=5,
                       name="other.yaml")
    assert cli("generate", other, "--out", out)[0] == 0
    code, _, err = cli("generate", reference[0], "--out", out, "--engine", "ray")
    assert code == 2 and "holds samples of a different spec" in err and "ray:" not in err
    assert len(err.strip().splitlines()) == 1


@needs_ray
@pytest.mark.slow
def test_a_workers_error_is_one_line(tmp_path: Path, example_root: Path) -> None:
    """An error raised in a worker (here: loading a model that is not there) reaches the
    command line as its one line, exit 2."""
    spec = write_spec(tmp_path, example_root, {"kind": "diffusion", "model": str(tmp_path / "no"),
                                               "steps": 2, "resolution": 64}, counts=(2, 2))
    done = subprocess.run(diag("generate", spec, "--out", tmp_path / "out", "--engine", "ray",
                               "--workers", 2, "--device", "cpu"),
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"model folder '{tmp_path / 'no'}' does not exist" in errors[0]
    assert "Traceback" not in done.stderr


def test_a_worker_that_does_not_see_the_shared_folder_says_so(reference, tmp_path: Path) -> None:
    """A worker whose machine does not mount --out (the driver's spec.yaml is missing there)
    refuses to write a stray copy of the set on its own disk."""
    from diag.errors import DiagError
    from diag.generate.ray_engine import Worker

    worker = Worker(load_spec(reference[0]), "cpu", str(tmp_path / "out"), 0, os.getcwd())
    with pytest.raises(DiagError, match="must be on a file system every machine"):
        worker.run((0, 8), False)
    assert not (tmp_path / "out" / "images").exists()


@needs_ray
@pytest.mark.parametrize(("address", "match"), [
    ("127.0.0.1:1", "no Ray cluster answers there"),
    ("head:port", "write it as HOST:PORT"),
])
def test_a_ray_address_without_a_cluster_is_one_line(reference, tmp_path: Path, cli,
                                                     address: str, match: str) -> None:
    code, _, err = cli("generate", reference[0], "--out", tmp_path / "o", "--engine", "ray",
                       "--address", address)
    assert code == 2 and f"--address {address}: {match}" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
