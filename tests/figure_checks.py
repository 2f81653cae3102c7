"""Readability checks for a matplotlib Figure, after drawing it: what a reader needs to read a plot at a glance.

`figure_problems(fig)` returns one line per problem (empty list: readable); `assert_readable(fig)` fails with them.
Checked on every visible axes (colour bars included):
  - every data axis shows ≥ 2 labelled ticks inside its view (log axes too); an axis sharing its range with a
    sibling that shows them (the upper panels of a grid) is fine, and so is a categorical axis (fixed ticks at
    whole numbers) with a single category in view (a one-row diagram: its row 0 is all there is to label);
  - bars sit on a linear value axis whose view includes 0 (a bar on a log axis starts at an arbitrary floor);
  - a legend inside an axes covers no data (line vertices, markers, bars);
  - the tick labels of an axis do not overlap each other;
  - no text (labels, titles, tick labels, legends) is cut off by the figure's edge.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.axis import XAxis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator

EDGE_PX = 1.0  # text may touch the figure's edge by this much (anti-aliasing)


def labelled_ticks(axis) -> list[float]:
    """Positions of the ticks of `axis` that show a non-empty label inside the view interval."""
    lo, hi = sorted(axis.get_view_interval())
    span = hi - lo
    found = set()
    for tick in axis.get_major_ticks() + axis.get_minor_ticks():
        loc = tick.get_loc()
        labels = [tick.label1, tick.label2]
        shown = any(label.get_visible() and label.get_text().strip() for label in labels)
        if tick.get_visible() and shown and lo - 1e-9 * span <= loc <= hi + 1e-9 * span:
            found.add(float(loc))
    return sorted(found)


def _data_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


def _is_colorbar(ax) -> bool:
    return ax.get_label() == "<colorbar>"


def _single_category(axis) -> bool:
    """A categorical axis (fixed ticks at whole numbers) whose view spans one category, its tick labelled."""
    lo, hi = sorted(axis.get_view_interval())
    ticks = labelled_ticks(axis)
    return (isinstance(axis.get_major_locator(), FixedLocator) and hi - lo <= 1 + 1e-9 and len(ticks) == 1
            and ticks[0].is_integer())


def _tick_problems(ax, name: str) -> list[str]:
    problems = []
    if _is_colorbar(ax):  # only the long side of a colour bar carries the scale
        box = ax.get_position()
        axes_to_check = [ax.yaxis if box.height >= box.width else ax.xaxis]
    else:
        axes_to_check = [ax.xaxis, ax.yaxis]
    for axis in axes_to_check:
        letter = "x" if isinstance(axis, XAxis) else "y"
        group = ax.get_shared_x_axes() if letter == "x" else ax.get_shared_y_axes()
        siblings = [a for a in group.get_siblings(ax) if a.get_visible()]
        best = max(len(labelled_ticks(a.xaxis if letter == "x" else a.yaxis)) for a in siblings)
        if best < 2 and not _single_category(axis):
            scale = axis.get_scale()
            problems.append(f"{name}: {letter} axis ({scale}) has {best} labelled tick(s) in view "
                            f"{tuple(round(float(v), 6) for v in axis.get_view_interval())}, needs ≥ 2")
    return problems


def _bar_problems(ax, name: str) -> list[str]:
    problems = []
    for container in ax.containers:
        if not isinstance(container, BarContainer) or not container.patches:
            continue
        vertical = container.orientation == "vertical"
        axis = ax.yaxis if vertical else ax.xaxis
        if axis.get_scale() != "linear":
            problems.append(f"{name}: bars on a {axis.get_scale()} axis start at an arbitrary floor: use a linear "
                            "axis from 0 or markers")
            continue
        lo, hi = sorted(ax.get_ylim() if vertical else ax.get_xlim())
        if not lo <= 0 <= hi:
            problems.append(f"{name}: bars on a linear axis whose view ({lo:.3g}, {hi:.3g}) leaves out 0")
    return problems


def _data_points(ax) -> np.ndarray:
    """Display coordinates of the data drawn on `ax`: line vertices (densified along segments), scatter markers,
    bar rectangles' corners and centres. Only points inside the axes' box count."""
    points = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.column_stack(line.get_data()).astype(float))
        xy = xy[np.isfinite(xy).all(1)]
        if len(xy) > 1:
            steps = np.linspace(0, 1, 12)[:-1, None]
            segments = [a + steps * (b - a) for a, b in zip(xy[:-1], xy[1:])] if line.get_linestyle() != "None" else []
            xy = np.concatenate([*segments, xy[-1:]]) if segments else xy
        points.append(xy)
    for collection in ax.collections:
        if isinstance(collection, PathCollection) and collection.get_visible():
            offsets = collection.get_offsets()
            if len(offsets):
                points.append(collection.get_offset_transform().transform(np.asarray(offsets, float)))
    for container in ax.containers:
        if isinstance(container, BarContainer):
            for patch in container.patches:
                box = patch.get_window_extent()
                if box.width > 0 and box.height > 0:
                    xs, ys = np.linspace(box.x0, box.x1, 5), np.linspace(box.y0, box.y1, 5)
                    points.append(np.array([(x, y) for x in xs for y in ys]))
    if not points:
        return np.empty((0, 2))
    xy = np.concatenate(points)
    box = ax.get_window_extent()
    inside = (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
    return xy[inside & np.isfinite(xy).all(1)]


def _overlapping_tick_labels(ax, name: str, renderer) -> list[str]:
    problems = []
    for letter, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        lo, hi = sorted(axis.get_view_interval())
        boxes = [tick.label1.get_window_extent(renderer).padded(-1) for tick in axis.get_major_ticks()
                 if tick.label1.get_visible() and tick.label1.get_text().strip() and lo <= tick.get_loc() <= hi
                 and tick.label1.get_rotation() % 180 == 0]  # a rotated label's box is not its outline
        if any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            problems.append(f"{name}: {letter} tick labels overlap each other")
    return problems


def _legend_problems(ax, name: str, renderer) -> list[str]:
    legend = ax.get_legend()
    if legend is None or not legend.get_visible():
        return []
    box = legend.get_window_extent(renderer).padded(-2)
    xy = _data_points(ax)
    covered = (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
    if covered.any():
        return [f"{name}: the legend covers {int(covered.sum())} data point(s) of the plot"]
    return []


def _clipped_text(fig: Figure, renderer) -> list[str]:
    width, height = fig.bbox.width, fig.bbox.height
    problems = []
    texts = [fig._suptitle] if getattr(fig, "_suptitle", None) else []
    for ax in _data_axes(fig):
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            texts += [t for tick in axis.get_major_ticks() + axis.get_minor_ticks() for t in (tick.label1, tick.label2)
                      if min(axis.get_view_interval()) <= tick.get_loc() <= max(axis.get_view_interval())]
        if ax.get_legend():
            texts += list(ax.get_legend().get_texts())
    for legend in fig.legends:
        texts += list(legend.get_texts())
    for text in texts:
        if text is None or not text.get_visible() or not text.get_text().strip():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < -EDGE_PX or box.y0 < -EDGE_PX or box.x1 > width + EDGE_PX or box.y1 > height + EDGE_PX:
            problems.append(f"text {text.get_text()[:40]!r} is cut off by the figure's edge")
    return problems


def figure_problems(fig: Figure) -> list[str]:
    """Draw `fig` (Agg, no pyplot) and list what makes it hard to read; [] when nothing does."""
    canvas = FigureCanvasAgg(fig) if not isinstance(fig.canvas, FigureCanvasAgg) else fig.canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    problems = []
    for i, ax in enumerate(_data_axes(fig)):
        name = f"axes {i} ({'colour bar' if _is_colorbar(ax) else ax.get_title() or ax.get_ylabel() or 'untitled'})"
        problems += _tick_problems(ax, name)
        problems += _bar_problems(ax, name)
        problems += _legend_problems(ax, name, renderer)
        problems += _overlapping_tick_labels(ax, name, renderer)
    return problems + _clipped_text(fig, renderer)


def assert_readable(fig: Figure) -> None:
    problems = figure_problems(fig)
    assert not problems, "figure is hard to read:\n  " + "\n  ".join(problems)


def figure_text(fig: Figure) -> str:
    """Every text the figure shows (titles, annotations, legends), for checking that a headline number is on it."""
    parts = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) else []
    parts += [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [ax.get_title(loc) for loc in ("left", "center", "right")] + [t.get_text() for t in ax.texts]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    for legend in fig.legends:
        parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(p for p in parts if p)


def decoded(png: bytes) -> np.ndarray:
    """The RGBA pixels of PNG bytes (asserted to be a PNG), as Pillow reads them."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGBA"))
