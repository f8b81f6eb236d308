"""``diag train CONFIG --out RUN_DIR``: train the defect classifier and score it.

``train.protocol: honest`` (default) chooses the threshold on a validation split;
``train.protocol: paper`` reproduces the reference code, test-chosen threshold included, and
says its numbers are optimistic. Training data overlapping the test set is an error unless
``--allow-overlap`` is given.
"""

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
                                   "positives; pick the threshold on a validation split "
                                   "(protocol honest) or as the reference code, on the test set "
                                   "(protocol paper, optimistic); score the test set. Stops if "
                                   "training data overlaps the test set. Writes config, "
                                   "metadata, checkpoints, metrics.json, scores.csv, "
                                   "pr_curve.png and training_files.json to --out.")
    p.add_argument("config", help="YAML training config (see docs/train.md)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="train one run per seed into OUT/seed-<s> and report mean and std")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: config)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="train even if training data (or the sources / masks of generated "
                        "images) overlaps the test set; the overlap is recorded in metrics.json")
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
        summary = train_seeds(cfg, args.out, seeds, resume=args.resume,
                              allow_overlap=args.allow_overlap)
        for name, m in summary["metrics"].items():
            print(f"{summary['split']} {name}: {m['mean']:.4f} +- {m['std']:.4f} "
                  f"(n={len(m['values'])})")
        if summary.get("optimistic"):
            print("paper protocol: the at_threshold numbers use a threshold chosen on the test set "
                  "(optimistic)")
        print(f"summary: {args.out}/summary.json", file=sys.stderr)
        return 0
    metrics = train_run(cfg, args.out, resume=args.resume, allow_overlap=args.allow_overlap)
    part = metrics.get("test") or metrics.get("validation") or {}
    name = "test" if "test" in metrics else "validation"
    at = part.get("at_threshold", {})
    chosen = metrics["threshold"]["chosen_on"]
    where_from = ("the test-chosen threshold (paper protocol: optimistic)" if chosen == "test"
                  else "the validation threshold" if chosen == "validation" else "logit 0")
    print(f"{name}: AP {_fmt(part.get('ap'))}  AUROC {_fmt(part.get('auroc'))}  "
          f"P {_fmt(at.get('precision'))}  R {_fmt(at.get('recall'))}  F1 {_fmt(at.get('f1'))} "
          f"at {where_from} (epoch {metrics['selected_epoch']})")
    if metrics.get("overlap", {}).get("allowed"):
        from diag.classify.leakage import describe

        print(f"warning: trained on data overlapping the test set (--allow-overlap): "
              f"{describe(metrics['overlap']['found'])}", file=sys.stderr)
    print(f"run folder: {args.out} (metrics.json, scores.csv, pr_curve.png)", file=sys.stderr)
    return 0
