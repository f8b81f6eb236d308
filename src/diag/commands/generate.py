"""``diag generate SPEC --out DIR``: make defect images, masks and a manifest."""

from __future__ import annotations

import argparse
import sys

PIP = "pip install 'diag[ray]'"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate defect images from a spec",
                       description="Generate defect images, binary masks and a JSONL manifest "
                                   "from a YAML spec. Rerunning resumes; --shard splits the work "
                                   "(chosen from RANK/WORLD_SIZE under torchrun or accelerate "
                                   "launch, and from SLURM_ARRAY_TASK_ID in a Slurm array job); "
                                   "--engine ray runs it on a Ray cluster.")
    p.add_argument("spec", help="YAML spec file")
    p.add_argument("--out", required=True, help="output folder (images/, masks/, manifest.jsonl)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set generator.steps=10 (repeatable)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only plan items with index %% N == I (for several processes; "
                        "default: from torchrun / accelerate / Slurm array variables, else 0/1)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: spec)")
    p.add_argument("--limit", type=int, default=None, help="generate at most this many new samples")
    p.add_argument("--dry-run", action="store_true", help="print the plan's size and exit")
    p.add_argument("--allow-changed-inputs", action="store_true",
                   help="continue a folder although its dataset, regions, textures or model "
                        "changed since its samples were made (recorded in inputs.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="start --out afresh: delete the samples, manifest and records a previous "
                        "run left there (only diag's own files)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: the whole plan on a Ray cluster, "
                        f"one model per worker (needs {PIP})")
    p.add_argument("--address", default=None, metavar="HOST:PORT",
                   help="with --engine ray: the Ray cluster (default: RAY_ADDRESS, else a new "
                        "local Ray on this machine's CPUs and GPUs)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="with --engine ray: number of workers (default: one per GPU of the "
                        "cluster, else one per CPU)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.data import describe
    from diag.errors import DiagError
    from diag.generate import load_inputs, parse_shard, run_spec
    from diag.generate.launch import choose_launch
    from diag.generate.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    ray = args.engine == "ray"
    _check_engine(args)
    if ray:
        shard, device = parse_shard(None), args.device
    else:
        launch = choose_launch(args.shard, args.device or spec.device)
        shard, device = launch.shard, launch.device
        if launch.message:
            print(launch.message, file=sys.stderr, flush=True)
        if device == (args.device or spec.device):
            device = args.device  # unchanged: let run_spec read the spec's
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
    if ray:
        from diag.generate.ray_engine import run_ray

        summary = run_ray(spec, args.out, address=args.address, workers=args.workers,
                          device=args.device, allow_changed_inputs=args.allow_changed_inputs,
                          overwrite=args.overwrite)
    else:
        summary = run_spec(spec, args.out, shard=shard, limit=args.limit, device=device,
                           allow_changed_inputs=args.allow_changed_inputs,
                           overwrite=args.overwrite)
    state = "complete" if summary.complete else "incomplete (run again, or run the other shards)"
    print(f"{summary.generated} generated, {summary.skipped} already done, of {summary.planned} "
          f"planned in {summary.seconds:.1f}s; set {state}; manifest: {summary.manifest}",
          file=sys.stderr)
    return 0


def _check_engine(args: argparse.Namespace) -> None:
    """Flags that only go with one engine: one-line errors naming the flag and the fix."""
    from diag.errors import DiagError

    if args.engine == "ray":
        if args.shard is not None:
            raise DiagError("--shard with --engine ray: Ray splits the plan over its workers "
                            "itself: drop --shard (or drop --engine ray to run one shard here)")
        if args.limit is not None:
            raise DiagError("--limit with --engine ray: a preview runs in one process: drop "
                            "--engine ray (or drop --limit)")
        if args.workers is not None and args.workers < 1:
            raise DiagError(f"--workers {args.workers}: give the number of Ray workers, at least "
                            "1 (or leave it out: one per GPU, else one per CPU)")
        return
    for flag, value in (("--address", args.address), ("--workers", args.workers)):
        if value is not None:
            raise DiagError(f"{flag} goes with --engine ray: add --engine ray (and {PIP}), or "
                            f"drop {flag}")
