"""Google Colab: the repository the notebooks clone, their setup cell, installing what Colab
lacks, Google Drive, and a report of the GPU and library versions.

:data:`REPO_URL` is the one place that names the repository. The notebooks' badges, their setup
cells and README's Colab section are derived from it: a fork changes it here and runs
``python -m helpers.colab sync`` (tests/test_colab.py fails while they disagree).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO_URL = "https://github.com/patchcore-course/patchcore-metal-nut"
REPO_BRANCH = "main"
CLONE_DIR = "/content/patchcore-metal-nut"
DRIVE_ROOT = "/content/drive"
REQUIREMENTS = "requirements-colab.txt"
NEVER_INSTALL = ("torch", "torchvision")  # Colab's builds match its CUDA driver: keep them
BADGE_RE = re.compile(
    r"https://colab\.research\.google\.com/github/[^)\s]+?/notebooks/"
    r"(?P<name>[^)\s/]+\.ipynb)"
)
GITHUB_RE = re.compile(r"https://github\.com/[\w.-]+/[\w.-]+")
README_SECTION = ("**In Colab.**", "**On your data")

SETUP_CELL = """\
# Setup: works in a local clone, in Google Colab and under papermill.
import os
import subprocess
import sys
from pathlib import Path

REPO_URL = "{url}"  # forks: README, "In Colab"
HERE = [Path.cwd(), *Path.cwd().parents]
ROOT = next((p for p in HERE if (p / "helpers" / "__init__.py").is_file()), None)
if ROOT is None and "google.colab" in sys.modules:  # Colab: clone the repository once
    ROOT = Path("{clone_dir}")
    if not (ROOT / "helpers").is_dir():
        git = subprocess.run(["git", "clone", "--depth", "1", REPO_URL, str(ROOT)], text=True,
                             capture_output=True, env={{**os.environ, "GIT_TERMINAL_PROMPT": "0"}})
        if git.returncode:
            raise RuntimeError(f"git clone {{REPO_URL}} failed "
                               f"({{(git.stderr.strip().splitlines() or ['no message'])[-1]}}): "
                               "set REPO_URL in this cell to a repository you can read")
if ROOT is not None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # elsewhere helpers must be installed: pip install -e .
from helpers import colab

colab.setup(ROOT)  # Colab: pip install -r requirements-colab.txt (never torch); GPU, versions
%matplotlib inline"""


class DriveError(FileNotFoundError):
    """A path on Google Drive was given where Drive cannot be mounted (not Colab)."""


class ColabSetupError(RuntimeError):
    """Installing what Colab lacks failed; the message says what to do."""


# ------------------------------------------------------------------ the repository


def repo_slug(url: str = REPO_URL) -> str:
    """``owner/name`` of a GitHub URL."""
    path = urllib.parse.urlparse(url).path.strip("/")
    return path[:-4] if path.endswith(".git") else path


def badge_link(notebook: str, *, url: str = REPO_URL, branch: str = REPO_BRANCH) -> str:
    """The "Open in Colab" link of ``notebooks/<notebook>`` in the repository."""
    return (
        f"https://colab.research.google.com/github/{repo_slug(url)}/blob/{branch}/"
        f"notebooks/{notebook}"
    )


def setup_cell_source(url: str = REPO_URL, clone_dir: str = CLONE_DIR) -> str:
    """The source of every notebook's setup cell (written by :func:`sync`)."""
    return SETUP_CELL.format(url=url, clone_dir=clone_dir)


def clone_command(url: str = REPO_URL, dest: str = CLONE_DIR) -> list[str]:
    """What the setup cell runs in Colab when the repository is not there yet."""
    return ["git", "clone", "--depth", "1", url, str(dest)]


def install_command(root: str | Path) -> list[str]:
    """What :func:`setup` runs in Colab: only ``requirements-colab.txt``, never torch."""
    return [sys.executable, "-m", "pip", "install", "-q", "-r", str(Path(root) / REQUIREMENTS)]


