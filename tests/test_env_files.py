"""environment.yml (conda) and requirements-colab.txt agree with pyproject.toml."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch", "opencv-python-headless": "opencv"}   # pip name -> conda-forge name
NOT_IN_CONDA_ENV = {"faiss-cpu"}                                          # optional extra, left to the user


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
        assert conda[cname] == spec, f"{cname}: environment.yml has {conda[cname]!r}, pyproject {spec!r}"
    extra = set(conda) - {CONDA_NAMES.get(n, n) for n in pyproject_requirements()} - {"python", "pip"}
    assert not extra, f"environment.yml lists packages pyproject.toml does not: {extra}"


def test_environment_yml_installs_the_helpers_with_pip():
    pip = next(d["pip"] for d in conda_env()["dependencies"] if isinstance(d, dict))
    assert any(line.split("#")[0].strip() in ("-e .", ".", "-e .[notebooks]") for line in pip)


def test_requirements_colab_lists_only_what_colab_lacks():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements-colab.txt").read_text().splitlines()]
    reqs = dict(split(l) for l in lines if l)
    assert reqs, "requirements-colab.txt is empty"
    assert not {"torch", "torchvision"} & set(reqs), "Colab ships torch: never reinstall it there"
    known = pyproject_requirements()
    for name, spec in reqs.items():
        assert name in known, f"{name} is in requirements-colab.txt but not in pyproject.toml"
        assert spec == known[name], f"{name}: requirements-colab.txt {spec!r} vs pyproject {known[name]!r}"


def test_notebook_setup_cells_install_requirements_colab():
    import nbformat
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        setup = next(c for c in nb.cells if c.cell_type == "code")
        assert "requirements-colab.txt" in setup.source, path.name
