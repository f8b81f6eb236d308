"""report.html of diag bench: self-contained (no address, every picture inline), the same
numbers as results.csv (recomputed here with numpy from the HTML's own tables), every section
present, robust to partial benches, and a real rendering in headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diag.bench import load_grid, run_bench
from diag.bench.report import GALLERY_MAX, best_cell, write_reports
from diag.bench.tables import read_results
from tests.test_bench import grid_file

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--hide-scrollbars"]
PM = re.compile(r"^(\d+\.\d{3}) ± (\d+\.\d{3}|n/a)$")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, example_root: Path) -> Iterator[Path]:
    """A tiny finished bench: real-only, memseg and cutpaste; zero- and full-shot; Naug 2 and
    4; seeds 0 and 1 (18 cells on the bundled example, about half a minute on CPU)."""
    tmp = tmp_path_factory.mktemp("bench-report")
    path = grid_file(tmp, example_root, methods={
        "real-only": "real-only", "memseg": {"generator": {"kind": "memseg"}},
        "cutpaste": {"generator": {"kind": "cutpaste"}}})
    run_bench(load_grid(path), tmp / "out", device="cpu", progress=False, log=lambda m: None)
    yield tmp / "out"
    shutil.rmtree(tmp, ignore_errors=True)  # its models: keep the suite's disk use small


class _Page(HTMLParser):
    """The table cells carrying data-* attributes (their ``span.v`` value and all their text),
    every img src, every href, and the sections' ids."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self.imgs: list[dict[str, str]] = []
        self.hrefs: list[str] = []
        self.ids: list[str] = []
        self.tags: set[str] = set()
        self._cell: dict | None = None
        self._in_v = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append(a)
        if tag == "td" and "data-method" in a:
            self._cell = {"attrs": a, "v": "", "text": ""}
        if tag == "span" and self._cell is not None and a.get("class") == "v":
            self._in_v = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._in_v = False
        if tag == "td" and self._cell is not None:
            self.cells.append(self._cell)
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
            if self._in_v:
                self._cell["v"] += data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def group(rows: list[dict[str, str]], protocol: str, setting: str, method: str, naug: int
          ) -> list[dict[str, str]]:
    """The results.csv rows of one table cell (real-only has no Naug: naug 0)."""
    want = 0 if method == "real-only" else naug
    return [r for r in rows if (r["protocol"], r["setting"], r["method"]) ==
            (protocol, setting, method) and int(r["naug"]) == want]


def values(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in ("", None) else np.nan for r in rows])


def expected_text(v: np.ndarray, nan_aware: bool) -> str:
    mean = np.nanmean(v) if nan_aware else np.mean(v)
    if not np.isfinite(mean):
        return "n/a"
    finite = np.isfinite(v).sum() if nan_aware else len(v)
    spread = f"{(np.nanstd(v, ddof=1) if nan_aware else np.std(v, ddof=1)):.3f}" \
        if len(v) > 1 and finite > 1 else ("0.000" if len(v) > 1 else "n/a")
    return f"{mean:.3f} ± {spread}"


def derived(bench: Path, tmp: Path, keep=lambda r: True, drop_columns=(), sets=True,
            fidelity=True, bench_json=True) -> Path:
    """A copy of the bench folder (cells and sets linked, not copied) with results.csv
    filtered and some parts removed, as a failed, partial or smaller bench leaves it."""
    out = tmp / "out"
    out.mkdir(parents=True)
    for name in ("cells", "generated") + (("fidelity",) if fidelity else ()):
        (out / name).symlink_to(bench / name)
    shutil.copy(bench / "grid.yaml", out / "grid.yaml")
    if bench_json:
        info = json.loads((bench / "bench.json").read_text())
        if not sets:
            info["sets"] = []
            info["grid"]["methods"] = {"real-only": "real-only"}
        (out / "bench.json").write_text(json.dumps(info))
    rows = read_results(bench / "results.csv")
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, [c for c in rows[0] if c not in drop_columns],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(r for r in rows if keep(r))
    return out


def test_page_is_self_contained_and_small(bench: Path) -> None:
    path = bench / "report.html"
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text, re.I), "no address anywhere in the page"
    assert "//" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text).replace(
        "<!doctype", ""), "no protocol-relative reference either"
    page = parse(path)
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert "url(" not in text and "@import" not in text
    assert page.imgs, "the page has pictures"
    for img in page.imgs:
        head, data = img["src"].split(",", 1)
        assert head == "data:image/png;base64"
        pic = Image.open(io.BytesIO(base64.b64decode(data)))
        assert pic.format == "PNG" and pic.size[0] > 10 and pic.size[1] > 10
        assert int(img["width"]) > 0 and int(img["height"]) > 0
    assert all(h.startswith("#") and h[1:] in page.ids for h in page.hrefs)
    assert path.stat().st_size < 3_000_000


