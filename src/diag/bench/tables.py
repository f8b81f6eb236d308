"""From results.csv to the bench's tables: mean and spread per cell, best marked, noise flagged.

Both ``summary.md`` and ``report.html`` are drawn from :func:`aggregate`, so they always show
the same numbers as ``results.csv``.

A cell is flagged:

* ``~chance`` when its mean AP is less than two noise units above chance (the test set's
  positive rate), the noise being the larger of the spread over seeds and the bootstrap
  spread of one run's AP over resampled test images (``ap_noise``);
* a column (one setting and Naug) is flagged ``within spread`` when its best method leads the
  runner-up by less than their larger spread over seeds: the ranking is not established.

>>> rows = [{"method": "a", "setting": "zero-shot", "naug": "100", "protocol": "honest",
...          "ap": "0.8", "ap_noise": "0.01", "chance": "0.3", "train_seed": "0"},
...         {"method": "a", "setting": "zero-shot", "naug": "100", "protocol": "honest",
...          "ap": "0.6", "ap_noise": "0.01", "chance": "0.3", "train_seed": "1"}]
>>> t = aggregate(rows)[0]
>>> cell = t.cells[("a", 100)]
>>> round(cell.mean, 3), round(cell.std, 4), cell.n
(0.7, 0.1414, 2)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("ap", "auroc", "precision", "recall")


@dataclass
class Stat:
    """Mean and sample standard deviation of one metric over a cell's seeds."""

    mean: float
    std: float
    n: int
    values: list[float]
    noise: float = 0.0
    chance: float = math.nan
    extra: dict[str, tuple[float, float]] = field(default_factory=dict)
    """``auroc``, ``precision``, ``recall`` and each ``recall_<class>``: (mean, std)."""

    @property
    def near_chance(self) -> bool:
        """Mean AP within two noise units of chance."""
        return self.mean - self.chance < 2 * max(self.std, self.noise)


@dataclass
class Table:
    """One table: a protocol and setting; rows are methods, columns Naug values."""

    protocol: str
    setting: str
    methods: list[str]
    naugs: list[int]
    cells: dict[tuple[str, int], Stat]
    chance: float

    def best(self, naug: int) -> str | None:
        """The method with the highest mean AP in a column."""
        entries = [(self.cells[(m, naug)].mean, m) for m in self.methods
                   if (m, naug) in self.cells and not math.isnan(self.cells[(m, naug)].mean)]
        return max(entries)[1] if entries else None

    def within_spread(self, naug: int) -> bool:
        """The best method's lead over the runner-up is smaller than their spread."""
        stats = sorted((self.cells[(m, naug)] for m in self.methods if (m, naug) in self.cells),
                       key=lambda s: s.mean, reverse=True)
        if len(stats) < 2:
            return False
        a, b = stats[0], stats[1]
        return a.mean - b.mean < max(a.std, b.std, a.noise, b.noise)


