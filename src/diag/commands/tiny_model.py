"""``diag tiny-model DIR``: write a tiny random SDXL-inpainting pipeline for dry runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random SDXL-inpainting pipeline",
                       description="Write a ~9 MB randomly initialised pipeline with the SDXL "
                                   "inpainting architecture (diffusers format), to dry-run specs "
                                   "and test the diffusion path without downloading weights.")
    p.add_argument("dir", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.generators.diffusion.tiny import write_tiny_sdxl_inpainting

    path = write_tiny_sdxl_inpainting(args.dir, seed=args.seed)
    print(f"tiny SDXL-inpainting pipeline written to {path} "
          f"(use: --set generator.model={path})")
    return 0
