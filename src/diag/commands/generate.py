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
    p.add_argument("--allow-changed-inputs", action="store_true",
                   help="continue a folder although its dataset, regions, textures or model "
                        "changed since its samples were made (recorded in inputs.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="start --out afresh: delete the samples, manifest and records a previous "
                        "run left there (only diag's own files)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.data import describe
    from diag.errors import DiagError
    from diag.generate import load_inputs, parse_shard, run_spec
    from diag.generate.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    shard = parse_shard(args.shard)
    if args.limit is not None and args.limit < 1:
        raise DiagError(f"--limit {args.limit}: give the number of new samples to make, at least "
                        "1 (or --dry-run to plan without generating)")
    if args.dry_run:
        inputs = load_inputs(spec)
        print(f"dataset: {describe(inputs.negatives + inputs.positives)}")
        print(f"plan: {len(range(shard[0], spec.total, shard[1]))} samples for shard "
              f"{shard[0]}/{shard[1]} ({', '.join(f'{d.name} x{d.count}' for d in spec.defects)}"
              f"), generator {spec.generator.kind}")
        return 0
    summary = run_spec(spec, args.out, shard=shard, limit=args.limit, device=args.device,
                       allow_changed_inputs=args.allow_changed_inputs, overwrite=args.overwrite)
    state = "complete" if summary.complete else "incomplete (run again, or run the other shards)"
    print(f"{summary.generated} generated, {summary.skipped} already done, of {summary.planned} "
          f"planned in {summary.seconds:.1f}s; set {state}; manifest: {summary.manifest}",
          file=sys.stderr)
    return 0
