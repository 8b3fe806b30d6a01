"""Figures and tables for the notebook series. Every function returns a matplotlib ``Figure``
(built without pyplot, so nothing is shown twice and tests need no display) or a :class:`Table`
that renders as HTML in Jupyter and as aligned text elsewhere. Figures have titles, axis labels
and colour bars; anomaly maps are drawn over the ORIGINAL image pixels."""
from __future__ import annotations

import html
from collections import Counter
from typing import Any, Sequence

import cv2
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

HEATMAP_CMAP = "jet"
MASK_COLOUR = "lime"


# --------------------------------------------------------------------------- tables
class Table:
    """A small table: ``Table(rows, headers, title)``; floats shown with ``floatfmt``, None as
    'n/a'. Displays as HTML in a notebook and as text in a terminal or a test."""

    def __init__(self, rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str = "",
                 floatfmt: str = ".3f"):
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
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._fmt(v))}</td>" for v in r) + "</tr>"
                       for r in self.rows)
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), layout="constrained")


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- notebook 01
def examples(samples, per_defect: int = 1) -> list:
    """The first ``per_defect`` samples of each defect type, in the samples' order."""
    seen: Counter = Counter()
    out = []
    for s in samples:
        if seen[s.defect] < per_defect:
            out.append(s)
            seen[s.defect] += 1
    return out


def counts_table(train, test) -> Table:
    """Images per split and defect type, with how many have a ground-truth mask."""
    rows = [("train", "good", sum(1 for _ in train), 0)]
    by_defect = Counter(s.defect for s in test)
    masks = Counter(s.defect for s in test if s.mask_path is not None)
    rows += [("test", d, n, masks.get(d, 0)) for d, n in by_defect.items()]
    rows.append(("total", "", len(train) + len(test), sum(masks.values())))
    return Table(rows, ["split", "defect type", "images", "with mask"], "Images per split and defect type")


def counts_figure(train, test) -> Figure:
    by_defect = Counter(s.defect for s in test)
    names = ["train/good"] + [f"test/{d}" for d in by_defect]
    values = [len(train)] + list(by_defect.values())
    colours = ["tab:blue"] + ["tab:green" if d == "good" else "tab:red" for d in by_defect]
    fig = _figure(max(6, 1.1 * len(names)), 3.6)
    ax = fig.add_subplot()
    bars = ax.bar(names, values, color=colours)
    ax.bar_label(bars)
    ax.set_ylabel("number of images")
    ax.set_xlabel("split / defect type")
    ax.set_title("Images per split and defect type")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(handles=[Patch(color="tab:blue", label="training (good only)"),
                       Patch(color="tab:green", label="test, good"), Patch(color="tab:red", label="test, defective")],
              fontsize=8)
    ax.margins(y=0.12)
    return fig


def _mask_outline(ax, mask: np.ndarray, colour: str = MASK_COLOUR) -> None:
    if mask is not None and mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)


