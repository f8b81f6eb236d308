"""The bench's reports: ``summary.md`` and ``report.html``, from ``OUT/results.csv``.

Both are drawn from :func:`diag.bench.tables.aggregate` and
:func:`~diag.bench.tables.fidelity_table`, so they show the same numbers as ``results.csv``.

``report.html`` is one self-contained page (no network, no JavaScript; every picture an inline
PNG): what was run (dataset, split, input size, grid), the test AP tables with chance beside
every cell and the noise flags, precision and recall at the chosen threshold (and per defect
class), AP against Naug, precision-recall curves, the fidelity table, a contact sheet of each
method's generated images, the test images the best model misses and wrongly flags, and the
exact configs and versions. Sections without data (no generated method, fidelity off, cells
missing) say why instead of failing.

>>> from diag.bench.report import write_reports   # doctest: +SKIP
>>> write_reports("runs/bench")                    # doctest: +SKIP
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

from diag.bench.grid import REAL_ONLY
from diag.bench.tables import (
    Stat,
    Table,
    aggregate,
    fidelity_table,
    markdown,
    number,
    read_results,
    read_test_scores,
)
from diag.files import write_text

GALLERY_MAX = 12      # thumbnails per gallery
SHEET_SAMPLES = 6     # generated samples per method in the contact sheets
SHEET_TILE = 112      # their tile side (pixels)


def _header(out: Path) -> tuple[str, dict[str, Any]]:
    try:
        bench = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        bench = {}
    if not isinstance(bench, dict):
        bench = {}
    grid = bench.get("grid", {})
    split = bench.get("split", {})
    size = bench.get("input_size") or {}
    data = grid.get("dataset", {})
    lines = [f"# diag bench: {grid.get('source', out.name)}", ""]
    lines.append(f"Dataset {data.get('root', '?')} ({split.get('layout') or data.get('layout')}"
                 f"; split: {split.get('kind', '?')}"
                 + (f", {split.get('train')} train / {split.get('test')} test images, "
                    f"seed {split.get('seed')}" if split.get("kind") == "saved" else "") + ").")
    if size:
        lines.append(_size_text(size) + ".")
    cells = bench.get("cells", [])
    lines.append(f"{len(cells)} cells: methods {', '.join(grid.get('methods', {}))}; settings "
                 f"{', '.join(grid.get('settings', []))}; Naug {grid.get('naug')}; seeds "
                 f"{grid.get('seeds')}; protocols {', '.join(grid.get('protocols', []))}.")
    return "\n".join(lines), bench


def _size_text(size: dict[str, Any]) -> str:
    """The auto input size and why (bench.json ``input_size``)."""
    hw = size.get("input_size") or ["?", "?"]
    med = size.get("median_image") or ["?", "?"]
    text = f"Classifier input {hw[0]}x{hw[1]} (auto)"
    if size.get("defect_width_p25") is None:
        return (text + f": no training defect mask to measure, so the images' median size "
                f"{med[0]}x{med[1]} rounded to multiples of 32, at most {size.get('max_side')} "
                "px")
    text += (f": the narrowest quarter of the {size.get('defects_measured', '?')} measured "
             f"training defects is {size['defect_width_p25']:.1f} px wide at the images' median "
             f"size {med[0]}x{med[1]}, {size.get('width_after_resize_p25')} px after resizing")
    share = size.get("share_narrower_than_2px")
    if share is not None:
        text += f"; {100 * share:.0f}% of the defects end up narrower than 2 px"
    if size.get("capped"):
        text += (f" (capped at max_side {size.get('max_side')}: keeping them 3 px wide would "
                 "take a larger input)")
    return text


def write_reports(out: str | Path) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``report.html`` of a bench folder; returns their paths.

    A folder without ``results.csv`` (no cell finished yet) gets reports that say so.
    """
    out = Path(out)
    rows = read_results(out / "results.csv") if (out / "results.csv").is_file() else []
    tables = aggregate(rows)
    fid = fidelity_table(rows)
    header, bench = _header(out)
    write_text(out / "summary.md", markdown(tables, fid, header))
    write_text(out / "report.html", render_html(out, tables, fid, header, bench, rows))
    return out / "summary.md", out / "report.html"


# ---------------------------------------------------------------------------------------------
# small helpers

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pm(mean: float, std: float, n: int, digits: int = 3) -> str:
    """``0.712 ± 0.031``; ``0.712 ± n/a`` with one run; ``n/a`` without a value."""
    if not math.isfinite(mean):
        return "n/a"
    spread = f"{std:.{digits}f}" if n > 1 and math.isfinite(std) else "n/a"
    return f"{mean:.{digits}f} ± {spread}"


def _naug_label(n: int) -> str:
    return f"Naug {n}" if n else "AP"


