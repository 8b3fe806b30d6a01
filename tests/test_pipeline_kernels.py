"""The main job's kernels (helpers.tools.pipeline): each notebook after the first gets a kernel
started while the one before ran, with the lessons' libraries already imported and nothing else
in its namespace; every kernel is gone when the job ends, also when a notebook fails."""

from __future__ import annotations

import json

import nbformat
import papermill
import pytest

from helpers.core.process import child_environment
from helpers.run.parameters import PRESETS
from helpers.tools import kernels, pipeline
from helpers.tools.pipeline import NOTEBOOKS, PipelineError, run_pipeline


def test_a_kernel_started_ahead_has_the_libraries_loaded_and_a_clean_namespace(tmp_path):
    nb = nbformat.v4.new_notebook()
    probe = (
        "import os, sys\n"
        "print(json.dumps({'modules': [m for m in ('torch', 'torchvision', 'sklearn.metrics', "
        "'matplotlib.figure') if m in sys.modules], 'names': sorted(n for n in globals() "
        "if not n.startswith('_') and n not in ('In', 'Out', 'exit', 'quit', 'get_ipython', "
        "'open', 'os', 'sys', 'json')), 'cwd': os.getcwd(), "
        "'tunables': os.environ.get('GLIBC_TUNABLES')}))"
    )
    nb.cells = [nbformat.v4.new_code_cell("import json"), nbformat.v4.new_code_cell(probe)]
    src, dst = tmp_path / "probe.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    km = kernels.start_kernel()
    try:
        papermill.execute_notebook(str(src), str(dst), kernel_name="python3", km=km,
                                   progress_bar=False, log_output=False)  # fmt: skip
        assert km.is_alive()  # papermill leaves a kernel it did not start to its owner
    finally:
        km.shutdown_kernel(now=True)
    seen = json.loads(nbformat.read(dst, as_version=4).cells[1].outputs[0]["text"])
    assert seen["modules"] == ["torch", "torchvision", "sklearn.metrics", "matplotlib.figure"]
    assert seen["names"] == []  # the warm-up leaves no name behind
    assert seen["cwd"] == str(pipeline.notebook_dir())  # where papermill would have started it
    assert seen["tunables"] == child_environment().get("GLIBC_TUNABLES")  # malloc with huge pages


def test_every_notebook_runs_in_a_kernel_started_ahead_and_none_is_left(tmp_path, monkeypatch):
    """Fake papermill: records the kernel each notebook got; the next notebooks' kernels start
    only when papermill says no timed cell is left (``untimed``), never before: two ahead around
    the notebooks without timed cells (02, 05, 06), else one."""
    started, seen = [], []
    real_start = kernels.start_kernel

    def start():
        started.append(real_start())
        return started[-1]

    def execute(src, dst, parameters, km=None, untimed=None, **_):
        before = len(started)
        if untimed is not None:
            untimed()
        seen.append((km, before, len(started)))
        with open(dst, "w") as fh:
            fh.write("{}")

    monkeypatch.setattr(kernels, "start_kernel", start)
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    run_pipeline(tmp_path / "run", params=dict(PRESETS["ci"]), log=lambda m: None)
    assert len(started) == len(NOTEBOOKS)  # one each: none started twice, none wasted
    assert [km for km, _, _ in seen] == started
    # 01 starts 02's and 03's kernels, 02 04's, 03 none (05's would load during 04's timings),
    # 04 05's and 06's
    assert [(b, a) for _, b, a in seen] == [(1, 3), (3, 4), (4, 4), (4, 6), (6, 6), (6, 6)]
    assert not any(km.is_alive() for km in started)


class _Manager:  # what papermill's NotebookExecutionManager shows the engine
    def __init__(self, tags):
        self.nb = nbformat.v4.new_notebook()
        self.nb.cells = [nbformat.v4.new_code_cell("", metadata={"tags": t}) for t in tags]
        self.completed = []

    def cell_complete(self, cell, cell_index=None, **_):
        self.completed.append(cell_index)


def test_untimed_is_called_once_after_the_last_timed_cell():
    from helpers.tools.kernels import _call_when_untimed

    calls = []
    man = _Manager([[], ["timed"], ["nbval-ignore-output"], ["timed", "nbval-ignore-output"], []])
    _call_when_untimed(man, lambda: calls.append(list(man.completed)))
    for i, cell in enumerate(man.nb.cells):
        man.cell_complete(cell, cell_index=i)
        assert calls == ([] if i < 3 else [[0, 1, 2, 3]])  # once, right after cell 3
    untimed = _Manager([[], ["parameters"]])
    _call_when_untimed(untimed, lambda: calls.append("at start"))
    assert calls[-1] == "at start"  # no timed cell: before the first one runs
    assert kernels.register_engine() == kernels.register_engine() == kernels.ENGINE


def test_a_retired_kernel_is_gone_when_retire_returns():
    """Stopped at once (killed: its notebook is saved), not left exiting beside the next one."""
    with kernels.Kernels(ahead=True) as ahead:
        km = ahead.take()  # started now: nothing was started ahead
        assert km.is_alive()
        ahead.retire(km)
        assert not km.is_alive()
        ahead.retire(km)  # twice, or a kernel that died by itself: no error


