"""The bench's reports: ``summary.md`` and ``report.html``, from ``OUT/results.csv``.

>>> from diag.bench.report import write_reports   # doctest: +SKIP
>>> write_reports("runs/bench")                    # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from diag.bench.tables import Table, aggregate, fidelity_table, fmt, markdown, read_results
from diag.files import write_text


def _header(out: Path) -> tuple[str, dict[str, Any]]:
    try:
        bench = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
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
        lines.append(f"Classifier input {size['input_size'][0]}x{size['input_size'][1]} (auto): "
                     f"the narrowest quarter of the training defects is "
                     f"{size['defect_width_p25']:.1f} px wide at the images' median size "
                     f"{size['median_image'][0]}x{size['median_image'][1]}, "
                     f"{size['width_after_resize_p25']} px after resizing.")
    cells = bench.get("cells", [])
    lines.append(f"{len(cells)} cells: methods {', '.join(grid.get('methods', {}))}; settings "
                 f"{', '.join(grid.get('settings', []))}; Naug {grid.get('naug')}; seeds "
                 f"{grid.get('seeds')}; protocols {', '.join(grid.get('protocols', []))}.")
    return "\n".join(lines), bench


def write_reports(out: str | Path) -> tuple[Path, Path]:
    """Write ``summary.md`` and ``report.html`` of a bench folder; returns their paths."""
    out = Path(out)
    rows = read_results(out / "results.csv")
    tables = aggregate(rows)
    fid = fidelity_table(rows)
    header, bench = _header(out)
    write_text(out / "summary.md", markdown(tables, fid, header))
    write_text(out / "report.html", render_html(out, tables, fid, header, bench, rows))
    return out / "summary.md", out / "report.html"


def _table_html(t: Table) -> str:
    head = "".join(f"<th>Naug {n}</th>" if n else "<th>AP</th>" for n in t.naugs)
    body = []
    for m in t.methods:
        tds = []
        for n in t.naugs:
            s = t.cells.get((m, n))
            if s is None:
                tds.append("<td>-</td>")
                continue
            cls = " ".join(c for c, on in (("best", t.best(n) == m),
                                            ("chance", s.near_chance)) if on)
            flag = ' <span class="flag">~chance</span>' if s.near_chance else ""
            tds.append(f'<td class="{cls}">{html.escape(fmt(s))}{flag}'
                       f'<div class="n">n={s.n}</div></td>')
        body.append(f"<tr><th>{html.escape(m)}</th>{''.join(tds)}</tr>")
    return (f"<h3>{html.escape(t.setting)}, protocol {html.escape(t.protocol)} "
            f'<span class="chance">chance {t.chance:.3f}</span></h3>'
            f"<table><tr><th>method</th>{head}</tr>{''.join(body)}</table>")


def render_html(out: Path, tables: list[Table], fid: dict, header: str, bench: dict[str, Any],
                rows: list[dict[str, str]]) -> str:
    """One self-contained page (no network): tables first."""
    title = header.splitlines()[0].removeprefix("# ") if header else "diag bench"
    intro = "".join(f"<p>{html.escape(line)}</p>" for line in header.splitlines()[1:] if line)
    body = "".join(_table_html(t) for t in tables)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{intro}"
            f"<h2>Test AP, mean ± std over seeds</h2>{body}</body></html>")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px auto;max-width:1100px;
color:#1d2330;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 14px}td,th{border:1px solid #d7dbe3;padding:5px 10px;
text-align:right}th{background:#f3f5f9;text-align:left}td.best{font-weight:700;background:#eaf6ea}
td.chance{color:#8a5a00}.flag{font-size:11px;background:#fff1cc;border-radius:3px;padding:0 4px}
.n{font-size:11px;color:#7a8294}.chance{font-weight:400;color:#7a8294;font-size:13px}
"""
