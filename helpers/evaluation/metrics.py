"""The metrics of notebook 05, on labels, scores, masks and maps: image AUROC, pixel AUROC, AUPRO
(to FPR 0.3), the PRO at one threshold, the F1-optimal threshold and what a threshold does,
per-defect image and pixel metrics. Each returns ``None`` with a warning when the data cannot
support it (one class only, no masks), never a made-up number. A whole test set:
:func:`helpers.evaluation.report.evaluate`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score


def _finite(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of the images with a finite score (a skipped image has NaN)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)
    return labels[keep], scores[keep]


def image_auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    labels, scores = _finite(labels, scores)
    if len(np.unique(labels)) < 2:
        warnings.warn("image AUROC needs both good and defective test images; null", stacklevel=2)
        return None
    return float(roc_auc_score(labels, scores))


def _valid_pairs(masks, maps, groups=None):
    groups = [""] * len(masks) if groups is None else groups
    kept = [(m, a, g) for m, a, g in zip(masks, maps, groups) if m is not None and a is not None]
    pairs = [(np.asarray(m, bool), np.asarray(a, np.float32), g) for m, a, g in kept]
    for m, a, _ in pairs:
        if m.shape != a.shape:
            raise ValueError(f"mask shape {m.shape} != anomaly map shape {a.shape}")
    return pairs


BINS = 1 << 18  # the pixel metrics' thresholds: levels between the lowest and highest map value


def pixel_histograms(masks, maps, bins: int = BINS, groups: Sequence[str] | None = None) -> dict:
    """Counts of map values in ``bins`` levels, per group of images (default: one group ""):
    ``neg`` (normal pixels), ``pos`` (defect pixels), ``pro`` (defect pixels weighted by 1 / the
    size of their connected region, 8-connectivity) and ``regions``. One pass, memory independent
    of the number of images: the pixel metrics of a whole category at 1024 px need a few MB."""
    pairs, out = _valid_pairs(masks, maps, groups), {}
    lo = min((float(a.min()) for _, a, _ in pairs), default=0.0)
    hi = max((float(a.max()) for _, a, _ in pairs), default=0.0)
    scale = (bins - 1) / (hi - lo) if hi > lo else 0.0
    for m, a, name in pairs:
        if name not in out:
            out[name] = {**{k: np.zeros(bins) for k in ("neg", "pos", "pro")}, "regions": 0}
        h = out[name]
        level = np.subtract(a, lo, dtype=np.float64).ravel()
        level *= scale
        idx = level.astype(np.intp)
        np.clip(idx, 0, bins - 1, out=idx)
        if not m.any():  # a good image: every pixel is normal
            h["neg"] += np.bincount(idx, minlength=bins)
            continue
        labels, n = ndimage.label(m, structure=np.ones((3, 3), int))
        lab = labels.ravel()
        inside = lab > 0
        h["neg"] += np.bincount(idx[~inside], minlength=bins)
        sizes = np.bincount(lab, minlength=n + 1).astype(np.float64)
        idx_in, lab_in = idx[inside], lab[inside]
        h["pos"] += np.bincount(idx_in, minlength=bins)
        h["pro"] += np.bincount(idx_in, weights=1.0 / sizes[lab_in], minlength=bins)
        h["regions"] += n
    return out


def _merged(hists: dict, names) -> dict | None:
    if parts := [hists[n] for n in names if n in hists]:
        return {k: sum(p[k] for p in parts) for k in ("neg", "pos", "pro", "regions")}
    return None


def auroc_from_histograms(h: dict | None) -> float | None:
    """P(defect pixel > normal pixel), pixels in the same level counting one half."""
    if h is None or not h["neg"].sum() or not h["pos"].sum():
        return None
    neg, pos = h["neg"], h["pos"]
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def aupro_from_histograms(h: dict | None, max_fpr: float = 0.3) -> float | None:
    """Normalised area under PRO(FPR) up to ``max_fpr``, thresholds at the histogram levels."""
    if h is None or not h["regions"] or not h["neg"].sum():
        return None
    fpr = np.r_[0.0, np.cumsum(h["neg"][::-1]) / h["neg"].sum()]
    pro = np.r_[0.0, np.cumsum(h["pro"][::-1]) / h["regions"]]
    return _area(fpr, pro, max_fpr)


def _area(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    pro_at = np.interp(max_fpr, fpr, pro)
    keep = fpr <= max_fpr
    x, y = np.r_[fpr[keep], max_fpr], np.r_[pro[keep], pro_at]
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1])).sum() / 2 / max_fpr)


def pixel_auroc(masks, maps) -> float | None:
    """AUROC over all pixels of the images that have a mask (good images: an all-False mask)."""
    hists = pixel_histograms(masks, maps)
    value = auroc_from_histograms(hists[""]) if hists else None
    if value is None:
        why = "needs both defect and normal pixels" if hists else "no ground-truth masks"
        warnings.warn(f"pixel AUROC: {why}; reporting null", stacklevel=2)
    return value


def pro_curve(masks, maps) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPR, PRO) at every distinct threshold, exact. PRO is the mean over connected defect regions
    (8-connectivity) of the fraction of the region above the threshold; FPR is over all pixels
    outside any defect."""
    scores, weights_pro, is_normal, n_regions = [], [], [], 0
    for m, a, _ in _valid_pairs(masks, maps):
        labels, n = ndimage.label(m, structure=np.ones((3, 3), int))
        lab = labels.ravel()
        sizes = np.bincount(lab, minlength=n + 1).astype(np.float64)
        scores.append(a.ravel())
        w = np.zeros(lab.shape, np.float64)
        w[lab > 0] = 1.0 / sizes[lab[lab > 0]]
        weights_pro.append(w)
        is_normal.append(lab == 0)
        n_regions += n
    if n_regions == 0 or not any(n.any() for n in is_normal):
        return None
    s, normal = np.concatenate(scores), np.concatenate(is_normal)
    w_pro = np.concatenate(weights_pro) / n_regions
    w_fpr = normal / normal.sum()
    order = np.argsort(-s, kind="stable")
    s, w_pro, w_fpr = s[order], w_pro[order], w_fpr[order]
    pro, fpr = np.cumsum(w_pro), np.cumsum(w_fpr)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each tied group
    return np.r_[0.0, fpr[last]], np.r_[0.0, pro[last]]


