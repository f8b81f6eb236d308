"""``diag bench``: the paper's experiment in one command.

* :mod:`~diag.bench.grid`: the YAML grid (methods, settings, Naug, seeds, protocols, profiles);
* :mod:`~diag.bench.plan`: its generated sets and cells, each with a key (pure);
* :mod:`~diag.bench.run`: split once, generate once, train every cell, resume, results.csv;
* :mod:`~diag.bench.report`: summary.md and report.html from the results.
"""

from diag.bench.grid import Grid, load_grid, parse_grid
from diag.bench.run import BenchSummary, run_bench

__all__ = ["BenchSummary", "Grid", "load_grid", "parse_grid", "run_bench"]
