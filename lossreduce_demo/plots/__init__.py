"""All plots of the suite, one house style. Every plot function returns a matplotlib Figure and never saves.

Submodules by topic (weights, training, rl, dp) re-export here, so notebooks use `from lossreduce_demo import plots`.
"""

from __future__ import annotations

import math
import struct
import zlib

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter

# Okabe–Ito, colour-blind safe. One colour per scheme everywhere in the suite.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
SCHEME_COLORS = {
    "token-mean": "#0072B2",
    "seq-mean-token-mean": "#D55E00",
    "seq-mean-token-sum": "#E69F00",
    "seq-mean-token-sum-norm": "#009E73",
    "token-sum": "#000000",
    "turn-mean": "#CC79A7",
    "length-power": "#56B4E9",
    "delta-l": "#882255",  # Paul Tol's wine (the Okabe–Ito eight are taken)
}
ROLE_COLORS = {"pad": "#DDDDDD", "bos": "#999999", "system": "#CC79A7", "user": "#56B4E9", "assistant": "#E69F00"}


def scheme_color(name: str) -> str:
    """The scheme's colour; a label that contains a scheme name ("A: turn-mean") gets that scheme's colour,
    anything else a palette colour fixed by its text (stable across processes, unlike hash())."""
    for scheme in sorted(SCHEME_COLORS, key=len, reverse=True):
        if scheme in str(name):
            return SCHEME_COLORS[scheme]
    return PALETTE[zlib.crc32(str(name).encode()) % len(PALETTE)]


class InViewLocator(MaxNLocator):
    """MaxNLocator's ticks inside the view only: matplotlib makes a tick (five artists) for every location a
    locator returns, drawn or not, and making ticks is much of a widget redraw."""

    def __call__(self):
        lo, hi = sorted(self.axis.get_view_interval())
        margin = 1e-9 * (hi - lo)
        return [t for t in super().__call__() if lo - margin <= t <= hi + margin]


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 7.0, height: float = 3.6, **kw):
    """A figure in the house style, created without pyplot's global state (safe in widget callbacks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # its own canvas: a redraw in place reuses its renderer and the text sizes measured there
    with plt.rc_context({"axes.titley": 1.0}):  # titles at the top edge (none has ticks there): not re-placed
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)  # after measuring the x axis on every draw
    for ax in axes.flat:
        for axis in (ax.xaxis, ax.yaxis):  # matplotlib's default ticks (AutoLocator's), only those in view
            axis.set_major_locator(InViewLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10]))
        ax.grid(True, alpha=0.25, linewidth=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    return fig, (axes[0, 0] if nrows == ncols == 1 else axes)


def without_layout_engine(fig) -> None:
    """No layout engine at all on `fig` (its axes stay where they are): a placeholder engine still costs savefig
    a layout draw pass."""
    fig.set_layout_engine(None)
    if fig.get_layout_engine() is not None:  # rcParams ask for a layout by default
        fig.set_layout_engine("none")


def fixed_margins(fig, *, left: float, right: float, top: float, bottom: float, wspace: float = 0.0,
                  hspace: float = 0.0) -> None:
    """Place a new_figure's panels with margins and gaps between panels in inches instead of constrained layout:
    a widget redraws its figures on every change, and constrained layout is much of a first draw's cost."""
    width, height = fig.get_size_inches()
    nrows, ncols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    panel_width = (width - left - right - wspace * (ncols - 1)) / ncols
    panel_height = (height - top - bottom - hspace * (nrows - 1)) / nrows
    without_layout_engine(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=wspace / panel_width, hspace=hspace / panel_height)


def legend_width(labels, fontsize: float) -> float:
    """Inches a frameless legend of `labels` takes beside the axes (handle, padding and the longest label)."""
    return 0.55 + 0.62 * fontsize / 72 * max(map(len, labels), default=0)


