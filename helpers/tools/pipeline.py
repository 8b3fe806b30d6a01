"""Run the six notebooks in order with papermill into one run folder (``python -m helpers run``).

    python -m helpers run --out runs/x                                   # the synthetic set
    python -m helpers run --data /path/to/mvtec --out runs/x -p backbone mobilenet_v2
    python -m helpers run --out runs/x --resume                          # continue a run

``-p NAME VALUE`` sets any notebook parameter (a Config field, synthetic_*, n_examples...;
VALUE read as JSON when it parses). A run folder is never overwritten: ``--overwrite`` deletes,
``--resume`` continues (stored parameters, then -p) only a folder this tool made (it holds
``.patchcore-run``); on resume, finished notebooks whose outputs still match the settings and
the images are skipped, the rest run again, reusing the artifacts that still match.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

from helpers.core.config import ConfigError
from helpers.core.process import PROGRESS_ENV
from helpers.core.runtime import atomic_write_json
from helpers.run import parameters
from helpers.run.run import Run
from helpers.tools import kernels, report
from helpers.tools.report import MARKER, PipelineError

# A lesson's parameters cell shows only its own knobs, so papermill calls every other -p name
# "unknown"; the names were checked against Config + NOTEBOOK_PARAMETERS already.
logging.getLogger("papermill").addFilter(
    lambda record: not record.getMessage().startswith("Passed unknown parameter")
)
NOTEBOOKS = ("01_dataset_exploration_clahe.ipynb", "02_feature_extraction.ipynb",
             "03_coreset_construction.ipynb", "04_a100_inference.ipynb",
             "05_evaluation_auroc_heatmaps.ipynb", "06_patchcore_from_scratch.ipynb")  # fmt: skip
PRODUCES = (None, "features", "bank", "predictions", "metrics", None)  # checked on --resume


def notebook_dir() -> Path:
    return parameters.repo_root() / "notebooks"


def _changed(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys[:3])


def resume_start(out: Path, params: dict, state: dict, data: dict | None = None, log=None) -> int:
    """Index of the first notebook to execute again on resume: 0 when the parameters or the data
    (``data``: :meth:`DataSource.fingerprints`) changed (said through ``log``), else the first
    notebook whose outputs are not all there."""
    say = log or (lambda msg: None)
    new_params, new_data = state.get("parameters") != params, data not in (None, state.get("data"))
    if new_params:
        say(f"parameters changed ({_changed(state.get('parameters', {}), params)})")
    if new_data:
        say(f"data changed since the last run ({_changed(state.get('data') or {}, data)})")
    if new_params or new_data:
        return 0
    run = Run.from_params({**params, "run_dir": str(out)}, verbose=False)
    for i, (nb, what) in enumerate(zip(NOTEBOOKS, PRODUCES)):
        done = state.get("notebooks", {}).get(nb, {}).get("status") == "done"
        kept = (
            run.metrics_path.is_file() if what == "metrics" else what is None or run.is_cached(what)
        )
        if not (done and (out / "notebooks" / nb).is_file() and kept):
            return i
    return len(NOTEBOOKS)


def _clear_stale(out: Path, start: int, log) -> None:
    """Before notebooks ``start``... run again: remove what they will write anew (so a failure
    leaves no stale result) and a killed kernel's temporary files ("*" matches dot files too)."""
    for name, nb in (("metrics.json", 4), ("timing.json", 3)):
        if start <= nb:
            (out / name).unlink(missing_ok=True)
    temps = sorted({p for d in (out, out / "artifacts", out / "figures") for p in d.glob("*.tmp")})
    for p in temps:
        p.unlink(missing_ok=True)
    if temps:
        log(f"removed {len(temps)} temporary file(s) an interrupted run left, e.g. {temps[0].name}")


