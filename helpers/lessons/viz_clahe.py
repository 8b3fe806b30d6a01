"""Figures and numbers of notebook 01's CLAHE section: the clip limits side by side, and each
masked defect's contrast-to-noise ratio before and after CLAHE (where it helps, where it hurts)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from helpers.lessons.viz_base import axes_off, mask_outline, new_figure


def _lightness(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0]


def clahe_figure(
    image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8, title: str = ""
) -> Figure:
    """Before / after CLAHE with the lightness histograms (and cumulative distributions)."""
    from helpers.core.images import apply_clahe

    after = apply_clahe(image, clip_limit, tile_grid)
    fig = new_figure(12, 3.6)
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.5])
    axes[0].imshow(image)
    axes[0].set_title("original")
    axes[1].imshow(after)
    axes[1].set_title(f"CLAHE clip {clip_limit:g}, {tile_grid}x{tile_grid} tiles")
    for ax in axes[:2]:
        axes_off(ax)
    ax = axes[2]
    twin = ax.twinx()
    centres = np.arange(2, 256, 4)
    for img, name, colour in ((image, "original", "tab:gray"), (after, "CLAHE", "tab:orange")):
        h = np.histogram(_lightness(img), bins=64, range=(0, 256))[0]
        ax.plot(centres, h / h.sum(), color=colour, label=f"{name} histogram")
        twin.plot(centres, np.cumsum(h) / h.sum(), "--", color=colour, label=f"{name} cumulative")
    ax.set_xlabel("lightness L (LAB, 0-255)")
    ax.set_ylabel("fraction of pixels (log, 64 bins)")
    twin.set_ylabel("cumulative fraction")
    ax.set_yscale("log")
    ax.set_title("Lightness before and after")
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower center", ncol=2)
    fig.suptitle(
        title or "Contrast-limited adaptive histogram equalisation (CLAHE) on the L channel"
    )
    return fig


def clahe_grid(
    image: np.ndarray,
    clip_limits: Sequence[float] = (1.0, 2.0, 4.0),
    tile_grids: Sequence[int] = (4, 8, 16),
    title: str = "",
) -> Figure:
    """The static version of the CLAHE explorer: one panel per (clip limit, tile grid)."""
    from helpers.core.images import apply_clahe

    fig = new_figure(2.4 * (len(clip_limits) + 1), 2.5 * len(tile_grids) + 0.4)
    axes = fig.subplots(len(tile_grids), len(clip_limits) + 1, squeeze=False)
    for i, t in enumerate(tile_grids):
        axes[i][0].imshow(image)
        axes[i][0].set_title("original", fontsize=9)
        axes[i][0].set_ylabel(f"{t}x{t} tiles")
        for j, c in enumerate(clip_limits, start=1):
            axes[i][j].imshow(apply_clahe(image, c, t))
            axes[i][j].set_title(f"clip {c:g}", fontsize=9)
        for ax in axes[i]:
            axes_off(ax)
    fig.suptitle(title or "CLAHE settings: clip limit (columns) x tile grid (rows)")
    return fig


# --------------------------------------------------------------------------- CLAHE: helps or hurts
def _around(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The metal around a defect: pixels within ~3% of the image side of ``mask``, outside it,
    and on the part (lighter than Otsu's threshold of the lightness), fixed on the original."""
    light = _lightness(image)
    _, part = cv2.threshold(light, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    r = max(3, round(0.03 * max(mask.shape)))
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    return grown.astype(bool) & ~mask & part.astype(bool)


def _contrast(image: np.ndarray, mask: np.ndarray, around: np.ndarray) -> tuple[float, ...]:
    light = _lightness(image).astype(np.float64)
    contrast = float(light[mask].mean() - light[around].mean())
    texture = float(light[around].std())
    return contrast, texture, abs(contrast) / max(texture, 1e-6)


def clahe_contrast(samples, clip_limits: Sequence[float], tile_grid: int = 8) -> dict:
    """How visible each defect is before and after CLAHE: for every sample with a non-empty
    mask, the defect's lightness ``contrast`` against the metal around it (mean L inside minus
    mean L around), the ``texture`` of that metal (std of L around) and their ratio, the
    contrast-to-noise ratio ``cnr`` = |contrast| / texture. Arrays [images, clip limits], clip
    limit 0 meaning no CLAHE; ``names`` ("defect/file") and ``samples`` in the same order."""
    from helpers.core.images import apply_clahe, load_image
    from helpers.data.mvtec import load_mask

    out = {"names": [], "samples": [], "contrast": [], "texture": [], "cnr": []}
    for s in samples:
        if s.mask_path is None:
            continue
        image = load_image(s.path)
        mask = load_mask(s.mask_path, image.shape[:2])
        around = _around(image, mask) if mask is not None and mask.any() else None
        if around is None or around.sum() < 10:
            continue
        stats = [
            _contrast(apply_clahe(image, c, tile_grid) if c else image, mask, around)
            for c in clip_limits
        ]
        out["names"].append(f"{s.defect}/{s.path.name}")
        out["samples"].append(s)
        for i, key in enumerate(("contrast", "texture", "cnr")):
            out[key].append([row[i] for row in stats])
    for key in ("contrast", "texture", "cnr"):
        out[key] = np.array(out[key], dtype=np.float64).reshape(len(out["names"]), len(clip_limits))
    out["clip_limits"] = list(clip_limits)
    return out


def clahe_cases_figure(stats: dict, clip_limit: float, tile_grid: int) -> Figure:
    """The two defects of ``stats`` (:func:`clahe_contrast`, with clip limits 0 and
    ``clip_limit``) whose contrast-to-noise ratio CLAHE at ``clip_limit`` raises most ("helps")
    and lowers most ("hurts"): each image with its defect outlined, then a close-up of the defect
    before and after CLAHE (no outline, so the defect itself shows), titled with the defect's
    contrast, the texture around it and their ratio."""
    from helpers.core.images import apply_clahe, load_image
    from helpers.data.mvtec import load_mask

    col, off = stats["clip_limits"].index(clip_limit), stats["clip_limits"].index(0)
    gain = stats["cnr"][:, col] - stats["cnr"][:, off]
    cases = [
        (
            label,
            stats["samples"][i],
            *(tuple(stats[k][i, c] for k in ("contrast", "texture", "cnr")) for c in (off, col)),
        )
        for label, i in (("helps", int(gain.argmax())), ("hurts", int(gain.argmin())))
    ]
    fig = new_figure(10, 3.4 * len(cases))
    axes = fig.subplots(len(cases), 3, squeeze=False)
    for row, (label, s, before, after) in zip(axes, cases):
        image = load_image(s.path)
        mask = load_mask(s.mask_path, image.shape[:2])
        ys, xs = np.nonzero(mask)
        half = max(32, int(0.6 * max(np.ptp(ys), np.ptp(xs))) + round(0.03 * max(mask.shape)))
        cy, cx = (int(ys.mean()), int(xs.mean()))
        top, left = max(0, cy - half), max(0, cx - half)
        box = (slice(top, cy + half), slice(left, cx + half))
        row[0].imshow(image)
        mask_outline(row[0], mask)
        row[0].add_patch(
            Rectangle((left, top), 2 * half, 2 * half, fill=False, edgecolor="yellow", lw=1)
        )
        row[0].set_title(f"{label}: {s.defect}/{s.path.name}", fontsize=10)
        for ax, img, name, (c, t, r) in (
            (row[1], image, "original", before),
            (
                row[2],
                apply_clahe(image, clip_limit, tile_grid),
                f"CLAHE clip {clip_limit:g}, {tile_grid}x{tile_grid}",
                after,
            ),
        ):
            ax.imshow(img[box], interpolation="nearest")
            ax.set_title(
                f"{name} (close-up)\ncontrast {c:+.0f}, texture {t:.1f}, CNR {r:.2f}", fontsize=9
            )
        for ax in row:
            axes_off(ax)
    fig.suptitle(
        "CLAHE on two defects: the defect's lightness contrast against the part around it, "
        "and that part's texture"
    )
    return fig
