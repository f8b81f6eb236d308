"""``diag finetune CONFIG --out DIR``: DreamBooth + LoRA fine-tuning of a text-to-image model on
the real defects of a training split (the In&Out baseline; see docs/finetune.md)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="DreamBooth + LoRA fine-tuning (the In&Out baseline)",
                       description="Fine-tune a Stable Diffusion text-to-image model with "
                                   "DreamBooth + LoRA (diffusers / peft) on the defective images "
                                   "of a dataset's training split, with prior preservation on "
                                   "class images the base model generates. Writes OUT/adapter/ "
                                   "(load with pipe.load_lora_weights) and OUT/finetune.json. "
                                   "Rerun the same command to resume.")
    p.add_argument("config", help="YAML fine-tuning config (see docs/finetune.md)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set max_steps=100 (repeatable)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh when --out holds a run with another config")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.finetune.config import load_config
    from diag.finetune.train import finetune

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config, overrides)
    result = finetune(cfg, args.out, overwrite=args.overwrite)
    state = "finished" if result["finished"] else "stopped at max_steps (rerun with a larger " \
                                                   "max_steps to continue)"
    print(f"{result['steps']}/{result['total_steps']} steps ({state}), final loss "
          f"{result['final_loss']:.4f}, adapter {args.out}/{result['adapter']['path']}")
    return 0
