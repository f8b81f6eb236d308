"""Defect generators, one module each, all behind :class:`~diag.generators.base.Generator`."""

from diag.generators.base import (
    GENERATORS,
    Generator,
    GeneratorError,
    Request,
    Result,
    generator_config,
    make_generator,
    register,
)

__all__ = ["GENERATORS", "Generator", "GeneratorError", "Request", "Result", "generator_config",
           "make_generator", "register"]

# Built-in generators register themselves on import.
from diag.generators import (
    copy_paste,  # noqa: E402,F401
    cutpaste,  # noqa: E402,F401
    diffusion,  # noqa: E402,F401
    draem,  # noqa: E402,F401
    memseg,  # noqa: E402,F401
    nsa,  # noqa: E402,F401
    text2img,  # noqa: E402,F401
)
