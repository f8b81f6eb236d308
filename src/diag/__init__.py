"""diag: training-free, in-distribution defect image generation (DIAG) for visual inspection."""

import logging as _logging

__version__ = "0.1.0"

# bitsandbytes (the 8-bit AdamW of diag finetune; peft imports it too) warns on import that an
# optional CPU kernel package is missing: noise on every command that loads a LoRA
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)