def _img(pic: Any, alt: str, cls: str = "") -> str:
    return (f'<img{f" class={cls!r}" if cls else ""} src="{pic.uri}" width="{pic.width}" '
            f'height="{pic.height}" alt="{_e(alt)}">')


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _seed_key(row: dict[str, str]) -> tuple[float, float]:
    t, g = number(row.get("train_seed")), number(row.get("gen_seed"))
    return (t if math.isfinite(t) else 1e18, g if math.isfinite(g) else -1.0)


def _read_text(path: Path, limit: int = 200_000) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[:limit]
    except OSError:
        return None


def _test_rows(run: Path) -> list[dict[str, str]] | None:
    """The test rows of a cell's scores.csv, or None when it cannot be read."""
    try:
        rows = read_test_scores(run)
    except (OSError, ValueError, csv.Error):
        return None
    return rows or None


# ---------------------------------------------------------------------------------------------
# the page

def render_html(out: Path, tables: list[Table], fid: dict, header: str, bench: dict[str, Any],
                rows: list[dict[str, str]]) -> str:
    """One self-contained page: every picture inline, CSS inline, no script, no address."""
    from diag.bench.figures import method_colours

    grid = bench.get("grid", {}) if isinstance(bench.get("grid"), dict) else {}
    methods = list(dict.fromkeys([*grid.get("methods", {}), *(r["method"] for r in rows)]))
    ctx = _Ctx(out, rows, tables, fid, bench, grid, method_colours(methods))
    sections = [
        ("results", "Test AP", _ap_section),
        ("naug", "AP against Naug", _naug_section),
        ("threshold", "At the chosen threshold", _threshold_section),
        ("pr", "Precision-recall curves", _pr_section),
        ("fidelity", "Fidelity", _fidelity_section),
        ("samples", "Generated samples", _samples_section),
        ("errors", "Where the best model fails", _errors_section),
        ("configs", "Configs and versions", _configs_section),
    ]
    parts = []
    for anchor, title, make in sections:
        try:
            body = make(ctx)
        except Exception as exc:  # noqa: BLE001 (one broken section must not lose the report)
            body = _note(f"This section could not be drawn ({_e(type(exc).__name__)}: "
                         f"{_e(exc)}).")
        parts.append(_section(anchor, title, body))
    nav = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections)
    title = "diag bench report"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}: {_e(grid.get('source', out.name))}</title>"
        f"<style>{CSS}</style></head><body><main>{_intro(ctx)}"
        f"<nav class='toc'>{nav}</nav>{''.join(parts)}"
        f"<footer>Written by diag {_e(bench.get('versions', {}).get('diag', ''))} from "
        f"results.csv ({len(rows)} rows) of {_e(out.name)}; summary.md shows the same numbers."
        "</footer></main></body></html>\n")


class _Ctx:
    def __init__(self, out: Path, rows: list[dict[str, str]], tables: list[Table], fid: dict,
                 bench: dict[str, Any], grid: dict[str, Any], colours: dict[str, str]) -> None:
        self.out, self.rows, self.tables, self.fid = out, rows, tables, fid
        self.bench, self.grid, self.colours = bench, grid, colours

    def protocols(self) -> list[str]:
        return list(dict.fromkeys(t.protocol for t in self.tables))


