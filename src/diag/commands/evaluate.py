"""``diag evaluate RUN_DIR|CHECKPOINT --data ROOT``: score a trained classifier on a dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a trained classifier on a dataset",
                       description="Score any dataset layout diag reads with a trained model: "
                                   "AP, AUROC, precision/recall/F1 at the model's threshold, "
                                   "best-F1 (optimistic), confusion counts; writes "
                                   "metrics.json, scores.csv and pr_curve.png. Data the model "
                                   "trained on (per the run's training_files.json) is refused "
                                   "unless --allow-overlap is given.")
    p.add_argument("checkpoint", help="run folder (uses its model.pt) or a .pt file")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--layout", default="auto",
                   help="ksdd2, mvtec, magnetic-tile, folder, generated or auto (default)")
    p.add_argument("--split", default="test", help="train, test or all (default: test)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset options, e.g. --set test_fraction=0.3 --set masks=gt")
    p.add_argument("--out", default=None,
                   help="output folder (default: RUN_DIR/eval-<data folder name>-<split>)")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the logit (default: the model's)")
    p.add_argument("--seeds", default=None, metavar="S,S,...|all",
                   help="evaluate RUN_DIR/seed-<s> runs (from diag train --seeds); mean and std")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch")
    p.add_argument("--allow-overlap", action="store_true",
                   help="score the data even if the model trained on some of it (or on images "
                        "generated from it); the overlap is recorded in metrics.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.classify.evaluate import evaluate, evaluate_seeds
    from diag.commands.train import parse_seeds
    from diag.config import apply_overrides, from_dict
    from diag.data import DatasetRef

    raw = apply_overrides({"root": args.data, "layout": args.layout, "split": args.split},
                          args.overrides)
    data = from_dict(DatasetRef, raw, "--data/--set")
    ckpt = Path(args.checkpoint)
    base = ckpt if ckpt.is_dir() else ckpt.parent
    out = args.out or base / f"eval-{Path(args.data).resolve().name}-{args.split}"
    kw = {"device": args.device, "threshold": args.threshold, "batch_size": args.batch_size,
          "allow_overlap": args.allow_overlap}
    if args.seeds is not None or (ckpt.is_dir() and not (ckpt / "model.pt").exists()
                                  and any(ckpt.glob("seed-*/model.pt"))):
        seeds = None if args.seeds in (None, "all") else parse_seeds(args.seeds)
        summary = evaluate_seeds(ckpt, data, out, seeds, **kw)
        for name, m in summary["metrics"].items():
            print(f"{name}: {m['mean']:.4f} +- {m['std']:.4f} (n={len(m['values'])})")
        print(f"summary: {out}/summary.json", file=sys.stderr)
        return 0
    m = evaluate(ckpt, data, out, **kw)
    at = m.get("at_threshold")
    line = f"AP {m['ap']:.4f}  AUROC " + (f"{m['auroc']:.4f}" if m["auroc"] is not None else "n/a")
    if at:
        line += (f"  P {at['precision']:.4f}  R {at['recall']:.4f}  F1 {at['f1']:.4f}  "
                 f"(tp {at['tp']} fp {at['fp']} tn {at['tn']} fn {at['fn']})")
    print(f"{m['n']} images ({m['positives']} defective): {line}")
    if m["overlap"].get("allowed"):
        from diag.classify.leakage import describe

        print(f"warning: the model trained on some of this data (--allow-overlap): "
              f"{describe(m['overlap']['found'], 'evaluated')}", file=sys.stderr)
    print(f"outputs: {out} (metrics.json, scores.csv, pr_curve.png)", file=sys.stderr)
    return 0
