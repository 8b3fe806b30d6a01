"""The repository the notebooks clone, and the copies derived from it.

:data:`REPO_URL` is the one place that names the repository. The notebooks' badges, their setup
cells and README's Colab section are derived from it: a fork changes it here and runs
``python -m helpers sync-colab`` (:func:`sync`; tests/test_colab.py fails while they disagree).
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

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
    root = Path(root) if root else Path(__file__).resolve().parents[2]
    changed = [p for p in notebook_paths(root) if _sync_notebook(p, url)]
    if _sync_readme(root / "README.md", url):
        changed.append(root / "README.md")
    return changed