def _intro(ctx: _Ctx) -> str:
    grid, bench, rows = ctx.grid, ctx.bench, ctx.rows
    split = bench.get("split", {}) or {}
    data = grid.get("dataset", {}) or {}
    facts: list[tuple[str, str]] = []
    layout = split.get("layout") or data.get("layout") or "?"
    facts.append(("Dataset", f"<code>{_e(data.get('root', '?'))}</code> "
                             f"<span class='muted'>({_e(layout)})</span>"))
    if split.get("kind") == "saved":
        facts.append(("Split", f"{_e(split.get('train'))} train / {_e(split.get('test'))} test "
                               f"images, stratified by defect class (test fraction "
                               f"{_e(split.get('test_fraction'))}, seed {_e(split.get('seed'))}; "
                               "saved as split.json, shared by every cell)"))
    elif split.get("kind") == "official":
        facts.append(("Split", f"the official train / test split of {_e(layout)}"))
    test = next((r for r in rows if r.get("test_images")), None)
    if test:
        n, p = number(test["test_images"]), number(test.get("test_positives"))
        facts.append(("Test set", f"{n:.0f} images, {p:.0f} defective: chance AP (the positive "
                                  f"rate) <b>{p / max(n, 1):.3f}</b>"))
    facts.append(("Classifier", _classifier(ctx)))
    cells = bench.get("cells", []) or []
    done = {r.get("cell") for r in rows}
    facts.append(("Run", f"{len(rows)} of {len(cells) or len(rows)} cells finished: methods "
                         f"{_e(', '.join(grid.get('methods', {})) or '?')}; settings "
                         f"{_e(', '.join(grid.get('settings', [])) or '?')}; Naug "
                         f"{_e(grid.get('naug', '?'))}; seeds {_e(grid.get('seeds', '?'))}; "
                         f"protocols {_e(', '.join(grid.get('protocols', [])) or '?')}"
                 + _seconds(rows)))
    sets = bench.get("sets", []) or []
    if sets:
        facts.append(("Generated", f"{len(sets)} sets (each method once per generation seed, "
                                   "at the largest Naug; smaller Naug take nested subsets)"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    missing = [c for c in cells if c.get("folder") not in done]
    warn = ""
    if not rows:
        warn = ("<div class='warnbox'><b>No cell has finished yet</b>: results.csv has no rows"
                f"{f' ({len(cells)} cells planned)' if cells else ''}.</div>")
    elif missing:
        names = ", ".join(_e(c.get("label", c.get("folder"))) for c in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        warn = (f"<div class='warnbox'><b>{len(missing)} of {len(cells)} planned cells have no "
                f"result</b> (failed, or not run yet): {names}{more}. Their tables' cells show "
                "fewer runs (n) or a dash; rerun the bench to finish them.</div>")
    name = Path(str(data.get("root", ""))).name or ctx.out.name
    methods = list(grid.get("methods", {})) or list(dict.fromkeys(r["method"] for r in rows))
    source = str(grid.get("source", ""))
    source = source.split("'")[1] if source.count("'") >= 2 else source
    return (f"<header><div class='kicker'>diag bench report</div>"
            f"<h1>{_e(name)}: {_e(', '.join(methods) or 'no method')}</h1>"
            f"<p class='where'>grid <code>{_e(source or '?')}</code> · output "
            f"<code>{_e(ctx.out.resolve())}</code></p>"
            f"<p class='lede'>Does adding generated defect images to a classifier's training "
            f"data raise its test AP, and by more than the noise? Each cell trains one "
            f"classifier; tables give the mean ± std over seeds, with the chance level beside "
            f"every value.</p><dl class='facts'>{dl}</dl>{warn}</header>")


def _seconds(rows: list[dict[str, str]]) -> str:
    total = sum(x for x in (number(r.get("seconds")) for r in rows) if math.isfinite(x))
    if not total:
        return ""
    return f"; training and testing took {total / 60:.1f} min in all"


def _classifier(ctx: _Ctx) -> str:
    train = ctx.grid.get("train", {}) or {}
    model, opts = train.get("model", {}) or {}, train.get("train", {}) or {}
    meta = _first_metadata(ctx)
    parts = [f"{_e(model.get('backbone', meta.get('backbone', '?')))}"]
    pretrained = model.get("pretrained") or (meta.get("weights") or {}).get("pretrained")
    if pretrained:
        parts.append("random initial weights" if pretrained == "none"
                     else f"{_e(pretrained)} weights")
    epochs = opts.get("epochs")
    if epochs:
        parts.append(f"{_e(epochs)} epoch{'s' * (epochs != 1)}")
    text = ", ".join(parts) + ". "
    size = ctx.bench.get("input_size")
    if size:
        text += _e(_size_text(size)) + "."
    else:
        hw = opts.get("input_size") or meta.get("input_size")
        if isinstance(hw, list) and len(hw) == 2:
            text += f"Input {_e(hw[0])}x{_e(hw[1])} (set in the grid: train.train.input_size)."
    return text


def _first_metadata(ctx: _Ctx) -> dict[str, Any]:
    for r in ctx.rows[:5]:
        try:
            meta = json.loads((ctx.out / "cells" / r["cell"] / "metadata.json")
                              .read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError):
            continue
        if isinstance(meta, dict):
            return meta
    return {}


# ---------------------------------------------------------------------------------------------
# tables

LEGEND = (
    "<div class='legend'><b>How to read the tables</b><ul>"
    "<li><b>0.812 ± 0.031</b>: mean ± sample std of the test AP over a cell's runs (n, the "
    "seeds); <i>n/a</i> with a single run. Under every value: n and the chance level (the test "
    "set's positive rate, the AP of guessing).</li>"
    "<li><span class='swatch best'></span> <b>bold on green</b>: the best mean AP of its "
    "column.</li>"
    "<li><span class='badge chance'>~chance</span> less than two noise units above chance "
    "(noise: the larger of the spread over seeds and the bootstrap spread of one run's AP over "
    "resampled test images): not distinguishable from guessing.</li>"
    "<li><span class='badge spread'>within spread</span> on a column: its best method leads the "
    "runner-up by less than their spread, so the ranking there is not established.</li>"
    "<li>real-only uses no generated image: the same value in every Naug column, the baseline "
    "to beat.</li></ul></div>")


def _ap_cell(t: Table, m: str, n: int) -> str:
    s = t.cells.get((m, n))
    attrs = (f'data-protocol="{_e(t.protocol)}" data-setting="{_e(t.setting)}" '
             f'data-method="{_e(m)}" data-naug="{n}"')
    if s is None:
        return f'<td class="ap missing" {attrs}><span class="v">–</span>' \
               '<span class="sub">no run</span></td>'
    best = t.best(n) == m
    near = math.isfinite(s.mean) and s.near_chance
    cls = " ".join(["ap", *(["best"] if best else []), *(["near"] if near else [])])
    flag = " <span class='badge chance'>~chance</span>" if near else ""
    chance = f"chance {s.chance:.3f}" if math.isfinite(s.chance) else "chance n/a"
    return (f'<td class="{cls}" {attrs} data-n="{s.n}"><span class="v">'
            f"{_pm(s.mean, s.std, s.n)}</span>{flag}"
            f'<span class="sub">n={s.n} · {chance}</span></td>')


def _ap_table(t: Table) -> str:
    heads = []
    for n in t.naugs:
        spread = " <span class='badge spread'>within spread</span>" if t.within_spread(n) else ""
        heads.append(f"<th>{_naug_label(n)}{spread}</th>")
    body = []
    for m in t.methods:
        note = "<span class='rowsub'>no generated images</span>" if m == REAL_ONLY else ""
        body.append(f"<tr><th>{_e(m)}{note}</th>"
                    + "".join(_ap_cell(t, m, n) for n in t.naugs) + "</tr>")
    spread = [_naug_label(n) for n in t.naugs if t.within_spread(n)]
    foot = ""
    if spread:
        foot = _note(f"Within spread in {_e(', '.join(spread))}: the best method leads the "
                     "runner-up by less than their spread over seeds (or the test set's "
                     "bootstrap noise); the ranking there is not established.")
    chance = f"chance {t.chance:.3f}" if math.isfinite(t.chance) else "chance n/a"
    return (f"<h3>{_e(t.setting)} <span class='muted'>· protocol {_e(t.protocol)}</span> "
            f"<span class='pill'>{chance}</span></h3>"
            f"<div class='scroll'><table class='results'><thead><tr><th>method</th>"
            f"{''.join(heads)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{foot}")


def _ap_section(ctx: _Ctx) -> str:
    if not ctx.tables:
        return _note("No finished cell: results.csv has no rows yet.")
    intro = _note("Test average precision of each method (rows) at each number of generated "
                  "training images (columns), one table per setting and protocol.")
    blocks = "".join(f"<div class='block'>{_ap_table(t)}</div>" for t in ctx.tables)
    return intro + LEGEND + f"<div class='blocks'>{blocks}</div>"


def _metric_cell(t: Table, m: str, n: int, s: Stat, key: str) -> str:
    mean, std = s.extra.get(key, (math.nan, math.nan))
    return (f'<td class="metric" data-protocol="{_e(t.protocol)}" data-setting="{_e(t.setting)}" '
            f'data-method="{_e(m)}" data-naug="{n}" data-metric="{_e(key)}">'
            f'<span class="v">{_pm(mean, std, s.n)}</span></td>')


def _threshold_section(ctx: _Ctx) -> str:
    if not ctx.tables:
        return _note("No finished cell.")
    chosen = sorted({r.get("threshold_chosen_on") or "?" for r in ctx.rows})
    parts = [_note("Precision and recall of each cell at its decision threshold (chosen on "
                   f"{_e(' / '.join(chosen))}, by the protocol), AUROC, and the recall of each "
                   "defect class of the test set (n/a: no test image of that class); mean ± std "
                   "over runs.")]
    for t in ctx.tables:
        classes = sorted({k for s in t.cells.values() for k in s.extra if k.startswith("recall_")})
        keys = ["auroc", "precision", "recall", *classes]
        names = ["AUROC", "precision", "recall", *(f"recall<br><span class='muted'>"
                                                    f"{_e(k[7:])}</span>" for k in classes)]
        body = []
        for m in t.methods:
            naugs = [0] if m == REAL_ONLY else t.naugs
            for n in naugs:
                s = t.cells.get((m, n)) if n or m != REAL_ONLY else next(
                    (t.cells[(m, x)] for x in t.naugs if (m, x) in t.cells), None)
                if s is None:
                    continue
                body.append(f"<tr><th>{_e(m)}</th><td>{n or '–'}</td><td>{s.n}</td>"
                            + "".join(_metric_cell(t, m, n, s, k) for k in keys) + "</tr>")
        head = "".join(f"<th>{h}</th>" for h in ["method", "Naug", "n", *names])
        parts.append(f"<h3>{_e(t.setting)} <span class='muted'>· protocol "
                     f"{_e(t.protocol)}</span></h3><div class='scroll'><table class='results "
                     f"compact'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
                     "</table></div>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# figures

def _naug_section(ctx: _Ctx) -> str:
    from diag.bench.figures import ap_vs_naug

    if not ctx.tables:
        return _note("No finished cell.")
    if not any(n > 0 for t in ctx.tables for n in t.naugs):
        return _note("No generating method in this bench (real-only only): there is no Naug "
                     "axis to plot.")
    parts = []
    for p in ctx.protocols():
        pic = ap_vs_naug([t for t in ctx.tables if t.protocol == p], ctx.colours)
        if pic is None:
            continue
        parts.append(f"<figure>{_img(pic, f'AP against Naug, protocol {p}')}<figcaption>"
                     f"Protocol {_e(p)}: mean test AP over seeds, error bars ± one std; hollow "
                     "markers are within noise of chance; the grey band is real-only's mean ± "
                     "std; the dashed line is chance.</figcaption></figure>")
    return "".join(parts) or _note("Nothing to plot.")


def _pr_section(ctx: _Ctx) -> str:
    from diag.bench.figures import Curve, pr_curves

    if not ctx.tables:
        return _note("No finished cell.")
    parts, missing = [], []
    for p in ctx.protocols():
        panels = []
        for t in (t for t in ctx.tables if t.protocol == p):
            curves = []
            for m in t.methods:
                naug = 0 if m == REAL_ONLY else max(
                    (n for n in t.naugs if (m, n) in t.cells), default=None)
                if naug is None:
                    continue
                cands = sorted((r for r in ctx.rows if r["protocol"] == p
                                and r["setting"] == t.setting and r["method"] == m
                                and int(number(r["naug"]) or 0) == naug), key=_seed_key)
                scores = _test_rows(ctx.out / "cells" / cands[0]["cell"]) if cands else None
                if not cands or scores is None:
                    missing.append(f"{m} ({t.setting})")
                    continue
                r = cands[0]
                where = f"Naug {naug}, " if naug else ""
                curves.append(Curve(
                    f"{m} ({where}seed {r['train_seed']}): AP {number(r['ap']):.3f}", m,
                    [int(x["label"]) for x in scores], [float(x["score"]) for x in scores]))
            panels.append((t.setting, curves, t.chance))
        pic = pr_curves(panels, ctx.colours)
        if pic is not None:
            parts.append(f"<figure>{_img(pic, f'precision-recall curves, protocol {p}')}"
                         f"<figcaption>Protocol {_e(p)}: test precision-recall curve of each "
                         "method at its largest Naug, from its first seed's run (AP of that "
                         "run in the legend); the dashed line is chance.</figcaption></figure>")
    if missing:
        parts.append(_note(f"No test scores (scores.csv) for {_e(', '.join(missing))}."))
    return "".join(parts) or _note("No cell's scores.csv could be read.")


def _fidelity_section(ctx: _Ctx) -> str:
    fid = ctx.fid
    if not fid:
        enabled = (ctx.grid.get("fidelity") or {}).get("enabled", True)
        if not ctx.bench.get("sets") and not any(r["method"] != REAL_ONLY for r in ctx.rows):
            return _note("No generated set in this bench (real-only only): nothing to score.")
        if enabled is False:
            return _note("Fidelity was not scored (fidelity.enabled is false in the grid).")
        return _note("No fidelity score in results.csv (no finished cell of a generating "
                     "method carries one).")
    dims = sorted({d for v in fid.values() for d in v}, key=int)
    best = {d: min((v[d][0], m) for m, v in fid.items() if d in v)[1] for d in dims}
    body = []
    for m, by_dim in fid.items():
        tds = []
        for d in dims:
            mean, std, n = by_dim.get(d, (math.nan, 0.0, 0))
            text = f"{mean:.4g} ± {std:.2g}" if n > 1 else (f"{mean:.4g}" if n else "–")
            cls = ' class="best"' if best[d] == m else ""
            tds.append(f'<td{cls} data-method="{_e(m)}" data-dim="{_e(d)}"><span class="v">'
                       f"{text}</span><span class='sub'>{n} set{'s' * (n != 1)}</span></td>")
        body.append(f"<tr><th>{_e(m)}</th>{''.join(tds)}</tr>")
    head = "".join(f"<th>FID-{_e(d)}</th>" for d in dims)
    warnings = _fidelity_warnings(ctx.out)
    return (_note("Fréchet Inception distance of each method's generated set against the real "
                  "training positives (Inception features of the given size), mean ± std over "
                  "generation seeds. Lower is closer to the real defects; bold on green: the "
                  "closest. Compare only sets of similar size: FID is biased by sample size.")
            + f"<table class='results'><thead><tr><th>method</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{warnings}")


def _fidelity_warnings(out: Path) -> str:
    seen: dict[str, int] = {}
    for path in sorted((out / "fidelity").glob("*.json"))[:200]:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for w in record.get("warnings", []) if isinstance(record, dict) else []:
            seen[str(w)] = seen.get(str(w), 0) + 1
    if not seen:
        return ""
    items = "".join(f"<li>{_e(w)}{f' <span class=muted>({k} sets)</span>' if k > 1 else ''}"
                    "</li>" for w, k in seen.items())
    return (f"<details><summary>Fidelity warnings ({len(seen)})</summary><ul class='small'>"
            f"{items}</ul></details>")


def _samples_section(ctx: _Ctx) -> str:
    from diag.bench.figures import sheet

    sets = [s for s in ctx.bench.get("sets", []) or [] if isinstance(s, dict)]
    if not sets:
        return _note("No generating method in this bench (real-only only): no generated "
                     "images to show.")
    first: dict[str, dict[str, Any]] = {}
    for s in sorted(sets, key=lambda s: number(s.get("seed"))):
        first.setdefault(str(s.get("method")), s)
    parts = [_note(f"The first {SHEET_SAMPLES} images of each method's generated set (its first "
                   "generation seed): the defect-free source, the generated image, its mask "
                   "tinted red, and a zoom on the defect.")]
    for m, s in first.items():
        folder = ctx.out / "generated" / str(s.get("folder"))
        try:
            pic = sheet(folder, SHEET_SAMPLES, SHEET_TILE)
        except Exception as exc:  # noqa: BLE001 (a damaged set is a note, not a lost report)
            parts.append(f"<h3>{_e(m)}</h3>" + _note(f"No contact sheet: {_e(exc)}"))
            continue
        parts.append(f"<h3>{_e(m)} <span class='muted'>· generation seed {_e(s.get('seed'))}"
                     f"</span></h3><figure class='sheet'>{_img(pic, f'{m} samples')}</figure>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# the best model's errors

def best_cell(rows: list[dict[str, str]]) -> tuple[tuple[str, str, int, str], float,
                                                   dict[str, str]] | None:
    """The best model: the (method, setting, Naug, protocol) group with the highest mean AP,
    and within it the run with the highest AP; ``(group, its mean AP, that row)``.

    >>> rows = [{"method": "a", "setting": "s", "naug": "4", "protocol": "p", "ap": x,
    ...          "cell": c} for x, c in (("0.9", "a1"), ("0.5", "a2"))]
    >>> rows.append({"method": "b", "setting": "s", "naug": "4", "protocol": "p",
    ...              "ap": "0.8", "cell": "b1"})
    >>> group, mean, row = best_cell(rows)
    >>> group, mean, row["cell"]
    (('b', 's', 4, 'p'), 0.8, 'b1')
    """
    groups: dict[tuple[str, str, int, str], list[dict[str, str]]] = {}
    for r in rows:
        if math.isfinite(number(r.get("ap"))):
            key = (r["method"], r["setting"], int(number(r["naug"]) or 0), r["protocol"])
            groups.setdefault(key, []).append(r)
    if not groups:
        return None
    means = {k: sum(number(r["ap"]) for r in v) / len(v) for k, v in groups.items()}
    key = max(means, key=lambda k: means[k])
    row = max(groups[key], key=lambda r: number(r["ap"]))
    return key, means[key], row


def _errors_section(ctx: _Ctx) -> str:
    from diag.bench.figures import thumbnail

    found = best_cell(ctx.rows)
    if found is None:
        return _note("No finished cell with a test AP.")
    (m, setting, naug, protocol), mean, row = found
    run = ctx.out / "cells" / row["cell"]
    scores = _test_rows(run)
    group = f"{m}, {setting}" + (f", Naug {naug}" if naug else "") + f", protocol {protocol}"
    thr = number(row.get("threshold"))
    intro = (f"<p>The best model: <b>{_e(group)}</b> has the highest mean test AP "
             f"({mean:.3f}); its best run, seed {_e(row.get('train_seed'))}, has AP "
             f"{number(row['ap']):.3f} at chance {number(row.get('chance')):.3f}. At its threshold "
             f"{thr:.4g} (chosen on {_e(row.get('threshold_chosen_on') or '?')}) it reaches "
             f"precision {number(row.get('precision')):.3f} and recall "
             f"{number(row.get('recall')):.3f}. <span class='muted'>(run folder cells/"
             f"{_e(row['cell'])})</span></p>")
    if scores is None:
        return intro + _note("Its scores.csv cannot be read: no gallery.")
    fn = sorted((r for r in scores if r["label"] == "1" and r["predicted"] == "0"),
                key=lambda r: number(r["score"]))
    fp = sorted((r for r in scores if r["label"] == "0" and r["predicted"] == "1"),
                key=lambda r: -number(r["score"]))
    masks = _test_masks(run, [r["id"] for r in fn[:GALLERY_MAX]]) if fn else {}

    def gallery(items: list[dict[str, str]], kind: str, what: str, note: str) -> str:
        total = len(items)
        head = f"<h3>{kind} <span class='count'>{total}</span></h3>" + (_note(note) if total
                                                                         else "")
        if not total:
            return head + _note(f"None: the model {what} no test image at its threshold.")
        shown = items[:GALLERY_MAX]
        cards = []
        for r in shown:
            ident = r["id"].removeprefix("test/")
            pic = thumbnail(r.get("path", ""), masks.get(ident))
            image = _img(pic, ident) if pic else "<div class='noimg'>image not readable</div>"
            cards.append(f"<figure class='thumb'>{image}<figcaption><b>score "
                         f"{number(r['score']):.4g}</b><span class='id'>{_e(ident)}</span>"
                         "</figcaption></figure>")
        more = ""
        if total > len(shown):
            more = _note(f"Showing {len(shown)} of {total}; the rest are in the run's "
                         "scores.csv.")
        return head + f"<div class='gallery'>{''.join(cards)}</div>" + more

    return (intro
            + gallery(fn, "Missed defects (false negatives)", "misses",
                      "Defective test images scored below the threshold, the most confidently "
                      "missed (lowest score) first; the defect mask is outlined in red.")
            + gallery(fp, "Wrongly flagged (false positives)", "flags",
                      "Defect-free test images scored at or above the threshold, the highest "
                      "score first."))


def _test_masks(run: Path, ids: list[str]) -> dict[str, Any]:
    """The defect masks of some test images (by scores.csv id), from the cell's test dataset;
    empty when the dataset cannot be read."""
    import yaml

    from diag.data import DatasetRef

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        test = dict(cfg["data"]["test"])
        known = set(DatasetRef.__dataclass_fields__)
        samples = DatasetRef(**{k: v for k, v in test.items() if k in known}).load()
    except Exception:  # noqa: BLE001 (no mask outline is a lesser picture, not an error)
        return {}
    want = {i.removeprefix("test/") for i in ids}
    out = {}
    for s in samples:
        if s.id in want:
            try:
                out[s.id] = s.mask
            except Exception:  # noqa: BLE001
                continue
    return out


# ---------------------------------------------------------------------------------------------
# configs and versions

def _configs_section(ctx: _Ctx) -> str:
    import yaml

    grid_text = _read_text(ctx.out / "grid.yaml")
    if grid_text is None and ctx.grid:
        grid_text = yaml.safe_dump(ctx.grid, sort_keys=False)
    parts = [_note("The grid as run (profile applied) and one cell's complete diag train "
                   "config per method and setting (the others differ only in seed and Naug).")]
    if grid_text:
        parts.append(f"<details open><summary>grid.yaml</summary><pre>{_e(grid_text)}</pre>"
                     "</details>")
    seen: dict[tuple[str, str], str] = {}
    cells = [r.get("cell", "") for r in ctx.rows]
    cells += [c.get("folder", "") for c in ctx.bench.get("cells", []) or []
              if isinstance(c, dict)]
    by_folder = {c.get("folder"): c for c in ctx.bench.get("cells", []) or [] if isinstance(c, dict)}
    by_folder.update({r.get("cell"): r for r in ctx.rows})
    for folder in cells:
        info = by_folder.get(folder) or {}
        key = (str(info.get("method")), str(info.get("setting")))
        if key in seen or not folder:
            continue
        text = _read_text(ctx.out / "cells" / folder / "config.yaml")
        if text is None:
            continue
        seen[key] = folder
        parts.append(f"<details><summary>{_e(key[0])}, {_e(key[1])} <span class='muted'>"
                     f"(cells/{_e(folder)}/config.yaml)</span></summary><pre>{_e(text)}</pre>"
                     "</details>")
    versions = dict(ctx.bench.get("versions", {}) or {})
    meta = _first_metadata(ctx)
    for k, v in (meta.get("versions") or {}).items():
        if k in ("python", "platform", "torchvision") or (k == "torch" and v != versions.get(k)):
            versions[k if k not in versions else f"{k} (build)"] = v
    if meta.get("device"):
        versions["training device"] = meta["device"]
    if versions:
        trs = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in versions.items())
        parts.append(f"<h3>Versions</h3><table class='kv'><tbody>{trs}</tbody></table>")
    return "".join(parts)


CSS = """
:root{--fg:#1c2230;--muted:#687086;--line:#e4e7ed;--soft:#f5f7fa;--accent:#2f5fd0;
--good:#e3f3e8;--good-fg:#15603a;--warn:#fff1cc;--warn-fg:#7a4d00;--spread:#ece6fb;
--spread-fg:#51349c}
*{box-sizing:border-box}
html{background:#fff}
body{margin:0;color:var(--fg);font:15px/1.55 "Segoe UI",Roboto,"Helvetica Neue","Liberation Sans",
"DejaVu Sans",Arial,sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1120px;margin:0 auto;padding:36px 32px 64px}
header{padding-bottom:18px;border-bottom:1px solid var(--line)}
.kicker{text-transform:uppercase;letter-spacing:.09em;font-size:12px;font-weight:700;
color:var(--accent)}
h1{font-size:26px;line-height:1.25;margin:4px 0 8px;letter-spacing:-.01em}
.where{margin:-4px 0 12px;font-size:13px;color:var(--muted)}
.lede{margin:0 0 16px;color:#3a4254;max-width:860px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:6px 20px;margin:0;font-size:14px}
dl.facts dt{color:var(--muted);font-weight:600}dl.facts dd{margin:0}
code,pre{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace}
code{font-size:13px;background:var(--soft);padding:1px 5px;border-radius:4px;word-break:break-all}
nav.toc{display:flex;flex-wrap:wrap;gap:6px 8px;margin:16px 0 0}
nav.toc a{font-size:13px;color:var(--accent);text-decoration:none;border:1px solid var(--line);
border-radius:999px;padding:3px 11px;background:#fff}
h2{font-size:20px;margin:42px 0 10px;padding-bottom:7px;border-bottom:2px solid var(--line)}
h3{font-size:15.5px;margin:26px 0 8px}
.muted{color:var(--muted);font-weight:400}
.note{color:#4a5266;font-size:13.5px;margin:6px 0 12px;max-width:920px}
.pill{display:inline-block;font-size:12px;font-weight:600;background:var(--warn);
color:var(--warn-fg);border-radius:999px;padding:1px 9px;margin-left:6px;vertical-align:1px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:4px 0 10px;
font-size:14px}
th,td{padding:7px 14px;border-bottom:1px solid var(--line);text-align:right;
vertical-align:top;white-space:nowrap}
thead th{background:var(--soft);font-size:12.5px;font-weight:700;color:#384055;
border-bottom:2px solid #d6dae3;text-align:right}
thead th:first-child,tbody th{text-align:left}
tbody th{font-weight:600}
.rowsub{display:block;font-size:11.5px;font-weight:400;color:var(--muted)}
td .v{font-weight:500}
td .sub{display:block;font-size:11.5px;color:var(--muted);margin-top:1px}
td.best{background:var(--good)}td.best .v{font-weight:700;color:var(--good-fg)}
td.near .v{color:#8d7752}
td.missing{color:var(--muted)}
table.compact th,table.compact td{padding:5px 12px}
table.kv th{text-align:left;color:var(--muted);font-weight:600}table.kv td{text-align:left}
.badge{display:inline-block;font-size:11px;font-weight:700;line-height:16px;border-radius:999px;
padding:0 7px;margin-left:4px;vertical-align:1px;white-space:nowrap}
.badge.chance{background:var(--warn);color:var(--warn-fg)}
.badge.spread{background:var(--spread);color:var(--spread-fg)}
.swatch{display:inline-block;width:12px;height:12px;border-radius:3px;vertical-align:-1px}
.swatch.best{background:var(--good);border:1px solid #9fd2b0}
.legend{background:var(--soft);border:1px solid var(--line);border-radius:8px;
padding:10px 16px;font-size:13px;margin:8px 0 4px}
.legend ul{margin:4px 0 0;padding-left:18px}.legend li{margin:2px 0}
.blocks{display:flex;flex-wrap:wrap;gap:0 44px;align-items:flex-start}
.block{width:min-content;max-width:100%}.block h3{white-space:nowrap}
.warnbox{background:#fff6e0;border-left:4px solid #e0a526;padding:9px 14px;margin:14px 0 0;
font-size:14px;border-radius:0 6px 6px 0}
figure{margin:10px 0 22px}
figure img{display:block;max-width:100%;height:auto}
figcaption{font-size:13px;color:#4a5266;margin-top:6px;max-width:920px}
figure.sheet img{border-radius:6px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(158px,1fr));gap:12px;
margin:6px 0}
.thumb{margin:0;border:1px solid var(--line);border-radius:8px;overflow:hidden;background:#fff}
.thumb img{width:100%;height:150px;object-fit:contain;background:#2a2d33}
.thumb figcaption{margin:0;padding:6px 8px;font-size:12px;color:var(--fg)}
.thumb .id{display:block;color:var(--muted);font-size:11px;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap}
.noimg{height:150px;display:flex;align-items:center;justify-content:center;color:#aab;
background:#2a2d33;font-size:12px}
.count{display:inline-block;min-width:22px;text-align:center;font-size:12px;
background:var(--soft);border:1px solid var(--line);border-radius:999px;padding:0 7px}
details{margin:8px 0;border:1px solid var(--line);border-radius:8px;padding:8px 12px}
summary{cursor:pointer;font-weight:600;font-size:14px}
pre{background:var(--soft);border-radius:6px;padding:12px 14px;overflow:auto;max-height:420px;
font-size:12.5px;line-height:1.45;margin:8px 0 2px}
ul.small{font-size:13px;color:#4a5266}
footer{margin-top:48px;padding-top:14px;border-top:1px solid var(--line);color:var(--muted);
font-size:12.5px}
"""
