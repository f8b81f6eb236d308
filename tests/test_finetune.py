"""diag finetune: DreamBooth + LoRA (diffusers / peft) on a tiny random SD-1.5-architecture
pipeline and 4 real Magnetic-tile defects of the bundled example's training split, on CPU."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from diag.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "magnetic_tile"
# small and quick: 64 px, 4 instance images, 2 class images made in 2 steps, 1 CPU thread
SMALL = {"item": "magnetic tile", "instance_limit": 4, "num_class_images": 2, "class_steps": 2,
         "resolution": 64, "batch_size": 4, "threads": 1, "log_every": 0, "repeats": 1}


def write_config(folder: Path, model: Path, **extra: Any) -> Path:
    cfg = {"model": str(model),
           "dataset": {"root": str(EXAMPLE), "layout": "magnetic-tile", "split": "train"},
           **SMALL, **extra}
    path = folder / "finetune.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def assert_fully_loaded(pipe: Any, run: Path) -> None:
    """Every LoRA tensor of the run's adapter file is in the pipeline's UNet or text encoder,
    unchanged (a partly loaded adapter only warns)."""
    import re

    from safetensors.torch import load_file

    weights = load_file(str(run / "adapter" / "pytorch_lora_weights.safetensors"))
    adapter_name = re.compile(r"[.]lora_([AB])[.][^.]+[.]weight$")
    loaded = {name + "." + adapter_name.sub(r".lora_\1.weight", k): v
              for name in ("unet", "text_encoder")
              for k, v in getattr(pipe, name).state_dict().items() if ".lora_" in k}
    assert loaded.keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(loaded[k], v), k


def read_result(out: Path) -> dict[str, Any]:
    return json.loads((out / "finetune.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def overfit(tiny_text2img: Path, tmp_path_factory: pytest.TempPathFactory, one_thread: None
            ) -> Path:
    """30 steps on the same batch of 4 images, lr 1e-2 (an overfit case)."""
    from diag.cli import main

    folder = tmp_path_factory.mktemp("overfit")
    config = write_config(folder, tiny_text2img, lr=1e-2, max_steps=30, epochs=30)
    assert main(["finetune", str(config), "--out", str(folder / "run")]) == 0
    return folder / "run"


def test_tiny_text2img_model(tiny_text2img: Path, one_thread: None) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_text2img)
    assert pipe.unet.config.in_channels == 4 and pipe.safety_checker is None
    pipe.set_progress_bar_config(disable=True)
    image = pipe("magnetic tile", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_loss_falls_and_result_file(overfit: Path) -> None:
    result = read_result(overfit)
    losses = result["losses"]
    assert result["steps"] == 30 and len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert result["adapter"]["sha256"] == sha256_file(overfit / result["adapter"]["path"])
    data = result["data"]
    assert data["instance_images"] == 4 and data["class_images"] == 2
    assert data["class_images_generated_now"] == 2 and data["split"] == "train"
    assert data["instance_prompt"] == "sks magnetic tile" and data["class_prompt"] == "magnetic tile"
    # the instance images are real defects of the training split, never of the test split
    from diag.data.ref import DatasetRef

    test_ids = {s.id for s in DatasetRef(str(EXAMPLE), "magnetic-tile", "test").load()}
    train = {s.id: s.label for s in DatasetRef(str(EXAMPLE), "magnetic-tile", "train").load()}
    assert len(data["instance_ids"]) == 4
    assert all(train[i] == 1 for i in data["instance_ids"])
    assert not test_ids & set(data["instance_ids"])
    assert {"torch", "diffusers", "peft", "transformers"} <= set(result["versions"])
    assert result["config"]["rank"] == 32 and result["config"]["conv_rank"] == 4
    # the reference's (kohya) choices: text encoder LoRA, clip skip 2, 8-bit AdamW
    assert result["text_encoder"]["trained"] and result["text_encoder"]["clip_skip"] == 2
    assert result["text_encoder"]["trainable_parameters"] > 0
    assert result["optimizer"] == "adamw8bit"
    # aspect-ratio buckets (kohya's): whole images at their own shape, area <= 64 x 64
    assert sum(result["buckets"].values()) == 4
    for name in result["buckets"]:
        w, h = map(int, name.split("x"))
        assert w % 32 == 0 and h % 32 == 0 and w * h <= 64 * 64
    steps = sum(-(-n // 4) for n in result["buckets"].values())  # ceil(n x 1 repeat / 4)
    assert result["steps_per_epoch"] == steps
    assert (overfit / "finetune.log").read_text(encoding="utf-8").count("step ") >= 1


def test_adapter_has_attention_and_conv_lora(overfit: Path) -> None:
    from safetensors.torch import load_file

    weights = load_file(str(overfit / "adapter" / "pytorch_lora_weights.safetensors"))
    attn = [v for k, v in weights.items() if k.endswith("attn1.to_q.lora_A.weight")]
    conv = [v for k, v in weights.items() if k.endswith("resnets.0.conv1.lora_A.weight")]
    assert attn and all(v.shape[0] == 32 for v in attn)
    assert conv and all(v.shape[0] == 4 and v.ndim == 4 for v in conv)


def test_adapter_loads_and_changes_generation(overfit: Path, tiny_text2img: Path,
                                              one_thread: None) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_text2img)
    pipe.set_progress_bar_config(disable=True)

    def generate() -> np.ndarray:
        return pipe("sks magnetic tile", num_inference_steps=2, height=64, width=64,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    base = generate()
    assert np.array_equal(base, generate())  # fixed seed: the same image
    pipe.load_lora_weights(overfit / "adapter")
    assert_fully_loaded(pipe, overfit)
    config = next(iter(pipe.unet.peft_config.values()))
    assert (config.r, config.lora_alpha) == (32, 16)  # ranks and alphas travel with the file
    assert set(config.alpha_pattern.values()) == {1.0}
    assert np.abs(generate() - base).max() > 1e-3


def test_resume_continues_the_same_run(tiny_text2img: Path, tmp_path: Path, cli: Any,
                                       one_thread: None) -> None:
    config = write_config(tmp_path, tiny_text2img, lr=1e-3, epochs=10, checkpoint_every=2)
    out = tmp_path / "run"
    code, _, err = cli("finetune", config, "--out", out, "--set", "max_steps=3")
    assert code == 0, err
    first = read_result(out)
    assert first["steps"] == 3 and not first["finished"] and first["resumed_from"] is None
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000003"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "class_images").iterdir()}

    code, _, err = cli("finetune", config, "--out", out, "--set", "max_steps=6")
    assert code == 0, err
    second = read_result(out)
    assert second["steps"] == 6 and second["resumed_from"] == 3
    assert second["losses"][:3] == first["losses"]
    assert second["data"]["class_images_generated_now"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "class_images").iterdir()} == stamps

    # the same 6 steps without the interruption: the same losses
    whole = tmp_path / "whole"
    code, _, err = cli("finetune", config, "--out", whole, "--set", "max_steps=6")
    assert code == 0, err
    assert np.allclose(read_result(whole)["losses"], second["losses"], rtol=1e-5, atol=1e-6)

    # a changed config is another run: refused in one line, unless --overwrite
    code, _, err = cli("finetune", config, "--out", out, "--set", "lr=1e-4")
    assert code == 2 and err.count("\n") == 1 and "'lr'" in err and "--overwrite" in err
    code, _, err = cli("finetune", config, "--out", out, "--set", "lr=1e-4", "--set",
                       "max_steps=1", "--overwrite")
    assert code == 0, err
    assert read_result(out)["steps"] == 1 and read_result(out)["resumed_from"] is None


@pytest.mark.parametrize("split", ["test", "all"])
def test_test_split_is_refused(tiny_text2img: Path, tmp_path: Path, cli: Any, split: str) -> None:
    config = write_config(tmp_path, tiny_text2img)
    code, out, err = cli("finetune", config, "--out", tmp_path / "run", "--set",
                         f"dataset.split={split}")
    assert code == 2 and err.count("\n") == 1, err
    assert "dataset.split" in err and "train" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "expect"), [
    ("rnak=4", "did you mean 'rank'"),
    ("lr=-1", "lr must be > 0"),
    ("resolution=60", "multiple of 8"),
    ("lr_scheduler=bogus", "lr_scheduler is 'bogus'"),
    ("item=", "item is missing"),
])
def test_bad_config_is_one_line(tiny_text2img: Path, tmp_path: Path, cli: Any, override: str,
                                expect: str) -> None:
    config = write_config(tmp_path, tiny_text2img)
    code, _, err = cli("finetune", config, "--out", tmp_path / "run", "--set", override)
    assert code == 2 and err.count("\n") == 1 and expect in err, err
    assert str(config) in err


def test_missing_model_is_one_line(tmp_path: Path, cli: Any) -> None:
    config = write_config(tmp_path, tmp_path / "no-such-model")
    code, _, err = cli("finetune", config, "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err, err


def test_kill_9_then_rerun_finishes_the_same_run(tiny_text2img: Path, tmp_path: Path,
                                                  cli: Any, one_thread: None) -> None:
    """kill -9 a real `diag finetune` process after its second checkpoint, rerun: it resumes
    from the last checkpoint, leaves no temporary file, and ends with the losses and adapter
    of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    steps = 6
    config = write_config(tmp_path, tiny_text2img, lr=1e-3, epochs=steps, max_steps=steps,
                          checkpoint_every=1)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "diag", "finetune", str(config), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(p.name >= "step-0000002" for p in (out / "checkpoints").glob("step-*")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "finetune.json").exists()

    code, _, err = cli("finetune", config, "--out", out)
    assert code == 0, err
    resumed = read_result(out)
    assert resumed["steps"] == steps
    assert resumed["resumed_from"] is not None and 2 <= resumed["resumed_from"] < steps
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or ".old" in p.name]
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{steps:07d}"]

    whole = tmp_path / "whole"
    code, _, err = cli("finetune", config, "--out", whole)
    assert code == 0, err
    reference = read_result(whole)
    assert np.allclose(resumed["losses"], reference["losses"], rtol=1e-5, atol=1e-6)
    from safetensors.torch import load_file

    a = load_file(str(out / "adapter" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(whole / "adapter" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


def test_inpainting_mode_trains_and_the_diffusion_generator_uses_the_adapter(
        tiny_model: Path, tmp_path: Path, cli: Any, one_thread: None) -> None:
    """mode: inpainting on the tiny SDXL-inpainting pipeline: the loss falls on an overfit
    case; `diag generate` with the adapter (a path relative to the spec) paints other pixels
    inside the same masks, leaves every pixel outside them as the source's, and records the
    adapter's hash."""
    from diag.data.manifest import read_manifest
    from diag.imageio import read_image, read_mask

    config = write_config(tmp_path, tiny_model, mode="inpainting", num_class_images=3, repeats=10,
                          lr=1e-2, max_steps=30, epochs=30, random_flip=True)
    code, _, err = cli("finetune", config, "--out", tmp_path / "ft")
    assert code == 0, err
    result = read_result(tmp_path / "ft")
    assert result["mode"] == "inpainting"
    assert result["pipeline"] == "StableDiffusionXLInpaintPipeline"
    assert np.mean(result["losses"][-5:]) < np.mean(result["losses"][:5])
    data = result["data"]
    assert data["instance_images"] == 4 and data["class_images"] == 3
    assert result["steps_per_epoch"] == 10  # 4 images x 10 repeats (the default) / batch 4
    assert not result["text_encoder"]["trained"]  # SDXL: two text encoders, frozen
    assert data["class_images_generated_now"] == 0  # real defect-free images, not generated
    assert all(i.startswith("MT_Free/") for i in data["class_ids"])
    assert len(data["window_sides"]) == 4 and min(data["window_sides"]) >= 64

    def spec(name: str, **generator: Any) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "dataset": {"root": str(EXAMPLE), "layout": "magnetic-tile", "split": "train"},
            "regions": {"source": "real-masks"},
            "defects": [{"name": "crack", "prompt": "sks magnetic tile", "count": 2}],
            "generator": {"kind": "diffusion", "model": str(tiny_model), "steps": 3,
                          "resolution": 128, **generator},
            "seed": 1}))
        return path

    for name, extra in (("zero", {}), ("full", {"adapter": "ft"})):
        code, _, err = cli("generate", spec(name, **extra), "--out", tmp_path / name)
        assert code == 0, err
    from diag.generators import make_generator

    gen = make_generator("diffusion", {"model": str(tiny_model), "adapter": str(tmp_path / "ft")})
    assert_fully_loaded(gen.pipe, tmp_path / "ft")
    # an adapter whose layers only partly match the model is refused, not half loaded
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from diag.errors import DiagError

    file = tmp_path / "ft" / "adapter" / "pytorch_lora_weights.safetensors"
    for name, renames in (("half", {".lora_A.": ".lora.down."}),  # a weight missing
                          ("mixed", {".lora_A.": ".lora.down.", ".lora_B.": ".lora.up."})):
        weights = {}
        for k, v in load_file(str(file)).items():
            for a, b in renames.items():
                k = k.replace(a, b) if "attn" in k else k
            weights[k] = v
        (tmp_path / name).mkdir()
        save_file(weights, str(tmp_path / name / file.name),
                  metadata=safe_open(str(file), "pt").metadata())
        with pytest.raises(DiagError, match="do not all match the model"):
            make_generator("diffusion", {"model": str(tiny_model), "adapter": str(tmp_path / name)})
    zero, full = read_manifest(tmp_path / "zero"), read_manifest(tmp_path / "full")
    assert "adapter" not in zero[0]
    assert full[0]["adapter_sha256"] == result["adapter"]["sha256"]
    assert full[0]["lora_scale"] == 1.0
    for a, b in zip(zero, full, strict=True):
        assert a["source"] == b["source"] and a["seed"] == b["seed"]
        mask = read_mask(tmp_path / "full" / b["mask"])
        assert np.array_equal(mask, read_mask(tmp_path / "zero" / a["mask"]))
        img_a, img_b = read_image(tmp_path / "zero" / a["image"]), read_image(
            tmp_path / "full" / b["image"])
        assert np.array_equal(img_a[~mask], img_b[~mask])
        assert not np.array_equal(img_a[mask], img_b[mask])


