"""Metrics: detection scores of the classifier (:mod:`diag.metrics.detection`) and fidelity of
generated images."""
