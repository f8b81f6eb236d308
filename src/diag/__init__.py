"""diag: training-free, in-distribution defect image generation (DIAG) for visual inspection."""

__version__ = "0.1.0"
