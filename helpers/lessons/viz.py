"""Figures and tables of the notebook series, gathered here so that notebooks write
``H.viz.<name>``: shared parts and notebook 01's dataset figures in ``viz_data``, 02 and 03 in
``viz_features``, 04 and 05 in ``viz_scores``, and notebook 01's CLAHE section below. Figures are
matplotlib ``Figure`` objects (no pyplot: nothing shown twice, no display needed in tests) with
titles, axis labels and colour bars; anomaly maps are in ORIGINAL pixels, beside the image."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from helpers.lessons.viz_data import (  # noqa: F401
    HEATMAP_CMAP,
    MASK_COLOUR,
    Table,
    axes_off,
    brightness_baseline,
    counts_figure,
    counts_table,
    examples,
    heatmap,
    image_statistics,
    map_range,
    mask_outline,
    new_figure,
    sample_grid,
)
from helpers.lessons.viz_features import (  # noqa: F401
    bank_megabytes,
    bank_size_figure,
    coreset_scatter,
    coverage_figure,
    pca_figure,
    pca_rgb,
    projection_figure,
    rotation_figure,
    turned_view,
)
from helpers.lessons.viz_scores import (  # noqa: F401
    confusion_counts,
    confusion_figure,
    gallery,
    map_steps,
    maps_preview,
    roc_figure,
    score_histogram,
    select_cases,
    verdict,
)


# --------------------------------------------------------------------------- notebook 01: CLAHE
def _lightness(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0]


def clahe_figure(image: np.ndarray, clip_limit=2.0, tile_grid=8, title: str = "") -> Figure:
    """Before / after CLAHE with the lightness histograms and cumulative distributions (the
    explorer of :func:`helpers.lessons.widgets.clahe_explorer`)."""
    from helpers.core.images import apply_clahe

    after = apply_clahe(image, clip_limit, tile_grid)
    fig = new_figure(12, 3.6)
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.5])
    axes[0].imshow(image)
    axes[0].set_title("original")
    axes[1].imshow(after)
    axes[1].set_title(f"CLAHE clip {clip_limit:g}, {tile_grid}x{tile_grid} tiles")
    axes_off(*axes[:2])
    ax, twin = axes[2], axes[2].twinx()
    centres = np.arange(2, 256, 4)
    for img, name, colour in ((image, "original", "tab:gray"), (after, "CLAHE", "tab:orange")):
        h = np.histogram(_lightness(img), bins=64, range=(0, 256))[0]
        ax.plot(centres, h / h.sum(), color=colour, label=f"{name} histogram")
        twin.plot(centres, np.cumsum(h) / h.sum(), "--", color=colour, label=f"{name} cumulative")
    ax.set(xlabel="lightness L (LAB, 0-255)", ylabel="fraction of pixels (log, 64 bins)")
    twin.set_ylabel("cumulative fraction")
    ax.set_yscale("log")
    ax.set_title("Lightness before and after")
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower center", ncol=2)
    title = title or "Contrast-limited adaptive histogram equalisation (CLAHE) on the L channel"
    fig.suptitle(title)
    return fig


def clahe_grid(image: np.ndarray, clip_limits: Sequence[float] = (1.0, 2.0, 4.0),
               tile_grids: Sequence[int] = (4, 8, 16), title: str = "") -> Figure:  # fmt: skip
    """The CLAHE explorer's static fallback: one panel per (clip limit, tile grid)."""
    from helpers.core.images import apply_clahe

    fig = new_figure(2.4 * (len(clip_limits) + 1), 2.5 * len(tile_grids) + 0.4)
    axes = fig.subplots(len(tile_grids), len(clip_limits) + 1, squeeze=False)
    for row, t in zip(axes, tile_grids):
        row[0].imshow(image)
        row[0].set_title("original", fontsize=9)
        row[0].set_ylabel(f"{t}x{t} tiles")
        for ax, c in zip(row[1:], clip_limits):
            ax.imshow(apply_clahe(image, c, t))
            ax.set_title(f"clip {c:g}", fontsize=9)
        axes_off(*row)
    fig.suptitle(title or "CLAHE settings: clip limit (columns) x tile grid (rows)")
    return fig


def _contrast(image: np.ndarray, mask: np.ndarray, around: np.ndarray) -> tuple[float, ...]:
    light = _lightness(image).astype(np.float64)
    contrast = float(light[mask].mean() - light[around].mean())
    texture = float(light[around].std())
    return contrast, texture, abs(contrast) / max(texture, 1e-6)


