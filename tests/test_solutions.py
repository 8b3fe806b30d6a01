"""The exercises' collapsed solutions: one layout in every notebook, and every solution runs
against the demo run (``make demo``: the demo preset on the synthetic set) and prints every number
that the text after its code quotes.

Layout of an exercise (one markdown cell, then an empty code cell for the student)::

    **Exercise N: title.** The question ...

    <details><summary>Solution</summary>

    ```python
    code
    ```

    In `make demo` (...): the numbers this code prints there.

    </details>

    # Exercise N: your code here          <- the code cell that follows

The numbers checked are those with a decimal point or at least three digits; a number that the
question or the code itself holds (a parameter such as 0.05 or 224) is not a result and is not
checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from _nbrun import THREADS

from helpers.run.parameters import BASE_PARAMETERS, PRESETS
from helpers.tools.pipeline import NOTEBOOKS, _threads

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"

EXERCISE = re.compile(r"^\*\*Exercise (\d+)\b", re.M)
DETAILS = re.compile(
    r"<details><summary>Solution</summary>\n\n```python\n(?P<code>.*?)\n```\n(?P<text>.*?)</details>",
    re.S,
)
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")


class Exercise:
    def __init__(self, notebook: str, index: int, number: int, question: str, code: str, text: str):
        self.notebook, self.index, self.number = notebook, index, number
        self.question, self.code, self.text = question, code, text

    def __repr__(self) -> str:
        return f"{self.notebook} exercise {self.number}"

    def checked_numbers(self) -> list[str]:
        """The results the text quotes: numbers with a decimal point or at least three digits
        that are not already in the question or the code."""
        given = set(NUMBER.findall(self.question)) | set(NUMBER.findall(self.code))
        found = [n for n in NUMBER.findall(self.text) if "." in n or len(n) >= 3]
        return [n for n in dict.fromkeys(found) if n not in given]


def exercises(name: str) -> list[Exercise]:
    nb = nbformat.read(str(NB_DIR / name), as_version=4)
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or "<summary>Solution</summary>" not in cell.source:
            continue
        head = EXERCISE.search(cell.source)
        sol = DETAILS.search(cell.source)
        assert head and sol, f"{name} cell {i}: an exercise in the common layout"
        question = cell.source[: sol.start()]
        out.append(Exercise(name, i, int(head.group(1)), question, sol["code"], sol["text"]))
    return out


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_exercise_layout_everywhere(name):
    nb = nbformat.read(str(NB_DIR / name), as_version=4)
    found = exercises(name)
    assert len(found) >= 2, f"{name}: two or three exercises"
    assert [ex.number for ex in found] == list(range(1, len(found) + 1))
    for ex in found:
        cell = nb.cells[ex.index]
        assert cell.source.count("<details>") == 1 and cell.source.count("```python") == 1, ex
        assert cell.source.rstrip().endswith("</details>"), f"{ex}: the solution closes the cell"
        assert "make demo" in ex.text, f"{ex}: the quoted numbers name the run they come from"
        after = nb.cells[ex.index + 1]
        assert after.cell_type == "code", f"{ex}: an empty code cell follows for the student"
        assert after.source.strip() == f"# Exercise {ex.number}: your code here", ex
    # any other <details> (answers to the recap questions) holds no code to check
    for cell in nb.cells:
        if "<details>" in cell.source and "<summary>Solution</summary>" not in cell.source:
            assert "```python" not in cell.source


def _with_solutions(name: str, target: Path) -> list[Exercise]:
    """Write the notebook with each exercise's code cell replaced by its solution (tagged
    ``solution``: papermill adds a cell, so indices shift); returns the exercises in order."""
    nb = nbformat.read(str(NB_DIR / name), as_version=4)
    found = exercises(name)
    for ex in found:
        cell = nb.cells[ex.index + 1]
        cell.source = ex.code
        cell.metadata["tags"] = ["solution"]
    nbformat.write(nb, str(target))
    return found


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
        elif out.get("output_type") == "error":
            parts.append("\n".join(out.get("traceback", [])))
    return "".join(parts)


@pytest.fixture(scope="module")
def demo_solutions(tmp_path_factory) -> dict[str, list[tuple[Exercise, str]]]:
    """The six notebooks with their solutions, executed in order with the demo preset into one
    run folder (each loads what the one before saved): {notebook: [(exercise, output)]}."""
    import papermill

    base = tmp_path_factory.mktemp("solutions")
    out = base / "run"
    params = {**BASE_PARAMETERS, **PRESETS["demo"], "dataset_path": "", "run_dir": str(out)}
    results = {}
    with _threads(THREADS):
        for name in NOTEBOOKS:
            source = base / name
            found = _with_solutions(name, source)
            executed = base / f"executed-{name}"
            papermill.execute_notebook(
                str(source),
                str(executed),
                parameters=params,
                kernel_name="python3",
                cwd=str(NB_DIR),
                progress_bar=False,
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
            nb = nbformat.read(str(executed), as_version=4)
            ran = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
            assert len(ran) == len(found), name
            results[name] = [(ex, _text(cell)) for ex, cell in zip(found, ran)]
    return results


def test_every_solution_prints_what_its_text_quotes(demo_solutions):
    missing = []
    for name in NOTEBOOKS:
        for ex, output in demo_solutions[name]:
            printed = set(NUMBER.findall(output))
            absent = [n for n in ex.checked_numbers() if n not in printed]
            if absent:
                missing.append(f"{ex}: the text quotes {absent}, the solution printed:\n{output}")
    assert not missing, "\n\n".join(missing)


def test_the_check_reads_results_not_parameters():
    ex = Exercise(
        "nb",
        0,
        1,
        "**Exercise 1: x.** Up to 0.05, at 224 px?",
        "for size in (224, 320): print(size)",
        "In `make demo` 0.812 at 0.05, 18816 vectors at 224 and 320 px, 12 images, `features.16`.",
    )
    assert ex.checked_numbers() == ["0.812", "18816"]