def test_ap_tables_show_results_csv_numbers(bench: Path) -> None:
    rows = read_results(bench / "results.csv")
    page = parse(bench / "report.html")
    ap = [c for c in page.cells if "ap" in c["attrs"].get("class", "").split()]
    seen = set()
    for c in ap:
        a = c["attrs"]
        g = group(rows, a["data-protocol"], a["data-setting"], a["data-method"],
                  int(a["data-naug"]))
        assert g, a
        v = values(g, "ap")
        assert PM.match(c["v"]), c["v"]
        assert c["v"] == expected_text(v, nan_aware=False), (a, c["v"])
        assert int(a["data-n"]) == len(g)
        chance = float(np.mean(values(g, "chance")))
        assert f"chance {chance:.3f}" in c["text"], "chance beside every AP"
        seen.add((a["data-protocol"], a["data-setting"], a["data-method"], a["data-naug"]))
    # every (setting, method, Naug) that ran is in a table; real-only in every full-shot column
    want = {(r["protocol"], r["setting"], r["method"], r["naug"]) for r in rows
            if r["method"] != "real-only"}
    want |= {(r["protocol"], r["setting"], "real-only", n) for r in rows
             if r["method"] == "real-only" for n in ("2", "4")}
    assert seen == want
    # the best of each column is the highest mean AP, marked
    for key in {(a["attrs"]["data-protocol"], a["attrs"]["data-setting"],
                 a["attrs"]["data-naug"]) for a in ap}:
        col = [c for c in ap if (c["attrs"]["data-protocol"], c["attrs"]["data-setting"],
                                 c["attrs"]["data-naug"]) == key]
        means = [np.mean(values(group(rows, *key[:2], c["attrs"]["data-method"],
                                      int(key[2])), "ap")) for c in col]
        best = [c for c in col if "best" in c["attrs"]["class"].split()]
        assert len(best) == 1 and means[col.index(best[0])] == max(means)  # ties: any one


def test_threshold_tables_show_results_csv_numbers(bench: Path) -> None:
    rows = read_results(bench / "results.csv")
    classes = [k for k in rows[0] if k.startswith("recall_")]
    assert classes, "the example's test set has defect classes"
    page = parse(bench / "report.html")
    cells = [c for c in page.cells if "data-metric" in c["attrs"]]
    metrics = {c["attrs"]["data-metric"] for c in cells}
    assert metrics == {"auroc", "precision", "recall", *classes}
    for c in cells:
        a = c["attrs"]
        g = group(rows, a["data-protocol"], a["data-setting"], a["data-method"],
                  int(a["data-naug"]))
        assert c["v"] == expected_text(values(g, a["data-metric"]), nan_aware=True), (a, c["v"])


def test_noise_flags_and_legend(bench: Path) -> None:
    rows = read_results(bench / "results.csv")
    text = (bench / "report.html").read_text(encoding="utf-8")
    page = parse(bench / "report.html")
    assert "How to read the tables" in text and "two noise units above" in text
    assert "class='badge spread'>within spread" in text  # in the legend at least
    for c in (c for c in page.cells if "ap" in c["attrs"].get("class", "").split()):
        a = c["attrs"]
        g = group(rows, a["data-protocol"], a["data-setting"], a["data-method"],
                  int(a["data-naug"]))
        v, noise = values(g, "ap"), values(g, "ap_noise")
        std = np.std(v, ddof=1) if len(v) > 1 else 0.0
        near = v.mean() - values(g, "chance").mean() < 2 * max(std, np.nanmean(noise))
        assert ("~chance" in c["text"]) == near
        assert ("near" in a["class"].split()) == near


