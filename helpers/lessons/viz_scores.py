"""Figures of notebooks 04 and 05: anomaly maps (preview, the steps from patch scores to a map),
ROC / PRO curves, score histograms, the confusion matrix and the best / worst-case gallery."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from helpers.lessons.viz_data import (
    HEATMAP_CMAP,
    axes_off,
    for_display,
    heatmap,
    mask_outline,
    new_figure,
)

# The gallery's predicted-defect pixels (map >= pixel threshold): fill, outline and legend word.
# Magenta: far from the green ground-truth outline and from the grey metal.
PIXEL_REGION_COLOUR = "magenta"


def maps_preview(images, maps, titles, *, vmin: float, vmax: float, title: str = "",
                 label: str = "anomaly map\n(blurred patch distance)",
                 masks=None) -> Figure:  # fmt: skip
    """Notebooks 01 and 04: each image above its anomaly map (one image: side by side), the maps
    on one colour scale (``label``: the bar's caption), ``masks`` outlined on the maps."""
    n = len(images)
    masks = list(masks) if masks is not None else [None] * n
    norm = Normalize(vmin, vmax)
    if n == 1:
        fig = new_figure(6.4, 3.0)
        pairs = [fig.subplots(1, 2)]
    else:
        fig = new_figure(2.4 * n + 0.9, 5.0)
        axes = fig.subplots(2, n, squeeze=False)
        pairs = list(zip(axes[0], axes[1]))
    for (a_img, a_map), img, m, mask, t in zip(pairs, images, maps, masks, titles):
        img, m, mask = for_display(img, m, mask)
        _image(a_img, img, t)
        heatmap(a_map, m, norm, mask)
    _colorbar(fig, norm, [p[1] for p in pairs], label, shrink=0.9)
    fig.suptitle(title or "Anomaly maps in original image pixels")
    return fig


def map_steps(crop: np.ndarray, patch_scores: np.ndarray, *, upsampled: np.ndarray,
              blurred: np.ndarray, image: np.ndarray, original_map: np.ndarray,
              sigma: float) -> Figure:  # fmt: skip
    """Notebook 04: from patch distances to the map in original pixels, step by step, each with
    its largest value (the blur lowers the peak: an image score can exceed every map value)."""
    fig = new_figure(15, 3.4)
    axes = fig.subplots(1, 5)
    norm = Normalize(float(np.min(blurred)), float(np.max(patch_scores)))
    axes[0].imshow(crop)
    axes[0].set_title(f"network input {crop.shape[1]}x{crop.shape[0]}", fontsize=9)
    h, w = patch_scores.shape[:2]
    steps = (
        (patch_scores, f"1. patch distances {w}x{h}\n(max {np.max(patch_scores):.2f})"),
        (upsampled, f"2. bilinear upsampling\n(max {np.max(upsampled):.2f})"),
        (blurred, f"3. Gaussian blur, sigma={sigma:g} px\n(max {np.max(blurred):.2f})"),
    )
    for ax, (m, t) in zip(axes[1:4], steps):
        ax.imshow(m, cmap=HEATMAP_CMAP, norm=norm, interpolation="nearest")
        ax.set_title(t, fontsize=9)
    heatmap(axes[4], original_map, norm)
    axes[4].set_title(f"4. back to the original {image.shape[1]}x{image.shape[0]} px", fontsize=9)
    axes_off(*axes)
    # one colour scale for the four maps, its bar after the last of them
    _colorbar(fig, norm, list(axes[1:]), "distance to nearest\nmemory-bank patch", shrink=0.85)
    fig.suptitle("How an anomaly map is made")
    return fig


def _image(ax, img, title: str) -> None:
    ax.imshow(img)  # as it is: an outline would cover a thin defect
    axes_off(ax)
    ax.set_title(title, fontsize=9)


def _colorbar(fig, norm, axes, label: str, **kw) -> None:  # one bar for maps on one scale
    fig.colorbar(ScalarMappable(norm, HEATMAP_CMAP), ax=axes, label=label, **kw)


def _pixel_curves(masks, maps, points: int = 4000):
    """(FPR, TPR, PRO, pixel AUROC, AUPRO) from :func:`~helpers.evaluation.metrics.pixel_histograms`
    (the thresholds the metrics use, so the areas are the table's values), thinned to about
    ``points`` points for drawing; None without a defect pixel or a normal one."""
    from helpers.evaluation.metrics import (
        aupro_from_histograms,
        auroc_from_histograms,
        pixel_histograms,
    )

    h = pixel_histograms(masks or [], maps or []).get("")
    if h is None or not h["pos"].sum() or not h["neg"].sum():
        return None
    neg, pos, pro = (h[k][::-1] for k in ("neg", "pos", "pro"))  # from the highest level down
    used = np.flatnonzero(neg + pos)  # levels that hold a pixel: the curve's corners
    keep = np.linspace(0, len(used) - 1, min(points, len(used))).round().astype(int)
    used = used[np.unique(keep)]

    def rate(counts, total):  # the share above each kept level, from (0, 0)
        return np.r_[0.0, np.cumsum(counts)[used] / total]

    fpr, tpr, pro_at = rate(neg, neg.sum()), rate(pos, pos.sum()), rate(pro, max(h["regions"], 1))
    return fpr, tpr, pro_at, auroc_from_histograms(h), aupro_from_histograms(h)


def _roc_axes(ax, title: str, negatives: str, positives: str) -> None:  # diagonal, titles
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.set_xlabel(f"false positive rate ({negatives})")
    ax.set_ylabel(f"true positive rate ({positives})")


def roc_figure(labels, scores, masks=None, maps=None, threshold: float | None = None) -> Figure:
    """Notebook 05: image ROC, pixel ROC and the PRO curve (to FPR 0.3; the pixel curves at the
    pixel metrics' thresholds, with their AUROC and AUPRO); with an image ``threshold``, its
    operating point on the image ROC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    keep = np.isfinite(scores)
    fig = new_figure(13, 4.0)
    axes = fig.subplots(1, 3)
    ax = axes[0]
    if len(np.unique(labels[keep])) == 2:
        fpr, tpr, _ = roc_curve(labels[keep], scores[keep])
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(labels[keep], scores[keep]):.3f}")
        if threshold is not None:
            (tn, fp), (fn, tp) = confusion_counts(labels, scores, threshold)
            point = f"threshold {threshold:.3g}: {tp} of {tp + fn} defects,\n"
            point += f"{fp} of {tn + fp} good parts flagged"
            ax.plot(fp / max(tn + fp, 1), tp / max(tp + fn, 1), "o", color="black", label=point)
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "needs good and defective images", ha="center")
    _roc_axes(ax, "Image-level ROC", "good parts flagged", "defects caught")
    curves = _pixel_curves(masks, maps)
    ax = axes[1]
    if curves is not None:
        ax.plot(curves[0], curves[1], lw=2, color="tab:orange", label=f"AUROC {curves[3]:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no ground-truth masks", ha="center")
    _roc_axes(ax, "Pixel-level ROC", "normal pixels", "defect pixels")
    ax = axes[2]
    if curves is not None and curves[4] is not None:
        fpr, pro = curves[0], curves[2]
        sel = fpr <= 0.3
        ax.plot(fpr[sel], pro[sel], lw=2, color="tab:green")
        area = f"AUPRO {curves[4]:.3f}: the area / 0.3"
        ax.fill_between(fpr[sel], pro[sel], alpha=0.2, color="tab:green", label=area)
        ax.legend(loc="lower right")
    else:
        ax.text(0.15, 0.5, "no ground-truth masks", ha="center")
    ax.set(xlim=(0, 0.3), ylim=(0, 1.02), title="Per-region overlap (PRO) curve")
    ax.set_xlabel("false positive rate (up to 0.3)")
    ax.set_ylabel("mean fraction of each defect region found")
    return fig


HELD_OUT = "good (training,\nheld out)"


def score_histogram(scores, defects: Sequence[str], threshold=None, held_out=None) -> Figure:
    """Notebook 05: image scores per defect type, a row of dots each; with a threshold, images on
    its wrong side are ringed. ``held_out``: the good training images' held-out scores, a row."""
    held_out = [] if held_out is None else list(held_out)
    scores = np.asarray([*held_out, *scores], dtype=float)
    defects = [HELD_OUT] * len(held_out) + list(defects)
    names = [HELD_OUT, "good"] + sorted(set(defects) - {"good", HELD_OUT})
    names = [n for n in names if n in set(defects)]
    fig = new_figure(9, 0.5 * len(names) + 1.8)
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, n in enumerate(names):
        s = scores[[d == n for d in defects]]
        y = i + rng.uniform(-0.15, 0.15, len(s))
        is_good = n in ("good", HELD_OUT)
        ax.scatter(s, y, s=22, color="tab:green" if is_good else "tab:red", alpha=0.8)
        if threshold is not None:
            wrong = (s >= threshold) if is_good else (s < threshold)
            label = "missed (defect below) or\nfalse alarm (good at or above)"
            ax.scatter(
                s[wrong], y[wrong], s=110, facecolors="none", edgecolors="black", label=label
            )
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
        unique = dict(zip(*ax.get_legend_handles_labels()[::-1]))  # one ring entry, not one a row
        ax.legend(unique.values(), unique.keys(), loc="best", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set(xlabel="image anomaly score", ylabel="defect type")
    ax.set_title("Image scores per defect type (at or right of the line: flagged as defective)")
    return fig


def confusion_counts(labels, scores, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]] for "score >= threshold means defective"."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=float)
    keep = np.isfinite(scores)
    pred = scores[keep] >= threshold
    y = labels[keep].astype(bool)
    cm = [[np.sum(~y & ~pred), np.sum(~y & pred)], [np.sum(y & ~pred), np.sum(y & pred)]]
    return np.array(cm)


def confusion_figure(labels, scores, threshold: float) -> Figure:
    cm = confusion_counts(labels, scores, threshold)
    fig = new_figure(4.6, 3.9)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        colour = "white" if v > cm.max() / 2 else "black"
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14, color=colour)
    ax.set_xticks([0, 1], ["good", "defective"])
    ax.set_yticks([0, 1], ["good", "defective"])
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"Confusion matrix at threshold {threshold:.3g}")
    fig.colorbar(im, ax=ax, label="images")
    return fig


