"""The bench report's pictures, each an inline ``data:image/png;base64,...`` URI: plots drawn
with matplotlib's Agg canvas (no pyplot, no global backend change), thumbnails and contact
sheets with PIL. Nothing here reads the network or writes a file.

>>> uri = png_uri(__import__("PIL.Image").Image.new("L", (4, 3), 128))
>>> uri.startswith("data:image/png;base64,")
True
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diag.bench.grid import REAL_ONLY
from diag.bench.tables import Table

CHANCE_COLOUR = "#b7791f"
REAL_COLOUR = "#4a5163"
DPI = 144          # pixels per inch of the PNG (sharp on high-density screens)
CSS_DPI = 96       # its CSS size: inches x 96


@dataclass
class Picture:
    """An inline PNG and the size (CSS pixels) it is meant to be shown at."""

    uri: str
    width: int
    height: int


def png_uri(img: Image.Image, colours: int | None = None) -> str:
    """A PIL image as a PNG data URI; ``colours`` quantises it (smaller, for photos)."""
    if colours and img.mode not in ("L", "1", "P"):
        img = img.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT,
                                          dither=Image.Dither.NONE)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _picture(fig: Any) -> Picture:
    buf = io.BytesIO()
    # no Software/URL text chunk: the page carries no address at all, even inside a PNG
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08,
                facecolor="white", metadata={"Software": None})
    img = Image.open(io.BytesIO(buf.getvalue()))
    w, h = img.size
    return Picture("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                   round(w * CSS_DPI / DPI), round(h * CSS_DPI / DPI))


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, the same in every plot (real-only: dark grey)."""
    palette = ["#2f6fdb", "#e0662b", "#2a9d5b", "#c23b6e", "#7b4fc9", "#1c9aa6", "#a8741a",
               "#5d6b2f", "#d4a017", "#6f7d95"]
    out, i = {}, 0
    for m in methods:
        if m == REAL_ONLY:
            out[m] = REAL_COLOUR
        else:
            out[m] = palette[i % len(palette)]
            i += 1
    return out


def _style(ax: Any) -> None:
    ax.grid(True, color="#e5e7eb", lw=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#9aa1ae")
    ax.tick_params(colors="#3b4252", labelsize=8.5)


def _panels(n: int, height: float = 3.3) -> tuple[Any, list[Any]]:
    width = min(11.0, 0.6 + 4.3 * n)
    fig = _figure(width, height)
    axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def _legend(fig: Any, axes: list[Any]) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.93), frameon=False,
                   fontsize=8.5)


def ap_vs_naug(tables: list[Table], colours: dict[str, str]) -> Picture | None:
    """Test AP against Naug, one panel per setting (the tables of one protocol): a line per
    generating method with error bars (std over seeds), real-only as a band (mean ± std), the
    chance level dashed; hollow markers for cells within noise of chance. None when no table
    has a Naug axis."""
    tables = [t for t in tables if any(n > 0 for n in t.naugs)]
    if not tables:
        return None
    fig, axes = _panels(len(tables))
    for ax, t in zip(axes, tables, strict=True):
        naugs = [n for n in t.naugs if n > 0]
        log = len(naugs) > 1 and max(naugs) / min(naugs) >= 4
        gen = [m for m in t.methods if m != REAL_ONLY]
        for i, m in enumerate(gen):
            pts = [(n, t.cells[(m, n)]) for n in naugs
                   if (m, n) in t.cells and math.isfinite(t.cells[(m, n)].mean)]
            if not pts:
                continue
            shift = (i - (len(gen) - 1) / 2) * 0.035
            xs = np.array([n * (2 ** shift) if log else n + shift * (max(naugs) - min(naugs)
                                                                     or max(naugs)) * 0.5
                           for n, _ in pts], dtype=float)
            means = np.array([s.mean for _, s in pts])
            errs = np.array([s.std if s.n > 1 else 0.0 for _, s in pts])
            c = colours.get(m, "#333333")
            ax.errorbar(xs, means, yerr=errs, color=c, lw=1.8, marker="none", capsize=3.5,
                        elinewidth=1.2, label=m, zorder=3)
            near = np.array([s.near_chance for _, s in pts])
            ax.scatter(xs[~near], means[~near], s=34, color=c, zorder=4)
            ax.scatter(xs[near], means[near], s=34, facecolor="white", edgecolor=c, lw=1.5,
                       zorder=4)
        real = next((t.cells[(REAL_ONLY, n)] for n in t.naugs if (REAL_ONLY, n) in t.cells),
                    None)
        if real is not None and math.isfinite(real.mean):
            ax.axhline(real.mean, color=REAL_COLOUR, lw=1.5, zorder=2,
                       label="real-only (mean ± std)")
            if real.n > 1:
                ax.axhspan(real.mean - real.std, real.mean + real.std, color=REAL_COLOUR,
                           alpha=0.12, lw=0, zorder=1)
        if math.isfinite(t.chance):
            ax.axhline(t.chance, color=CHANCE_COLOUR, ls=(0, (5, 4)), lw=1.3, zorder=2,
                       label="chance (test positive rate)")
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xticks(naugs)
        ax.set_xticklabels([str(n) for n in naugs])
        ax.minorticks_off()
        if len(naugs) == 1:
            ax.set_xlim(naugs[0] * 0.5, naugs[0] * 1.5)
        ax.set_ylim(0, 1.02)
        ax.set_title(t.setting, fontsize=10.5, color="#1c2230")
        ax.set_xlabel("Naug (generated training images)", fontsize=9)
        _style(ax)
    axes[0].set_ylabel("test AP", fontsize=9)
    _legend(fig, axes)
    return _picture(fig)