def sample_grid(samples, per_defect: int = 2) -> Figure:
    """Examples of each defect type (columns) with the ground-truth mask outlined and tinted."""
    from .data import load_image, load_mask
    groups: dict[str, list] = {}
    for s in samples:
        groups.setdefault(s.defect, [])
        if len(groups[s.defect]) < per_defect:
            groups[s.defect].append(s)
    cols = list(groups)
    fig = _figure(2.4 * len(cols), 2.5 * per_defect + 0.4)
    axes = fig.subplots(per_defect, len(cols), squeeze=False)
    for j, d in enumerate(cols):
        for i in range(per_defect):
            ax = axes[i][j]
            _off(ax)
            if i >= len(groups[d]):
                ax.set_axis_off()
                continue
            s = groups[d][i]
            img = load_image(s.path)
            mask = load_mask(s.mask_path, img.shape[:2]) if s.mask_path else None
            if mask is not None:
                tint = img.copy()
                tint[mask] = (0.5 * tint[mask] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
                img = tint
            ax.imshow(img)
            _mask_outline(ax, mask)
            ax.set_title(f"{d}  ({s.path.name})", fontsize=9)
    fig.suptitle("Test images per defect type; ground-truth defect regions tinted red, outlined green")
    return fig


def image_statistics(samples) -> tuple[Table, Figure]:
    """Image sizes, per-channel means and a brightness distribution per defect type."""
    from .data import load_image
    sizes, rows, bright = Counter(), [], {}
    hist = {"good": np.zeros((3, 64)), "defective": np.zeros((3, 64))}
    for s in samples:
        img = load_image(s.path)
        sizes[f"{img.shape[1]}x{img.shape[0]}"] += 1
        bright.setdefault(s.defect, []).append(float(img.mean()))
        key = "good" if s.defect == "good" else "defective"
        for c in range(3):
            hist[key][c] += np.histogram(img[..., c], bins=64, range=(0, 256))[0]
    for d, values in bright.items():
        rows.append((d, len(values), float(np.mean(values)), float(np.std(values))))
    table = Table(rows, ["defect type", "images", "mean brightness", "std between images"],
                  "Mean grey level (0-255) per defect type; sizes: "
                  + ", ".join(f"{k} ({v})" for k, v in sizes.items()), floatfmt=".1f")
    fig = _figure(11, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    names = list(bright)
    ax1.boxplot([bright[n] for n in names], tick_labels=names)
    ax1.set_title("Mean brightness per image")
    ax1.set_xlabel("defect type")
    ax1.set_ylabel("mean grey level (0-255)")
    ax1.tick_params(axis="x", rotation=30)
    centres = np.linspace(2, 254, 64)
    for c, colour in enumerate(("red", "green", "blue")):
        for key, style in (("good", "-"), ("defective", "--")):
            h = hist[key][c] / max(hist[key][c].sum(), 1)
            ax2.plot(centres, h, style, color=colour, label=f"{colour} ({key})")
    ax2.set_yscale("log")
    ax2.set_title("Pixel value histogram per channel")
    ax2.set_xlabel("pixel value")
    ax2.set_ylabel("fraction of pixels (log)")
    ax2.legend(fontsize=7, ncol=2)
    return table, fig


def _lightness(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2LAB)[..., 0]


def clahe_figure(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8, title: str = "") -> Figure:
    """Before / after CLAHE with the lightness histograms (and cumulative distributions)."""
    from .data import apply_clahe
    after = apply_clahe(image, clip_limit, tile_grid)
    fig = _figure(12, 3.6)
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.5])
    axes[0].imshow(image)
    axes[0].set_title("original")
    axes[1].imshow(after)
    axes[1].set_title(f"CLAHE clip {clip_limit:g}, {tile_grid}x{tile_grid} tiles")
    for ax in axes[:2]:
        _off(ax)
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
    lines = ax.get_legend_handles_labels()
    lines2 = twin.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="lower center", ncol=2)
    fig.suptitle(title or "Contrast-limited adaptive histogram equalisation (CLAHE) on the L channel")
    return fig


def clahe_grid(image: np.ndarray, clip_limits: Sequence[float] = (1.0, 2.0, 4.0),
               tile_grids: Sequence[int] = (4, 8, 16), title: str = "") -> Figure:
    """The static version of the CLAHE explorer: one panel per (clip limit, tile grid)."""
    from .data import apply_clahe
    fig = _figure(2.4 * (len(clip_limits) + 1), 2.5 * len(tile_grids) + 0.4)
    axes = fig.subplots(len(tile_grids), len(clip_limits) + 1, squeeze=False)
    for i, t in enumerate(tile_grids):
        axes[i][0].imshow(image)
        axes[i][0].set_title("original", fontsize=9)
        axes[i][0].set_ylabel(f"{t}x{t} tiles")
        for j, c in enumerate(clip_limits, start=1):
            axes[i][j].imshow(apply_clahe(image, c, t))
            axes[i][j].set_title(f"clip {c:g}", fontsize=9)
        for ax in axes[i]:
            _off(ax)
    fig.suptitle(title or "CLAHE settings: clip limit (columns) x tile grid (rows)")
    return fig


