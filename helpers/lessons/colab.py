"""Every notebook's setup cell (:func:`setup`: install what Colab lacks, print the GPU and the
versions) and :data:`REPO_URL`, the one place naming the repository: a fork changes it and runs
``python -m helpers sync-colab`` (:func:`sync`: badges, setup cells, README's Colab section)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from helpers.core.bank import versions
from helpers.data.download import _submodule, colab_module

REPO_URL = "https://github.com/patchcore-course/patchcore-metal-nut"
REPO_BRANCH = "main"
CLONE_DIR = "/content/patchcore-metal-nut"
BADGE_RE = re.compile(
    r"https://colab\.research\.google\.com/github/[^)\s]+?/notebooks/"
    r"(?P<name>[^)\s/]+\.ipynb)"
)
GITHUB_RE = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")
README_SECTION = ("**In Colab.**", "**On your data")

SETUP_CELL = """\
# Setup: a local clone, Colab (clones REPO_URL once, installs what Colab lacks) or papermill.
REPO_URL = "{url}"  # forks: README, "In Colab"
import os, pathlib, subprocess, sys
ROOT = next((p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents] if (p / "helpers" / "__init__.py").is_file()), pathlib.Path("{clone_dir}"))
if "google.colab" in sys.modules and not ROOT.is_dir():  # no password prompt: a clear error instead
    git = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(ROOT)], capture_output=True, text=True, env={{**os.environ, "GIT_TERMINAL_PROMPT": "0"}})
    if git.returncode: raise RuntimeError(f"git clone {{REPO_URL}} failed ({{(git.stderr.strip().splitlines() or ['no message'])[-1]}}): set REPO_URL in this cell to a repository you can read")
sys.path.insert(0, str(ROOT)); import helpers as H
H.setup(ROOT)  # Colab: pip install -r requirements-colab.txt (never torch); prints GPU, versions"""


def repo_slug(url: str = REPO_URL) -> str:
    """``owner/name`` of a GitHub URL."""
    path = urllib.parse.urlparse(url).path.strip("/")
    return path.removesuffix(".git")


def badge_link(notebook: str, *, url: str = REPO_URL, branch: str = REPO_BRANCH) -> str:
    """The "Open in Colab" link of ``notebooks/<notebook>`` in the repository."""
    slug = f"{repo_slug(url)}/blob/{branch}"
    return f"https://colab.research.google.com/github/{slug}/notebooks/{notebook}"


def setup_cell_source(url: str = REPO_URL, clone_dir: str = CLONE_DIR) -> str:
    return SETUP_CELL.format(url=url, clone_dir=clone_dir)


def readme_section(text: str) -> tuple[int, int]:  # start and end of README's Colab section
    start = text.index(README_SECTION[0])
    return start, text.index(README_SECTION[1], start)


