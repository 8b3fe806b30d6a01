"""The Colab path without Colab: one repository URL everywhere, the setup cell's commands under a
fake ``google.colab`` (nothing is cloned or installed), the Drive mount decision, the GPU line."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import nbformat
import pytest
import torch

from helpers.data import download
from helpers.lessons import colab

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
DRIVE_MOUNTED = Path("/content/drive/MyDrive").exists()


def setup_cell(nb) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code")


def check_agreement(root: Path, url: str) -> None:
    """Badges, setup cells, notebook metadata and README's Colab section all name ``url``."""
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(str(path), as_version=4)
        links = colab.BADGE_RE.findall(nb.cells[0].source)
        assert links == [path.name], f"{path.name}: one badge, opening this notebook"
        assert colab.badge_link(path.name, url=url) in nb.cells[0].source, path.name
        assert setup_cell(nb).source == colab.setup_cell_source(url), (
            f"{path.name}: setup cell differs; run python -m helpers sync-colab"
        )
        assert nb.metadata["accelerator"] == "GPU" and nb.metadata["colab"]["gpuType"] == "A100"
    text = (root / "README.md").read_text()
    start, end = colab.readme_section(text)
    section = text[start:end]
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert colab.badge_link(path.name, url=url) in section, f"README: no badge for {path.name}"
    for match in colab.BADGE_RE.finditer(section):
        assert match[0] == colab.badge_link(match["name"], url=url), match[0]
    assert set(colab.GITHUB_RE.findall(section)) == {url}
    assert "YOUR_GITHUB_USER" not in text


def test_one_repository_url_in_badges_setup_cells_and_readme():
    assert colab.REPO_URL == "https://github.com/patchcore-course/patchcore-metal-nut"
    assert len(NOTEBOOKS) == 6
    check_agreement(ROOT, colab.REPO_URL)


def copy_of_the_repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(
        ROOT / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints")
    )
    shutil.copy(ROOT / "README.md", root / "README.md")
    return root


def test_sync_follows_a_fork_and_touches_nothing_else(tmp_path):
    root = copy_of_the_repo(tmp_path)
    assert colab.sync(root) == [], "the committed files are in sync"
    before = {p.name: nbformat.read(str(p), as_version=4) for p in root.glob("notebooks/*.ipynb")}
    fork = "https://github.com/someone/my-fork"
    assert len(colab.sync(root, url=fork)) == 7  # six notebooks and the README
    check_agreement(root, fork)
    for path in root.glob("notebooks/*.ipynb"):
        old, new = before[path.name], nbformat.read(str(path), as_version=4)
        assert [c.source for c in old.cells[1:] if c is not setup_cell(old)] == [
            c.source for c in new.cells[1:] if c is not setup_cell(new)
        ]
    readme = (root / "README.md").read_text()
    assert readme.replace(colab.repo_slug(fork), "X") == (ROOT / "README.md").read_text().replace(
        colab.repo_slug(), "X"
    )


# ------------------------------------------------------------------ a fake Colab


class FakeColab:
    """``google.colab`` with ``drive.mount`` and ``output.enable_custom_widget_manager``."""

    def __init__(self):
        self.mounts, self.widget_manager = [], 0
        self.module = types.ModuleType("google.colab")
        self.module.drive = types.SimpleNamespace(mount=self.mounts.append)
        self.module.output = types.SimpleNamespace(enable_custom_widget_manager=self.enable)

    def enable(self):
        self.widget_manager += 1


@pytest.fixture
def fake_colab(monkeypatch):
    fake = FakeColab()
    monkeypatch.setitem(sys.modules, "google.colab", fake.module)
    return fake


class Runner:
    """Records commands instead of running them; ``git clone`` copies requirements-colab.txt
    into the destination (what a clone would bring)."""

    def __init__(self, fail: dict[str, str] | None = None):
        self.calls, self.fail = [], fail or {}

    def __call__(self, cmd, **kwargs):
        self.calls.append((list(cmd), kwargs))
        key = "clone" if "clone" in cmd else "pip"
        if key in self.fail:
            return subprocess.CompletedProcess(cmd, 128, "", self.fail[key])
        if key == "clone":
            Path(cmd[-1]).mkdir(parents=True)
            shutil.copy(ROOT / colab.REQUIREMENTS, Path(cmd[-1]) / colab.REQUIREMENTS)
        return subprocess.CompletedProcess(cmd, 0, "", "")


