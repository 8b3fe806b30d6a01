"""A test set's metrics and ``metrics.json`` (notebook 05): :func:`evaluate` (every metric of
the contract, :data:`METRIC_KEYS`, null when unavailable), the thresholds entry, timings, and the
one writer of the file (:func:`write_metrics`)."""

from __future__ import annotations

import csv
import io
import math
import warnings
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from helpers.core.model import Prediction
from helpers.core.runtime import atomic_write_json, atomic_write_text
from helpers.data.mvtec import Sample, masks_like

# Results of notebook 05 that metrics.json must always hold (null when unavailable).
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_threshold", "thresholds",
               "per_defect", "per_defect_pixel", "n_train", "n_test", "timings", "config",
               "versions")  # fmt: skip


def evaluate(samples: list[Sample], pred: Prediction, *, quiet: bool = True) -> dict[str, Any]:
    """Every metric of metrics.json but timings, config and versions for test ``samples`` scored
    by ``pred``, plus ``pixel_f1_threshold`` (for drawing regions). Good images count as all-normal
    masks; defective ones without a mask are left out. ``quiet=False``: warn what is null, why."""
    from helpers.evaluation import metrics

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")  # the nulls speak for themselves in the table
        masks = masks_like(samples, pred.maps)
        triples = zip(samples, pred.maps, masks)
        missing = [str(s.path) for s, a, m in triples if a is not None and s.label and m is None]
        if missing and len(missing) < sum(s.label for s in samples):
            more = " ..." if len(missing) > 3 else ""
            why = (
                f"{len(missing)} defective image(s) without a mask: {', '.join(missing[:3])}{more}"
            )
            warnings.warn(f"pixel metrics skip {why}", stacklevel=2)
        labels, defects = [s.label for s in samples], [s.defect for s in samples]
        if any(m is not None and m.any() for m in masks):
            pixel = metrics.pixel_metrics(defects, masks, pred.maps)
        else:
            warnings.warn(
                "no ground-truth masks found: pixel AUROC and AUPRO are null", stacklevel=2
            )
            pixel = {"pixel_auroc": None, "aupro": None, "per_defect_pixel": None}
        thr = metrics.f1_threshold(labels, pred.scores) or (None, None)
        return {"image_auroc": metrics.image_auroc(labels, pred.scores), **pixel,
                "f1_threshold": thr[0], "f1": thr[1],
                "per_defect": metrics.per_defect_auroc(defects, pred.scores),
                "pixel_f1_threshold": pixel_f1_threshold(masks, pred.maps)}  # fmt: skip


def pixel_f1_threshold(masks, maps, step: int = 4) -> float | None:
    """The map value maximising pixel F1 (every ``step``-th pixel each way), or None."""
    from helpers.evaluation.metrics import f1_threshold

    pairs = [(m, a) for m, a in zip(masks, maps) if m is not None and a is not None]
    y = np.concatenate([m[::step, ::step].ravel() for m, _ in pairs] or [np.zeros(0, bool)])
    if y.all() or not y.any():
        return None
    best = f1_threshold(
        y.astype(int), np.concatenate([a[::step, ::step].ravel() for _, a in pairs])
    )
    return None if best is None else best[0]


def thresholds(labels, scores, f1_threshold: float | None, good_only: dict | None) -> dict:
    """metrics.json's ``thresholds``: the F1-optimal one (chosen with the test labels: optimistic)
    and the good-only ones (:meth:`PatchCore.calibrate`'s), each with its false-alarm and miss
    rates here; ``false_alarm_rate_se``: the binomial error of a rate over this many good images."""
    from helpers.evaluation.metrics import threshold_rates

    f1 = threshold_rates(labels, scores, f1_threshold)
    out = {"f1_optimal": {**f1, "chosen_on": "the test set's labels (optimistic)"}}
    if good_only is None:
        return {**out, "good_only": None, "max_of_good": None}
    rate = good_only["false_alarm_rate"]
    common = {"chosen_on": good_only.get("computed_on", good_only.get("method"))}
    good = threshold_rates(labels, scores, good_only["value"])
    se = math.sqrt(rate * (1 - rate) / good["n_good"]) if good["n_good"] else None
    out["good_only"] = {**good, **common, "target_false_alarm_rate": rate,
                        "expected_false_alarm_rate": good_only["expected_false_alarm_rate"],
                        "false_alarm_rate_se": se}  # fmt: skip
    max_rates = threshold_rates(labels, scores, good_only["max_of_good"])
    expected = good_only["max_of_good_expected_false_alarm_rate"]
    out["max_of_good"] = {**max_rates, **common, "expected_false_alarm_rate": expected}
    return out


def timings(fit_info: dict, pred: Prediction) -> dict[str, Any]:
    """The timings entry of metrics.json: the fit's (from the bank's info) and inference's."""
    fit = {k: fit_info.get(k) for k in ("fit_s", "features_s", "coreset_s")}
    ms = 1000 * pred.seconds / max(len(pred), 1)
    return {**fit, "infer_ms_per_image": ms, "batch_size": pred.batch_size, "device": pred.device}