# --------------------------------------------------------------------------- notebook 02
def pca_rgb(fit_features, embeddings, seed: int = 0) -> list[np.ndarray]:
    """Project patch embeddings [n, h, w, D] to 3 principal components fitted on ``fit_features``
    [N, D] and scale to RGB in [0, 1] (1st-99th percentile of the fitted features)."""
    from sklearn.decomposition import PCA
    fit = np.asarray(fit_features, dtype=np.float32)
    pca = PCA(n_components=3, random_state=seed).fit(fit)
    ref = pca.transform(fit)
    lo, hi = np.percentile(ref, 1, axis=0), np.percentile(ref, 99, axis=0)
    emb = np.asarray(embeddings, dtype=np.float32)
    out = pca.transform(emb.reshape(-1, emb.shape[-1])).reshape(*emb.shape[:-1], 3)
    return list(np.clip((out - lo) / np.maximum(hi - lo, 1e-8), 0, 1))


def pca_figure(crops: Sequence[np.ndarray], rgb: Sequence[np.ndarray], titles: Sequence[str]) -> Figure:
    """Network-input crops (top) and their patch features as PCA colours (bottom)."""
    n = len(crops)
    fig = _figure(max(8.0, 2.3 * n), 5.0)
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        axes[0][j].imshow(crops[j])
        axes[0][j].set_title(titles[j], fontsize=9)
        axes[1][j].imshow(rgb[j], interpolation="nearest")
        axes[1][j].set_title(f"features {rgb[j].shape[0]}x{rgb[j].shape[1]}", fontsize=8)
        _off(axes[0][j])
        _off(axes[1][j])
    axes[0][0].set_ylabel("input crop")
    axes[1][0].set_ylabel("3 principal\ncomponents as RGB")
    fig.suptitle("Patch features as colours: similar colour, similar feature\n"
                 "(3 principal components fitted on the good training patches)", fontsize=11)
    return fig


# --------------------------------------------------------------------------- notebook 03
def bank_megabytes(n_patches: int, dim: int, ratio: float) -> float:
    return max(1, int(n_patches * ratio)) * dim * 4 / 2**20