def region_overlaps(masks, maps, threshold: float) -> np.ndarray:
    """The per-region overlap at one threshold: for each connected defect region (8-connectivity;
    image by image, regions in :func:`scipy.ndimage.label` order) the fraction of its pixels whose
    map value is >= ``threshold``. Empty when there is no defect region."""
    out = []
    for m, a, _ in _valid_pairs(masks, maps):
        labels, n = ndimage.label(m, structure=np.ones((3, 3), int))
        if n:
            lab = labels.ravel()
            hits = np.bincount(lab, weights=(a >= threshold).ravel(), minlength=n + 1)
            out.append(hits[1:] / np.bincount(lab, minlength=n + 1)[1:])
    return np.concatenate(out) if out else np.zeros(0)


def pro_at(masks, maps, threshold: float) -> tuple[float, float] | None:
    """One point of :func:`pro_curve`, exact: (PRO, FPR) at ``threshold``. PRO is the mean of
    :func:`region_overlaps`; FPR the fraction of normal pixels (of every image with a mask) whose
    map value is >= ``threshold``. None without defect regions or without normal pixels."""
    pairs = _valid_pairs(masks, maps)
    overlaps = region_overlaps(masks, maps, threshold)
    n_normal = sum(int((~m).sum()) for m, _, _ in pairs)
    if not len(overlaps) or not n_normal:
        return None
    false_pos = sum(int((a[~m] >= threshold).sum()) for m, a, _ in pairs)
    return float(overlaps.mean()), false_pos / n_normal


