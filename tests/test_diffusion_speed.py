"""The diffusion generator's speed and memory options on the tiny SDXL-inpainting pipeline:
cached prompt embeddings, low_vram on a CPU, attention, compile and channels_last defaults,
the window-size policy, peak GPU memory in the manifest info, and batches."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from diag.errors import DiagError
from diag.generators import Request, make_generator
from diag.generators.base import generator_config
from diag.generators.diffusion import DiffusionConfig, DiffusionGenerator, load_pipeline
from diag.generators.diffusion.window import choose_window, plan_window

NEGATIVE = "smooth, plain, black, dark, shadow"


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model: Path):
    return load_pipeline(DiffusionConfig(model=str(tiny_model)), "cpu")


def _requests(n: int = 6, shape=(160, 240, 3), box=(60, 80, 100, 140)) -> list[Request]:
    """Two prompts, negative prompts present and absent: 5 distinct (prompt, negative) pairs."""
    rng = np.random.default_rng(0)
    prompts = ["a thin dark crack", "white marks on the wall"]
    negatives = ["", NEGATIVE, "dark", "", NEGATIVE, ""]
    out = []
    for i in range(n):
        region = np.zeros(shape[:2], bool)
        t, b, l, r = box
        region[t:b, l:r] = True
        out.append(Request(image=rng.integers(0, 255, shape, dtype=np.uint8), region=region,
                           seed=100 + i, prompt=prompts[i % 2],
                           negative_prompt=negatives[i % len(negatives)]))
    return out


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_pre_hook(hook)
    return calls


def test_speed_defaults_keep_the_reference_behaviour() -> None:
    c = DiffusionConfig()
    assert c.compile is False and c.channels_last is False and c.low_vram is False
    assert c.attention == "auto" and c.dtype == "auto" and c.window_sizes is None
    assert c.prompt_cache is True  # same images (checked below), text encoders run once


@pytest.mark.parametrize("params", [{}, {"batch_size": 3}, {"resize": "paper"}],
                         ids=["crop", "crop-batched", "paper"])
def test_cached_prompt_embeddings_give_identical_images(tiny_pipe, params: dict) -> None:
    config = {"steps": 2, "resolution": 128, **params}
    fresh = DiffusionGenerator(DiffusionConfig(**config, prompt_cache=False), pipeline=tiny_pipe)
    cached = DiffusionGenerator(DiffusionConfig(**config), pipeline=tiny_pipe)
    calls = [0]

    def count(*_):
        calls[0] += 1

    handle = tiny_pipe.text_encoder_2.register_forward_pre_hook(count)
    try:
        reqs = _requests()
        a = fresh.generate_batch(reqs)
        encoded_fresh, calls[0] = calls[0], 0
        b = cached.generate_batch(reqs)
        encoded_cached, calls[0] = calls[0], 0
        again = cached.generate_batch(reqs)
    finally:
        handle.remove()
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image), "byte-identical images"
        assert np.array_equal(x.mask, y.mask)
    assert 0 < encoded_cached <= encoded_fresh, "each call's prompts encoded at most once"
    if params.get("batch_size", 1) == 1:  # samples 3 and 5 share their prompts
        assert encoded_cached < encoded_fresh
    assert calls[0] == 0, "prompts (lists of a call) seen before are never encoded again"
    assert np.array_equal(again[0].image, b[0].image)


def test_prompt_cache_passes_embeddings_to_the_pipeline(tiny_pipe, monkeypatch) -> None:
    seen: list[dict] = []
    original = type(tiny_pipe).__call__

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_pipe), "__call__", spy)
    gen = DiffusionGenerator(DiffusionConfig(steps=2, resolution=128, batch_size=2),
                             pipeline=tiny_pipe)
    reqs = _requests()
    gen.generate_batch([reqs[1], reqs[4]])  # both with a negative prompt: one call
    (call,) = seen
    assert "prompt" not in call and "negative_prompt" not in call
    assert call["prompt_embeds"].shape[0] == call["negative_prompt_embeds"].shape[0] == 2
    assert call["pooled_prompt_embeds"].shape[0] == 2


def test_low_vram_on_cpu_runs_and_says_it_is_ignored(tiny_model: Path, capsys) -> None:
    base = {"model": str(tiny_model), "steps": 2, "resolution": 128}
    low = make_generator("diffusion", {**base, "low_vram": True})
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "low_vram" in line]
    assert len(lines) == 1 and "ignored" in lines[0] and lines[0].startswith("warning: ")
    plain = make_generator("diffusion", base)
    req = _requests(1)[0]
    a, b = low.generate(req), plain.generate(req)
    assert np.array_equal(a.image, b.image), "ignored: nothing changes on the CPU"
    assert a.info["peak_gpu_memory_mib"] is None


def test_attention_is_sdpa_and_compile_is_off_by_default(tiny_model: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    gen = make_generator("diffusion", {"model": str(tiny_model), "steps": 2})
    for model in (gen.pipe.unet, gen.pipe.vae):
        assert {type(p) for p in model.attn_processors.values()} == {AttnProcessor2_0}
    assert not hasattr(gen.pipe.unet, "_orig_mod"), "not compiled"
    weight = gen.pipe.unet.conv_in.weight
    assert weight.is_contiguous(), "default memory layout"


def test_sliced_attention_and_channels_last_run(tiny_model: Path) -> None:
    gen = make_generator("diffusion", {"model": str(tiny_model), "steps": 2, "resolution": 128,
                                       "attention": "sliced", "channels_last": True})
    assert any("Sliced" in type(p).__name__ for p in gen.pipe.unet.attn_processors.values())
    assert gen.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    req = _requests(1)[0]
    result = gen.generate(req)
    assert result.image.shape == req.image.shape
    assert np.array_equal(result.image[~req.region], req.image[~req.region])


def test_window_policy_picks_a_smaller_side_for_a_small_defect() -> None:
    small = np.zeros((600, 800), bool)
    small[300:310, 400:420] = True
    window, side = choose_window(small, [1024, 768, 512])
    assert side == 512 and window.size == (512, 512)
    big = np.zeros((2000, 2000), bool)
    big[500:1500, 500:1500] = True
    window, side = choose_window(big, [1024, 768, 512])
    assert side == 1024, "a window larger than every side gets the largest"
    # one side is today's plan_window
    assert choose_window(small, [1024]) == (plan_window(small, 1024), 1024)


def test_window_sizes_in_the_generator_record_the_side_used(tiny_pipe) -> None:
    gen = DiffusionGenerator(DiffusionConfig(steps=2, window_sizes=[256, 128], batch_size=2),
                             pipeline=tiny_pipe)
    small = _requests(1, shape=(400, 400, 3), box=(200, 210, 200, 215))[0]
    large = _requests(1, shape=(400, 400, 3), box=(50, 350, 50, 350))[0]
    a, b = gen.generate_batch([small, large])
    assert a.info["model_side"] == 128 and a.info["model_size"] == [128, 128]
    assert b.info["model_side"] == 256
    assert a.info["batch"] == b.info["batch"] == 1, "different model sizes never share a call"
    default = DiffusionGenerator(DiffusionConfig(steps=2), pipeline=tiny_pipe)
    assert default.generate(small).info["model_side"] == 256, "the model's own side"


def test_batched_equals_one_by_one_with_the_speed_options(tiny_pipe) -> None:
    """Batches with cached embeddings and mixed window sides: each sample as made alone (the
    batch-mates test without these options is in test_diffusion.py)."""
    reqs = _requests(4, shape=(300, 300, 3), box=(100, 130, 100, 140))
    reqs += _requests(2, shape=(300, 300, 3), box=(20, 280, 20, 280))
    config = {"steps": 3, "window_sizes": [256, 128]}
    solo = DiffusionGenerator(DiffusionConfig(**config), pipeline=tiny_pipe)
    batched = DiffusionGenerator(DiffusionConfig(**config, batch_size=4), pipeline=tiny_pipe)
    alone = [solo.generate(r) for r in reqs]
    together = batched.generate_batch(reqs)
    assert max(r.info["batch"] for r in together) > 1
    assert {r.info["model_side"] for r in together} == {128, 256}
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


@pytest.mark.parametrize(("params", "field"), [
    ({"attention": "flash"}, "generator.attention"),
    ({"window_sizes": [1024, 500]}, "generator.window_sizes"),
    ({"window_sizes": []}, "generator.window_sizes"),
    ({"compile": "maybe"}, "generator.compile"),
])
def test_bad_speed_options_are_one_line_errors(params: dict, field: str) -> None:
    with pytest.raises(DiagError) as exc:
        generator_config("diffusion", params, "spec.yaml")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("spec.yaml") and field in message


def test_sdpa_replaces_plain_attention_processors(tiny_model: Path) -> None:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from diag.generators.diffusion.pipeline import prepare_pipeline

    pipe = load_pipeline(DiffusionConfig(model=str(tiny_model)), "cpu")
    pipe.unet.set_attn_processor(AttnProcessor())
    prepare_pipeline(pipe, DiffusionConfig(attention="sdpa"), "cpu")
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}


@pytest.mark.slow
def test_compile_runs_on_the_cpu(tiny_model: Path) -> None:
    """compile: true on the tiny model (about 2 minutes of compiling on 2 cores: slow)."""
    base = {"model": str(tiny_model), "steps": 2, "resolution": 128}
    compiled = make_generator("diffusion", {**base, "compile": True})
    assert hasattr(compiled.pipe.unet, "_orig_mod")
    req = _requests(1)[0]
    a, b = compiled.generate(req), make_generator("diffusion", base).generate(req)
    assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
