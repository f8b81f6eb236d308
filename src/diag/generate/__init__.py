"""The generation stage: spec -> plan -> samples -> files and manifest.

* :mod:`~diag.generate.spec`: the YAML spec, validated;
* :mod:`~diag.generate.plan`: which samples, images and seeds (pure);
* :mod:`~diag.generate.sample`: one sample through a generator, checked (no files);
* :mod:`~diag.generate.runner`: the output folder: files, manifest, resume, shards, locks;
* :mod:`~diag.generate.sheet`: contact sheets of output folders.
"""

from diag.generate.plan import PlanItem, make_plan, parse_shard, sample_seed, shard_of
from diag.generate.runner import RunSummary, run_spec
from diag.generate.sample import Inputs, Made, generate_one, load_inputs
from diag.generate.spec import Spec, load_spec, parse_spec

__all__ = ["Inputs", "Made", "PlanItem", "RunSummary", "Spec", "generate_one", "load_inputs",
           "load_spec", "make_plan", "parse_shard", "parse_spec", "run_spec", "sample_seed",
           "shard_of"]
