"""Google Colab: installing what Colab lacks, Google Drive, and a report of the GPU and library
versions (:func:`setup`, called by every notebook's setup cell).

The repository the notebooks clone, their setup cell and badges live in
:mod:`helpers.colab_repo` (re-exported here); ``python -m helpers.colab sync`` rewrites the copies
derived from :data:`REPO_URL` (tests/test_colab.py fails while they disagree).
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

from .colab_repo import (
    BADGE_RE,
    CLONE_DIR,
    GITHUB_RE,
    README_SECTION,
    REPO_BRANCH,
    REPO_URL,
    SETUP_CELL,
    badge_link,
    clone_command,
    notebook_paths,
    readme_section,
    repo_slug,
    setup_cell_source,
    sync,
)

# re-exported: where they lived before the split
__all__ = [
    "BADGE_RE",
    "CLONE_DIR",
    "GITHUB_RE",
    "README_SECTION",
    "REPO_BRANCH",
    "REPO_URL",
    "SETUP_CELL",
    "badge_link",
    "clone_command",
    "notebook_paths",
    "readme_section",
    "repo_slug",
    "setup_cell_source",
    "sync",
]

DRIVE_ROOT = "/content/drive"
REQUIREMENTS = "requirements-colab.txt"
NEVER_INSTALL = ("torch", "torchvision")  # Colab's builds match its CUDA driver: keep them


class DriveError(FileNotFoundError):
    """A path on Google Drive was given where Drive cannot be mounted (not Colab)."""


class ColabSetupError(RuntimeError):
    """Installing what Colab lacks failed; the message says what to do."""


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
        return (
            "GPU: none. Everything runs on the CPU in fp32 (no autocast, no channels_last): "
            "seconds per notebook for mobilenet_v2 on the synthetic set, minutes for "
            f"wide_resnet50_2 on real data.{tip}"
        )
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
    if report["gpu"].startswith("GPU: none"):
        from .runtime import cpu_reported

        cpu_reported()  # that line was the CPU note: models made later in the kernel stay quiet
    return report


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