def run_setup_cell(tmp_path, monkeypatch, runner: Runner, clone: Path) -> dict:
    """Execute notebook 01's setup cell from a folder outside the repository, with the clone
    folder moved from /content into ``tmp_path``."""
    source = setup_cell(nbformat.read(str(NOTEBOOKS[0]), as_version=4)).source
    assert source.count(colab.CLONE_DIR) == 1
    source = source.replace(colab.CLONE_DIR, str(clone))
    code = "\n".join(line for line in source.splitlines() if not line.startswith("%"))
    monkeypatch.setattr(subprocess, "run", runner)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "setup-cell", "exec"), namespace)
    return namespace


def test_setup_cell_in_colab_clones_installs_and_reports(tmp_path, monkeypatch, fake_colab, capsys):
    runner, clone = Runner(), tmp_path / "content" / "patchcore-metal-nut"
    namespace = run_setup_cell(tmp_path, monkeypatch, runner, clone)
    commands = [cmd for cmd, _ in runner.calls]
    assert commands == [
        ["git", "clone", "--depth", "1", colab.REPO_URL, str(clone)],
        colab.install_command(clone),
    ]
    assert commands[0][:2] == ["git", "clone"] and colab.REPO_URL in commands[0]
    assert runner.calls[0][1]["env"]["GIT_TERMINAL_PROMPT"] == "0", "no credential prompt"
    pip = commands[1]
    assert pip[:4] == [sys.executable, "-m", "pip", "install"]
    assert pip[-2:] == ["-r", str(clone / "requirements-colab.txt")]
    assert not {"torch", "torchvision"} & set(pip), "never reinstall torch in Colab"
    assert namespace["ROOT"] == clone and sys.path[0] == str(clone)
    out = capsys.readouterr().out
    assert "installed from requirements-colab.txt: safetensors" in out and "papermill" in out
    assert f"torch {torch.__version__}" in out and "GPU:" in out and "numpy" in out
    major = int(importlib.metadata.version("ipywidgets").split(".")[0])
    assert fake_colab.widget_manager == (1 if major >= 8 else 0)
    assert fake_colab.mounts == [], "the setup cell mounts nothing by itself"


def test_setup_cell_clone_failure_is_one_clear_line(tmp_path, monkeypatch, fake_colab):
    stderr = (
        "Cloning into '/content/x'...\nfatal: could not read Username for "
        "'https://github.com': terminal prompts disabled\n"
    )
    runner = Runner(fail={"clone": stderr})
    with pytest.raises(RuntimeError) as err:
        run_setup_cell(tmp_path, monkeypatch, runner, tmp_path / "clone")
    text = str(err.value)
    assert "\n" not in text and colab.REPO_URL in text and "set REPO_URL" in text
    assert "terminal prompts disabled" in text and len(runner.calls) == 1


