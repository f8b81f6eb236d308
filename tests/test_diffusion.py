"""The diffusion generator: reference defaults, what reaches the pipeline, `resize: paper` against
the reference script's own steps, and batches that do not change images."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diag.errors import DiagError
from diag.generators import Request, make_generator
from diag.generators.diffusion import DiffusionConfig, DiffusionGenerator, load_pipeline
from diag.generators.diffusion.pipeline import resolve_variant

REFERENCE_NEGATIVE = "smooth, plain, black, dark, shadow"


class RecordingPipeline:
    """Stands in for a diffusers SDXL-inpainting pipeline: records every call's arguments and
    returns plain grey images of the asked size (the generator around it is under test)."""

    def __init__(self) -> None:
        self.unet = SimpleNamespace(config={"sample_size": 128})  # SDXL: 128 latents x 8
        self.vae_scale_factor = 8
        self.scheduler = SimpleNamespace()
        self.config = {"_name_or_path": ""}
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        n = len(kwargs["prompt"]) if isinstance(kwargs["prompt"], list) else 1
        size = (kwargs["width"], kwargs["height"])
        return SimpleNamespace(images=[Image.new("RGB", size, (200, 200, 200))] * n)


def _request(seed: int = 7, negative: str = REFERENCE_NEGATIVE, shape=(632, 224), box=None,
             prompt: str = "white marks on the wall") -> Request:
    image = np.random.default_rng(seed).integers(0, 120, shape, dtype=np.uint8)
    region = np.zeros(shape[:2], bool)
    t, b, l, r = box or (300, 330, 90, 100)
    region[t:b, l:r] = True
    return Request(image=image, region=region, seed=seed, prompt=prompt, negative_prompt=negative)


def _seed(generator) -> int:
    return generator.initial_seed()


def test_code_defaults_are_the_reference_settings() -> None:
    c = DiffusionConfig()
    assert c.model == "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
    assert (c.steps, c.guidance_scale, c.strength) == (30, 20.0, 0.99)
    assert c.padding_mask_crop == 2 and c.scheduler is None and c.resolution is None
    assert c.variant == "auto" and c.dtype == "auto"
    assert c.paper_overlay == "exact" and c.resize == "crop"


def test_paper_mode_calls_the_pipeline_as_the_reference() -> None:
    pipe = RecordingPipeline()
    gen = DiffusionGenerator(DiffusionConfig(resize="paper"), pipeline=pipe)
    req = _request()
    result = gen.generate(req)
    (call,) = pipe.calls
    assert call["prompt"] == "white marks on the wall"
    assert call["negative_prompt"] == REFERENCE_NEGATIVE
    assert (call["height"], call["width"]) == (1024, 1024)
    assert call["padding_mask_crop"] == 2
    assert (call["num_inference_steps"], call["guidance_scale"], call["strength"]) == (30, 20.0,
                                                                                        0.99)
    assert _seed(call["generator"]) == 7
    image, mask = call["image"], call["mask_image"]
    assert image.size == mask.size == (1024, 1024) and image.mode == mask.mode == "RGB"
    # the stretched mask, as the reference's PIL resize makes it: soft (bicubic) edges
    values = set(np.unique(np.asarray(mask)))
    assert {0, 255} <= values and len(values) > 2
    assert result.info["padding_mask_crop"] == 2 and result.info["model_size"] == [1024, 1024]
    x1, y1, x2, y2 = result.info["model_crop_box"]
    assert x2 - x1 == y2 - y1, "diffusers grows the crop to the square's aspect"


def test_crop_mode_call_and_negative_prompt_none_when_empty() -> None:
    pipe = RecordingPipeline()
    gen = DiffusionGenerator(DiffusionConfig(), pipeline=pipe)
    gen.generate(_request(seed=3, negative=""))
    (call,) = pipe.calls
    assert call["negative_prompt"] is None
    assert "padding_mask_crop" not in call
    assert (call["num_inference_steps"], call["guidance_scale"], call["strength"]) == (30, 20.0,
                                                                                        0.99)
    assert call["height"] % 64 == 0 and call["width"] % 64 == 0
    assert abs(call["height"] * call["width"] - 1024**2) < 0.5 * 1024**2
    assert _seed(call["generator"]) == 3


def test_batches_never_mix_samples_with_and_without_a_negative_prompt() -> None:
    pipe = RecordingPipeline()
    gen = DiffusionGenerator(DiffusionConfig(batch_size=4), pipeline=pipe)
    reqs = [_request(seed=i, negative="" if i % 2 else "dark") for i in range(5)]
    results = gen.generate_batch(reqs)
    assert len(results) == 5
    for call in pipe.calls:
        assert call["negative_prompt"] is None or all(call["negative_prompt"])
        seeds = [_seed(g) for g in (call["generator"] if isinstance(call["generator"], list)
                                    else [call["generator"]])]
        assert len({s % 2 for s in seeds}) == 1, "one call holds one kind of sample"
    assert sorted(_seed(g) for c in pipe.calls for g in (
        c["generator"] if isinstance(c["generator"], list) else [c["generator"]])) == list(range(5))


def test_paper_mode_calls_one_sample_at_a_time() -> None:
    pipe = RecordingPipeline()
    gen = DiffusionGenerator(DiffusionConfig(resize="paper", batch_size=3), pipeline=pipe)
    gen.generate_batch([_request(seed=i) for i in range(3)])
    assert len(pipe.calls) == 3 and all(isinstance(c["image"], Image.Image) for c in pipe.calls)


def test_thin_region_that_vanishes_in_the_square_is_an_error() -> None:
    gen = DiffusionGenerator(DiffusionConfig(resize="paper", resolution=64),
                             pipeline=RecordingPipeline())
    req = _request(shape=(2000, 2000), box=(1000, 1001, 500, 1500))  # 1 px high, 31x shrink
    with pytest.raises(DiagError, match="vanishes"):
        gen.generate(req)


def test_variant_auto_is_fp16_only_in_half_precision(tmp_path: Path) -> None:
    hub = DiffusionConfig()
    assert resolve_variant(hub, "cpu", None) is None
    assert resolve_variant(DiffusionConfig(dtype="float16"), "cpu", None) == "fp16"
    assert resolve_variant(DiffusionConfig(variant=None, dtype="float16"), "cpu", None) is None
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"")
    half = DiffusionConfig(dtype="float16")
    assert resolve_variant(half, "cpu", tmp_path) is None, "a folder without fp16 files"
    (tmp_path / "unet/diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert resolve_variant(half, "cpu", tmp_path) == "fp16"


def test_variant_auto_loads_a_folder_without_fp16_files(tiny_model: Path) -> None:
    pipe = load_pipeline(DiffusionConfig(model=str(tiny_model), dtype="float16"), "cpu")
    assert pipe.diag_variant is None and pipe.unet.dtype == torch.float16


# --- the real pipeline (a tiny random SDXL-inpainting model, loaded from disk) ----------------


@pytest.fixture(scope="module")
def tiny_pipe(tiny_model: Path):
    return load_pipeline(DiffusionConfig(model=str(tiny_model)), "cpu")


def _reference_way(pipe, image: np.ndarray, region: np.ndarray, prompt: str, negative: str,
                   seed: int, steps: int) -> np.ndarray:
    """generate_augmented_images.py of intelligolabs/DIAG, step for step, on arrays instead of
    files (load_image = convert to RGB; PIL's default resize; RES = the source's size)."""
    target = (256, 256)  # the tiny model's native side stands for the reference's 1024
    neg_img = Image.fromarray(image).convert("RGB").resize(target)
    mask = Image.fromarray(region.astype(np.uint8) * 255).convert("RGB").resize(target)
    out = pipe(prompt=prompt, negative_prompt=negative, image=neg_img, mask_image=mask,
               guidance_scale=20.0, num_inference_steps=steps, strength=0.99,
               generator=torch.Generator("cpu").manual_seed(seed), height=target[1],
               width=target[0], original_size=target, target_size=target,
               padding_mask_crop=2).images[0]
    return np.asarray(out.resize((image.shape[1], image.shape[0])))


def test_paper_diffusers_overlay_is_the_reference_output(tiny_pipe) -> None:
    req = _request(seed=11, shape=(632, 224, 3))
    gen = DiffusionGenerator(DiffusionConfig(resize="paper", paper_overlay="diffusers", steps=4),
                             pipeline=tiny_pipe)
    result = gen.generate(req)
    expected = _reference_way(tiny_pipe, req.image, req.region, req.prompt, req.negative_prompt,
                              11, 4)
    assert np.array_equal(result.image, expected), "byte for byte the reference's image"
    assert result.background == "resampled" and result.info["background"] == "resampled"
    assert np.array_equal(result.mask, req.region)
    assert (result.image != req.image)[~req.region].any(), "the reference resamples everything"


def test_paper_exact_overlay_keeps_the_background(tiny_pipe) -> None:
    req = _request(seed=11, shape=(632, 224, 3))
    exact = DiffusionGenerator(DiffusionConfig(resize="paper", steps=4), pipeline=tiny_pipe)
    ref = DiffusionGenerator(DiffusionConfig(resize="paper", paper_overlay="diffusers", steps=4),
                             pipeline=tiny_pipe)
    a, b = exact.generate(req), ref.generate(req)
    assert a.background == "exact"
    assert np.array_equal(a.image[~req.region], req.image[~req.region])
    assert np.array_equal(a.image[req.region], b.image[req.region]), "same defect pixels"


def test_grayscale_source_stays_grayscale_in_paper_mode(tiny_pipe) -> None:
    req = _request(seed=5, shape=(300, 200), box=(100, 130, 90, 100))
    for overlay in ("exact", "diffusers"):
        gen = DiffusionGenerator(DiffusionConfig(resize="paper", paper_overlay=overlay, steps=2),
                                 pipeline=tiny_pipe)
        assert gen.generate(req).image.shape == (300, 200)


def test_pipeline_treats_no_negative_prompt_and_an_empty_one_differently(tiny_pipe) -> None:
    """Why samples with and without a negative prompt never share a call: SDXL encodes None as
    zeros and "" as text, so the same sample would change with its batch-mates."""
    image = Image.new("RGB", (128, 128), (90, 90, 90))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (40, 40, 90, 90))
    kw = {"prompt": "a crack", "image": image, "mask_image": mask, "height": 128, "width": 128,
          "num_inference_steps": 3, "strength": 0.99, "output_type": "np"}
    none = tiny_pipe(negative_prompt=None, generator=torch.Generator().manual_seed(0), **kw)
    empty = tiny_pipe(negative_prompt="", generator=torch.Generator().manual_seed(0), **kw)
    assert not np.allclose(none.images, empty.images)


def test_a_sample_does_not_depend_on_its_batch_mates(tiny_model: Path) -> None:
    """Mixed defect types, prompts and negative prompts (some empty): batch size 3 against 1.
    Masks are identical; images differ by at most 1 grey level (float rounding of batched
    kernels; measured on this 2-core CPU: max 1, most samples 0)."""
    rng = np.random.default_rng(0)
    prompts = ["a thin dark crack", "white marks on the wall", "copper metal scratches"]
    negatives = ["", REFERENCE_NEGATIVE, "dark", "", "smooth, plain", ""]
    reqs = []
    for i in range(6):
        region = np.zeros((160, 240), bool)
        region[60:80, 100:140] = True
        reqs.append(Request(image=rng.integers(0, 255, (160, 240), dtype=np.uint8),
                            region=region, seed=1000 + i, prompt=prompts[i % 3],
                            negative_prompt=negatives[i], defect=f"d{i % 3}"))
    base = {"model": str(tiny_model), "steps": 6, "resolution": 128}
    solo = make_generator("diffusion", base)
    batched = make_generator("diffusion", {**base, "batch_size": 3})
    alone = [solo.generate(r) for r in reqs]
    together = batched.generate_batch(reqs)
    assert [r.info["batch"] for r in together] == [3] * 6
    for a, b in zip(alone, together, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    # a different mix of batch-mates (reversed order, shifted groups) gives the same images
    again = batched.generate_batch(reqs[::-1])[::-1]
    for a, b in zip(alone, again, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_config_fields_are_all_documented() -> None:
    doc = DiffusionConfig.__doc__ or ""
    missing = [f.name for f in dataclasses.fields(DiffusionConfig) if f"{f.name}:" not in doc]
    assert not missing