def read_results(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results.csv."""
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_test_scores(run: Path) -> list[dict[str, str]]:
    """The test rows of a cell's scores.csv."""
    with open(run / "scores.csv", encoding="utf-8") as fh:
        return [row for row in csv.DictReader(fh) if row.get("split") == "test"]


def number(value: Any) -> float:
    """A results.csv value as a float; NaN when empty or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def aggregate(rows: list[dict[str, str]]) -> list[Table]:
    """Tables per (protocol, setting) with mean and std over seeds of every metric.

    ``real-only`` (no generated images, so no Naug) appears in every Naug column of the
    full-shot table, with the same value: the baseline each method must beat.
    """
    tables = []
    protocols = list(dict.fromkeys(r["protocol"] for r in rows))
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    naugs = sorted({int(r["naug"]) for r in rows if int(r["naug"] or 0) > 0})
    for protocol in protocols:
        for setting in settings:
            subset = [r for r in rows if r["protocol"] == protocol and r["setting"] == setting]
            if not subset:
                continue
            methods = list(dict.fromkeys(r["method"] for r in subset))
            cells: dict[tuple[str, int], Stat] = {}
            for m in methods:
                mine = [r for r in subset if r["method"] == m]
                for n in naugs or [0]:
                    group = [r for r in mine if int(r["naug"] or 0) in (n, 0)]
                    if group:
                        cells[(m, n)] = _stat(group)
            chance = float(np.nanmean([number(r["chance"]) for r in subset]))
            tables.append(Table(protocol, setting, methods, naugs or [0], cells, chance))
    return tables


def _stat(group: list[dict[str, str]]) -> Stat:
    ap = np.array([number(r["ap"]) for r in group])
    noise = np.array([number(r.get("ap_noise")) for r in group])
    extra = {}
    per_class = sorted({k for r in group for k in r if k.startswith("recall_")})
    for k in [*METRICS[1:], *per_class]:
        v = np.array([number(r.get(k)) for r in group])
        extra[k] = (float(np.nanmean(v)) if np.isfinite(v).any() else math.nan,
                    float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0)
    return Stat(float(np.mean(ap)), float(np.std(ap, ddof=1)) if len(ap) > 1 else 0.0, len(ap),
                [float(x) for x in ap],
                float(np.nanmean(noise)) if np.isfinite(noise).any() else 0.0,
                float(np.nanmean([number(r["chance"]) for r in group])), extra)


def fmt(stat: Stat, digits: int = 3) -> str:
    """``0.712 ± 0.031`` (``± -`` with one seed)."""
    spread = f"{stat.std:.{digits}f}" if stat.n > 1 else "-"
    return f"{stat.mean:.{digits}f} ± {spread}"


def markdown(tables: list[Table], fidelity: dict[str, dict[str, tuple[float, float, int]]],
             header: str = "") -> str:
    """summary.md: one table per protocol and setting, the fidelity table, the flags."""
    lines = [header] if header else []
    for t in tables:
        lines += ["", f"## {t.setting}, protocol {t.protocol}: test AP, mean ± std over seeds "
                  f"(chance {t.chance:.3f})", ""]
        cols = [f"Naug {n}" if n else "AP" for n in t.naugs]
        lines += ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in t.methods:
            cells = []
            for n in t.naugs:
                s = t.cells.get((m, n))
                if s is None:
                    cells.append("-")
                    continue
                text = fmt(s) + f" (n={s.n})"
                if t.best(n) == m:
                    text = f"**{text}**"
                if s.near_chance:
                    text += " ~chance"
                cells.append(text)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        spread = [f"Naug {n}" if n else "AP" for n in t.naugs if t.within_spread(n)]
        if spread:
            lines += ["", f"Within spread: in {', '.join(spread)} the best method leads the "
                      "runner-up by less than their spread over seeds (or the test set's "
                      "bootstrap noise): the ranking there is not established."]
    if fidelity:
        dims = sorted({d for v in fidelity.values() for d in v}, key=int)
        lines += ["", "## Fidelity: FID of each method's generated set against the real "
                  "training positives (mean ± std over generation seeds; lower is closer)", "",
                  "| method | " + " | ".join(f"FID-{d}" for d in dims) + " |",
                  "|---" * (len(dims) + 1) + "|"]
        for m, by_dim in fidelity.items():
            cells = []
            for d in dims:
                mean, std, n = by_dim.get(d, (math.nan, 0.0, 0))
                cells.append(f"{mean:.4g} ± {std:.2g}" if n > 1 else f"{mean:.4g}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the best mean AP of a column. ~chance: less than two noise units "
              "above chance (noise: the larger of the spread over seeds and the bootstrap "
              "spread of the test AP)."]
    return "\n".join(lines).strip() + "\n"


def fidelity_table(rows: list[dict[str, str]]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """FID per method and dim over its generation seeds (one value per set)."""
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
        sets: dict[str, dict[str, float]] = {}
        for r in rows:
            if r["method"] != m:
                continue
            for k, v in r.items():
                if k.startswith("fid_") and v not in ("", None):
                    sets.setdefault(r.get("gen_seed", ""), {})[k[4:]] = float(v)
        if not sets:
            continue
        dims = sorted({d for s in sets.values() for d in s}, key=int)
        out[m] = {}
        for d in dims:
            vals = np.array([s[d] for s in sets.values() if d in s])
            out[m][d] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                         len(vals))
    return out
