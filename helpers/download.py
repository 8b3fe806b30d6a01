"""Get MVTec AD metal_nut into a folder: download the official archive (checksum verified when
known), extract it safely, or use a folder on a mounted Google Drive.

MVTec distributes MVTec AD under CC BY-NC-SA 4.0 from https://www.mvtec.com/company/research/datasets/mvtec-ad
(a form gives the download links). The per-category link below is the one MVTec's page has served
for years; when it is refused (HTTP 403/404, or an HTML page instead of the archive) the error
says what to do: download ``metal_nut.tar.xz`` in a browser, put it on Drive, and point
``dataset_path`` at it (an archive path or URL also works: ``download_url="file:///..."``).
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

METAL_NUT_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/"
                 "download/420937637-1629952063/metal_nut.tar.xz")
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
# sha256 of archives whose digest we know; the metal_nut archive's digest is not published by
# MVTec, so it is printed after each download for you to pin with download_sha256=...
KNOWN_SHA256: dict[str, str] = {}
URLS = {"metal_nut": METAL_NUT_URL}


class DownloadError(RuntimeError):
    """The archive could not be obtained or is not what was expected; the message says why and
    what to do instead."""


def _refused(url: str, why: str) -> DownloadError:
    return DownloadError(
        f"The download of {url} was refused: {why}.\n"
        f"MVTec AD is distributed from {MVTEC_PAGE} after accepting its licence (CC BY-NC-SA 4.0).\n"
        "Ways forward:\n"
        "  1. download metal_nut.tar.xz in a browser, upload it to Google Drive, mount Drive and\n"
        "     set dataset_path='/content/drive/MyDrive/<folder holding metal_nut/>'\n"
        "  2. or set download_url to a link that works for you (file:///path/metal_nut.tar.xz too)\n"
        "  3. or leave dataset_path empty to run on the synthetic set")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: str | Path, sha256: str | None = None,
             opener: Callable | None = None, timeout: float = 60, progress: bool = True) -> Path:
    """Stream ``url`` to ``dest`` (via ``dest.partial``, renamed when complete and verified).
    ``sha256``: expected digest (else :data:`KNOWN_SHA256`, else not checked; the digest is
    printed). ``opener``: a ``urllib.request.urlopen``-like callable (tests pass a fake)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = (sha256 or KNOWN_SHA256.get(url) or "").lower() or None
    opener = opener or urllib.request.urlopen
    tmp = dest.with_name(dest.name + ".partial")
    try:
        response = opener(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _refused(url, f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _refused(url, f"no connection ({reason})") from exc
    h = hashlib.sha256()
    done = 0
    try:
        with response:
            ctype = (response.headers.get("Content-Type", "") if getattr(response, "headers", None) else "")
            if "text/html" in ctype.lower():
                raise _refused(url, "the server sent a web page instead of the archive "
                               "(a licence form or login page)")
            total = int(response.headers.get("Content-Length") or 0) if getattr(response, "headers", None) else 0
            bar = None
            if progress and total:
                from tqdm.auto import tqdm
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name)
            with open(tmp, "wb") as fh:
                while True:
                    block = response.read(1 << 20)
                    if not block:
                        break
                    fh.write(block)
                    h.update(block)
                    done += len(block)
                    if bar is not None:
                        bar.update(len(block))
            if bar is not None:
                bar.close()
        if total and done != total:
            raise DownloadError(f"{url}: got {done} bytes of {total}; the download was cut. Run again.")
        digest = h.hexdigest()
        if expected and digest != expected:
            raise DownloadError(f"{url}: sha256 {digest} does not match the expected {expected}; "
                                "the file is corrupt or not the official archive. Nothing was kept.")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    if progress:
        state = "verified" if expected else "not checked (no known checksum; pin it with download_sha256)"
        print(f"downloaded {dest} ({done / 2**20:.1f} MiB), sha256 {digest}: {state}")
    return dest


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a .tar(.xz/.gz/.bz2) archive into ``dest``, refusing members that would land
    outside it (absolute paths, ``..``, links). Returns ``dest``."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (root / m.name).resolve()
                if m.issym() or m.islnk() or m.isdev() or not (target == root or root in target.parents):
                    raise DownloadError(f"{archive}: unsafe member {m.name!r} (outside the target "
                                        "folder or a link); not extracted")
            for m in members:
                tar.extract(m, dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    except tarfile.TarError as exc:
        raise DownloadError(f"{archive} is not a readable tar archive ({exc}); delete it and "
                            "download again") from exc
    return dest


def has_category(root: str | Path, category: str) -> bool:
    root = Path(root)
    return (root / category / "train" / "good").is_dir() or (
        root.name == category and (root / "train" / "good").is_dir())


def fetch_mvtec(dest: str | Path, category: str = "metal_nut", url: str | None = None,
                sha256: str | None = None, opener: Callable | None = None,
                keep_archive: bool = False, progress: bool = True) -> Path:
    """Make sure ``dest/<category>/`` holds the MVTec category: download and extract it when
    missing. ``url`` may be any http(s) or file:// URL, or a local archive path. Returns ``dest``."""
    dest = Path(dest).expanduser()
    if has_category(dest, category):
        return dest
    url = url or URLS.get(category)
    if url is None:
        raise DownloadError(f"no download URL known for category {category!r}; pass url=...")
    local = Path(url).expanduser()
    if "://" not in url and local.is_file():
        archive = local
    else:
        archive = download(url, dest / f"{category}.tar.xz", sha256, opener, progress=progress)
    extract(archive, dest)
    if not keep_archive and archive.parent == dest:
        archive.unlink()
    if not has_category(dest, category):
        found = sorted(p.name for p in dest.iterdir())
        raise DownloadError(f"the archive did not contain {category}/train/good (found {found})")
    return dest


def mount_drive(path: str | Path) -> None:
    """In Colab, mount Google Drive when ``path`` lies under /content/drive and is not there yet."""
    path = str(path)
    if path.startswith("/content/drive") and not Path("/content/drive/MyDrive").exists():
        try:
            from google.colab import drive  # type: ignore[import-not-found]
        except ImportError as exc:
            raise FileNotFoundError(f"{path} is a Google Drive path, but this is not Colab; "
                                    "copy the data here and change dataset_path") from exc
        drive.mount("/content/drive")


def prepare_dataset(dataset_path: str | Path, category: str = "metal_nut", download_missing: bool = False,
                    url: str | None = None, sha256: str | None = None) -> Path:
    """The data folder for a run: mounts Drive when needed and, with ``download_missing``,
    downloads the category into ``dataset_path`` when it is not there."""
    mount_drive(dataset_path)
    root = Path(dataset_path).expanduser()
    if download_missing and not has_category(root, category):
        fetch_mvtec(root, category, url, sha256)
    return root

