"""``diag train CONFIG --out RUN_DIR``: train the defect classifier and score it honestly."""

from __future__ import annotations

import argparse
import sys

from diag.errors import DiagError


def parse_seeds(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; also ranges ``"0-4"``."""
    if text is None:
        return None
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                seeds += list(range(int(a), int(b) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise DiagError(f"--seeds '{text}' is not a list of integers (e.g. --seeds 0,1,2)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise DiagError(f"--seeds '{text}' must list distinct integers (e.g. --seeds 0,1,2)")
    return seeds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the defect classifier",
                       description="Train the classifier on real negatives + generated (+ real) "
                                   "positives; pick the threshold on a validation split; score "
                                   "the test set. Writes config, metadata, checkpoints, "
                                   "metrics.json, scores.csv and pr_curve.png to --out.")
    p.add_argument("config", help="YAML training config (see docs/train.md)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="train one run per seed into OUT/seed-<s> and report mean and std")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: config)")
    p.set_defaults(func=run)


def _fmt(v: object) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    from diag.classify.config import load_train_config
    from diag.classify.train import train_run, train_seeds

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_train_config(args.config, overrides)
    seeds = parse_seeds(args.seeds)
    if seeds is not None:
        summary = train_seeds(cfg, args.out, seeds, resume=args.resume)
        for name, m in summary["metrics"].items():
            print(f"{summary['split']} {name}: {m['mean']:.4f} +- {m['std']:.4f} "
                  f"(n={len(m['values'])})")
        print(f"summary: {args.out}/summary.json", file=sys.stderr)
        return 0
    metrics = train_run(cfg, args.out, resume=args.resume)
    part = metrics.get("test") or metrics.get("validation") or {}
    name = "test" if "test" in metrics else "validation"
    at = part.get("at_threshold", {})
    print(f"{name}: AP {_fmt(part.get('ap'))}  AUROC {_fmt(part.get('auroc'))}  "
          f"P {_fmt(at.get('precision'))}  R {_fmt(at.get('recall'))}  F1 {_fmt(at.get('f1'))} "
          f"at the validation threshold (epoch {metrics['selected_epoch']})")
    if "paper_protocol" in metrics:
        pp = metrics["paper_protocol"]
        print(f"paper protocol (optimistic, threshold chosen on test): P {_fmt(pp['precision'])} "
              f"R {_fmt(pp['recall'])} F1 {_fmt(pp['f1'])}")
    print(f"run folder: {args.out} (metrics.json, scores.csv, pr_curve.png)", file=sys.stderr)
    return 0