def colab_requirements(root: str | Path) -> list[str]:
    """Package names listed in ``requirements-colab.txt``; refuses torch / torchvision."""
    path = Path(root) / REQUIREMENTS
    names = [
        re.split(r"[<>=!~\[; ]", line.split("#")[0].strip(), maxsplit=1)[0]
        for line in path.read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    banned = [n for n in names if n.lower() in NEVER_INSTALL]
    if banned:
        raise ColabSetupError(
            f"{path} lists {banned}: Colab's torch matches its CUDA driver; "
            "remove them from the file"
        )
    return names


# ------------------------------------------------------------------ Colab and Drive


def colab_module() -> ModuleType | None:
    """``google.colab`` when running in Colab, else None."""
    try:
        return importlib.import_module("google.colab")
    except ImportError:
        return None


def _submodule(module: ModuleType, name: str) -> ModuleType:
    return getattr(module, name, None) or importlib.import_module(f"{module.__name__}.{name}")


def drive_paths(**paths: str | Path | None) -> dict[str, str]:
    """The named paths (or file:// URLs) that lie under /content/drive."""
    found = {}
    for name, value in paths.items():
        text = str(value or "")
        local = urllib.parse.urlparse(text).path if text.startswith("file://") else text
        if not local or "://" in local:
            continue
        norm = os.path.normpath(os.path.expanduser(local))
        if norm == DRIVE_ROOT or norm.startswith(DRIVE_ROOT + "/"):
            found[name] = text
    return found


def mount_drive_for(
    *, colab: ModuleType | None = None, mountpoint: str = DRIVE_ROOT, **paths: str | Path | None
) -> bool:
    """Mount Google Drive when one of ``paths`` (given by their parameter names:
    ``dataset_path=``, ``download_url=``, ``run_dir=``) is under /content/drive and Drive is not
    mounted yet. Outside Colab such a path is a :class:`DriveError` naming the parameter.
    ``colab``: the ``google.colab`` module (tests pass a fake). Returns True when it mounted."""
    on_drive = drive_paths(**paths)
    if not on_drive or (Path(mountpoint) / "MyDrive").is_dir():
        return False
    module = colab if colab is not None else colab_module()
    listed = ", ".join(f"{name}={value!r}" for name, value in on_drive.items())
    if module is None:
        raise DriveError(
            f"{listed} is on Google Drive ({DRIVE_ROOT}), but this is not Colab and "
            f"Drive cannot be mounted here: copy the files to a local folder and "
            f"set {next(iter(on_drive))} to it"
        )
    print(f"mounting Google Drive at {mountpoint} for {listed}: allow access in the pop-up")
    _submodule(module, "drive").mount(mountpoint)
    return True


# ------------------------------------------------------------------ the setup cell


def install_requirements(root: str | Path, *, runner: Callable = subprocess.run) -> list[str]:
    """pip-install ``requirements-colab.txt``; returns "name version" of each package in it."""
    names = colab_requirements(root)
    proc = runner(install_command(root), capture_output=True, text=True)
    if proc.returncode:
        last = (str(proc.stderr or "").strip().splitlines() or ["no message"])[-1]
        raise ColabSetupError(
            f"pip install -r {Path(root) / REQUIREMENTS} failed ({last}): run "
            "the cell again; if it fails again, Runtime > Disconnect and "
            "delete runtime, then Run all"
        )
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
    """The GPU found, its compute capability and the precision the backbone will use."""
    import torch

    from .runtime import BF16_MIN_CAPABILITY, cuda_capability, precision_note

    if not torch.cuda.is_available():
        tip = (
            " In Colab: Runtime > Change runtime type > A100 GPU, then run all cells again."
            if in_colab
            else ""
        )
        return f"GPU: none, running on the CPU in fp32 (slow for wide_resnet50_2).{tip}"
    device = torch.device("cuda")
    props = torch.cuda.get_device_properties(device)
    line = (
        f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
        f"{precision_note(device, precision)}"
    )
    if cuda_capability(device) < BF16_MIN_CAPABILITY:
        line += "; an A100 runs bf16: Runtime > Change runtime type > A100 GPU"
    return line


def version_line() -> str:
    """Python, helpers and the libraries that matter here (torch with its CUDA build)."""
    import torch

    from . import __version__

    names = ("torchvision", "numpy", "ipywidgets", "safetensors")
    cuda = f" (CUDA {torch.version.cuda})" if torch.version.cuda else ""
    return (
        f"python {platform.python_version()}, helpers {__version__}, "
        f"torch {torch.__version__}{cuda}, " + ", ".join(f"{n} {_version(n)}" for n in names)
    )


def setup(
    root: str | Path | None,
    *,
    runner: Callable | None = None,
    colab: ModuleType | None = None,
    out: Callable[[str], None] = print,
) -> dict:
    """The setup cell after the clone. In Colab (``colab``: the ``google.colab`` module, found
    when None): install ``requirements-colab.txt`` (``runner``: ``subprocess.run``-like) and
    enable the widget manager ipywidgets 8 needs. Everywhere: print the GPU and versions."""
    module = colab if colab is not None else colab_module()
    report: dict = {"colab": module is not None, "installed": [], "widget_manager": False}
    if module is not None and root is not None:
        report["installed"] = install_requirements(root, runner=runner or subprocess.run)
        out(
            f"installed from {REQUIREMENTS}: {', '.join(report['installed'])} "
            "(torch and torchvision: Colab's own)"
        )
        report["widget_manager"] = enable_widgets(module)
    report["gpu"] = gpu_line(in_colab=module is not None)
    report["versions"] = version_line()
    out(report["versions"])
    out(report["gpu"])
    return report


# ------------------------------------------------------------------ keeping the copies in sync


def notebook_paths(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def readme_section(text: str) -> tuple[int, int]:
    """Start and end offsets of README's Colab section."""
    start = text.index(README_SECTION[0])
    return start, text.index(README_SECTION[1], start)


def _sync_notebook(path: Path, url: str) -> bool:
    """Rewrite the badge (first markdown cell), the setup cell (first code cell) and the Colab
    metadata of one notebook, reading and writing it in one go. True when it changed."""
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


def _sync_readme(path: Path, url: str) -> bool:
    text = path.read_text()
    start, end = readme_section(text)
    section = BADGE_RE.sub(lambda m: badge_link(m["name"], url=url), text[start:end])
    section = GITHUB_RE.sub(url, section)
    if section == text[start:end]:
        return False
    path.write_text(text[:start] + section + text[end:])
    return True


def sync(root: str | Path | None = None, url: str = REPO_URL) -> list[Path]:
    """Make the badges, setup cells, notebook metadata and README's Colab section name ``url``.
    Returns the files changed."""
    root = Path(root) if root else Path(__file__).resolve().parent.parent
    changed = [p for p in notebook_paths(root) if _sync_notebook(p, url)]
    if _sync_readme(root / "README.md", url):
        changed.append(root / "README.md")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.colab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command",
        choices=["sync", "url"],
        help="sync: rewrite badges, setup cells and README from REPO_URL; url: print REPO_URL",
    )
    args = parser.parse_args(argv)
    if args.command == "url":
        print(REPO_URL)
        return 0
    changed = sync()
    print("\n".join(f"updated {p}" for p in changed) or f"already in sync with {REPO_URL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