def test_setup_cell_in_a_local_clone_runs_nothing(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    runner = Runner()
    source = setup_cell(nbformat.read(str(NOTEBOOKS[0]), as_version=4)).source
    code = "\n".join(line for line in source.splitlines() if not line.startswith("%"))
    monkeypatch.setattr(subprocess, "run", runner)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(ROOT / "notebooks")
    namespace: dict = {}
    exec(compile(code, "setup-cell", "exec"), namespace)
    assert namespace["ROOT"] == ROOT and runner.calls == []
    assert "GPU:" in capsys.readouterr().out


def test_setup_on_the_cpu_is_the_only_cpu_note(monkeypatch):
    """The setup cell's GPU line tells a CPU user once; the model made later in the same kernel
    does not warn again (issue 12: one CPU note per notebook)."""
    import torch

    from helpers.core import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_WARNED_CPU", False)
    lines = []
    colab.setup(None, colab=None, out=lines.append)
    assert sum("CPU" in line for line in lines) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert runtime.resolve_device("auto").type == "cpu"
    assert not [w for w in caught if "no CUDA GPU" in str(w.message)]


def test_failed_install_is_one_clear_line(tmp_path, fake_colab):
    shutil.copy(ROOT / colab.REQUIREMENTS, tmp_path / colab.REQUIREMENTS)
    runner = Runner(fail={"pip": "ERROR: No matching distribution found for papermill>=2.5\n"})
    with pytest.raises(colab.ColabSetupError) as err:
        colab.setup(tmp_path, runner=runner, colab=fake_colab.module, out=lambda s: None)
    assert "\n" not in str(err.value) and "No matching distribution" in str(err.value)


def test_requirements_naming_torch_are_refused(tmp_path):
    (tmp_path / colab.REQUIREMENTS).write_text("safetensors>=0.4\ntorch>=2.3  # no\n")
    with pytest.raises(colab.ColabSetupError, match="torch"):
        colab.install_requirements(tmp_path, runner=Runner())


@pytest.mark.parametrize("version, enabled", [("7.7.1", False), ("8.1.5", True)])
def test_widget_manager_only_for_ipywidgets_8(monkeypatch, fake_colab, version, enabled):
    monkeypatch.setattr(colab, "_version", lambda name: version)
    assert colab.enable_widgets(fake_colab.module) is enabled
    assert fake_colab.widget_manager == int(enabled)


# ------------------------------------------------------------------ Drive


def test_drive_paths_are_recognised():
    found = download.drive_paths(
        dataset_path="/content/drive/MyDrive/mvtec",
        run_dir="runs/x",
        download_url="file:///content/drive/MyDrive/m.tar.xz",
        other="/content/drive2/x",
        url="https://x/content/drive/a",
        none=None,
    )
    assert found == {
        "dataset_path": "/content/drive/MyDrive/mvtec",
        "download_url": "file:///content/drive/MyDrive/m.tar.xz",
    }


@pytest.mark.skipif(DRIVE_MOUNTED, reason="a Drive is mounted here")
@pytest.mark.parametrize("field", ["dataset_path", "download_url", "run_dir"])
def test_drive_is_mounted_for_any_path_on_it(fake_colab, field):
    assert download.mount_drive_for(**{field: "/content/drive/MyDrive/patchcore/x"})
    assert fake_colab.mounts == ["/content/drive"]


def test_drive_is_not_mounted_without_a_drive_path_or_twice(fake_colab, tmp_path):
    assert not download.mount_drive_for(
        dataset_path="/content/data/mvtec", run_dir="runs/x", download_url=""
    )
    (tmp_path / "MyDrive").mkdir()  # already mounted
    assert not download.mount_drive_for(
        run_dir="/content/drive/MyDrive/r", mountpoint=str(tmp_path)
    )
    assert fake_colab.mounts == []


@pytest.mark.skipif(DRIVE_MOUNTED, reason="a Drive is mounted here")
def test_prepare_dataset_mounts_drive_for_the_data_and_the_archive(fake_colab):
    download.prepare_dataset("/content/drive/MyDrive/mvtec", "metal_nut")
    assert fake_colab.mounts == ["/content/drive"]


@pytest.mark.skipif(DRIVE_MOUNTED, reason="a Drive is mounted here")
def test_a_drive_path_outside_colab_names_the_parameter(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", None)
    with pytest.raises(download.DriveError) as err:
        download.mount_drive_for(run_dir="/content/drive/MyDrive/runs/a", dataset_path="")
    assert isinstance(err.value, FileNotFoundError)
    assert re.search(
        r"run_dir='/content/drive/MyDrive/runs/a'.*not Colab.*set run_dir", str(err.value)
    )


# ------------------------------------------------------------------ the GPU line


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int], gib: int) -> None:
    props = types.SimpleNamespace(name=name, total_memory=gib * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_gpu_line_on_an_a100_a_t4_and_the_cpu(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", (8, 0), 40)
    line = colab.gpu_line()
    assert "A100" in line and "40 GiB" in line and "bf16 autocast" in line and "Runtime" not in line
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), 15)
    line = colab.gpu_line()
    assert "fp16 autocast" in line and "7.5" in line and "A100 GPU" in line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "none" in colab.gpu_line(in_colab=True) and "A100" in colab.gpu_line(in_colab=True)
    assert "Runtime" not in colab.gpu_line()
