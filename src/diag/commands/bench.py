"""``diag bench GRID --out DIR``: the paper's comparison in one command (methods x settings x
Naug x seeds), with results.csv, summary.md and report.html."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a grid of generate/train/evaluate/fidelity cells",
                       description="Run every cell of a bench grid (methods x settings x Naug x "
                                   "seeds x protocols): generate each method's set once, train "
                                   "and test every cell, score fidelity, and write "
                                   "results.csv, summary.md and report.html. Rerunning resumes "
                                   "and reuses every cell whose inputs did not change.")
    p.add_argument("grid", help="YAML grid (see examples/bench_quick.yaml, docs/bench.md)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grid field, e.g. --set seeds=[0] (repeatable)")
    p.add_argument("--profile", choices=["quick", "paper"], default=None,
                   help="defaults for what the grid leaves out (overrides the grid's profile)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from diag.bench import load_grid, run_bench

    overrides = list(args.overrides) + ([f"profile={args.profile}"] if args.profile else [])
    grid = load_grid(args.grid, overrides)
    if args.dry_run:
        from diag.bench.plan import make_plan

        plan = make_plan(grid, {"root": "train"}, {"root": "test"}, "dry-run", (0, 0))
        print(f"{len(plan.sets)} generated sets, {len(plan.cells)} cells: methods "
              f"{', '.join(grid.methods)}; settings {', '.join(grid.settings)}; Naug "
              f"{grid.naug}; seed pairs {grid.seed_pairs()}; protocols "
              f"{', '.join(grid.protocols)}")
        for cell in plan.cells:
            print(f"  {cell.label}")
        return 0
    summary = run_bench(grid, args.out, device=args.device)
    print(f"{summary.cells} cells ({summary.trained} trained, {summary.reused} reused) in "
          f"{summary.seconds / 60:.1f} min; report: {summary.out / 'report.html'}; results: "
          f"{summary.results}", file=sys.stderr)
    return 0
