"""Fine-tuning speed of ``diag finetune`` (DreamBooth + LoRA): steps per second.

CPU: the tiny SD-1.5-architecture pipeline (``diag tiny-model --kind text2img``) at 64 px,
batch 4 (+4 class images), 1 thread; and ``mode: inpainting`` on the tiny SDXL-inpainting
pipeline (``diag tiny-model``), the same sizes. CUDA (when present): the full Stable
Diffusion 1.5 architecture built from its published configs with random weights (no
download: the compute cost is that of the real model), 512 px, batch 12 (+12 class images),
fp16, gradient checkpointing, the reference's LoRA (rank 32 / alpha 16, conv 4 / 1); and
``mode: inpainting`` on the full SDXL-inpainting architecture (``bench_sdxl.py``'s configs),
1024 px, batch 2 (+2 class images).

    .venv/bin/python benchmarks/bench_finetune.py   # writes benchmarks/RESULTS-finetune.md
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from diag.cli import main  # noqa: E402
from diag.generators.diffusion.tiny import build_sd15  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))

# Stable Diffusion 1.5's published sub-model configs (unet/, vae/, text_encoder/ config.json)
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "attention_head_dim": 8,
    "cross_attention_dim": 768, "norm_num_groups": 32,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD15_VAE = {
    "block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "in_channels": 3,
    "out_channels": 3, "norm_num_groups": 32, "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD15_TEXT = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "num_hidden_layers": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
}
EXAMPLE = ROOT / "examples" / "magnetic_tile"


def run(model: Path, work: Path, steps: int, **cfg: object) -> dict:
    config = {"model": str(model), "item": "magnetic tile", "log_every": 1e9,
              "dataset": {"root": str(EXAMPLE), "layout": "magnetic-tile", "split": "train"},
              **cfg}
    path = work / "cfg.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out = work / "run"
    # warm-up (class images, first steps), then the timed continuation of the same run
    assert main(["finetune", str(path), "--out", str(out), "--set", "max_steps=2"]) == 0
    before = json.loads((out / "finetune.json").read_text())["seconds"]
    start = time.monotonic()
    assert main(["finetune", str(path), "--out", str(out), "--set", f"max_steps={steps + 2}"]) == 0
    seconds = time.monotonic() - start
    result = json.loads((out / "finetune.json").read_text())
    return result | {"wall": seconds, "loop": result["seconds"] - before}


def main_bench() -> None:
    lines = ["# diag finetune: speed (DreamBooth + LoRA, diffusers / peft)", "",
             f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads available.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        assert main(["tiny-model", str(work / "tiny"), "--kind", "text2img"]) == 0
        steps = 40
        r = run(work / "tiny", work, steps, instance_limit=4, num_class_images=4, class_steps=2,
                resolution=64, batch_size=4, threads=1, epochs=1000, device="cpu")
        lines += ["## CPU, tiny SD-1.5-architecture model", "",
                  f"64 px, batch 4 instance + 4 class images, 1 thread, LoRA rank 32 / conv 4 "
                  f"({r['lora']['trainable_parameters']} trainable parameters): "
                  f"**{steps / r['loop']:.1f} steps/s** in the training loop ({steps} steps in "
                  f"{r['loop']:.2f} s; {steps / r['wall']:.1f} steps/s counting the whole "
                  "command: model load, resume, adapter write).", ""]
        assert main(["tiny-model", str(work / "tiny-sdxl")]) == 0
        (work / "inp").mkdir()
        r = run(work / "tiny-sdxl", work / "inp", steps, mode="inpainting", instance_limit=4,
                num_class_images=4, resolution=64, batch_size=4, threads=1, epochs=1000,
                device="cpu")
        lines += ["## CPU, tiny SDXL-inpainting model, `mode: inpainting`", "",
                  f"64 px windows around the defects, batch 4 instance + 4 class (defect-free) "
                  f"images, 1 thread, LoRA rank 32 / conv 4 "
                  f"({r['lora']['trainable_parameters']} trainable parameters): "
                  f"**{steps / r['loop']:.1f} steps/s** in the training loop ({steps} steps in "
                  f"{r['loop']:.2f} s; {steps / r['wall']:.1f} steps/s counting the whole "
                  "command).", ""]
    if torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            pipe = build_sd15(SD15_UNET, SD15_VAE, SD15_TEXT, seed=0)
            pipe.save_pretrained(work / "sd15")
            steps = 20
            r = run(work / "sd15", work, steps, num_class_images=12, class_steps=2,
                    batch_size=12, device="cuda")
            lines += [f"## CUDA ({torch.cuda.get_device_name()}), full SD 1.5 architecture, "
                      "random weights", "",
                      f"512 px, batch 12 + 12 class images, {r['precision']}, gradient "
                      f"checkpointing {r['gradient_checkpointing']}: "
                      f"**{steps / r['loop']:.2f} steps/s** in the training loop.", ""]
        with tempfile.TemporaryDirectory() as tmp:
            from bench_sdxl import build, configs

            work = Path(tmp)
            build(configs(small=False), "cpu", torch.float32).save_pretrained(work / "sdxl")
            steps = 10
            r = run(work / "sdxl", work, steps, mode="inpainting", num_class_images=2,
                    batch_size=2, resolution=1024, device="cuda")
            lines += [f"## CUDA ({torch.cuda.get_device_name()}), full SDXL-inpainting "
                      "architecture, random weights, `mode: inpainting`", "",
                      f"1024 px, batch 2 + 2 class images, {r['precision']}, gradient "
                      f"checkpointing {r['gradient_checkpointing']}: "
                      f"**{steps / r['loop']:.2f} steps/s** in the training loop.", ""]
    else:
        lines += ["## GPU", "", "Unmeasured: no CUDA device on this machine. On one, this script "
                  "builds the full SD 1.5 architecture with random weights (the real model's "
                  "compute cost, no download) and measures 512 px, batch 12 + 12, fp16; and "
                  "mode: inpainting on the full SDXL-inpainting architecture, 1024 px, batch "
                  "2 + 2.", ""]
    text = "\n".join(lines)
    (ROOT / "benchmarks" / "RESULTS-finetune.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main_bench()