def test_figures_sheets_galleries_configs(bench: Path) -> None:
    rows = read_results(bench / "results.csv")
    text = (bench / "report.html").read_text(encoding="utf-8")
    page = parse(bench / "report.html")
    for anchor in ("results", "threshold", "naug", "pr", "fidelity", "samples", "errors",
                   "configs"):
        assert anchor in page.ids
    assert "could not be drawn" not in text
    alts = [i["alt"] for i in page.imgs]
    assert "AP against Naug, protocol honest" in alts
    assert "precision-recall curves, protocol honest" in alts
    assert sorted(a for a in alts if a.endswith(" samples")) == ["cutpaste samples",
                                                                  "memseg samples"]
    # the galleries: the best group's best run, its misses and false alarms, from scores.csv
    (method, setting, naug, protocol), _, row = best_cell(rows)
    means = {}
    for r in rows:
        means.setdefault((r["method"], r["setting"], r["naug"], r["protocol"]), []).append(
            float(r["ap"]))
    top = max(means, key=lambda k: np.mean(means[k]))
    assert (method, setting, str(naug), protocol) == top
    assert float(row["ap"]) == max(means[top])
    with open(bench / "cells" / row["cell"] / "scores.csv") as fh:
        test = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    fn = [r for r in test if r["label"] == "1" and r["predicted"] == "0"]
    fp = [r for r in test if r["label"] == "0" and r["predicted"] == "1"]
    ids = {r["id"].removeprefix("test/") for r in fn + fp}
    thumbs = [a for a in alts if a in ids]
    assert len(thumbs) == min(len(fn), GALLERY_MAX) + min(len(fp), GALLERY_MAX)
    assert f"Missed defects (false negatives) <span class='count'>{len(fn)}</span>" in text
    assert f"Wrongly flagged (false positives) <span class='count'>{len(fp)}</span>" in text
    assert f"cells/{row['cell']}" in text
    # the fidelity table, the configs and versions
    assert "FID-64" in text
    assert "<summary>grid.yaml</summary>" in text and "kind: cutpaste" in text
    assert text.count("/config.yaml)</span></summary>") == 5  # real-only, 2 methods x 2
    versions = json.loads((bench / "bench.json").read_text())["versions"]
    for k, v in versions.items():
        assert f"<th>{k}</th><td>{v}</td>" in text


def test_partial_benches_still_render(bench: Path, tmp_path: Path) -> None:
    cases = {
        "missing cells": dict(keep=lambda r: not (r["method"] == "memseg"
                                                  and r["train_seed"] == "1")),
        "one seed": dict(keep=lambda r: r["train_seed"] == "0"),
        "real-only only": dict(keep=lambda r: r["method"] == "real-only", sets=False),
        "no fidelity": dict(drop_columns=("fid_64",), fidelity=False),
        "no bench.json": dict(bench_json=False),
        "no rows": dict(keep=lambda r: False),
    }
    for name, kw in cases.items():
        out = derived(bench, tmp_path / name.replace(" ", "-"), **kw)
        t0 = time.perf_counter()
        write_reports(out)
        seconds = time.perf_counter() - t0
        assert seconds < 20, f"{name}: {seconds:.1f} s"
        text = (out / "report.html").read_text(encoding="utf-8")
        assert "could not be drawn" not in text, name
        assert not re.search(r"https?://", text)
        if name == "missing cells":
            assert "4 of 18 planned cells have no result" in text
            assert '<td class="ap' in text and 'data-n="1"' in text
        if name == "one seed":
            spreads = [c["v"] for c in parse(out / "report.html").cells
                       if "ap" in c["attrs"].get("class", "").split()
                       or "data-metric" in c["attrs"]]
            assert spreads and all(v.endswith("± n/a") or v == "n/a" for v in spreads), \
                "one run per cell: no spread is shown"
        if name == "real-only only":
            assert "there is no Naug axis to plot" in text
            assert "nothing to score" in text and "no generated images to show" in text
            assert "<th>AP</th>" in text
        if name == "no fidelity":
            assert "No fidelity score in results.csv" in text
        if name == "no rows":
            assert "No cell has finished yet" in text


def test_doc_screenshot_is_small() -> None:
    """The README's picture of the report."""
    path = Path(__file__).resolve().parents[1] / "docs" / "bench_report.png"
    if not path.is_file():
        pytest.skip("docs/bench_report.png not in this checkout")
    img = Image.open(path)
    assert img.format == "PNG" and 1000 <= img.size[0] <= 1600 and img.size[1] <= 1700
    assert path.stat().st_size < 600_000


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def test_renders_in_headless_chromium(bench: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium), so the "
                    "report's rendering is not checked here")
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1280,2400",
         (bench / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2400)
    grey = np.asarray(img.convert("L"), dtype=float)
    assert grey.std() > 20, "a real rendering, not a blank page"
    ink = grey < 200
    assert 0.02 < ink.mean() < 0.6
    # text on the left margin of the content column, the header's colour at the top
    rows_with_ink = np.flatnonzero(ink.any(axis=1))
    assert rows_with_ink.min() < 120 and rows_with_ink.max() > 1800, "the page fills the window"
    colourful = np.asarray(img, dtype=float).std(axis=2) > 25
    assert colourful.mean() > 0.001, "the badges and plots are in colour"
    assert not math.isnan(grey.mean())