def tick_labels(axis) -> list[str]:
    """The major tick labels `axis` will show in its current view (computed, not drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = [t for t in axis.get_major_locator()() if lo <= t <= hi]
    return [str(label) for label in axis.get_major_formatter().format_ticks(ticks)] if ticks else []


TICK_LABEL_CHAR = 0.085  # inches per character of a 10-point tick label (digits and dots: DejaVu Sans ≈ 0.6 em)


def y_label_room(ax) -> float:
    """Inches left of an axes for its y tick labels, its y label and the pads."""
    return 0.5 + TICK_LABEL_CHAR * max(map(len, tick_labels(ax.yaxis)), default=0)


class ReadableLogLocator(Locator):
    """Major ticks of a log axis that always label ≥ 2 values in view: decades when the view spans several,
    else 1-2-5 or 1…9 × a power of ten, else (a view inside one step, e.g. 0.93–1.14) plain linear steps."""

    MAX_TICKS = 8

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((float(vmin), float(vmax)))
        if not math.isfinite(vmax) or vmax <= 0:
            return []
        vmin = max(vmin, vmax * 1e-300)
        if math.log10(vmax / vmin) > 2.5:
            ticks = LogLocator(base=10, numticks=self.MAX_TICKS).tick_values(vmin, vmax)
            return [t for t in ticks if vmin <= t <= vmax]
        low, high = math.floor(math.log10(vmin)) - 1, math.ceil(math.log10(vmax)) + 1

        def in_view(subs):
            ticks = [m * 10.0**e for e in range(low, high + 1) for m in subs]
            return [t for t in ticks if vmin * (1 - 1e-9) <= t <= vmax * (1 + 1e-9)]

        for subs in ((1,), (1, 2, 5)):
            if len(ticks := in_view(subs)) >= 3:
                return ticks[:: max(1, math.ceil(len(ticks) / self.MAX_TICKS))]
        ticks = in_view((1, 2, 5))  # then any of 1…9 that does not crowd them (0.9 beside 1)
        gap = math.log10(vmax / vmin) / 10
        for tick in in_view(range(1, 10)):
            if all(abs(math.log10(tick / kept)) >= gap for kept in ticks):
                ticks.append(tick)
        if len(ticks) >= 2:
            ticks.sort()
            return ticks[:: max(1, math.ceil(len(ticks) / self.MAX_TICKS))]
        return [t for t in MaxNLocator(nbins=4).tick_values(vmin, vmax) if vmin <= t <= vmax and t > 0]


def _widen_constant_log_view(ax, which: str) -> None:
    lo, hi = (ax.dataLim.y0, ax.dataLim.y1) if which == "y" else (ax.dataLim.x0, ax.dataLim.x1)
    if math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi < 1.2 * lo:  # (nearly) constant data: a factor
        (ax.set_ylim if which == "y" else ax.set_xlim)(lo / 2, hi * 2)  # of 2 around it, not rounding noise


PLAIN = FuncFormatter(lambda v, _pos=None: f"{v:g}")  # 0.5, 2, 1e-06: no 10^x notation, no trailing zeros


def readable_log_scale(ax, which: str = "y") -> None:
    """Log scale on `ax`'s x or y axis whose view always shows ≥ 2 plain labelled ticks (minor ticks unlabelled)."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    _widen_constant_log_view(ax, which)
    axis.set_major_locator(ReadableLogLocator())
    axis.set_major_formatter(PLAIN)
    axis.set_minor_formatter(NullFormatter())


class LayoutCache:
    """Constrained layout once, fixed layout after: a widget redraws the same kind of figure on every change, and
    constrained layout is a large part of a redraw. `reuse(name, fig)` gives a new figure the axes positions (colour
    bars included) a predecessor of the same name and shape (size, number of axes) got from constrained layout —
    when no tick label, axis label, title or legend entry is longer, and no legend has more entries, than then (so
    nothing can be pushed off the edge: a training app's legend grows as its runs arrive); `remember(name,
    fig)` records them after a figure was drawn, one layout per name and shape (a diagram whose height follows its
    rows keeps one per row count). Anything else is laid out afresh."""

    def __init__(self):
        self._layouts: dict = {}

    @staticmethod
    def _shape(fig) -> tuple:
        return tuple(round(float(v), 3) for v in fig.get_size_inches()), len(fig.axes)

    @staticmethod
    def _text_widths(fig) -> list[int]:
        """Characters of the longest tick label of every axis, of every axis label and title, and of the longest
        legend entry with the number of entries (computed, not drawn)."""
        widths = [len(fig.get_suptitle()) if hasattr(fig, "get_suptitle") else 0]
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                widths += [max(map(len, tick_labels(axis)), default=0), len(axis.get_label_text())]
            legend = ax.get_legend()
            entries = [t.get_text() for t in legend.get_texts()] if legend else []
            widths += [max(map(len, ax.get_title().splitlines() or [""])), max(map(len, entries), default=0),
                       len(entries)]
        return widths

    def reuse(self, name: str, fig) -> bool:
        widths, positions = self._layouts.get((name, self._shape(fig)), (None, None))
        if widths is None:
            return False
        own = [(ax.get_position(original=True), ax.get_in_layout()) for ax in fig.axes]
        for ax, position in zip(fig.axes, positions):  # first: how many ticks fit depends on the axes' size
            ax.set_position(position)
        if any(new > old for new, old in zip(self._text_widths(fig), widths)):
            for ax, (position, in_layout) in zip(fig.axes, own):  # as it was, for constrained layout (still on)
                ax.set_position(position)
                ax.set_in_layout(in_layout)  # set_position takes an axes out of the layout
            return False
        without_layout_engine(fig)
        return True

    def remember(self, name: str, fig) -> None:
        from matplotlib.layout_engine import ConstrainedLayoutEngine

        if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):  # positions from constrained layout
            self._layouts[name, self._shape(fig)] = (self._text_widths(fig),
                                                     [ax.get_position(original=False) for ax in fig.axes])