@dataclass
class Curve:
    """One precision-recall curve: a cell's test labels and scores."""

    label: str
    method: str
    labels: np.ndarray
    scores: np.ndarray


def pr_curves(panels: list[tuple[str, list[Curve], float]], colours: dict[str, str]
              ) -> Picture | None:
    """Precision-recall curves, one panel per ``(title, curves, chance)``."""
    from diag.metrics.detection import precision_recall_curve

    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = _panels(len(panels), height=3.5)
    for ax, (title, curves, chance) in zip(axes, panels, strict=True):
        for c in curves:
            precision, recall, _ = precision_recall_curve(c.labels, c.scores)
            ax.plot(recall, precision, drawstyle="steps-post", lw=1.7,
                    color=colours.get(c.method, "#333333"), label=c.label, zorder=3)
        if math.isfinite(chance):
            ax.axhline(chance, color=CHANCE_COLOUR, ls=(0, (5, 4)), lw=1.3, zorder=2)
        ax.set_xlim(0, 1.01)
        ax.set_ylim(0, 1.03)
        ax.set_title(title, fontsize=10.5, color="#1c2230")
        ax.set_xlabel("recall", fontsize=9)
        ax.legend(loc="lower left", fontsize=7.5, frameon=True, framealpha=0.85,
                  edgecolor="#e5e7eb")
        _style(ax)
    axes[0].set_ylabel("precision", fontsize=9)
    return _picture(fig)


def thumbnail(path: str | Path, mask: np.ndarray | None = None, side: int = 176
              ) -> Picture | None:
    """A test image shrunk to fit ``side`` pixels, its defect mask (if any) outlined in red;
    None when the image cannot be read."""
    from diag.generate.sheet import overlay
    from diag.imageio import read_image

    try:
        arr = read_image(path)
    except Exception:  # noqa: BLE001 (an unreadable image is a missing thumbnail, not an error)
        return None
    img = Image.fromarray(arr if arr.ndim == 2 else arr[..., :3])
    scale = min(1.0, side / max(img.size))
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    img = img.resize(size, Image.LANCZOS)
    if mask is not None and mask.shape == arr.shape[:2] and mask.any():
        small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.BOX))
        img = Image.fromarray(overlay(np.asarray(img), small > 0, alpha=0.25))
        return Picture(png_uri(img, colours=128), *size)
    return Picture(png_uri(img), *size)


def sheet(folder: Path, n: int = 6, tile: int = 112) -> Picture:
    """:func:`diag.generate.sheet.contact_sheet` of one generated folder (source, generated,
    mask, zoom rows; ``n`` samples), quantised to keep the page small.

    Raises:
        DiagError: the folder is not a usable generate output.
    """
    from diag.generate.sheet import contact_sheet

    img = contact_sheet([folder], n=n, tile=tile)
    return Picture(png_uri(img, colours=192), *img.size)
