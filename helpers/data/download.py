"""Get one MVTec AD category (metal_nut) into a folder in the MVTec layout.

The default source is the whole MVTec AD archive at the link anomalib's maintainers keep current
(``DOWNLOAD_INFO`` of anomalib's MVTecAD datamodule), with its sha256 pinned. Only the requested
category is extracted, streaming (the 4.9 GB archive is never unpacked as a whole), and safely:
absolute paths, ``..``, links leading outside and special files are refused. The download resumes
(HTTP Range) after a cut (:mod:`helpers.data.http`); nothing lands in ``<dest>/<category>``
until the archive's checksum and layout have been checked.
MVTec AD: CC BY-NC-SA 4.0, https://www.mvtec.com/company/research/datasets/mvtec-ad
"""

from __future__ import annotations

import importlib
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import ModuleType

from helpers.data import http as http_download
from helpers.data.archive import (  # noqa: F401
    BLOCK,
    DownloadError,
    byte_progress,
    checksum_error,
    extract_category,
)

MVTEC_AD_URL = (
    "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
    "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz"
)
MVTEC_AD_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
# Per-category archives on MVTec's current shares: smaller (metal_nut ~160 MB), but their digests
# are not published, so they are only an optional first try (fetch_mvtec(try_category_url=True)).
CATEGORY_URLS = {
    "metal_nut": (
        "https://www.mydrive.ch/shares/150459/c68856a21dca589b0f8ff6d4ee0f18f4/"
        "download/420937637-1629959294/metal_nut.tar.xz"
    ),
}
METAL_NUT_URL = CATEGORY_URLS["metal_nut"]
KNOWN_SHA256: dict[str, str] = {MVTEC_AD_URL: MVTEC_AD_SHA256}
CACHE_ENV = "PATCHCORE_DOWNLOAD_DIR"  # where archives are downloaded (resumable .partial files)
# what a refused download adds to its message
REFUSED_ADVICE = (
    f"MVTec AD is distributed from {MVTEC_PAGE} (licence CC BY-NC-SA 4.0).\n"
    "Ways forward:\n"
    "  1. download mvtec_anomaly_detection.tar.xz (or metal_nut.tar.xz) in a browser, put\n"
    "     it on Google Drive and set download_url='/content/drive/MyDrive/<the archive>'\n"
    "  2. or set dataset_path to a folder that already holds metal_nut/ (Drive works too)\n"
    "  3. or set download_url to another link (file:///path/archive.tar.xz works too)\n"
    "  4. or leave dataset_path empty to run on the synthetic set"
)


def default_cache_dir() -> Path:
    """``$PATCHCORE_DOWNLOAD_DIR``, else ``~/.cache/patchcore-helpers`` (the VM's disk in Colab:
    the 4.9 GB archive never goes to Drive)."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/patchcore-helpers").expanduser()


# ------------------------------------------------------------------ download


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    opener: Callable | None = None,
    timeout: float = 60,
    retries: int = 3,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resumably (:func:`helpers.data.http.download`), and check
    ``sha256`` (else the one pinned in :data:`KNOWN_SHA256`; else the digest is printed). A refusal
    says where MVTec AD comes from and what to do instead."""
    return http_download.download(
        url,
        dest,
        sha256=sha256 or KNOWN_SHA256.get(url),
        opener=opener,
        timeout=timeout,
        retries=retries,
        progress=progress,
        advice=REFUSED_ADVICE,
    )


# ------------------------------------------------------------------ one category, one call


def has_category(root: str | Path, category: str) -> bool:
    root = Path(root)
    return (root / category / "train" / "good").is_dir() or (
        root.name == category and (root / "train" / "good").is_dir()
    )


def _local_path(url: str) -> Path | None:
    """The file a local path or file:// URL names; None for remote URLs."""
    if url.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if "://" in url:
        return None
    return Path(url).expanduser()


def _sources(
    category: str, url: str | None, sha256: str | None, try_category_url: bool
) -> list[tuple[str, str | None]]:
    if url:
        return [(url, sha256 or KNOWN_SHA256.get(url))]
    first = (
        [(CATEGORY_URLS[category], None)] if try_category_url and category in CATEGORY_URLS else []
    )
    return first + [(MVTEC_AD_URL, MVTEC_AD_SHA256)]


def _fetch_one(
    url: str,
    sha256: str | None,
    dest: Path,
    category: str,
    *,
    cache: Path,
    opener: Callable | None,
    keep_archive: bool,
    progress: bool,
) -> None:
    local = _local_path(url)
    if local is not None and not url.startswith("file://"):
        if not local.is_file():
            raise DownloadError(
                f"download_url={url!r}: no such file. Give the path of a .tar.xz "
                "archive (on Drive: /content/drive/MyDrive/...) or an http(s) URL"
            )
        extract_category(local, dest, category, sha256=sha256, progress=progress)
        return
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or f"{category}.tar.xz"
    archive = download(url, cache / name, sha256=sha256, opener=opener, progress=progress)
    try:
        extract_category(archive, dest, category, sha256=sha256, progress=progress)
    finally:
        if not keep_archive:
            archive.unlink(missing_ok=True)


def fetch_mvtec(
    dest: str | Path,
    category: str = "metal_nut",
    *,
    url: str | None = None,
    sha256: str | None = None,
    opener: Callable | None = None,
    cache_dir: str | Path | None = None,
    keep_archive: bool = False,
    try_category_url: bool = False,
    progress: bool = True,
) -> Path:
    """Make sure ``dest/<category>/`` holds the MVTec category; download and extract it when
    missing. ``url``: any http(s) or file:// URL or a local archive path (default: the whole
    MVTec AD archive, sha256 pinned). ``try_category_url``: first try the smaller per-category
    archive (digest not published: printed, not checked), then the whole archive. Archives are
    downloaded into ``cache_dir`` (:func:`default_cache_dir`) and deleted after extraction
    unless ``keep_archive``. Returns ``dest``."""
    dest = Path(dest).expanduser()
    if has_category(dest, category):
        return dest
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    sources = _sources(category, url, sha256, try_category_url)
    for i, (source, digest) in enumerate(sources):
        try:
            _fetch_one(
                source,
                digest,
                dest,
                category,
                cache=cache,
                opener=opener,
                keep_archive=keep_archive,
                progress=progress,
            )
            return dest
        except DownloadError as exc:
            if i == len(sources) - 1:
                raise
            print(f"{source} did not work ({str(exc).splitlines()[0]}); trying {sources[i + 1][0]}")
    return dest


def prepare_dataset(
    dataset_path: str | Path,
    category: str = "metal_nut",
    *,
    download_missing: bool = False,
    url: str | None = None,
    sha256: str | None = None,
) -> Path:
    """The data folder for a run: mounts Drive when ``dataset_path`` or ``url`` is on it and,
    with ``download_missing``, downloads the category into ``dataset_path`` when it is not
    there."""
    mount_drive_for(dataset_path=dataset_path, download_url=url)
    root = Path(dataset_path).expanduser()
    if download_missing and not has_category(root, category):
        fetch_mvtec(root, category, url=url, sha256=sha256)
    return root


DRIVE_ROOT = "/content/drive"


class DriveError(FileNotFoundError):
    """A path on Google Drive was given where Drive cannot be mounted (not Colab)."""


# ------------------------------------------------------------------ Google Drive (Colab)


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
