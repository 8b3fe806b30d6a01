"""The committed notebooks: clean (no outputs), structured (badge, setup, parameters), thin
(logic in helpers), and they execute and re-execute identically (nbval)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from _nbrun import ci_run

from helpers import Config
from helpers.run.parameters import COMMON_PARAMETERS, config_from_params, known_parameters
from helpers.tools.pipeline import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
SANITIZE = Path(__file__).resolve().parent / "nbval_sanitize.cfg"


def load(name):
    return nbformat.read(str(NB_DIR / name), as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_series_is_complete():
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    for cell in code_cells(load(name)):
        assert cell.outputs == [], f"{name}: a cell has outputs; clear them before committing"
        assert cell.execution_count is None, f"{name}: a cell has an execution count"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_badge_setup_and_parameters(name):
    nb = load(name)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "colab.research.google.com/github/" in first.source
    assert f"/notebooks/{name})" in first.source, "the badge opens this notebook"
    setup = code_cells(nb)[0]
    for needle in ("google.colab", '"clone"', "requirements-colab.txt", "sys.path"):
        assert needle in setup.source, needle
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    body = ast.parse(tagged[0].source).body
    assigned = {t.id: ast.literal_eval(node.value) for node in body for t in node.targets}
    assert len(body) <= 8, f"{name}: a lesson's parameters cell holds at most 8 knobs"
    assert set(COMMON_PARAMETERS) <= set(assigned), f"{name}: {COMMON_PARAMETERS} in every notebook"
    known = known_parameters()
    assert set(assigned) <= set(known), f"{name}: unknown {set(assigned) - set(known)}"
    assert config_from_params(assigned) == Config(), "notebook defaults must be Config's defaults"
    for line in tagged[0].source.splitlines()[1:]:
        assert "#@param" in line, f"{name}: a Colab form field for {line!r}"


def test_the_common_parameters_read_the_same_everywhere():
    def common(name):
        cell = next(c for c in load(name).cells if "parameters" in c.metadata.get("tags", []))
        return [
            line for line in cell.source.splitlines() if line.split(" ")[0] in COMMON_PARAMETERS
        ]

    assert len({tuple(common(name)) for name in NOTEBOOKS}) == 1


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_only_orchestrate(name):
    for cell in code_cells(load(name)):
        source = "\n".join(
            line for line in cell.source.splitlines() if not line.lstrip().startswith("%")
        )
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, ast.ClassDef), f"{name}: classes belong in helpers/"
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 4, (
                    f"{name}: function {node.name} belongs in helpers/"
                )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_nbval_markers_are_cell_tags(name):
    """nbval markers live in the cells' tags (hidden from readers), never as comment lines, and
    every cell that prints timings or the environment carries one."""
    valid = {"nbval-ignore-output", "nbval-skip", "nbval-check-output", "parameters", "timed"}
    tagged = 0
    for cell in code_cells(load(name)):
        assert "NBVAL_" not in cell.source, cell.source.splitlines()[0]
        tags = set(cell.metadata.get("tags", []))
        assert tags <= valid, tags - valid
        tagged += "nbval-ignore-output" in tags
        if "seconds" in cell.source or "colab.setup(" in cell.source:
            assert "nbval-ignore-output" in tags, cell.source.splitlines()[0]
    assert tagged >= 1  # at least the setup cell


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_prose_cites_the_paper(name):
    text = "\n".join(c.source for c in load(name).cells if c.cell_type == "markdown")
    assert "2106.08265" in text and len(text) > 1500


def test_nbval_reexecution_matches(tmp_path_factory):
    """papermill-executed notebooks (CI parameters) re-executed by nbval give the same outputs,
    up to tests/nbval_sanitize.cfg and cells marked # NBVAL_IGNORE_OUTPUT."""
    out = ci_run(str(tmp_path_factory.getbasetemp()))
    notebooks = [str(out / "notebooks" / nb) for nb in NOTEBOOKS]
    # PYTHONPATH: the kernels import this checkout's helpers (not another one installed in the venv)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(SANITIZE),
            "--nbval-cell-timeout",
            "600",
            "--rootdir",
            str(out),
            *notebooks,
        ],
        cwd=str(out),
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


def test_the_capstone_is_patchcore_in_about_fifty_lines():
    """Notebook 06 promises PatchCore "in about fifty lines" of plain torch: its three parts,
    counted without blank and comment-only lines, and nothing imported from helpers in them."""
    parts = [
        c
        for c in code_cells(load("06_patchcore_from_scratch.ipynb"))
        if c.source.startswith("# PatchCore from scratch, part")
    ]
    assert [c.source.splitlines()[0][-60:] for c in parts] and len(parts) == 3
    lines = [
        line
        for c in parts
        for line in c.source.splitlines()
        if line.strip() and not line.strip().startswith("#") and not line.startswith("print(")
    ]
    assert 40 <= len(lines) <= 56, len(lines)
    assert not any("helpers" in line or "H." in line for line in lines)


# Numbers a lesson quotes from benchmarks/RESULTS.md (with the configuration they belong to,
# stated beside them in the lesson): each must be in the lesson's text and in RESULTS.md.
QUOTED_RESULTS = {
    "01_dataset_exploration_clahe.ipynb": [
        "0.984 -> 0.987",
        "0.986 -> 0.971",
        "0.898 -> 0.947",
        "0.879 -> 0.957",
        "0.997 -> 0.981",
        "0.957 -> 0.743",
        "3 min 45 s",
    ],
    "02_feature_extraction.ipynb": ["0.941 -> 0.960"],
    "03_coreset_construction.ipynb": ["3 min 45 s"],
    "04_a100_inference.ipynb": ["5.78 ms", "1.08 ms", "17,248 x 1024", "3 min 45 s"],
}


@pytest.mark.parametrize("name", sorted(QUOTED_RESULTS))
def test_quoted_benchmark_numbers_are_in_results(name):
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    text = "\n".join(c.source for c in load(name).cells if c.cell_type == "markdown")
    for quote in QUOTED_RESULTS[name]:
        assert quote in text, f"{name} no longer quotes {quote!r}: update QUOTED_RESULTS"
        assert quote in results, (
            f"{name} quotes {quote!r}, which benchmarks/RESULTS.md does not hold"
        )