def test_mode_and_model_must_agree(tiny_model: Path, tiny_text2img: Path, tmp_path: Path,
                                   cli: Any) -> None:
    code, _, err = cli("finetune", write_config(tmp_path, tiny_model), "--out", tmp_path / "a")
    assert code == 2 and err.count("\n") == 1 and "set mode: inpainting" in err
    config = write_config(tmp_path, tiny_text2img, mode="inpainting")
    code, _, err = cli("finetune", config, "--out", tmp_path / "b")
    assert code == 2 and err.count("\n") == 1 and "not an inpainting pipeline" in err
    code, _, err = cli("finetune", write_config(tmp_path, tiny_model, mode="outpainting"),
                       "--out", tmp_path / "c")
    assert code == 2 and "mode is 'outpainting'" in err


@pytest.mark.parametrize("name", ["finetune.yaml", "finetune_inpainting.yaml"])
def test_example_configs_are_valid(name: str) -> None:
    """The example configs parse and validate, with their defaults: the reference's."""
    from diag.finetune.config import load_config

    cfg = load_config(ROOT / "examples" / name)
    assert cfg.dataset is not None and cfg.dataset.split == "train"
    assert cfg.instance_prompt == "sks magnetic tile" and cfg.class_prompt == "magnetic tile"
    assert (cfg.rank, cfg.alpha, cfg.conv_rank, cfg.conv_alpha, cfg.lr) == (32, 16, 4, 1, 1e-5)
    assert (cfg.batch_size, cfg.epochs, cfg.repeats, cfg.seed) == (12, 50, 10, 1234)
    assert cfg.optimizer == "adamw8bit" and cfg.lr_scheduler == "cosine_with_restarts"
    if cfg.mode == "text2img":
        assert cfg.skip == 2 and (cfg.bucket_min, cfg.bucket_max, cfg.bucket_step) == (256, 1024, 64)
    else:
        assert cfg.skip == 1 and cfg.resolution == 1024