def write_metrics(path: str | Path, metrics: dict, record: dict) -> dict[str, Any]:
    """Write ``metrics`` updated with ``record`` (n_train, timings, config, ...) to ``path``
    atomically, every key of :data:`METRIC_KEYS` present (NaN -> null); returns it."""
    out = {**metrics, **record}
    out.update({key: None for key in METRIC_KEYS if key not in out})
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


def metrics_lines(metrics: dict) -> list[str]:
    """The headline of metrics.json (AUROCs, AUPRO, each threshold with its false-alarm and miss
    rates, per-defect AUROC, timings) as the lines of a run's closing summary."""
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"
    parts = []
    for key, name in (("f1_optimal", "F1-optimal"), ("good_only", "good-only"),
                      ("max_of_good", "max of good")):  # fmt: skip
        e = (metrics.get("thresholds") or {}).get(key)
        if e and e.get("value") is not None:
            target = "target_false_alarm_rate" in e
            at = f" at {pct(e['target_false_alarm_rate'])}" if target else ""
            rates = f"false alarms {pct(e['false_alarm_rate'])}, misses {pct(e['miss_rate'])}"
            parts.append(f"{name}{at} {fmt(e['value'])} ({rates})")
    t, m = metrics.get("timings") or {}, metrics
    per_defect = ", ".join(f"{k} {fmt(v)}" for k, v in (m.get("per_defect") or {}).items())
    return [
        f"  metrics.json : image AUROC {fmt(m.get('image_auroc'))} | pixel AUROC "
        f"{fmt(m.get('pixel_auroc'))} | AUPRO {fmt(m.get('aupro'))} | "
        f"F1 threshold {fmt(m.get('f1_threshold'))}",
        "  thresholds   : " + (" | ".join(parts) or "n/a"),
        f"  per defect   : {per_defect}",
        f"  timings      : fit {fmt(t.get('fit_s'))} s, {fmt(t.get('infer_ms_per_image'))} ms/image"
        f" on {t.get('device')} (batch {t.get('batch_size')})",
    ]  # fmt: skip


# ------------------------------------------------------------------ several runs side by side
# summary.csv's columns after category and status: where each is in metrics.json, and its header
# in summary.md ("": left out of the .md table)
SUMMARY_COLUMNS = {
    "image_auroc": ("image_auroc", "image AUROC"),
    "pixel_auroc": ("pixel_auroc", "pixel AUROC"),
    "aupro": ("aupro", "AUPRO"),
    "f1_threshold": ("f1_threshold", "F1 thr."),
    "f1_false_alarm_rate": ("thresholds.f1_optimal.false_alarm_rate", "F1: false alarms"),
    "f1_miss_rate": ("thresholds.f1_optimal.miss_rate", "F1: misses"),
    "good_only_threshold": ("thresholds.good_only.value", "good-only thr."),
    "good_only_target_rate": ("thresholds.good_only.target_false_alarm_rate", ""),
    "good_only_false_alarm_rate": ("thresholds.good_only.false_alarm_rate", "good-only: false alarms"),  # noqa: E501
    "good_only_miss_rate": ("thresholds.good_only.miss_rate", "good-only: misses"),
    "n_train": ("n_train", "train"),
    "n_test": ("n_test", "test"),
    "fit_s": ("timings.fit_s", ""),
}  # fmt: skip
MEANS = ("image_auroc", "pixel_auroc", "aupro")


def summary_row(name: str, status: str, metrics: dict) -> dict[str, Any]:
    """One run's row of :data:`SUMMARY_COLUMNS` from its metrics.json contents."""
    at = lambda where: reduce(lambda value, key: (value or {}).get(key), where.split("."), metrics)
    values = {column: at(where) for column, (where, _) in SUMMARY_COLUMNS.items()}
    return {"category": name, "status": status, **values}


def write_summary(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """``summary.csv`` (every column, full precision) and ``summary.md`` (a table to read) of
    ``rows``, with a last row of the means over the finished runs."""
    done = [r for r in rows if r["status"] == "done"]
    mean = {**dict.fromkeys(rows[0] if rows else ()), "category": "mean"}
    mean["status"] = f"{len(done)} of {len(rows)} done"
    for key in MEANS:
        values = [r[key] for r in done if r[key] is not None]
        mean[key] = sum(values) / len(values) if values else None
    table, columns = [*rows, mean], ["category", "status", *SUMMARY_COLUMNS]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows({k: "" if r.get(k) is None else r[k] for k in columns} for r in table)
    csv_path = atomic_write_text(out / "summary.csv", buf.getvalue())
    shown = {"category": "category", "status": "status"}
    shown.update({k: head for k, (_, head) in SUMMARY_COLUMNS.items() if head})
    cell = lambda v: "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(shown.values()) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in shown) + " |" for r in table]
    rates = sorted({r["good_only_target_rate"] for r in rows if r["good_only_target_rate"]})
    note = (
        f"\nGood-only threshold: chosen on held-out good training images at a false-alarm rate "
        f"of {', '.join(f'{x:g}' for x in rates)}; F1 threshold: chosen with the test labels.\n"
        if rates
        else "\n"
    )
    md_path = atomic_write_text(out / "summary.md", "\n".join(lines) + "\n" + note)
    return csv_path, md_path