def coverage_figure(cov: dict, dim: int, *, full_patches: int | None = None, chosen: float | None = None,
                    run_patches: int | None = None) -> Figure:
    """Coverage radius vs coreset ratio (greedy vs random, on the ``cov`` sample) and memory-bank
    size vs ratio for this run's ``run_patches`` training patches (and the full metal_nut set)."""
    r = np.asarray(cov["ratios"])
    fig = _figure(11, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(r, cov["greedy_radius"], "o-", label="greedy coreset")
    ax1.plot(r, cov["random_radius"], "s--", label="random subset")
    ax1.set_xscale("log")
    ax1.set_xlabel("coreset ratio (fraction of training patches kept)")
    ax1.set_ylabel("coverage radius (max distance\nto nearest kept patch)")
    ax1.set_title(f"Coverage of {cov['n_patches']} training patches")
    run_patches = run_patches or cov["n_patches"]
    ax2.plot(r, [bank_megabytes(run_patches, dim, x) for x in r], "o-",
             label=f"this run's training set ({run_patches} patches)")
    if full_patches:
        ax2.plot(r, [bank_megabytes(full_patches, dim, x) for x in r], "s--",
                 label=f"full metal_nut train set ({full_patches} patches)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("coreset ratio")
    ax2.set_ylabel(f"memory bank size (MB, float32, D={dim})")
    ax2.set_title("Memory-bank size")
    for ax in (ax1, ax2):
        if chosen:
            ax.axvline(chosen, color="gray", linestyle=":", label=f"chosen ratio {chosen:g}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return fig


def coreset_scatter(features, picked, n_show: int = 4000, seed: int = 0) -> Figure:
    """Training patches in 2-D (first two principal components): greedy coreset vs a random
    subset of the same size. The greedy picks spread to the rare, outlying patches."""
    from sklearn.decomposition import PCA
    x = np.asarray(features, dtype=np.float32)
    rng = np.random.default_rng(seed)
    picked = np.asarray(picked)
    rand = rng.choice(len(x), size=len(picked), replace=False)
    show = rng.choice(len(x), size=min(n_show, len(x)), replace=False)
    xy = PCA(n_components=2, random_state=seed).fit(x).transform(x)
    fig = _figure(11, 4.2)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, idx, name in ((axes[0], picked, "greedy coreset"), (axes[1], rand, "random subset")):
        ax.scatter(xy[show, 0], xy[show, 1], s=3, c="lightgray", label="training patches")
        ax.scatter(xy[idx, 0], xy[idx, 1], s=9, c="tab:red", label=f"{name} ({len(idx)})")
        ax.set_xlabel("principal component 1")
        ax.set_ylabel("principal component 2")
        ax.set_title(name)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Which patches are kept? (2-D PCA view of the patch features)")
    return fig


def projection_figure(features, projected, n_pairs: int = 3000, seed: int = 0) -> Figure:
    """Pairwise distances before vs after the random projection (Johnson-Lindenstrauss: they are
    kept up to a small relative error, so farthest-point selection can use the cheap copy)."""
    x = np.asarray(features, dtype=np.float32)
    p = np.asarray(projected, dtype=np.float32)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(x), n_pairs), rng.integers(0, len(x), n_pairs)
    keep = i != j
    d = np.linalg.norm(x[i[keep]] - x[j[keep]], axis=1)
    dp = np.linalg.norm(p[i[keep]] - p[j[keep]], axis=1)
    fig = _figure(5.2, 4.4)
    ax = fig.add_subplot()
    ax.scatter(d, dp, s=4, alpha=0.4)
    top = float(max(d.max(), dp.max())) if len(d) else 1.0
    ax.plot([0, top], [0, top], "k--", lw=1, label="equal distance")
    ratio = dp / np.maximum(d, 1e-12)
    ax.set_title(f"Random projection {x.shape[1]} -> {p.shape[1]} dims\n"
                 f"projected / original distance: median {np.median(ratio):.2f}, "
                 f"5-95% {np.percentile(ratio, 5):.2f}-{np.percentile(ratio, 95):.2f}", fontsize=9)
    ax.set_xlabel(f"distance between two patches ({x.shape[1]}-D)")
    ax.set_ylabel(f"distance after projection ({p.shape[1]}-D)")
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------- maps
def map_range(maps: Sequence[np.ndarray | None], lo: float = 1.0, hi: float = 99.9) -> tuple[float, float]:
    """A common colour range for anomaly maps (percentiles over all maps)."""
    vals = np.concatenate([m[::4, ::4].ravel() for m in maps if m is not None]) if any(
        m is not None for m in maps) else np.zeros(1)
    vmin, vmax = np.percentile(vals, lo), np.percentile(vals, hi)
    return float(vmin), float(max(vmax, vmin + 1e-6))


def overlay(ax, image: np.ndarray, amap: np.ndarray, norm: Normalize, alpha: float = 0.5):
    ax.imshow(image)
    im = ax.imshow(amap, cmap=HEATMAP_CMAP, norm=norm, alpha=alpha)
    _off(ax)
    return im


def maps_preview(images, maps, titles, *, vmin: float, vmax: float, title: str = "") -> Figure:
    """Anomaly maps over the original images, one column per image, with a shared colour bar."""
    n = len(images)
    fig = _figure(2.6 * n + 0.8, 2.9)
    axes = fig.subplots(1, n, squeeze=False)[0]
    norm = Normalize(vmin, vmax)
    for ax, img, m, t in zip(axes, images, maps, titles):
        overlay(ax, img, m, norm)
        ax.set_title(t, fontsize=9)
    fig.colorbar(ScalarMappable(norm, HEATMAP_CMAP), ax=list(axes), label="anomaly score (patch distance)",
                 shrink=0.9)
    fig.suptitle(title or "Anomaly maps in original image pixels")
    return fig


def map_steps(crop: np.ndarray, patch_scores: np.ndarray, *, upsampled: np.ndarray, blurred: np.ndarray,
              image: np.ndarray, original_map: np.ndarray, sigma: float) -> Figure:
    """From patch distances to the anomaly map in original pixels, step by step."""
    fig = _figure(15, 3.4)
    axes = fig.subplots(1, 5)
    vmin, vmax = float(np.min(blurred)), float(np.max(patch_scores))
    norm = Normalize(vmin, vmax)
    axes[0].imshow(crop)
    axes[0].set_title(f"network input {crop.shape[1]}x{crop.shape[0]}", fontsize=9)
    steps = ((patch_scores, f"1. patch distances {patch_scores.shape[1]}x{patch_scores.shape[0]}"),
             (upsampled, "2. bilinear upsampling"), (blurred, f"3. Gaussian blur, sigma={sigma:g} px"))
    im = None
    for ax, (m, t) in zip(axes[1:4], steps):
        im = ax.imshow(m, cmap=HEATMAP_CMAP, norm=norm, interpolation="nearest")
        ax.set_title(t, fontsize=9)
    fig.colorbar(im, ax=list(axes[1:4]), label="distance to nearest memory-bank patch", shrink=0.85)
    overlay(axes[4], image, original_map, norm)
    axes[4].set_title(f"4. back to the original {image.shape[1]}x{image.shape[0]} px", fontsize=9)
    for ax in axes:
        _off(ax)
    fig.suptitle("How an anomaly map is made")
    return fig


# --------------------------------------------------------------------------- notebook 05
def _downsample(maps, masks, side: int = 192):
    out_maps, out_masks = [], []
    for a, m in zip(maps, masks):
        if a is None or m is None:
            continue
        f = max(1, max(a.shape) // side)
        out_maps.append(a[::f, ::f])
        out_masks.append(m[::f, ::f])
    return out_maps, out_masks


def roc_figure(labels, scores, masks=None, maps=None) -> Figure:
    """Image ROC, pixel ROC and the PRO curve (to FPR 0.3). The pixel curves use every
    n-th pixel so they draw quickly; the numbers in the titles are the exact metrics."""
    from sklearn.metrics import roc_auc_score, roc_curve
    from .metrics import pro_curve
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    keep = np.isfinite(scores)
    fig = _figure(13, 4.0)
    axes = fig.subplots(1, 3)
    ax = axes[0]
    if len(np.unique(labels[keep])) == 2:
        fpr, tpr, _ = roc_curve(labels[keep], scores[keep])
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(labels[keep], scores[keep]):.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "needs good and defective images", ha="center")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_title("Image-level ROC")
    ax.set_xlabel("false positive rate (good parts flagged)")
    ax.set_ylabel("true positive rate (defects caught)")
    small_maps, small_masks = _downsample(maps or [], masks or [])
    ax = axes[1]
    if small_maps and any(m.any() for m in small_masks):
        y = np.concatenate([m.ravel() for m in small_masks])
        s = np.concatenate([a.ravel() for a in small_maps])
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=2, color="tab:orange", label=f"AUROC {roc_auc_score(y, s):.3f} (subsampled)")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no ground-truth masks", ha="center")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_title("Pixel-level ROC")
    ax.set_xlabel("false positive rate (normal pixels)")
    ax.set_ylabel("true positive rate (defect pixels)")
    ax = axes[2]
    curve = pro_curve(small_masks, small_maps) if small_maps else None
    if curve is not None:
        fpr, pro = curve
        sel = fpr <= 0.3
        ax.plot(fpr[sel], pro[sel], lw=2, color="tab:green")
        ax.fill_between(fpr[sel], pro[sel], alpha=0.2, color="tab:green", label="area = AUPRO x 0.3")
        ax.legend(loc="lower right")
    else:
        ax.text(0.15, 0.5, "no ground-truth masks", ha="center")
    ax.set_xlim(0, 0.3)
    ax.set_ylim(0, 1.02)
    ax.set_title("Per-region overlap (PRO) curve")
    ax.set_xlabel("false positive rate (up to 0.3)")
    ax.set_ylabel("mean fraction of each defect region found")
    for a in axes[:2]:
        a.set_xlim(0, 1)
        a.set_ylim(0, 1.02)
    return fig


def score_histogram(scores, defects: Sequence[str], threshold: float | None = None) -> Figure:
    """Image scores per defect type, as dots on one axis per type, with the threshold."""
    scores = np.asarray(scores, dtype=float)
    names = ["good"] + sorted(set(defects) - {"good"})
    names = [n for n in names if n in set(defects)]
    fig = _figure(9, 0.5 * len(names) + 1.6)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, n in enumerate(names):
        s = scores[[d == n for d in defects]]
        ax.scatter(s, i + rng.uniform(-0.15, 0.15, len(s)), s=22,
                   color="tab:green" if n == "good" else "tab:red", alpha=0.8)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"F1-optimal threshold {threshold:.3g}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("image anomaly score")
    ax.set_ylabel("defect type")
    ax.set_title("Image scores per defect type (right of the line = flagged as defective)")
    return fig


def confusion_counts(labels, scores, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]] for "score >= threshold means defective"."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    keep = np.isfinite(scores)
    pred = scores[keep] >= threshold
    y = labels[keep].astype(bool)
    return np.array([[np.sum(~y & ~pred), np.sum(~y & pred)], [np.sum(y & ~pred), np.sum(y & pred)]])


