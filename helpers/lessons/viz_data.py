"""What every figure shares (:class:`Table`, figure and axes helpers, the heat-map colours) and
notebook 01's dataset figures (counts, samples, image statistics, the brightness baseline)."""

from __future__ import annotations

import functools
import html
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# Anomaly maps: perceptually uniform (equal steps in value look like equal steps in colour, dark =
# low, bright = high), drawn opaque beside the image so that every colour reads off the colour bar
HEATMAP_CMAP = "inferno"
MASK_COLOUR = "lime"


class Table:
    """``Table(rows, headers, title)``; floats shown with ``floatfmt``, None as 'n/a'. HTML in a
    notebook, aligned text in a terminal or a test."""

    def __init__(self, rows, headers: Sequence[str], title: str = "", floatfmt: str = ".3f"):
        self.rows, self.headers = [list(r) for r in rows], list(headers)
        self.title, self.floatfmt = title, floatfmt

    def _fmt(self, v: Any) -> str:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "n/a"
        return format(float(v), self.floatfmt) if isinstance(v, (float, np.floating)) else str(v)

    def __str__(self) -> str:
        cells = [self.headers] + [[self._fmt(v) for v in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(([self.title] if self.title else []) + lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        row = lambda tag, values: "".join(f"<{tag}>{html.escape(v)}</{tag}>" for v in values)
        body = "".join(f"<tr>{row('td', map(self._fmt, r))}</tr>" for r in self.rows)
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        head = f"<thead><tr>{row('th', self.headers)}</tr></thead>"
        return f"<table>{cap}{head}<tbody>{body}</tbody></table>"


def new_figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")  # no pyplot: nothing is shown twice


def axes_off(*axes) -> None:
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def mask_outline(ax, mask: np.ndarray | None, colour: str = MASK_COLOUR) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)


def map_range(maps, lo: float = 1.0, hi: float = 99.9) -> tuple[float, float]:
    """A common colour range for anomaly maps (percentiles over all maps)."""
    vals = [m[::4, ::4].ravel() for m in maps if m is not None]
    vmin, vmax = np.percentile(np.concatenate(vals) if vals else np.zeros(1), [lo, hi])
    return float(vmin), float(max(vmax, vmin + 1e-6))


DISPLAY_PX = 512  # a panel is at most about 350 px wide: larger inputs only cost memory and time


def for_display(img, amap=None, mask=None):
    """``img``, ``amap`` and ``mask`` (each may be None but ``img``) at most DISPLAY_PX a side, for
    drawing: the image area-averaged, the map and mask by nearest neighbour (the map keeps values
    it has). 1024-px panels rendered through hundreds of MB of temporaries (a whole category's
    galleries took notebook 05 to 3 GB) and drew slower: the sample grid, map previews and
    galleries, each many whole images, draw through it."""
    f = -(-max(img.shape[:2]) // DISPLAY_PX)
    if f <= 1:
        return img, amap, mask
    size = (max(1, img.shape[1] // f), max(1, img.shape[0] // f))
    near = lambda a: None if a is None else cv2.resize(a, size, interpolation=cv2.INTER_NEAREST)
    small = cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA)
    return small, near(amap), None if mask is None else near(mask.astype(np.uint8)).astype(bool)


def heatmap(ax, amap: np.ndarray, norm: Normalize, mask: np.ndarray | None = None):
    """The anomaly map, opaque (a map blended over the image would match no colour of the bar),
    the ground truth outlined; the image goes in the panel beside it."""
    im = ax.imshow(amap, cmap=HEATMAP_CMAP, norm=norm)
    mask_outline(ax, mask)
    axes_off(ax)
    return im


# --------------------------------------------------------------------------- notebook 01: the data
def examples(samples, per_defect: int = 1) -> list:
    """The first ``per_defect`` samples of each defect type, in the samples' order."""
    seen: Counter = Counter()
    return [s for s in samples if (seen.update([s.defect]) or seen[s.defect] <= per_defect)]


def counts_table(train, test) -> Table:
    """Images per split and defect type, with how many have a ground-truth mask."""
    by_defect = Counter(s.defect for s in test)
    masks = Counter(s.defect for s in test if s.mask_path is not None)
    rows = [("train", "good", sum(1 for _ in train), 0)]
    rows += [("test", d, n, masks.get(d, 0)) for d, n in by_defect.items()]
    rows.append(("total", "", len(train) + len(test), sum(masks.values())))
    headers = ["split", "defect type", "images", "with mask"]
    return Table(rows, headers, "Images per split and defect type")


def counts_figure(train, test) -> Figure:
    by_defect = Counter(s.defect for s in test)
    names = ["train/good"] + [f"test/{d}" for d in by_defect]
    colours = ["tab:blue"] + ["tab:green" if d == "good" else "tab:red" for d in by_defect]
    fig = new_figure(max(6, 1.1 * len(names)), 3.6)
    ax = fig.add_subplot()
    ax.bar_label(ax.bar(names, [len(train), *by_defect.values()], color=colours))
    ax.set(xlabel="split / defect type", ylabel="number of images")
    ax.set_title("Images per split and defect type")
    ax.tick_params(axis="x", rotation=30)
    kinds = {"tab:blue": "training (good only)", "tab:green": "test, good"}
    kinds["tab:red"] = "test, defective"
    ax.legend(handles=[Patch(color=c, label=text) for c, text in kinds.items()], fontsize=8)
    ax.margins(y=0.12)
    return fig


def sample_grid(samples, per_defect: int = 2) -> Figure:
    """Examples of each defect type (columns): each image as it is, and below it the same image
    with its mask tinted red and outlined green (the plain copy shows what the tint hides)."""
    from helpers.core.images import load_image
    from helpers.data.mvtec import load_mask

    groups: dict[str, list] = {}
    for s in samples:
        if len(group := groups.setdefault(s.defect, [])) < per_defect:
            group.append(s)
    fig = new_figure(2.3 * len(groups), 4.6 * per_defect + 0.4)
    axes = fig.subplots(2 * per_defect, len(groups), squeeze=False)
    for j, (d, group) in enumerate(groups.items()):
        for i in range(per_defect):
            top, below = axes[2 * i][j], axes[2 * i + 1][j]
            axes_off(top, below)
            if i >= len(group):
                top.set_axis_off()
                below.set_axis_off()
                continue
            img = load_image(group[i].path)
            mask = load_mask(group[i].mask_path, img.shape[:2]) if group[i].mask_path else None
            img, _, mask = for_display(img, None, mask)
            top.imshow(img)
            top.set_title(f"{d}  ({group[i].path.name})", fontsize=9)
            tint = img.copy()
            if mask is not None:
                tint[mask] = (0.5 * tint[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
            below.imshow(tint)
            mask_outline(below, mask)
            below.set_title("its ground truth" if mask is not None else "no defect", fontsize=8)
    title = "Test images per defect type, each above its ground truth (tinted red, outlined green)"
    fig.suptitle(title)
    return fig


def image_statistics(samples) -> tuple[Table, Figure]:
    """Image sizes, per-channel means and a brightness distribution per defect type."""
    sizes, bright = Counter(), {}
    hist = {"good": np.zeros((3, 64)), "defective": np.zeros((3, 64))}
    for s, (size, mean, counts) in zip(samples, _summaries(samples)):
        sizes[size] += 1
        bright.setdefault(s.defect, []).append(mean)
        hist["good" if s.defect == "good" else "defective"] += counts
    rows = [(d, len(v), float(np.mean(v)), float(np.std(v))) for d, v in bright.items()]
    title = "Mean grey level (0-255) per defect type; sizes: "
    title += ", ".join(f"{k} ({v})" for k, v in sizes.items())
    headers = ["defect type", "images", "mean brightness", "std between images"]
    table = Table(rows, headers, title, floatfmt=".1f")
    fig = new_figure(11, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.boxplot(list(bright.values()), tick_labels=list(bright))
    ax1.set_title("Mean brightness per image")
    ax1.set(xlabel="defect type", ylabel="mean grey level (0-255)")
    ax1.tick_params(axis="x", rotation=30)
    for c, colour in enumerate(("red", "green", "blue")):
        for key, style in (("good", "-"), ("defective", "--")):
            h = hist[key][c] / max(hist[key][c].sum(), 1)
            ax2.plot(np.linspace(2, 254, 64), h, style, color=colour, label=f"{colour} ({key})")
    ax2.set_yscale("log")
    ax2.set_title("Pixel value histogram per channel")
    ax2.set(xlabel="pixel value", ylabel="fraction of pixels (log)")
    ax2.legend(fontsize=7, ncol=2)
    return table, fig


def _summaries(samples) -> list[tuple[str, float, np.ndarray]]:
    """(size "WxH", mean grey level, [3, 64] channel histogram) of each sample's image, read by
    two threads (the PNG decode releases the GIL) and kept for the next call (01: one read each)."""
    keys = [(str(s.path), _mtime(s.path)) for s in samples]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda key: _summary(*key), keys))


def _mtime(path) -> int:  # -1 for a missing file: load_image then says what is wrong
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=4096)
def _summary(path: str, mtime_ns: int) -> tuple[str, float, np.ndarray]:
    from helpers.core.images import load_image

    img = load_image(path)
    counts = [cv2.calcHist([img], [c], None, [64], [0, 256]).ravel() for c in range(3)]  # bins of 4
    return f"{img.shape[1]}x{img.shape[0]}", float(np.mean(cv2.mean(img)[:3])), np.stack(counts)


def brightness_baseline(samples) -> Table:
    """Notebooks 01 and 05: a brightness-only detector, the image AUROC of each test image's mean
    grey level, per defect type against the good test images (0.5: no signal; near 1 or 0: a
    shortcut in the data), also as ``table.aurocs`` ({type or "all defects": AUROC})."""
    from helpers.evaluation.metrics import image_auroc

    bright = {}
    test = [s for s in samples if s.split == "test"]
    for s, (_, mean, _) in zip(test, _summaries(test)):
        bright.setdefault(s.defect, []).append(mean)
    good = bright.get("good", [])
    groups = [(d, v) for d, v in bright.items() if d != "good"]
    groups.append(("all defects", [b for _, v in groups for b in v]))
    rows = []
    for name, values in groups:
        auroc = image_auroc([0] * len(good) + [1] * len(values), good + values) if good else None
        rows.append((name, len(values), float(np.mean(values)), auroc, _brightness_reading(auroc)))
    table = Table(
        rows,
        ["defect type", "images", "mean brightness", "AUROC (brighter = defective)", "reading"],
        f"Brightness-only detector: mean grey level vs the {len(good)} good test images "
        f"(their mean {np.mean(good) if good else float('nan'):.1f})",
        floatfmt=".2f",
    )
    table.aurocs = {row[0]: row[3] for row in rows}
    return table


def _brightness_reading(auroc: float | None) -> str:
    if auroc is None:
        return "n/a (no good test images)"
    sep = max(auroc, 1 - auroc)  # a detector may also flag darker images
    side = "brighter" if auroc >= 0.5 else "darker"
    if sep >= 0.9:
        return f"separates: defective {side}"
    return f"partly: defective mostly {side}" if sep >= 0.7 else "little or no signal"