def select_cases(scores, labels, n: int = 3, n_good: int | None = None) -> dict[str, list[int]]:
    """Best and worst cases: ``n`` defects with the highest / lowest scores, then ``n_good``
    (default ``max(1, n // 2)``) good parts with the lowest / highest."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    ok = np.isfinite(scores)
    bad = [i for i in np.argsort(-scores, kind="stable") if labels[i] == 1 and ok[i]]
    good = [i for i in np.argsort(scores, kind="stable") if labels[i] == 0 and ok[i]]
    g = max(1, n // 2) if n_good is None else n_good
    pick = lambda defects, goods: [int(i) for i in defects[:n] + goods[:g]]
    return {"best": pick(bad, good), "worst": pick(bad[::-1], good[::-1])}


def verdict(score: float, label: int, threshold: float | None) -> str:
    """'caught', 'MISSED', 'FALSE ALARM' or 'correct' (no threshold: '')."""
    if threshold is None or not np.isfinite(score):
        return ""
    flagged = score >= threshold
    if label:
        return "flagged: caught" if flagged else "passed: MISSED"
    return "flagged: FALSE ALARM" if flagged else "passed: correct"


def gallery(images, maps, masks, *, scores, labels, titles, vmin: float, vmax: float,
            threshold: float | None = None, pixel_threshold: float | None = None,
            title: str = "") -> Figure:  # fmt: skip
    """Notebook 05, one row per image: the image; its map with the ground truth and the verdict
    at ``threshold``; the pixels at or above ``pixel_threshold`` (:data:`PIXEL_REGION_COLOUR`)."""
    n = len(images)
    fig = new_figure(11, 3.0 * n + 0.6)
    axes = fig.subplots(n, 3, squeeze=False)
    norm = Normalize(vmin, vmax)
    for (a0, a1, a2), img, amap, mask, score, label, name in zip(
        axes, images, maps, masks, scores, labels, titles
    ):
        img, amap, mask = for_display(img, amap, mask)
        _image(a0, img, f"{name} (true: {'defective' if label else 'good'})")
        heatmap(a1, amap, norm, mask)
        a1.set_title(f"image score {score:#.3g}  {verdict(score, label, threshold)}", fontsize=9)
        a2.imshow(img)
        if pixel_threshold is not None and amap is not None:
            region = amap >= pixel_threshold
            fill = ListedColormap([PIXEL_REGION_COLOUR])
            a2.imshow(np.where(region, 1.0, np.nan), cmap=fill, alpha=0.45, vmin=0, vmax=1)
            mask_outline(a2, region, PIXEL_REGION_COLOUR)
            region_title = f"map >= {pixel_threshold:#.3g} ({PIXEL_REGION_COLOUR}) vs truth (green)"
            a2.set_title(region_title, fontsize=9)
        else:
            a2.set_title("no pixel threshold (no masks)", fontsize=9)
        mask_outline(a2, mask)
        axes_off(a2)
    label, shrink = "map value (blurred patch distance)", min(0.9, 0.35 + 0.15 * n)
    _colorbar(fig, norm, axes.ravel().tolist(), label, aspect=30, shrink=shrink)
    thr = "" if threshold is None else f"image threshold {threshold:#.3g}"
    fig.suptitle(f"{title or 'Heatmap gallery'}  ({thr})" if thr else (title or "Heatmap gallery"))
    return fig