def confusion_figure(labels, scores, threshold: float) -> Figure:
    cm = confusion_counts(labels, scores, threshold)
    fig = _figure(4.6, 3.9)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks([0, 1], ["good", "defective"])
    ax.set_yticks([0, 1], ["good", "defective"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix at threshold {threshold:.3g}")
    fig.colorbar(im, ax=ax, label="images")
    return fig


def select_cases(scores, labels, n: int = 3) -> dict[str, list[int]]:
    """Indices of the best and worst cases: defects with the highest / lowest scores and good
    parts with the lowest / highest scores (high-scoring good parts are false alarms)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    ok = np.isfinite(scores)
    bad = [i for i in np.argsort(-scores, kind="stable") if labels[i] == 1 and ok[i]]
    good = [i for i in np.argsort(scores, kind="stable") if labels[i] == 0 and ok[i]]
    return {"best": [int(i) for i in bad[:n]] + [int(i) for i in good[:max(1, n // 2)]],
            "worst": [int(i) for i in bad[::-1][:n]] + [int(i) for i in good[::-1][:max(1, n // 2)]]}


def verdict(score: float, label: int, threshold: float | None) -> str:
    """'caught', 'MISSED', 'FALSE ALARM' or 'correct' (no threshold: '')."""
    if threshold is None or not np.isfinite(score):
        return ""
    flagged = score >= threshold
    if label:
        return "flagged: caught" if flagged else "passed: MISSED"
    return "flagged: FALSE ALARM" if flagged else "passed: correct"


def gallery(images, maps, masks, *, scores, labels, titles, vmin: float, vmax: float,
            threshold: float | None = None, pixel_threshold: float | None = None, title: str = "") -> Figure:
    """One row per image: the image with its ground truth (green outline); the anomaly map over it
    with the verdict at the image ``threshold``; the pixels whose map value reaches
    ``pixel_threshold`` (cyan) against the ground truth."""
    n = len(images)
    fig = _figure(11, 3.0 * n + 0.6)
    axes = fig.subplots(n, 3, squeeze=False)
    norm = Normalize(vmin, vmax)
    for i in range(n):
        img, amap, mask = images[i], maps[i], masks[i]
        truth = "defective" if labels[i] else "good"
        a0, a1, a2 = axes[i]
        a0.imshow(img)
        _mask_outline(a0, mask)
        _off(a0)
        a0.set_title(f"{titles[i]} (true: {truth})", fontsize=9)
        overlay(a1, img, amap, norm)
        _mask_outline(a1, mask)
        a1.set_title(f"score {scores[i]:.3g}  {verdict(scores[i], labels[i], threshold)}", fontsize=9)
        a2.imshow(img)
        if pixel_threshold is not None and amap is not None:
            region = amap >= pixel_threshold
            a2.imshow(np.where(region, 1.0, np.nan), cmap="cool", alpha=0.45, vmin=0, vmax=1)
            _mask_outline(a2, region, "cyan")
            a2.set_title(f"map >= {pixel_threshold:.3g} (cyan) vs truth (green)", fontsize=9)
        else:
            a2.set_title("no pixel threshold (no masks)", fontsize=9)
        _mask_outline(a2, mask)
        _off(a2)
    fig.colorbar(ScalarMappable(norm, HEATMAP_CMAP), ax=axes.ravel().tolist(),
                 label="anomaly score (patch distance)", shrink=min(0.9, 0.35 + 0.15 * n), aspect=30)
    thr = "" if threshold is None else f"image threshold {threshold:.3g}"
    fig.suptitle(f"{title or 'Heatmap gallery'}  ({thr})" if thr else (title or "Heatmap gallery"))
    return fig
