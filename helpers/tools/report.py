"""What the pipeline tells the user: the preflight check before any notebook runs (data, memory,
disk), the message when a notebook failed, and the closing summary of a run."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

from helpers.run.run import Run


class PipelineError(RuntimeError):
    """A run could not start or a notebook failed; the message says what to do."""


def failure_message(nb: str, exc: BaseException, target: Path, out: Path) -> str:
    """What to tell the user when a notebook failed; a dead kernel is named as such, with its
    likely cause (memory), since its notebook holds no error cell."""
    if type(exc).__name__ == "DeadKernelError" or "Kernel died" in str(exc):
        return (
            f"the kernel running {nb} died (no Python error: most likely the operating system "
            f"killed it for using too much memory). The partial run is in {out}; the notebook "
            f"as far as it got is {target}. Lower train_rotations, input_size or batch_size "
            f"(-p NAME VALUE) and continue with --resume."
        )
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    error = next(
        (line for line in reversed(lines) if "Error" in line),
        lines[-1] if lines else type(exc).__name__,
    )
    return (
        f"{nb} failed ({error.strip()}).\nThe executed notebook with the error is {target}.\n"
        "Fix the cause and continue with --resume (finished notebooks and artifacts are "
        "reused)."
    )


def preflight(params: dict[str, Any]) -> str:
    """Before any notebook runs: find the data (download it when asked), check every image
    (unreadable ones stop the run unless ``skip_bad_images``) and mask, say what the test set
    allows to be computed, and compare the fit's estimated peak memory with what is free.
    Returns the lines to print (the first one the summary, then the test set, then one line per
    kind of data warning, counted); raises PipelineError with the whole message (path at fault,
    layout, or estimate, free memory and the knob to change)."""
    from helpers.core.model import PatchCore
    from helpers.core.training import available_ram, check_fit_memory
    from helpers.lessons.timing import resolve_device_quietly

    try:
        run = Run.from_params(params, verbose=False)
    except OSError as exc:  # a Drive path outside Colab, an unreadable folder
        raise PipelineError(f"data: {exc}") from exc
    c = run.config
    notes: list[str] = []
    if run.is_synthetic:
        syn = run.data.synthetic
        n_train = syn["n_train"]
        n_good, n_bad = syn["n_test_good"], 4 * syn["n_per_defect"]
        n_masks, n_types = n_bad, 4 if n_bad else 0
    else:
        n_train, (n_good, n_bad, n_masks, n_types), notes = _check_folder(run)
    if n_train == 0:
        raise PipelineError(f"data: no training images found under {run.data_root}")
    if n_good + n_bad == 0:
        raise PipelineError(
            f"data: no test images under {run.data_root} (every folder of test/ is empty); "
            "notebooks 04 and 05 score the test set: add test images (test/good/, "
            "test/<defect>/)"
        )
    try:
        device = resolve_device_quietly(c.device)
    except RuntimeError as exc:
        raise PipelineError(f"device: {exc}") from exc
    model = PatchCore(c, device=device.type)  # the line says the device
    try:
        est = check_fit_memory(c, model.device, n_train)
    except MemoryError as exc:
        raise PipelineError(f"memory: {exc}") from exc
    free = available_ram()
    out = Path(params["run_dir"])
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    disk = shutil.disk_usage(existing).free  # --out and its parents may not exist yet
    if est["disk"] > 0.9 * disk:
        raise PipelineError(
            f"disk: the fit writes {est['disk'] / 2**30:.1f} GiB of features to "
            f"{out} but {disk / 2**30:.1f} GiB is free; choose another --out, or "
            f"lower input_size or train_rotations"
        )
    first = (
        f"preflight: {n_train} training images x {c.rotations_for(n_train)} rotation(s) at "
        f"{c.input_size} px on {model.device.type}"
        + (" (no CUDA GPU: slower)" if model.device.type == "cpu" and c.device == "auto" else "")
        + f"; fit needs ~{est['ram'] / 2**30:.1f} GiB RAM"
        + (f" of {free / 2**30:.1f} GiB free" if free else "")
        + (f", {est['disk'] / 2**30:.1f} GiB disk" if est["disk"] else "")
    )
    return "\n".join([first, test_set_line(n_good, n_bad, n_masks, n_types), *notes])


def test_set_line(n_good: int, n_bad: int, n_masks: int, n_types: int) -> str:
    """What the test set allows notebook 05 to compute (the rest is null in metrics.json)."""
    head = (
        f"preflight: test set of {n_good} good + {n_bad} defective image(s)"
        + (f" ({n_types} defect type(s), {n_masks} with a mask)" if n_bad else "")
        + ": "
    )
    if n_good and n_bad:
        image = "image AUROC, F1 threshold and per-defect AUROC"
    else:
        missing = "no good" if not n_good else "no defective"
        image = f"image AUROC, F1 threshold and per-defect AUROC null ({missing} test images)"
    pixel = (
        "pixel AUROC and AUPRO"
        if n_masks
        else "pixel AUROC and AUPRO null (no defective image with a mask)"
    )
    if n_good and n_bad and n_masks:
        return head + f"{image}, {pixel} will be computed"
    return head + "; ".join(p if "null" in p else p + " will be computed" for p in (image, pixel))


def _check_folder(run: Run) -> tuple[int, tuple[int, int, int, int], list[str]]:
    """Training images, (good, defective, masked, defect types) test images and the data
    warnings (one line per kind, counted) of a data folder; an unreadable image stops here
    unless ``skip_bad_images``."""
    from helpers.data.mvtec import DatasetError, check_masks, warn_mask_issues

    data = run.data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            listed = data.listed("train") + data.listed("test")
        except (DatasetError, OSError, RuntimeError) as exc:
            raise PipelineError(f"data: {exc}") from exc
        bad = data.unreadable("train") + data.unreadable("test")
        if bad and not run.config.skip_bad_images:
            s, why = bad[0]
            raise PipelineError(
                f"data: {len(bad)} of {len(listed)} image(s) cannot be read, e.g. {s.path} "
                f"({why}); replace or remove them, or pass -p skip_bad_images true to leave "
                "them out"
            )
        train, test = data.train_samples, data.test_samples  # less the unreadable (skip)
        warn_mask_issues(check_masks(test))
    notes = []
    for w in caught:
        line = f"data: {str(w.message).splitlines()[0]}"
        if line not in notes:
            notes.append(line)
    bad_test = [s for s in test if s.defect != "good"]
    counts = (
        len(test) - len(bad_test),
        len(bad_test),
        sum(s.mask_path is not None for s in bad_test),
        len({s.defect for s in bad_test}),
    )
    return len(train), counts, notes


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _thresholds(t: dict) -> str:
    """F1-optimal and good-only thresholds with the false-alarm and miss rates on the test set."""
    parts = []
    for key, name in (
        ("f1_optimal", "F1-optimal"),
        ("good_only", "good-only"),
        ("max_of_good", "max of good"),
    ):
        e = t.get(key)
        if not e or e.get("value") is None:
            continue
        at = f" at {_pct(e['target_false_alarm_rate'])}" if "target_false_alarm_rate" in e else ""
        parts.append(
            f"{name}{at} {_fmt(e['value'])} (false alarms {_pct(e['false_alarm_rate'])}, "
            f"misses {_pct(e['miss_rate'])})"
        )
    return " | ".join(parts) or "n/a"


def summary(out: Path, metrics: dict) -> str:
    figures = sorted((out / "figures").glob("*.png"))
    t = metrics.get("timings") or {}
    lines = [
        f"Results in {out}/",
        f"  metrics.json : image AUROC {_fmt(metrics.get('image_auroc'))} | pixel AUROC "
        f"{_fmt(metrics.get('pixel_auroc'))} | AUPRO {_fmt(metrics.get('aupro'))} | "
        f"F1 threshold {_fmt(metrics.get('f1_threshold'))}",
        "  thresholds   : " + _thresholds(metrics.get("thresholds") or {}),
        "  per defect   : "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in (metrics.get("per_defect") or {}).items()),
        f"  timings      : fit {_fmt(t.get('fit_s'))} s, "
        f"{_fmt(t.get('infer_ms_per_image'))} ms/image "
        f"on {t.get('device')} (batch {t.get('batch_size')})",
        f"  figures/     : {len(figures)} PNG files",
        "  notebooks/   : executed notebooks"
        + (" (+ .html)" if list((out / "notebooks").glob("*.html")) else ""),
    ]
    return "\n".join(lines)