def clahe_contrast(samples, clip_limits: Sequence[float], tile_grid: int = 8) -> dict:
    """How visible each masked defect is before and after CLAHE: its lightness ``contrast``
    against the metal around it (mean L inside minus around: within ~3% of the image side, on the
    part by Otsu's threshold), that metal's ``texture`` (std of L) and the contrast-to-noise ratio
    ``cnr`` = |contrast| / texture. Arrays [images, clip limits] (clip 0: no CLAHE), with
    ``names`` ("defect/file"), ``samples`` and ``clip_limits``."""
    from helpers.core.images import apply_clahe, load_image
    from helpers.data.mvtec import load_mask

    keys = ("contrast", "texture", "cnr")
    out = {"names": [], "samples": [], **{k: [] for k in keys}}
    for s in samples:
        if s.mask_path is None:
            continue
        image = load_image(s.path)
        mask = load_mask(s.mask_path, image.shape[:2])
        if mask is None or not mask.any():
            continue
        _, part = cv2.threshold(_lightness(image), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        r = max(3, round(0.03 * max(mask.shape)))
        grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8))
        around = grown.astype(bool) & ~mask & part.astype(bool)
        if around.sum() < 10:
            continue
        stats = [
            _contrast(apply_clahe(image, c, tile_grid) if c else image, mask, around)
            for c in clip_limits
        ]
        out["names"].append(f"{s.defect}/{s.path.name}")
        out["samples"].append(s)
        for i, key in enumerate(keys):
            out[key].append([row[i] for row in stats])
    for key in keys:
        out[key] = np.array(out[key], dtype=np.float64).reshape(len(out["names"]), len(clip_limits))
    return {**out, "clip_limits": list(clip_limits)}


def clahe_cases_figure(stats: dict, clip_limit: float, tile_grid: int) -> Figure:
    """The defects of ``stats`` (:func:`clahe_contrast` with clip limits 0 and ``clip_limit``)
    whose CNR CLAHE raises most ("helps") and lowers most ("hurts"): the image with the defect
    outlined, then close-ups before and after CLAHE (no outline), with contrast, texture, CNR."""
    from helpers.core.images import apply_clahe, load_image
    from helpers.data.mvtec import load_mask

    col, off = stats["clip_limits"].index(clip_limit), stats["clip_limits"].index(0)
    gain = stats["cnr"][:, col] - stats["cnr"][:, off]
    picks = (("helps", int(gain.argmax())), ("hurts", int(gain.argmin())))
    fig = new_figure(10, 3.4 * len(picks))
    axes = fig.subplots(len(picks), 3, squeeze=False)
    for row, (label, i) in zip(axes, picks):
        s = stats["samples"][i]
        image = load_image(s.path)
        mask = load_mask(s.mask_path, image.shape[:2])
        ys, xs = np.nonzero(mask)
        half = max(32, int(0.6 * max(np.ptp(ys), np.ptp(xs))) + round(0.03 * max(mask.shape)))
        cy, cx = (int(ys.mean()), int(xs.mean()))
        top, left = max(0, cy - half), max(0, cx - half)
        box = (slice(top, cy + half), slice(left, cx + half))
        row[0].imshow(image)
        mask_outline(row[0], mask)
        square = Rectangle((left, top), 2 * half, 2 * half, fill=False, edgecolor="yellow", lw=1)
        row[0].add_patch(square)
        row[0].set_title(f"{label}: {s.defect}/{s.path.name}", fontsize=10)
        clahe = f"CLAHE clip {clip_limit:g}, {tile_grid}x{tile_grid}"
        for ax, img, name, c in (
            (row[1], image, "original", off),
            (row[2], apply_clahe(image, clip_limit, tile_grid), clahe, col),
        ):
            con, tex, cnr = (stats[k][i, c] for k in ("contrast", "texture", "cnr"))
            ax.imshow(img[box], interpolation="nearest")
            title = f"{name} (close-up)\ncontrast {con:+.0f}, texture {tex:.1f}, CNR {cnr:.2f}"
            ax.set_title(title, fontsize=9)
        axes_off(*row)
    fig.suptitle(
        "CLAHE on two defects: the defect's lightness contrast against the part around it, "
        "and that part's texture"
    )
    return fig