def aupro(masks, maps, max_fpr: float = 0.3) -> float | None:
    """Area under the PRO curve up to ``max_fpr``, divided by ``max_fpr`` (1.0 = perfect)."""
    hists = pixel_histograms(masks, maps)
    value = aupro_from_histograms(hists[""], max_fpr) if hists else None
    if value is None:
        warnings.warn("no ground-truth defect regions: AUPRO is null", stacklevel=2)
    return value


def f1_threshold(labels: Sequence[int], scores: Sequence[float]) -> tuple[float, float] | None:
    """(threshold, F1) maximising F1 of "score >= threshold means defective"."""
    labels, scores = _finite(labels, scores)
    if len(np.unique(labels)) < 2:
        warnings.warn("F1 threshold needs both good and defective images; null", stacklevel=2)
        return None
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    return float(thresholds[best]), float(f1[best])


def threshold_rates(labels: Sequence[int], scores: Sequence[float], threshold: float | None):
    """What "score >= threshold means defective" does on labelled images: ``false_alarm_rate``
    (good images flagged / good images), ``miss_rate`` (defective passed / defective) and the
    counts; a rate is None without images of its class or without a threshold. NaN scores: out."""
    labels, scores = _finite(labels, scores)
    good, bad = labels == 0, labels == 1
    n_good, n_bad = int(good.sum()), int(bad.sum())
    out = {"value": threshold, "n_good": n_good, "n_defective": n_bad}
    if threshold is None:
        return {**out, **dict.fromkeys(("false_alarm_rate", "miss_rate", "false_alarms", "misses"))}
    flagged = scores >= threshold
    false_alarms, misses = int((flagged & good).sum()), int((~flagged & bad).sum())
    rates = {"false_alarm_rate": false_alarms / n_good if n_good else None,
             "miss_rate": misses / n_bad if n_bad else None}  # fmt: skip
    return {**out, **rates, "false_alarms": false_alarms, "misses": misses}


def per_defect_auroc(defects: Sequence[str], scores: Sequence[float]) -> dict[str, float | None]:
    """Image AUROC of each defect type against the good test images."""
    defects, scores = np.asarray(defects), np.asarray(scores, dtype=np.float64)
    good = defects == "good"
    out = {}
    for d in sorted(set(defects.tolist()) - {"good"}):
        sel = good | (defects == d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[d] = image_auroc((defects[sel] != "good").astype(int), scores[sel])
    if not good.any() and out:
        warnings.warn("no good test images: per-defect AUROC is null", stacklevel=2)
    return out


def pixel_metrics(defects: Sequence[str], masks, maps, max_fpr: float = 0.3) -> dict:
    """Pixel AUROC and AUPRO of the whole test set and of each defect type (its images with the
    good ones: a thin defect smeared by the blur shows on its own), from one pass of
    :func:`pixel_histograms`; ``per_defect_pixel[type]`` also counts its regions and defect
    pixels (a whole-part defect can outweigh all others in the pooled pixel AUROC)."""
    defects = list(defects)
    hists = pixel_histograms(masks, maps, groups=defects)
    if not hists:
        return {"pixel_auroc": None, "aupro": None, "per_defect_pixel": None}
    every = _merged(hists, hists)
    per = {}
    for d in sorted(set(defects) - {"good"}):
        h = _merged(hists, ["good", d])
        own = hists.get(d, {"regions": 0, "pos": np.zeros(1)})
        auroc, pro = auroc_from_histograms(h), aupro_from_histograms(h, max_fpr)
        per[d] = {"pixel_auroc": auroc, "aupro": pro, "regions": int(own["regions"]),
                  "defect_pixels": int(own["pos"].sum())}  # fmt: skip
    return {
        "pixel_auroc": auroc_from_histograms(every),
        "aupro": aupro_from_histograms(every, max_fpr),
        "per_defect_pixel": per,
    }
