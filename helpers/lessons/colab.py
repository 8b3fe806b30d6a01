"""Google Colab: installing what Colab lacks, Google Drive, and a report of the GPU and library
versions (:func:`setup`, called by every notebook's setup cell).

The repository the notebooks clone, their setup cell and badges live in
:mod:`helpers.lessons.colab_repo`; ``python -m helpers sync-colab`` rewrites the copies derived
from its ``REPO_URL`` (tests/test_colab.py fails while they disagree). Google Drive is mounted by
:func:`helpers.data.download.mount_drive_for`, where the data is found.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from helpers.core.bank import versions
from helpers.data.download import _submodule, colab_module

REQUIREMENTS = "requirements-colab.txt"
NEVER_INSTALL = ("torch", "torchvision")  # Colab's builds match its CUDA driver: keep them


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

    from helpers.core.runtime import BF16_MIN_CAPABILITY, cuda_capability, precision_note

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
    """The library versions a memory bank records (:func:`helpers.core.bank.versions`), with
    torch's CUDA build and ipywidgets."""
    import torch

    v = versions()
    if torch.version.cuda:
        v["torch"] += f" (CUDA {torch.version.cuda})"
    v["ipywidgets"] = _version("ipywidgets")
    return ", ".join(f"{name} {version}" for name, version in v.items())


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
        from helpers.core.runtime import cpu_reported

        cpu_reported()  # that line was the CPU note: models made later in the kernel stay quiet
    return report