def test_the_cells_that_print_timings_are_tagged_timed():
    """01's fit and predict, 03's bank-size sweep, 04's one-image timings and batch sweep."""
    want = {"01_dataset_exploration_clahe.ipynb": 1, "03_coreset_construction.ipynb": 1,
            "04_a100_inference.ipynb": 3}  # fmt: skip
    for name in NOTEBOOKS:
        cells = nbformat.read(pipeline.notebook_dir() / name, as_version=4).cells
        timed = [c for c in cells if kernels.TIMED in c.metadata.get("tags", [])]
        assert len(timed) == want.get(name, 0), name
        for c in cells:
            if "timing.Timer(" in c.source or "perf_counter()" in c.source:
                assert c in timed, c.source.splitlines()[0]


def test_a_failing_notebook_leaves_no_kernel_running(tmp_path, monkeypatch):
    started = []
    real_start = kernels.start_kernel

    def start():
        started.append(real_start())
        return started[-1]

    def fail(*_, untimed=None, **__):  # fails after its timed cells: the next kernel is up
        untimed()
        raise RuntimeError("ValueError: boom")

    monkeypatch.setattr(kernels, "start_kernel", start)
    monkeypatch.setattr(papermill, "execute_notebook", fail)
    with pytest.raises(PipelineError, match="01_dataset_exploration_clahe"):
        run_pipeline(tmp_path / "run", params=dict(PRESETS["ci"]), log=lambda m: None)
    assert len(started) == 3  # the first notebook's and the two started ahead for 02 and 03
    assert not any(km.is_alive() for km in started)


def _fake_papermill(monkeypatch, start=None):
    """papermill.execute_notebook replaced: each notebook records its kernel, calls ``untimed``
    and writes an empty file; kernels.start_kernel records what it starts (or is ``start``)."""
    started, seen = [], []
    real_start = kernels.start_kernel

    def record(env=None):
        started.append(real_start(env))
        return started[-1]

    def execute(src, dst, parameters, km=None, untimed=None, **_):
        seen.append(km)
        if untimed is not None:
            untimed()
        with open(dst, "w") as fh:
            fh.write("{}")

    monkeypatch.setattr(kernels, "start_kernel", start or record)
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return started, seen


def test_a_kernel_that_cannot_be_started_ahead_leaves_it_to_papermill(tmp_path, monkeypatch):
    """No python3 kernel (or any start failure): a warning, then papermill starts the kernels
    itself and reports any failure through the main job's one-line error, as before."""

    def broken(env=None):
        raise RuntimeError("No such kernel named python3")

    _, got = _fake_papermill(monkeypatch, start=broken)
    with pytest.warns(UserWarning, match="could not start the next notebook's kernel ahead"):
        run_pipeline(tmp_path / "run", params=dict(PRESETS["ci"]), log=lambda m: None)
    assert got == [None] * len(NOTEBOOKS)


def test_the_command_line_starts_the_first_kernel_before_torch_loads():
    """``import helpers`` and the kernels module load no torch, so ``python -m helpers run``
    starts the first notebook's kernel before its own imports and checks."""
    import subprocess
    import sys

    code = "import sys, helpers, helpers.tools.kernels; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_early_kernel_runs_the_first_notebook_and_none_is_left(tmp_path, monkeypatch):
    from helpers.__main__ import main

    started, seen = _fake_papermill(monkeypatch)
    assert main(["run", "--out", str(tmp_path / "run"), "--preset", "ci"]) == 0
    assert len(started) == len(NOTEBOOKS) and seen == started  # the early one is 01's
    assert not any(km.is_alive() for km in started)


def test_an_early_kernel_the_job_does_not_use_is_stopped(tmp_path, monkeypatch, capsys):
    """A refused run (before any notebook), several categories, --help: no kernel left."""
    from helpers.__main__ import main

    started, seen = _fake_papermill(monkeypatch)
    assert main(["run", "--out", str(tmp_path / "a"), "-p", "no_such_knob", "1"]) == 1
    assert "unknown parameter" in capsys.readouterr().err
    assert len(started) == 1 and seen == [] and not started[0].is_alive()
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert len(started) == 1  # --help starts nothing
    assert not any(km.is_alive() for km in started)


def test_the_engine_saves_less_often_and_the_output_is_complete(tmp_path):
    """Papermill saves the output notebook at every cell's start and end; through the main job's
    engine only the end (and a save every SAVE_EVERY seconds) writes it, with every output."""
    from unittest import mock

    from papermill.engines import NotebookExecutionManager

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"print({i})") for i in range(6)]
    nb.cells.insert(3, nbformat.v4.new_markdown_cell("text"))
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    writes = []
    real = NotebookExecutionManager.save

    def counting(self, **kw):
        writes.append(1)
        return real(self, **kw)

    with mock.patch.object(NotebookExecutionManager, "save", counting):
        papermill.execute_notebook(str(src), str(dst), kernel_name="python3", progress_bar=False,
                                   engine_name=kernels.register_engine())  # fmt: skip
    out = nbformat.read(dst, as_version=4)
    assert [c.outputs[0]["text"] for c in out.cells if c.cell_type == "code"] == [
        f"{i}\n" for i in range(6)
    ]
    assert all(c.metadata.papermill["status"] == "completed" for c in out.cells)
    assert len(writes) <= 3  # papermill's start, the engine's end (was 2 per cell + 2: 16)