def _threads(n: int | None):
    """The kernels' environment, for the block: ``n`` CPU threads each (on a busy machine one
    thread per kernel beats OpenMP threads fighting for cores), progress bars on this terminal."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS") if n else ()
    return mock.patch.dict(os.environ, {PROGRESS_ENV: "stderr", **dict.fromkeys(names, str(n))})


def run_pipeline(out: str | Path, data: str | None = None, *, params: dict[str, Any] | None = None,
                 overwrite=False, resume=False, html=False, threads: int | None = None,
                 log: Callable[[str], None] = print, first=None) -> dict:  # fmt: skip
    """Execute the notebooks into ``out``; returns the metrics.json contents. ``threads``: CPU
    threads per notebook kernel (default: the library's choice); ``first``: a kernel started
    already for the first notebook (:func:`~helpers.tools.kernels.start_early`), or None."""
    if threads is not None and (type(threads) is not int or threads < 1):
        raise PipelineError(f"threads={threads!r} must be a positive whole number (e.g. 1)")
    with _threads(threads):
        return _run(out, data, dict(params or {}), overwrite, resume, html, log, first)


def _check_names(params: dict[str, Any]) -> None:
    """``-p`` names must be Config fields or declared notebook parameters (NOTEBOOK_PARAMETERS)."""
    known, reserved = parameters.known_parameters(), set(parameters.RESERVED)
    if bad := sorted(set(params) - set(known) - reserved):
        raise PipelineError(f"unknown parameter(s) {bad}; known: {sorted(known)}")
    if reserved & set(params):
        raise PipelineError("set the run folder with --out, not -p run_dir")


# the main job's own kernels (kernels.start_kernel), each started ahead; off: papermill starts each
KERNELS_AHEAD = True


def _execute(nb: str, out: Path, merged: dict, state: dict, html: bool, log, km=None,
             untimed=None) -> None:  # fmt: skip
    """Run one notebook into ``out/notebooks`` with papermill, its status kept in run.json;
    ``km``: a started kernel (:func:`~helpers.tools.kernels.start_kernel`) or None for a new one;
    ``untimed``: called once no cell tagged ``timed`` is left (:func:`kernels.register_engine`)."""
    import papermill

    def status(text: str, **seconds) -> None:
        state["notebooks"][nb] = {"status": text, **seconds}
        atomic_write_json(out / "run.json", state)

    target, t0 = out / "notebooks" / nb, time.perf_counter()
    status("running")
    log(f"running {nb} ...")
    kw = dict(kernel_name="python3", cwd=str(notebook_dir()), progress_bar=False, log_output=False,
              parameters={**merged, "run_dir": str(out)}, extra_arguments=kernels.KERNEL_ARGS,
              engine_name=kernels.register_engine(), untimed=untimed,
              **({"km": km} if km is not None else {}))  # fmt: skip
    try:
        papermill.execute_notebook(str(notebook_dir() / nb), str(target), **kw)
    except KeyboardInterrupt:
        status("interrupted", seconds=time.perf_counter() - t0)
        raise
    except BaseException as exc:
        status("failed", seconds=time.perf_counter() - t0)
        raise PipelineError(report.failure_message(nb, exc, target, out)) from exc
    seconds = time.perf_counter() - t0
    status("done", seconds=round(seconds, 1))
    if html:
        import nbformat
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(target), as_version=4))
        target.with_suffix(".html").write_text(body, encoding="utf-8")
    log(f"  done in {seconds:.0f} s")


def _run(out, data, params, overwrite, resume, html, log, first=None) -> dict:
    out = report.resolve(out, "--out")
    data = report.resolve(data, "--data") if data is not None else None
    _check_names(params)
    report.prepare_folder(out, overwrite, resume, data)
    state = report.load_state(out) if resume else {}
    # the stored parameters on --resume, then -p, then --data; all checked before any notebook
    merged = {**parameters.BASE_PARAMETERS, **state.get("parameters", {}), **params}
    merged["dataset_path"] = str(data) if data is not None else merged.get("dataset_path", "")
    try:
        parameters.config_from_params(merged)
        parameters.check_notebook_parameters(merged)
    except ConfigError as exc:
        raise PipelineError(f"invalid parameter: {exc} (set it with -p NAME VALUE)") from exc
    except TypeError as exc:
        raise PipelineError(f"invalid parameters: {exc}") from exc
    with kernels.Kernels(KERNELS_AHEAD, first) as ahead:
        ahead.start_ahead(1)  # the first notebook's kernel loads its libraries during the checks
        log(report.preflight({**merged, "run_dir": str(out)}))
        try:  # the folder and its marker
            out.mkdir(parents=True, exist_ok=True)
            marker = {"made_by": "python -m helpers run", "time": time.time()}
            if not (out / MARKER).is_file():
                atomic_write_json(out / MARKER, marker)
        except OSError as exc:
            raise report.unwritable(out, exc.strerror or exc) from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the data's warnings: said once, by the preflight
            run = Run.from_params({**merged, "run_dir": str(out)}, verbose=False)
            fingerprints = run.data.fingerprints()  # what the images are now (synthetic set made)
            start = resume_start(out, merged, state, fingerprints, log) if state else 0
        if state:
            done = start == len(NOTEBOOKS)
            log(f"{out}: every notebook finished with these parameters; nothing to resume" if done
                else f"resuming {out} from {NOTEBOOKS[start]}")  # fmt: skip
        if start < len(NOTEBOOKS):
            _clear_stale(out, start, log)
        notebooks = state.get("notebooks", {}) if start else {}
        state = dict(parameters=merged, data=fingerprints, notebooks=notebooks, command=sys.argv,
                     started=time.strftime("%Y-%m-%d %H:%M:%S"))  # fmt: skip
        atomic_write_json(out / "run.json", state)
        (out / "notebooks").mkdir(exist_ok=True)
        todo = NOTEBOOKS[start:]
        quiet = [not kernels.timed_cells(notebook_dir() / nb) for nb in todo]
        for i, nb in enumerate(todo):
            km = ahead.take()
            n = kernels.depth(quiet, i)  # started once nothing timed is left in this one
            more = (lambda n=n: ahead.start_ahead(n)) if n else None
            try:
                _execute(nb, out, merged, state, html, log, km, more)
            finally:
                ahead.retire(km)
    path = out / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    log(report.summary(out, metrics))
    return metrics


def _threads_arg(text: str) -> int:
    n = int(text) if text.strip().isdigit() else 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number (e.g. 1)")
    return n


def main(argv: list[str] | None = None, prog: str = "python -m helpers run", first=None) -> int:
    """The command line; ``first``: a kernel :func:`~helpers.tools.kernels.start_early` started
    for the first notebook (stopped here when this job does not use it)."""
    fmt = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog, description=__doc__, formatter_class=fmt)
    add = ap.add_argument
    add("--data", help="MVTec-layout folder (holding the category); default: the synthetic set")
    add("--out", required=True, help="run folder (created; never overwritten silently)")
    add("--category", help="one category (as -p category), or several: a comma-separated list "
        "or all (every folder of --data with train/good), each into OUT/<category>, with "
        "OUT/summary.csv/.md")  # fmt: skip
    add("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
        help="set a notebook parameter (repeatable)")  # fmt: skip
    add("--preset", choices=sorted(parameters.PRESETS),
        help="start from a preset (demo: the demo's)")  # fmt: skip
    add("--overwrite", action="store_true", help="delete an existing run folder first")
    add("--resume", action="store_true", help="continue an existing run folder")
    add("--html", action="store_true", help="also write each executed notebook as HTML")
    add("--threads", type=_threads_arg, help="CPU threads per notebook kernel (1: busy machines)")
    args = ap.parse_args(argv)
    params = dict(parameters.PRESETS.get(args.preset, {}))
    params.update({name: parameters.parse_value(value) for name, value in args.param})
    kw = dict(params=params, overwrite=args.overwrite, resume=args.resume, html=args.html,
              threads=args.threads)  # fmt: skip
    many = args.category is not None and ("," in args.category or args.category.strip() == "all")
    try:
        if many:
            kernels.stop(first)  # each category's job starts its own
            names = report.parse_categories(args.category, args.data)
            rows = report.run_categories(run_pipeline, args.out, args.data, names, **kw)
            return 0 if all(r["status"] == "done" for r in rows) else 1
        if args.category is not None:
            params["category"] = args.category.strip()
        run_pipeline(args.out, args.data, first=first, **kw)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
