"""benchmarks/bench_sdxl.py at its reduced size on the CPU: every field of its result, and the
full-size configs against the published models' parameter counts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sdxl.py"
WAY_FIELDS = {"name", "batch", "dtype", "attention", "prompt_cache", "compile", "channels_last",
              "images", "warmup_s", "seconds", "images_per_s", "s_per_image",
              "peak_gpu_memory_gib", "model_size", "x_floor", "speedup"}
FIELDS = {"size", "side", "steps", "guidance_scale", "strength", "machine", "params",
          "unet_flops_per_call", "unet_calls_per_image", "unet_flops_per_image", "matmul_dtype",
          "matmul_tflops", "floor_s_per_image", "ways", "goal"}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_sdxl", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_run_on_cpu_reports_every_field(bench: ModuleType, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    result = bench.main(["--small", "--device", "cpu", "--side", "64", "--steps", "2",
                         "--images", "2", "--batch", "2", "--threads", "1",
                         "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")])
    assert torch.get_num_threads() == threads, "the thread count is restored"
    out = capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(result))
    assert set(result) >= FIELDS
    assert [w["name"] for w in result["ways"]] == ["reference", "diag"]
    for way in result["ways"]:
        assert set(way) >= WAY_FIELDS, WAY_FIELDS - set(way)
        assert way["images"] == 2 and way["s_per_image"] > 0 and way["x_floor"] > 0
        assert way["model_size"] == [64, 64], "both ways run the model at the same size"
        assert way["peak_gpu_memory_gib"] is None, "no GPU"
    assert result["ways"][0]["speedup"] == 1.0
    assert result["unet_calls_per_image"] == 1  # int(2 steps x strength 0.99)
    assert result["unet_flops_per_image"] == 2 * result["unet_flops_per_call"]
    assert result["machine"]["device"] == "cpu" and result["machine"]["gpu"] is None
    assert result["goal"]["met"] is None, "the goal is judged on a full-size GPU run only"
    table = (tmp_path / "r.md").read_text()
    assert "| reference | 1 |" in table and "| diag | 2 |" in table and table in out


def test_full_size_configs_match_the_published_models(bench: ModuleType) -> None:
    assert bench.count_params(bench.configs(small=False)) == bench.PUBLISHED_PARAMS
    cfg = bench.configs(small=False)
    assert cfg["unet"]["in_channels"] == 9 and cfg["unet"]["cross_attention_dim"] == 2048
    assert cfg["text"]["hidden_size"] + cfg["text_2"]["hidden_size"] == 2048


def test_full_size_gpu_run_is_refused_on_a_cpu_in_one_line(bench: ModuleType) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--device", "cpu"])
    assert "--small" in str(exc.value) and "\n" not in str(exc.value)
