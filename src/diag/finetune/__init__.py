"""DreamBooth + LoRA fine-tuning of a text-to-image diffusion model (the In&Out baseline).

``diag finetune CONFIG --out DIR`` teaches a Stable Diffusion model the real defective images
of a training split ("sks magnetic tile"), with prior preservation on class images the base
model generates itself, and writes a LoRA adapter that ``pipe.load_lora_weights`` loads. See
``docs/finetune.md``.
"""
