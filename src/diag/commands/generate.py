"""``diag generate SPEC --out DIR``: make defect images, masks and a manifest."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate defect images from a spec",
                       description="Generate defect images, binary masks and a JSONL manifest "
                                   "from a YAML spec. Rerunning resumes; --shard splits the work.")
    p.add_argument("spec", help="YAML spec file")
    p.add_argument("--out", required=True, help="output folder (images/, masks/, manifest.jsonl)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set generator.steps=10 (repeatable)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only plan items with index %% N == I (for several processes)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: spec)")
    p.add_argument("--limit", type=int, default=None, help="generate at most this many new samples")
    p.add_argument("--dry-run", action="store_true", help="print the plan's size and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.data import describe
    from diag.generate import load_inputs, make_plan, parse_shard, run_spec, shard_of
    from diag.generate.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    shard = parse_shard(args.shard)
    if args.dry_run:
        inputs = load_inputs(spec)
        plan = shard_of(make_plan(spec, inputs.negatives), shard)
        print(f"dataset: {describe(inputs.negatives + inputs.positives)}")
        print(f"plan: {len(plan)} samples for shard {shard[0]}/{shard[1]} "
              f"({', '.join(f'{d.name} x{d.count}' for d in spec.defects)}), "
              f"generator {spec.generator.kind}")
        return 0
    summary = run_spec(spec, args.out, shard=shard, limit=args.limit, device=args.device)
    state = "complete" if summary.complete else "incomplete (run again, or run the other shards)"
    print(f"{summary.generated} generated, {summary.skipped} already done, of {summary.planned} "
          f"planned in {summary.seconds:.1f}s; set {state}; manifest: {summary.manifest}",
          file=sys.stderr)
    return 0
