"""environment.yml (conda) and requirements-colab.txt agree with pyproject.toml, and the declared
floors match what the code needs (NumPy 2 for np.trapezoid, Colab's ipywidgets 7.7)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

try:  # Python >= 3.11; requires-python allows 3.10, which has tomli
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli", reason="Python 3.10: pip install tomli for this test")

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch", "opencv-python-headless": "opencv"}  # pip -> conda-forge name
NOT_IN_CONDA_ENV = {"faiss-cpu", "onnx", "onnxruntime"}  # optional extras, left to the user


def split(req: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", req.split("#")[0])
    return m.group(1).lower(), m.group(2).replace(" ", "")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pyproject_requirements() -> dict[str, str]:
    project = pyproject()
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return dict(split(r) for r in reqs)


def conda_env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def test_environment_yml_has_every_dependency_with_the_same_bounds():
    env = conda_env()
    deps = [d for d in env["dependencies"] if isinstance(d, str)]
    conda = dict(split(d) for d in deps)
    assert conda["python"] == pyproject()["requires-python"]
    for name, spec in pyproject_requirements().items():
        if name in NOT_IN_CONDA_ENV:
            continue
        cname = CONDA_NAMES.get(name, name)
        assert cname in conda, f"{name} (conda: {cname}) missing from environment.yml"
        assert conda[cname] == spec, (
            f"{cname}: environment.yml has {conda[cname]!r}, pyproject {spec!r}"
        )
    named = {CONDA_NAMES.get(n, n) for n in pyproject_requirements()}
    extra = set(conda) - named - {"python", "pip"}
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {extra}"


def test_environment_yml_installs_the_helpers_with_pip():
    pip = next(d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict))
    assert any(line.split("#")[0].strip() in ("-e .", ".", "-e .[notebooks]") for line in pip)


def test_requirements_colab_lists_only_what_colab_lacks():
    text = (ROOT / "requirements-colab.txt").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    reqs = dict(split(line) for line in lines if line)
    assert reqs, "requirements-colab.txt is empty"
    assert not {"torch", "torchvision"} & set(reqs), "Colab ships torch: never reinstall it there"
    known = pyproject_requirements()
    for name, spec in reqs.items():
        assert name in known, f"{name} is in requirements-colab.txt but not in pyproject.toml"
        assert spec == known[name], (
            f"{name}: requirements-colab.txt {spec!r} vs pyproject {known[name]!r}"
        )


def test_notebook_setup_cells_install_requirements_colab():
    import nbformat

    from helpers.lessons import colab

    assert colab.REQUIREMENTS == "requirements-colab.txt"
    assert colab.install_command(ROOT)[-2:] == ["-r", str(ROOT / "requirements-colab.txt")]
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        setup = next(c for c in nb.cells if c.cell_type == "code")
        assert "requirements-colab.txt" in setup.source, path.name
        assert "H.setup(ROOT)" in setup.source, f"{path.name}: the setup cell installs nothing"


def floor(spec: str) -> tuple[int, ...]:
    """The lower bound of a ``>=X.Y[.Z]`` specifier as a tuple of ints."""
    m = re.search(r">=\s*([0-9][0-9.]*)", spec)
    assert m, f"no >= floor in {spec!r}"
    return tuple(int(x) for x in m.group(1).split("."))


def helpers_source() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "helpers").glob("*.py")))


def test_numpy_floor_matches_the_numpy_api_used():
    numpy = pyproject_requirements()["numpy"]
    if re.search(r"\bnp\.trapezoid\b", helpers_source()):
        assert floor(numpy) >= (2, 0), "np.trapezoid needs NumPy >= 2.0 (1.x has only np.trapz)"
    # the compiled dependencies must have releases built for NumPy 2
    reqs = pyproject_requirements()
    for name, first in {
        "torch": (2, 3),
        "scipy": (1, 13),
        "scikit-learn": (1, 4, 2),
        "matplotlib": (3, 8, 4),
        "opencv-python-headless": (4, 10),
        "faiss-cpu": (1, 9),
    }.items():
        assert floor(reqs[name]) >= first, f"{name}: releases before {first} need NumPy 1"


def test_requires_python_floor_parses_the_package():
    """requires-python's floor admits this interpreter and every helpers module parses with that
    Python's grammar (no 3.11+ syntax); this file falls back to tomli there (tomllib is 3.11+)."""
    low = floor(pyproject()["requires-python"])
    assert sys.version_info[:2] >= low
    for path in sorted((ROOT / "helpers").glob("*.py")):
        ast.parse(path.read_text(), str(path), feature_version=low[:2])


IPYWIDGETS_7 = {
    "Dropdown",
    "FloatSlider",
    "IntSlider",
    "FloatRangeSlider",
    "IntRangeSlider",
    "FloatLogSlider",
    "SelectionSlider",
    "Output",
    "VBox",
    "HBox",
    "GridBox",
    "Box",
    "Layout",
    "Label",
    "HTML",
    "Button",
    "ToggleButton",
    "ToggleButtons",
    "Checkbox",
    "RadioButtons",
    "Select",
    "SelectMultiple",
    "Text",
    "Textarea",
    "IntText",
    "FloatText",
    "BoundedIntText",
    "BoundedFloatText",
    "Play",
    "Tab",
    "Accordion",
    "Image",
    "interact",
    "interactive",
    "jslink",
    "Combobox",
    "ColorPicker",
}


def test_ipywidgets_floor_works_with_colabs_7_7():
    """Colab ships ipywidgets 7.7.1 and renders it natively: the floor must allow it and
    helpers/lessons/widgets.py may only use widgets that exist in 7.x."""
    assert floor(pyproject_requirements()["ipywidgets"]) <= (7, 7, 1)
    tree = ast.parse((ROOT / "helpers" / "lessons" / "widgets.py").read_text())
    aliases = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for a in n.names
        if a.name == "ipywidgets"
    }
    used = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
    }
    assert used, "helpers/lessons/widgets.py no longer uses ipywidgets? update this test"
    assert used <= IPYWIDGETS_7, f"not in ipywidgets 7.7 (Colab): {sorted(used - IPYWIDGETS_7)}"
