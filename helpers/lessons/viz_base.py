"""What every figure module shares: the :class:`Table`, figure and axes helpers, the heat-map
colour scale and the mask outline."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

# Anomaly maps: perceptually uniform (equal steps in value look like equal steps in colour, dark =
# low, bright = high), drawn opaque beside the image so that every colour reads off the colour bar
HEATMAP_CMAP = "inferno"
MASK_COLOUR = "lime"


# --------------------------------------------------------------------------- tables
class Table:
    """A small table: ``Table(rows, headers, title)``; floats shown with ``floatfmt``, None as
    'n/a'. Displays as HTML in a notebook and as text in a terminal or a test."""

    def __init__(
        self,
        rows: Sequence[Sequence[Any]],
        headers: Sequence[str],
        title: str = "",
        floatfmt: str = ".3f",
    ):
        self.rows = [list(r) for r in rows]
        self.headers = list(headers)
        self.title = title
        self.floatfmt = floatfmt

    def _fmt(self, v: Any) -> str:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "n/a"
        if isinstance(v, (float, np.floating)):
            return format(float(v), self.floatfmt)
        return str(v)

    def __str__(self) -> str:
        cells = [self.headers] + [[self._fmt(v) for v in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(([self.title] if self.title else []) + lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(self._fmt(v))}</td>" for v in r) + "</tr>"
            for r in self.rows
        )
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def new_figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def axes_off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def mask_outline(ax, mask: np.ndarray, colour: str = MASK_COLOUR) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)


def map_range(
    maps: Sequence[np.ndarray | None], lo: float = 1.0, hi: float = 99.9
) -> tuple[float, float]:
    """A common colour range for anomaly maps (percentiles over all maps)."""
    vals = (
        np.concatenate([m[::4, ::4].ravel() for m in maps if m is not None])
        if any(m is not None for m in maps)
        else np.zeros(1)
    )
    vmin, vmax = np.percentile(vals, lo), np.percentile(vals, hi)
    return float(vmin), float(max(vmax, vmin + 1e-6))


def heatmap(ax, amap: np.ndarray, norm: Normalize, mask: np.ndarray | None = None):
    """The anomaly map, opaque (its colours are the colour bar's; a map blended over the image
    would match no colour of the bar), with the ground truth outlined. Show the image in the
    panel beside it."""
    im = ax.imshow(amap, cmap=HEATMAP_CMAP, norm=norm)
    mask_outline(ax, mask)
    axes_off(ax)
    return im
