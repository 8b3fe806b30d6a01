"""The main job's kernels (helpers.tools.pipeline): each notebook after the first gets a kernel
started while the one before ran, with the lessons' libraries already imported and nothing else
in its namespace; every kernel is gone when the job ends, also when a notebook fails."""

from __future__ import annotations

import json

import nbformat
import papermill
import pytest

from helpers.core.runtime import child_environment
from helpers.run.parameters import PRESETS
from helpers.tools import kernels, pipeline
from helpers.tools.pipeline import NOTEBOOKS, PipelineError, run_pipeline


def test_a_kernel_started_ahead_has_the_libraries_loaded_and_a_clean_namespace(tmp_path):
    nb = nbformat.v4.new_notebook()
    probe = (
        "import os, sys\n"
        "print(json.dumps({'modules': [m for m in ('torch', 'torchvision', 'sklearn.metrics', "
        "'matplotlib.pyplot') if m in sys.modules], 'names': sorted(n for n in globals() "
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
    assert seen["modules"] == ["torch", "torchvision", "sklearn.metrics", "matplotlib.pyplot"]
    assert seen["names"] == []  # the warm-up leaves no name behind
    assert seen["cwd"] == str(pipeline.notebook_dir())  # where papermill would have started it
    assert seen["tunables"] == child_environment().get("GLIBC_TUNABLES")  # malloc with huge pages


def test_every_notebook_runs_in_a_kernel_started_ahead_and_none_is_left(tmp_path, monkeypatch):
    """Fake papermill: records the kernel each notebook got; the next one is already alive."""
    started, used = [], []
    real_start = kernels.start_kernel

    def start():
        started.append(real_start())
        return started[-1]

    def execute(src, dst, parameters, km=None, **_):
        alive = [k for k in started if k.is_alive()]
        used.append((km, len(alive)))
        with open(dst, "w") as fh:
            fh.write("{}")

    monkeypatch.setattr(kernels, "start_kernel", start)
    monkeypatch.setattr(papermill, "execute_notebook", execute)
    run_pipeline(tmp_path / "run", params=dict(PRESETS["ci"]), log=lambda m: None)
    assert len(started) == len(NOTEBOOKS)  # one each: none started twice, none wasted
    assert [km for km, _ in used] == started
    assert all(n >= 2 for _, n in used[:-1])  # the next notebook's kernel was up meanwhile
    assert not any(km.is_alive() for km in started)


def test_a_failing_notebook_leaves_no_kernel_running(tmp_path, monkeypatch):
    started = []
    real_start = kernels.start_kernel

    def start():
        started.append(real_start())
        return started[-1]

    def fail(*_, **__):
        raise RuntimeError("ValueError: boom")

    monkeypatch.setattr(kernels, "start_kernel", start)
    monkeypatch.setattr(papermill, "execute_notebook", fail)
    with pytest.raises(PipelineError, match="01_dataset_exploration_clahe"):
        run_pipeline(tmp_path / "run", params=dict(PRESETS["ci"]), log=lambda m: None)
    assert len(started) == 2  # the first notebook's and the one started ahead for the second
    assert not any(km.is_alive() for km in started)
