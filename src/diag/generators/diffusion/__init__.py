"""Zero-shot defect inpainting with a pretrained latent-diffusion model (the DIAG method).

* :mod:`~diag.generators.diffusion.generator`: the generator and its parameters;
* :mod:`~diag.generators.diffusion.pipeline`: loading a diffusers pipeline (hub or folder);
* :mod:`~diag.generators.diffusion.window`: ``resize: crop``, a window around the region;
* :mod:`~diag.generators.diffusion.paper`: ``resize: paper``, the reference code's way;
* :mod:`~diag.generators.diffusion.tiny`: a tiny random SDXL-inpainting pipeline for tests.
"""

from diag.generators.diffusion.generator import DiffusionConfig, DiffusionGenerator
from diag.generators.diffusion.pipeline import DEFAULT_MODEL, load_pipeline

__all__ = ["DEFAULT_MODEL", "DiffusionConfig", "DiffusionGenerator", "load_pipeline"]
