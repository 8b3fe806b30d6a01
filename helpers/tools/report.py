"""What the main job checks and tells the user: the run folder it may make, delete or resume
(its marker), the preflight before any notebook runs (data, memory, disk), the message when a
notebook failed, the closing summary; and every category in one batch (``run --category all``):
one run folder per category in ``OUT/<category>/``, each resumable, a failing one not stopping
the others (its row says why, exit status 1), one table of all, ``OUT/summary.csv`` / ``.md``."""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.evaluation.report import metrics_lines, summary_row, write_summary
from helpers.run.run import Run


class PipelineError(RuntimeError):
    """A run could not start or a notebook failed; the message says what to do."""


# ------------------------------------------------------------------ the run folder
MARKER = ".patchcore-run"  # "this tool made this folder": only such a folder is deleted or resumed
AGAIN = "delete it and --resume again with the run's -p values (matching artifacts are reused)"


def load_state(out: Path) -> dict:
    path = out / "run.json"
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = f"({type(exc).__name__}: {exc}); it holds the run's parameters: {AGAIN}"
        raise PipelineError(f"cannot read {path} {why}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("parameters", {}), dict):
        raise PipelineError(f"{path} is not a run state (a JSON object with 'parameters'); {AGAIN}")
    return state


def resolve(path: str | Path, flag: str) -> Path:
    """``path`` made absolute with its links followed; a link loop is one line."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: "Symlink loop" before Python 3.13
        why = f"cannot be resolved ({exc}): a symbolic link loop?"
        raise PipelineError(f"{flag} {path} {why} Point {flag} at a real folder") from exc


def unwritable(out: Path, why) -> PipelineError:
    return PipelineError(f"cannot write to the run folder {out} ({why}); choose another --out")


def prepare_folder(out: Path, overwrite: bool, resume: bool, data: Path | None) -> None:
    """Refuse, before anything is made or deleted, an --out that cannot take a file or that
    holds results this tool may not touch; delete it for --overwrite."""
    if overwrite and resume:
        raise PipelineError("choose one of --overwrite (start again) and --resume (continue)")
    if out.exists() and not out.is_dir():
        raise PipelineError(f"--out {out} is a file, not a folder; choose another --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise unwritable(out, f"{existing}: {exc.strerror or exc}") from exc
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        old = any((out / n).exists() for n in ("run.json", "artifacts", "metrics.json"))
        hint = f" (if an older version of this tool made it, create {out / MARKER} to use it)"
        raise PipelineError(
            f"{out} is not a run folder made by this tool (no {MARKER} file), so neither "
            f"--resume nor --overwrite touches it; choose another --out{hint if old else ''}"
        )
    if resume:
        return
    if not overwrite:
        raise PipelineError(
            f"run folder {out} already holds results; pass --resume to continue it, "
            "--overwrite to delete it and start again, or choose another --out"
        )
    if data is not None and (data == out or out in data.parents):
        raise PipelineError(
            f"--data {data} lies inside --out {out}: --overwrite would delete it; move the "
            "data or choose another --out"
        )
    shutil.rmtree(out)


def failure_message(nb: str, exc: BaseException, target: Path, out: Path) -> str:
    """What to tell the user when a notebook failed; a dead kernel (no error cell) is named, with
    its likely cause (memory)."""
    if type(exc).__name__ == "DeadKernelError" or "Kernel died" in str(exc):
        return (
            f"the kernel running {nb} died (no Python error: most likely the operating system "
            f"killed it for using too much memory). The partial run is in {out}; the notebook "
            f"as far as it got is {target}. Lower train_rotations, input_size or batch_size "
            f"(-p NAME VALUE) and continue with --resume."
        )
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    error = next((line for line in reversed(lines) if "Error" in line), last)
    return (
        f"{nb} failed ({error.strip()}).\nThe executed notebook with the error is {target}.\n"
        "Fix the cause and continue with --resume (finished notebooks and artifacts are reused)."
    )


def preflight(params: dict[str, Any]) -> str:
    """Before any notebook runs: find (or download) the data, check every image and mask, say what
    the test set allows, compare the fit's memory estimate with what is free. Returns the lines;
    a PipelineError names the path, estimate or knob at fault."""
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
        n_train, n_good, n_bad = syn["n_train"], syn["n_test_good"], 4 * syn["n_per_defect"]
        n_masks, n_types = n_bad, 4 if n_bad else 0
    else:
        n_train, (n_good, n_bad, n_masks, n_types), notes = _check_folder(run)
    if n_train == 0:
        raise PipelineError(f"data: no training images found under {run.data_root}")
    if n_train == 1:  # held-out scores leave one image out: the bank needs another's rows
        raise PipelineError(
            f"data: 1 training image under {run.data_root}; notebook 05's good-only threshold "
            "scores each training image against a bank built without it: add good images to "
            "train/good/ (at least 2)"
        )
    if n_good + n_bad == 0:
        raise PipelineError(
            f"data: no test images under {run.data_root} (every folder of test/ is empty); "
            "notebooks 04 and 05 score the test set: add test images (test/good/, test/<defect>/)"
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
    free, out = available_ram(), Path(params["run_dir"])
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    disk = shutil.disk_usage(existing).free  # --out and its parents may not exist yet
    if est["disk"] > 0.9 * disk:
        raise PipelineError(
            f"disk: the fit writes {est['disk'] / 2**30:.1f} GiB of features to {out} but "
            f"{disk / 2**30:.1f} GiB is free; choose another --out, or lower input_size or "
            "train_rotations"
        )
    slow = " (no CUDA GPU: slower)" if model.device.type == "cpu" and c.device == "auto" else ""
    first = (
        f"preflight: {n_train} training images x {c.rotations_for(n_train)} rotation(s) at "
        f"{c.input_size} px on {model.device.type}{slow}; fit needs ~{est['ram'] / 2**30:.1f} GiB "
        "RAM" + (f" of {free / 2**30:.1f} GiB free" if free else "")
        + (f", {est['disk'] / 2**30:.1f} GiB disk" if est["disk"] else "")
    )  # fmt: skip
    return "\n".join([first, test_set_line(n_good, n_bad, n_masks, n_types), *notes])


def test_set_line(n_good: int, n_bad: int, n_masks: int, n_types: int) -> str:
    """What the test set allows notebook 05 to compute (the rest is null in metrics.json)."""
    kinds = f" ({n_types} defect type(s), {n_masks} with a mask)" if n_bad else ""
    head = f"preflight: test set of {n_good} good + {n_bad} defective image(s){kinds}: "
    none = "defective" if n_good else "good"
    missing = "" if n_good and n_bad else f" null (no {none} test images)"
    image = f"image AUROC, F1 threshold and per-defect AUROC{missing}"
    pixel = "pixel AUROC and AUPRO" + ("" if n_masks else " null (no defective image with a mask)")
    if n_good and n_bad and n_masks:
        return head + f"{image}, {pixel} will be computed"
    return head + "; ".join(p if "null" in p else p + " will be computed" for p in (image, pixel))


def _check_folder(run: Run) -> tuple[int, tuple[int, int, int, int], list[str]]:
    """Training images, (good, defective, masked, defect types) test images and the data warnings
    (one line per kind) of a data folder; an unreadable image stops here unless skip_bad_images."""
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
    notes = list(dict.fromkeys(f"data: {str(w.message).splitlines()[0]}" for w in caught))
    bad = [s for s in test if s.label]
    masked = sum(s.mask_path is not None for s in bad)
    return len(train), (len(test) - len(bad), len(bad), masked, len({s.defect for s in bad})), notes


def summary(out: Path, metrics: dict) -> str:
    """The closing summary of a run: its headline metrics, figures and notebooks."""
    html = " (+ .html)" if any((out / "notebooks").glob("*.html")) else ""
    return "\n".join([
        f"Results in {out}/",
        *metrics_lines(metrics),
        f"  figures/     : {len(list((out / 'figures').glob('*.png')))} PNG files",
        f"  notebooks/   : executed notebooks{html}",
    ])  # fmt: skip


# ------------------------------------------------------------------ every category in one batch
def parse_categories(value: str, data: str | None) -> list[str]:
    """``all`` (the folders of ``data`` holding ``train/good``) or a comma-separated list."""
    if value.strip() == "all":
        if data is None:
            raise PipelineError("--category all needs --data (the folder holding the categories)")
        if not (root := Path(data).expanduser()).is_dir():
            raise PipelineError(f"data folder {root} does not exist")
        if found := sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir()):
            return found
        raise PipelineError(
            f"no category folders in {root} (looked for <category>/train/good); "
            "--category all needs the folder that holds the categories"
        )
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise PipelineError("--category: give a name, a comma-separated list or all")
    if len(set(names)) != len(names):
        raise PipelineError(f"--category lists a category twice: {value}")
    return names


def run_categories(runner: Callable[..., dict], out, data, categories: list[str], *,
                   params: dict | None = None, log: Callable = print, **kw) -> list:  # fmt: skip
    """The main job (``runner``: :func:`helpers.tools.pipeline.run_pipeline`, given ``kw``) for
    each of ``categories`` into ``out/<category>``; returns the summary rows, also written to
    ``out/summary.csv`` and ``out/summary.md`` after each category."""
    out, rows = Path(out).expanduser().resolve(), []
    for i, category in enumerate(categories, 1):
        log(f"[{i}/{len(categories)}] {category}")
        p = {**(params or {}), "category": category}
        try:
            metrics = runner(out / category, data, params=p, log=log, **kw)
            rows.append(summary_row(category, "done", metrics))
        except PipelineError as exc:
            log(f"  {category} failed: {exc}")
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
            rows.append(summary_row(category, f"failed: {first}", {}))
        csv_path, md_path = write_summary(out, rows)  # a partial table survives a stop
    log(f"summary of {len(rows)} categories: {md_path} and {csv_path}")
    return rows
