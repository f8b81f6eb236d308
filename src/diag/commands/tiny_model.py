"""``diag tiny-model DIR``: write a tiny random diffusers pipeline for dry runs and tests.

``--kind inpainting`` (default): the SDXL-inpainting architecture (``diag generate``);
``--kind text2img``: the Stable Diffusion 1.5 architecture (``diag finetune``).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiny-model", help="write a tiny random SDXL-inpainting (or SD 1.5) pipeline",
                       description="Write a few-MB randomly initialised pipeline (diffusers format) "
                                   "with the SDXL inpainting architecture (--kind inpainting, "
                                   "default), to dry-run specs and test the diffusion path without "
                                   "downloading weights, or with the Stable Diffusion 1.5 "
                                   "text-to-image architecture (--kind text2img), to test "
                                   "diag finetune.")
    p.add_argument("dir", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--kind", choices=("inpainting", "text2img"), default="inpainting",
                   help="inpainting: SDXL inpainting (diag generate); text2img: SD 1.5 "
                        "(diag finetune)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "kind", "inpainting") == "text2img":
        from diag.generators.diffusion.tiny import write_tiny_text2img

        path = write_tiny_text2img(args.dir, seed=args.seed)
        print(f"tiny SD-1.5 text-to-image pipeline written to {path} "
              f"(use: diag finetune CONFIG --set model={path})")
        return 0
    from diag.generators.diffusion.tiny import write_tiny_sdxl_inpainting

    path = write_tiny_sdxl_inpainting(args.dir, seed=args.seed)
    print(f"tiny SDXL-inpainting pipeline written to {path} "
          f"(use: --set generator.model={path})")
    return 0
