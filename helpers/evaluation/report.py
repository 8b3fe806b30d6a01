"""A test set's metrics and ``metrics.json`` (notebook 05): :func:`evaluate` (every metric of
the contract, :data:`METRIC_KEYS`, null when unavailable), the thresholds entry, timings, and the
one writer of the file (:func:`write_metrics`)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from helpers.core.model import Prediction
from helpers.core.runtime import atomic_write_json
from helpers.data.mvtec import Sample, masks_like

# Results of notebook 05 that metrics.json must always hold (null when unavailable).
METRIC_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_threshold",
    "thresholds",
    "per_defect",
    "per_defect_pixel",
    "n_train",
    "n_test",
    "timings",
    "config",
    "versions",
)


def evaluate(samples: list[Sample], pred: Prediction, *, quiet: bool = True) -> dict[str, Any]:
    """Every metric of metrics.json for test ``samples`` scored by ``pred`` (a
    :class:`~helpers.core.model.Prediction`) but timings, config and versions, plus
    ``pixel_f1_threshold`` (the map value maximising pixel F1, for drawing regions). Good images
    count as all-normal masks; defective ones without a mask are left out of the pixel metrics.
    ``quiet=False``: warn about what is null and why, naming the images without a mask."""
    from helpers.evaluation import metrics

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")  # the nulls speak for themselves in the table
        masks = masks_like(samples, pred.maps)
        missing = [
            str(s.path)
            for s, amap, m in zip(samples, pred.maps, masks)
            if amap is not None and s.defect != "good" and m is None
        ]
        if missing and len(missing) < sum(s.defect != "good" for s in samples):
            more = " ..." if len(missing) > 3 else ""
            warnings.warn(
                f"pixel metrics skip {len(missing)} defective image(s) without a mask: "
                f"{', '.join(missing[:3])}{more}",
                stacklevel=2,
            )
        labels, defects = [s.label for s in samples], [s.defect for s in samples]
        if any(m is not None and m.any() for m in masks):
            pixel = metrics.pixel_metrics(defects, masks, pred.maps)
        else:
            warnings.warn(
                "no ground-truth masks found: pixel AUROC and AUPRO are null", stacklevel=2
            )
            pixel = {"pixel_auroc": None, "aupro": None, "per_defect_pixel": None}
        thr = metrics.f1_threshold(labels, pred.scores)
        return {
            "image_auroc": metrics.image_auroc(labels, pred.scores),
            **pixel,
            "f1_threshold": None if thr is None else thr[0],
            "f1": None if thr is None else thr[1],
            "per_defect": metrics.per_defect_auroc(defects, pred.scores),
            "pixel_f1_threshold": pixel_f1_threshold(masks, pred.maps),
        }


def pixel_f1_threshold(masks, maps, step: int = 4) -> float | None:
    """The anomaly-map value that maximises pixel-level F1 (every ``step``-th pixel in each
    direction, for speed); None without defect pixels."""
    from helpers.evaluation.metrics import f1_threshold

    pairs = [
        (m[::step, ::step].ravel(), a[::step, ::step].ravel())
        for m, a in zip(masks, maps)
        if m is not None and a is not None
    ]
    if not pairs:
        return None
    y = np.concatenate([p[0] for p in pairs])
    if y.all() or not y.any():
        return None
    best = f1_threshold(y.astype(int), np.concatenate([p[1] for p in pairs]))
    return None if best is None else best[0]


def thresholds(
    labels, scores, f1_threshold: float | None, good_only: dict | None
) -> dict[str, Any]:
    """The ``thresholds`` entry of metrics.json: the F1-optimal image threshold (chosen with the
    test labels: the best any threshold does here, not available in production) and the
    good-only ones (``good_only``, from :meth:`helpers.core.model.PatchCore.calibrate`: at the
    stated false-alarm rate, and the max of the held-out good scores), each with the false-alarm
    and miss rates it gives on these test images. ``false_alarm_rate_se`` is the binomial
    sampling error of a false-alarm rate measured on this many good test images, at the rate
    asked for."""
    from helpers.evaluation.metrics import threshold_rates

    out = {
        "f1_optimal": {
            **threshold_rates(labels, scores, f1_threshold),
            "chosen_on": "the test set's labels (optimistic)",
        }
    }
    if good_only is None:
        return {**out, "good_only": None, "max_of_good": None}
    rate = good_only["false_alarm_rate"]
    common = {"chosen_on": good_only.get("computed_on", good_only.get("method"))}
    good = threshold_rates(labels, scores, good_only["value"])
    n_good = good["n_good"]
    out["good_only"] = {
        **good,
        **common,
        "target_false_alarm_rate": rate,
        "expected_false_alarm_rate": good_only["expected_false_alarm_rate"],
        "false_alarm_rate_se": math.sqrt(rate * (1 - rate) / n_good) if n_good else None,
    }
    out["max_of_good"] = {
        **threshold_rates(labels, scores, good_only["max_of_good"]),
        **common,
        "expected_false_alarm_rate": good_only["max_of_good_expected_false_alarm_rate"],
    }
    return out


def timings(fit_info: dict, pred: Prediction) -> dict[str, Any]:
    """The timings entry of metrics.json: the fit's (from the bank's info) and inference's."""
    return {
        "fit_s": fit_info.get("fit_s"),
        "features_s": fit_info.get("features_s"),
        "coreset_s": fit_info.get("coreset_s"),
        "infer_ms_per_image": 1000 * pred.seconds / max(len(pred), 1),
        "batch_size": pred.batch_size,
        "device": pred.device,
    }


def write_metrics(
    path: str | Path, metrics: dict[str, Any], record: dict[str, Any]
) -> dict[str, Any]:
    """Write ``metrics`` updated with ``record`` (n_train, timings, config, ...) to ``path``
    atomically, every key of :data:`METRIC_KEYS` present (NaN -> null); returns it."""
    out = {**metrics, **record}
    for key in METRIC_KEYS:
        out.setdefault(key, None)
    atomic_write_json(path, finite(out))
    return out


def finite(obj: Any) -> Any:
    """NaN / inf -> None, so metrics.json holds valid JSON (null), never a made-up number."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    return obj