# Redrawing in place: a widget shows the same plot again and again with new data. A plot function that takes
# `fig=` marks the figures it makes (`made_by`); given one of its own figures with the same structure (`redraws`:
# the same schemes, buckets, shape), it sets the new data into the artists there instead of making new axes,
# ticks and artists: a third less time per update (bench/widget_latency.py). tests/test_widgets.py holds the
# PNGs equal to new figures'.


def made_by(fig, plot: str, structure: tuple) -> None:
    """Mark `fig` as made by `plot` for data of this `structure` (what fixes its artists: names, counts, shapes)."""
    fig.made_by = (plot, structure)


def redraws(fig, plot: str, structure: tuple) -> bool:
    """Whether `fig` (None, or a figure to redraw in place) was made by `plot` for data of the same `structure`."""
    return fig is not None and getattr(fig, "made_by", None) == (plot, structure)


def refit_view(ax) -> None:
    """After new data in its artists: `ax`'s limits fitted to them as a new figure's are (autoscale, margins,
    bars from 0, a constant log view widened)."""
    ax.relim()
    ax.set_autoscale_on(True)
    ax.autoscale_view()
    for which in ("x", "y"):
        if (ax.get_yscale() if which == "y" else ax.get_xscale()) == "log":
            _widen_constant_log_view(ax, which)


def show(fig) -> None:
    """Display a Figure made by new_figure (in a notebook or an ipywidgets Output)."""
    from IPython.display import display

    display(fig)


plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10})


def png_bytes(fig) -> bytes:
    """The PNG a notebook or a widget shows for `fig`: drawn once on its canvas at the figure's dpi (no
    bbox_inches="tight": the layout already fits; it would draw twice), encoded fast: every row unfiltered and
    zlib's fastest level (Pillow, through savefig, tries every PNG filter on every row: 2–3× the time for the
    same size on a plot's flat colours). Redraw speed before file size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return png_of_rgba(np.asarray(canvas.buffer_rgba()))


def png_of_rgba(pixels: np.ndarray) -> bytes:
    """(height, width, 4) uint8 RGBA → PNG bytes: 8-bit RGBA, every row unfiltered (filter type 0), zlib level 1."""
    height, width, _ = pixels.shape
    rows = np.zeros((height, 1 + 4 * width), np.uint8)  # each row: its filter type byte (0), then its pixels
    rows[:, 1:] = pixels.reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # bit depth 8, colour type 6 (RGBA)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
            + chunk(b"IEND", b""))


def _enable_inline_display() -> None:
    """In IPython, show Figures made without pyplot (new_figure) as PNG (png_bytes), like pyplot's inline figures.
    Leaves any Figure formatter already chosen (ipympl, svg, pyplot's inline backend) alone."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    from matplotlib.figure import Figure

    if not any(Figure in f.type_printers for f in shell.display_formatter.formatters.values()):
        shell.display_formatter.formatters["image/png"].for_type(Figure, png_bytes)


_enable_inline_display()

from . import beyond as beyond  # noqa: E402  (notebook 08 / E8–E10: plots.beyond.e8_figure, ...)
from . import rl as rl  # noqa: E402  (RL figures keep their own namespace: plots.rl.ratio_curves, ...)
from .dp import *  # noqa: E402, F403
from .tokenizers import *  # noqa: E402, F403
from .training import *  # noqa: E402, F403
from .weights import *  # noqa: E402, F403