def _sync_notebook(path: Path, url: str) -> bool:
    """Rewrite one notebook's badge (first cell), setup cell (first code cell) and Colab
    metadata. True when it changed."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    before = nbformat.writes(nb)
    first = nb.cells[0]
    first.source = BADGE_RE.sub(lambda m: badge_link(m["name"], url=url), first.source)
    setup_cell = next(c for c in nb.cells if c.cell_type == "code")
    setup_cell.source = setup_cell_source(url)
    tags = setup_cell.metadata.setdefault("tags", [])
    if "nbval-ignore-output" not in tags:  # versions and GPU differ between machines
        tags.append("nbval-ignore-output")
    nb.metadata["accelerator"] = "GPU"
    nb.metadata.setdefault("colab", {})["gpuType"] = "A100"
    nb.metadata["colab"].setdefault("provenance", [])
    if nbformat.writes(nb) == before:
        return False
    nbformat.write(nb, str(path))
    return True


def sync(root: str | Path | None = None, url: str = REPO_URL) -> list[Path]:
    """Make the badges, setup cells, notebook metadata and README's Colab section name ``url``.
    Returns the files changed."""
    root = Path(root) if root else Path(__file__).resolve().parents[2]
    notebooks = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    changed = [p for p in notebooks if _sync_notebook(p, url)]
    readme = root / "README.md"
    text = readme.read_text()
    start, end = readme_section(text)
    section = BADGE_RE.sub(lambda m: badge_link(m["name"], url=url), text[start:end])
    section = GITHUB_RE.sub(url, section)
    if section != text[start:end]:
        readme.write_text(text[:start] + section + text[end:])
        changed.append(readme)
    return changed


REQUIREMENTS = "requirements-colab.txt"
NEVER_INSTALL = ("torch", "torchvision")  # Colab's builds match its CUDA driver: keep them


class ColabSetupError(RuntimeError):
    """Installing what Colab lacks failed; the message says what to do."""


def install_command(root: str | Path) -> list[str]:
    """What :func:`setup` runs in Colab: only ``requirements-colab.txt``, never torch."""
    return [sys.executable, "-m", "pip", "install", "-q", "-r", str(Path(root) / REQUIREMENTS)]


def install_requirements(root: str | Path, *, runner: Callable = subprocess.run) -> list[str]:
    """pip-install ``requirements-colab.txt`` (refused when it lists torch or torchvision);
    returns "name version" of each package in it."""
    path = Path(root) / REQUIREMENTS
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    names = [re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0] for line in lines if line]
    if banned := [n for n in names if n.lower() in NEVER_INSTALL]:
        why = "Colab's torch matches its CUDA driver; remove them from the file"
        raise ColabSetupError(f"{path} lists {banned}: {why}")
    proc = runner(install_command(root), capture_output=True, text=True)
    if proc.returncode:
        last = (str(proc.stderr or "").strip().splitlines() or ["no message"])[-1]
        again = "run the cell again; if it fails again, Runtime > Disconnect and delete runtime"
        raise ColabSetupError(f"pip install -r {path} failed ({last}): {again}, then Run all")
    return [f"{name} {_version(name)}" for name in names]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def enable_widgets(module: ModuleType) -> bool:
    """Colab renders ipywidgets 7 natively; ipywidgets >= 8 needs its custom widget manager."""
    version = _version("ipywidgets")
    if not version[:1].isdigit() or int(version.split(".")[0]) < 8:
        return False
    _submodule(module, "output").enable_custom_widget_manager()
    return True


def gpu_line(precision: str = "auto", *, in_colab: bool = False) -> str:
    """The GPU found, its memory and the precision the backbone will use."""
    import torch

    from helpers.core.runtime import BF16_MIN_CAPABILITY, cuda_capability, precision_note

    if not torch.cuda.is_available():
        tip = " In Colab: Runtime > Change runtime type > A100 GPU, then run all cells again."
        tip = tip if in_colab else ""
        return (
            "GPU: none. Everything runs on the CPU in fp32 (no autocast): "
            "seconds per notebook for mobilenet_v2 on the synthetic set, minutes for "
            f"wide_resnet50_2 on real data.{tip}"
        )
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    line = f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
    line += precision_note(device, precision)
    if cuda_capability(device) < BF16_MIN_CAPABILITY:
        line += "; an A100 runs bf16: Runtime > Change runtime type > A100 GPU"
    return line


def version_line() -> str:
    """The versions a memory bank records, with torch's CUDA build and ipywidgets."""
    import torch

    v = versions()
    if torch.version.cuda:
        v["torch"] += f" (CUDA {torch.version.cuda})"
    v["ipywidgets"] = _version("ipywidgets")
    return ", ".join(f"{name} {version}" for name, version in v.items())


def setup(root: str | Path | None, *, runner: Callable | None = None,
          colab: ModuleType | None = None, out: Callable[[str], None] = print) -> dict:  # fmt: skip
    """The setup cell after the clone. In Colab (``colab``: ``google.colab``, found when None):
    install ``requirements-colab.txt`` (``runner``: like ``subprocess.run``) and enable the widget
    manager ipywidgets 8 needs. Everywhere: print the versions and the GPU."""
    module = colab if colab is not None else colab_module()
    report: dict = {"colab": module is not None, "installed": [], "widget_manager": False}
    if module is not None and root is not None:
        report["installed"] = install_requirements(root, runner=runner or subprocess.run)
        installed = ", ".join(report["installed"])
        out(f"installed from {REQUIREMENTS}: {installed} (torch and torchvision: Colab's own)")
        report["widget_manager"] = enable_widgets(module)
    report["gpu"] = gpu_line(in_colab=module is not None)
    report["versions"] = version_line()
    out(report["versions"])
    out(report["gpu"])
    if report["gpu"].startswith("GPU: none"):
        from helpers.core.runtime import cpu_reported

        cpu_reported()  # that line was the CPU note: models made later in the kernel stay quiet
    return report
