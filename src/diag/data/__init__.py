"""Datasets: every layout is read into one list of :class:`Sample`."""

from diag.data.layouts import READERS, counts, describe, detect_layout, load_dataset
from diag.data.ref import DatasetRef
from diag.data.sample import Sample

__all__ = ["READERS", "DatasetRef", "Sample", "counts", "describe", "detect_layout", "load_dataset"]
