"""Every category in one batch: ``python -m helpers run --data D --out OUT --category all``
(or ``--category bottle,screw``) runs the main job once per category into ``OUT/<category>/``
and writes one table of the results, ``OUT/summary.csv`` and ``OUT/summary.md``.

Each category is a run folder of its own, so ``--resume`` continues each where it stopped
(finished categories are not run again) and one category failing does not stop the others: its
row says why, and the exit status is 1.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.core.runtime import atomic_write_text
from helpers.tools.report import PipelineError

COLUMNS = (
    "category",
    "status",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "f1_threshold",
    "f1_false_alarm_rate",
    "f1_miss_rate",
    "good_only_threshold",
    "good_only_target_rate",
    "good_only_false_alarm_rate",
    "good_only_miss_rate",
    "n_train",
    "n_test",
    "fit_s",
)
MEANS = ("image_auroc", "pixel_auroc", "aupro")


def find_categories(data: str | Path) -> list[str]:
    """The category folders of an MVTec-layout folder: those holding ``train/good``."""
    root = Path(data).expanduser()
    if not root.is_dir():
        raise PipelineError(f"data folder {root} does not exist")
    found = sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())
    if not found:
        raise PipelineError(
            f"no category folders in {root} (looked for <category>/train/good); "
            "--category all needs the folder that holds the categories"
        )
    return found


def parse_categories(value: str, data: str | None) -> list[str]:
    """``all`` (needs ``data``) or a comma-separated list."""
    if value.strip() == "all":
        if data is None:
            raise PipelineError("--category all needs --data (the folder holding the categories)")
        return find_categories(data)
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise PipelineError("--category: give a name, a comma-separated list or all")
    if len(set(names)) != len(names):
        raise PipelineError(f"--category lists a category twice: {value}")
    return names


def row_of(category: str, status: str, metrics: dict) -> dict[str, Any]:
    t = metrics.get("thresholds") or {}
    f1, good = t.get("f1_optimal") or {}, t.get("good_only") or {}
    timings = metrics.get("timings") or {}
    return {
        "category": category,
        "status": status,
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
        "aupro": metrics.get("aupro"),
        "f1_threshold": metrics.get("f1_threshold"),
        "f1_false_alarm_rate": f1.get("false_alarm_rate"),
        "f1_miss_rate": f1.get("miss_rate"),
        "good_only_threshold": good.get("value"),
        "good_only_target_rate": good.get("target_false_alarm_rate"),
        "good_only_false_alarm_rate": good.get("false_alarm_rate"),
        "good_only_miss_rate": good.get("miss_rate"),
        "n_train": metrics.get("n_train"),
        "n_test": metrics.get("n_test"),
        "fit_s": timings.get("fit_s"),
    }


def mean_row(rows: list[dict]) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "done"]
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    out.update(category="mean", status=f"{len(done)} of {len(rows)} done")
    for key in MEANS:
        values = [r[key] for r in done if r[key] is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def write_summary(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    """``summary.csv`` (every column, full precision) and ``summary.md`` (a table to read)."""
    table = [*rows, mean_row(rows)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in table:
        w.writerow({k: "" if r[k] is None else r[k] for k in COLUMNS})
    csv_path = atomic_write_text(out / "summary.csv", buf.getvalue())
    shown = (
        ("category", "category"),
        ("status", "status"),
        ("image AUROC", "image_auroc"),
        ("pixel AUROC", "pixel_auroc"),
        ("AUPRO", "aupro"),
        ("F1 thr.", "f1_threshold"),
        ("F1: false alarms", "f1_false_alarm_rate"),
        ("F1: misses", "f1_miss_rate"),
        ("good-only thr.", "good_only_threshold"),
        ("good-only: false alarms", "good_only_false_alarm_rate"),
        ("good-only: misses", "good_only_miss_rate"),
        ("train", "n_train"),
        ("test", "n_test"),
    )
    lines = [
        "| " + " | ".join(name for name, _ in shown) + " |",
        "|" + "---|" * len(shown),
    ]
    lines += ["| " + " | ".join(_cell(r[k]) for _, k in shown) + " |" for r in table]
    rates = sorted({r["good_only_target_rate"] for r in rows if r["good_only_target_rate"]})
    note = (
        f"\nGood-only threshold: chosen on held-out good training images at a false-alarm rate "
        f"of {', '.join(f'{x:g}' for x in rates)}; F1 threshold: chosen with the test labels.\n"
        if rates
        else "\n"
    )
    md_path = atomic_write_text(out / "summary.md", "\n".join(lines) + "\n" + note)
    return csv_path, md_path


def run_categories(
    runner: Callable[..., dict],
    out: str | Path,
    data: str | None,
    categories: list[str],
    *,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    html: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """The main job (``runner``: :func:`helpers.tools.pipeline.run_pipeline`) for each of
    ``categories`` into ``out/<category>``; returns the summary rows (also written to
    ``out/summary.csv`` and ``out/summary.md``)."""
    out = Path(out).expanduser().resolve()
    rows = []
    for i, category in enumerate(categories, 1):
        log(f"[{i}/{len(categories)}] {category}")
        folder = out / category
        try:
            metrics = runner(
                folder,
                data,
                params={**(params or {}), "category": category},
                overwrite=overwrite,
                resume=resume,
                html=html,
                threads=threads,
                log=log,
            )
            rows.append(row_of(category, "done", metrics))
        except PipelineError as exc:
            log(f"  {category} failed: {exc}")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
            rows.append(row_of(category, f"failed: {first}", {}))
        write_summary(out, rows)  # after each category: a partial table survives a stop
    csv_path, md_path = write_summary(out, rows)
    log(f"summary of {len(rows)} categories: {md_path} and {csv_path}")
    return rows
