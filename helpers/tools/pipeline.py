"""Run the five notebooks in order with papermill into one run folder.

    python -m helpers.tools.pipeline --out runs/x                     # synthetic set
    python -m helpers.tools.pipeline --data /path/to/mvtec --out runs/x \\
        -p backbone mobilenet_v2 -p coreset_ratio 0.1
    python -m helpers.tools.pipeline --out runs/x --resume            # continue an interrupted run

``-p NAME VALUE`` sets any parameter of the notebooks' ``parameters`` cell (every Config field,
plus synthetic_*, n_examples, coverage_*, inference_batch_size, timing_repeats, interactive...).
VALUE is read as JSON when it parses (0.1, 8, true, null, [0.05, 0.1]), else as a string; None,
True and False are accepted too.

An existing run folder is never overwritten: ``--overwrite`` deletes it first, ``--resume`` keeps
it; both only touch a folder this tool made (it holds the marker file ``.patchcore-run``). On
resume, the parameters saved in run.json are used again (new ``-p`` values override them);
notebooks that finished and whose outputs are still there with the same config hash and the same
data (names, sizes and modification times of the images) are skipped; from the first one that is
not, every notebook is executed again, and each of them loads the artifacts that still match and
computes the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.core.config import ConfigError
from helpers.core.runtime import PROGRESS_ENV, atomic_write_json
from helpers.run.parameters import (
    BASE_PARAMETERS,
    PRESETS,
    RESERVED,
    check_notebook_parameters,
    config_from_params,
    known_parameters,
    parse_value,
    repo_root,
)
from helpers.run.run import Run
from helpers.tools.report import PipelineError, failure_message, preflight, summary


def _not_unknown_parameter(record: logging.LogRecord) -> bool:
    """A lesson's parameters cell shows only its own knobs, so papermill calls every other -p
    name "unknown"; the names were checked against Config + NOTEBOOK_PARAMETERS already."""
    return not record.getMessage().startswith("Passed unknown parameter")


logging.getLogger("papermill").addFilter(_not_unknown_parameter)

NOTEBOOKS = (
    "01_dataset_exploration_clahe.ipynb",
    "02_feature_extraction.ipynb",
    "03_coreset_construction.ipynb",
    "04_a100_inference.ipynb",
    "05_evaluation_auroc_heatmaps.ipynb",
)
# The artifact each notebook leaves behind (checked on --resume); None: the executed notebook.
PRODUCES = (None, "features", "bank", "predictions", "metrics")


def notebook_dir() -> Path:
    return repo_root() / "notebooks"


# The file that says "this tool made this folder": --overwrite deletes, and --resume continues,
# only a folder holding it.
MARKER = ".patchcore-run"


def _state_path(out: Path) -> Path:
    return out / "run.json"


def _load_state(out: Path) -> dict:
    path = _state_path(out)
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PipelineError(
            f"cannot read {path} ({type(exc).__name__}: {exc}); it holds the run's parameters. "
            "Repair it, or delete it and --resume again with the run's -p values "
            "(matching artifacts are reused)"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("parameters", {}), dict):
        raise PipelineError(
            f"{path} is not a run state (a JSON object with 'parameters'); delete it and "
            "--resume again with the run's -p values (matching artifacts are reused)"
        )
    return state


def _resolve(path: str | Path, flag: str) -> Path:
    """``path`` made absolute with its links followed; a link loop is one line, not a
    traceback."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: "Symlink loop" before Python 3.13
        raise PipelineError(
            f"{flag} {path} cannot be resolved ({exc}): a symbolic link loop? Point {flag} "
            "at a real folder"
        ) from exc


def _is_marked(out: Path) -> bool:
    return (out / MARKER).is_file()


def _prepare_folder(out: Path, overwrite: bool, resume: bool, data: Path | None = None) -> None:
    if overwrite and resume:
        raise PipelineError("choose one of --overwrite (start again) and --resume (continue)")
    if out.exists() and not out.is_dir():
        raise PipelineError(f"--out {out} is a file, not a folder; choose another --out")
    _check_writable(out)
    if not out.exists() or not any(out.iterdir()):
        return
    if not _is_marked(out):
        made = any((out / n).exists() for n in ("run.json", "artifacts", "metrics.json"))
        raise PipelineError(
            f"{out} is not a run folder made by this tool (no {MARKER} file), so neither "
            "--resume nor --overwrite touches it; choose another --out"
            + (
                f" (if an older version of this tool made it, create {out / MARKER} to use it)"
                if made
                else ""
            )
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


def _check_writable(out: Path) -> None:
    """Refuse, before anything is made or deleted, an --out whose nearest existing folder
    cannot take a file (read-only file system, no permission, a file on the way)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise PipelineError(
            f"cannot write to the run folder {out} ({existing}: {why}); choose another --out"
        ) from exc


def _make_folder(out: Path) -> None:
    """Create the run folder (and its marker) or say in one line why it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        marker = out / MARKER
        if not marker.is_file():
            atomic_write_json(marker, {"made_by": "python -m helpers run", "time": time.time()})
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PipelineError(
            f"cannot write to the run folder {out} ({exc.strerror or exc}); choose another --out"
        ) from exc


def _outputs_present(i: int, run: Run, state: dict, out: Path) -> bool:
    nb = NOTEBOOKS[i]
    done = state.get("notebooks", {}).get(nb, {}).get("status") == "done"
    if not done or not (out / "notebooks" / nb).is_file():
        return False
    what = PRODUCES[i]
    if what is None:
        return True
    if what == "metrics":
        return run.metrics_path.is_file()
    return run.is_cached(what)


def _changed(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys[:3])


def resume_start(
    out: Path,
    params: dict,
    state: dict,
    data: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> int:
    """Index of the first notebook to execute again when resuming: 0 when the parameters or
    the data (``data``: :meth:`DataSource.fingerprints`) differ from the stored run's (said
    through ``log``), else the first notebook whose outputs are not all there."""
    say = log or (lambda msg: None)
    changed = False
    if state.get("parameters") != params:
        say(f"parameters changed ({_changed(state.get('parameters', {}), params)})")
        changed = True
    if data is not None and state.get("data") != data:
        say(f"data changed since the last run ({_changed(state.get('data') or {}, data)})")
        changed = True
    if changed:
        return 0
    run = Run.from_params({**params, "run_dir": str(out)}, verbose=False)
    for i in range(len(NOTEBOOKS)):
        if not _outputs_present(i, run, state, out):
            return i
    return len(NOTEBOOKS)


def _clear_stale(out: Path, start: int, log) -> None:
    """Before notebooks ``start``... run again: remove what they will write anew (so a failure
    leaves no result of the earlier run beside the new run.json) and the temporary files of a
    killed kernel (spill files, half-written atomic writes)."""
    stale = []
    if start <= NOTEBOOKS.index("05_evaluation_auroc_heatmaps.ipynb"):
        stale.append(out / "metrics.json")
    if start <= NOTEBOOKS.index("04_a100_inference.ipynb"):
        stale.append(out / "timing.json")
    for path in stale:
        path.unlink(missing_ok=True)
    # "*" matches dot files too: spill files (patchcore-features-*.f32.tmp) and atomic writes
    temps = sorted({p for d in (out, out / "artifacts", out / "figures") for p in d.glob("*.tmp")})
    for p in temps:
        p.unlink(missing_ok=True)
    if temps:
        log(f"removed {len(temps)} temporary file(s) an interrupted run left, e.g. {temps[0].name}")


def to_html(notebook: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    target = notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


@contextlib.contextmanager
def _threads(n: int | None):
    """Limit the kernels' CPU threads (they inherit the environment). On a shared, busy machine
    one thread per kernel is much faster than OpenMP threads fighting for cores."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", PROGRESS_ENV)
    old = {k: os.environ.get(k) for k in names}
    os.environ[PROGRESS_ENV] = "stderr"  # kernels draw progress bars in this terminal
    if n:
        os.environ.update({k: str(n) for k in names[:3]})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_pipeline(
    out: str | Path,
    data: str | None = None,
    *,
    params: dict[str, Any] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    html: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Execute the notebooks into ``out``; returns the metrics.json contents. ``threads``: CPU
    threads per notebook kernel (default: the library's choice)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise PipelineError(f"threads={threads!r} must be a positive whole number (e.g. 1)")
    if threads is not None and threads < 1:
        raise PipelineError(f"--threads {threads} must be a positive whole number (e.g. 1)")
    with _threads(threads):
        return _run(out, data, params, overwrite, resume, html, log)


def _check_names(params: dict[str, Any]) -> None:
    """``-p`` names must be Config fields or declared notebook parameters (NOTEBOOK_PARAMETERS)."""
    known = known_parameters()
    bad = sorted(set(params) - set(known) - set(RESERVED))
    if bad:
        raise PipelineError(f"unknown parameter(s) {bad}; known: {sorted(known)}")
    if any(k in params for k in RESERVED):
        raise PipelineError("set the run folder with --out, not -p run_dir")


def _merge(out: Path, data: Path | None, params: dict, resume: bool) -> tuple[dict, dict]:
    """The run's parameters (stored ones on --resume, then -p, then --data), checked (every
    Config field and notebook parameter) before any notebook runs; and the stored state (empty
    without --resume)."""
    state = _load_state(out) if resume else {}
    merged = {**BASE_PARAMETERS, **state.get("parameters", {}), **params}
    if data is not None:
        merged["dataset_path"] = str(data)
    merged.setdefault("dataset_path", "")
    try:
        config_from_params(merged)  # fail before any notebook runs
        check_notebook_parameters(merged)
    except ConfigError as exc:
        raise PipelineError(f"invalid parameter: {exc} (set it with -p NAME VALUE)") from exc
    except TypeError as exc:
        raise PipelineError(f"invalid parameters: {exc}") from exc
    return merged, state


def _execute(nb: str, out: Path, merged: dict, state: dict, html: bool, log) -> None:
    """Run one notebook into ``out/notebooks`` with papermill, its status kept in run.json."""
    import papermill

    target = out / "notebooks" / nb
    state["notebooks"][nb] = {"status": "running"}
    atomic_write_json(_state_path(out), state)
    t0 = time.perf_counter()
    log(f"running {nb} ...")
    try:
        papermill.execute_notebook(
            str(notebook_dir() / nb),
            str(target),
            parameters={**merged, "run_dir": str(out)},
            kernel_name="python3",
            cwd=str(notebook_dir()),
            progress_bar=False,
            log_output=False,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        state["notebooks"][nb] = {"status": status, "seconds": time.perf_counter() - t0}
        atomic_write_json(_state_path(out), state)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PipelineError(failure_message(nb, exc, target, out)) from exc
    seconds = time.perf_counter() - t0
    state["notebooks"][nb] = {"status": "done", "seconds": round(seconds, 1)}
    atomic_write_json(_state_path(out), state)
    if html:
        to_html(target)
    log(f"  done in {seconds:.0f} s")


def _run(out, data, params, overwrite, resume, html, log) -> dict:
    out = _resolve(out, "--out")
    data = _resolve(data, "--data") if data is not None else None
    params = dict(params or {})
    _check_names(params)
    _prepare_folder(out, overwrite, resume, data)
    merged, state = _merge(out, data, params, resume)
    log(preflight({**merged, "run_dir": str(out)}))

    _make_folder(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data's warnings: said once, by the preflight
        run = Run.from_params({**merged, "run_dir": str(out)}, verbose=False)
        fingerprints = run.data.fingerprints()  # what the images are now (synthetic set made)
        start = resume_start(out, merged, state, fingerprints, log) if state else 0
    if state and start == len(NOTEBOOKS):
        log(f"{out}: every notebook finished with these parameters; nothing to resume")
    elif state:
        log(f"resuming {out} from {NOTEBOOKS[start]}")
    if start < len(NOTEBOOKS):
        _clear_stale(out, start, log)
    state = {
        "parameters": merged,
        "data": fingerprints,
        "notebooks": state.get("notebooks", {}) if start else {},
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(_state_path(out), state)
    (out / "notebooks").mkdir(exist_ok=True)
    for nb in NOTEBOOKS[start:]:
        _execute(nb, out, merged, state, html, log)
    metrics = (
        json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    )
    log(summary(out, metrics))
    return metrics


def _threads_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (e.g. 1)")
    return n


def main(argv: list[str] | None = None, prog: str = "python -m helpers.tools.pipeline") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default=None,
        help="MVTec-layout folder (holding metal_nut/ or the category folder itself); "
        "default: the synthetic set",
    )
    parser.add_argument(
        "--out", required=True, help="run folder (created; never overwritten silently)"
    )
    parser.add_argument(
        "--category",
        default=None,
        help="one category (as -p category), or several: a comma-separated list or all (every "
        "folder of --data with train/good), each into OUT/<category>, with OUT/summary.csv/.md",
    )
    parser.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a notebook parameter (repeatable)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="start from a parameter preset (demo: MobileNetV2 on the synthetic set)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder first"
    )
    parser.add_argument("--resume", action="store_true", help="continue an existing run folder")
    parser.add_argument(
        "--html", action="store_true", help="also write each executed notebook as HTML"
    )
    parser.add_argument(
        "--threads",
        type=_threads_arg,
        default=None,
        help="CPU threads per notebook kernel (1 is fastest on a busy shared machine)",
    )
    args = parser.parse_args(argv)
    params = dict(PRESETS.get(args.preset, {}))
    params.update({name: parse_value(value) for name, value in args.param})
    if args.category is not None and ("," in args.category or args.category.strip() == "all"):
        from helpers.tools.batch import parse_categories, run_categories

        try:
            names = parse_categories(args.category, args.data)
            rows = run_categories(
                run_pipeline,
                args.out,
                args.data,
                names,
                params=params,
                overwrite=args.overwrite,
                resume=args.resume,
                html=args.html,
                threads=args.threads,
            )
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0 if all(r["status"] == "done" for r in rows) else 1
    if args.category is not None:
        params["category"] = args.category.strip()
    try:
        run_pipeline(
            args.out,
            args.data,
            params=params,
            overwrite=args.overwrite,
            resume=args.resume,
            html=args.html,
            threads=args.threads,
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
