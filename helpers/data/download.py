"""One MVTec AD category (metal_nut) from the whole 4.9 GB archive (anomalib's link, sha256 pinned;
CC BY-NC-SA 4.0), and Google Drive in Colab. A cut download resumes (HTTP Range); the sha256 is
checked before anything is extracted; ``<category>/`` is streamed into a staging folder renamed
into place when complete; a hostile member (absolute, ``..``, a link leading out, a special file)
refuses the whole archive."""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import ModuleType

from tqdm.utils import CallbackIOWrapper

_SHARE = "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/"
MVTEC_AD_URL = _SHARE + "420938113-1629960298/mvtec_anomaly_detection.tar.xz"
MVTEC_AD_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
CACHE_ENV = "PATCHCORE_DOWNLOAD_DIR"  # where archives are downloaded (resumable .partial files)
BLOCK, TIMEOUT = 1 << 20, 60  # read size, seconds a stalled connection may wait
REFUSED = "the archive was refused and nothing was extracted: use the original MVTec AD archive"


class DownloadError(RuntimeError):
    """The archive could not be had or is not the one expected; the message says what to do."""


def _bar(total: int | None, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    units = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "mininterval": 0.5}
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, **units)


def _refused(url: str, why: str) -> DownloadError:
    return DownloadError(
        f"The download of {url} was refused: {why}. Instead, download the archive from "
        f"{MVTEC_PAGE} in a browser and set download_url to its path (on Drive: "
        "/content/drive/MyDrive/...), or set dataset_path to a folder holding the category."
    )


def download(url: str, dest: str | Path, *, opener: Callable | None = None, retries: int = 3,
             progress: bool = True) -> Path:  # fmt: skip
    """``url`` to ``dest`` through ``dest.partial``: a cut is resumed with an HTTP Range request
    (``retries`` tries here, then on the next call). ``opener``: ``urlopen``-like (for tests)."""
    dest, part = Path(dest), Path(f"{dest}.partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, max(1, retries) + 1):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        request = urllib.request.Request(url, headers=headers)
        try:
            with (opener or urllib.request.urlopen)(request, timeout=TIMEOUT) as response:
                if "text/html" in (response.headers.get("Content-Type") or "").lower():
                    raise _refused(url, "the server sent a web page, not the archive")
                offset = offset if response.status == 206 else 0  # else the whole file comes
                length = str(response.headers.get("Content-Length") or "")
                total = offset + int(length) if length.isdigit() else 0
                bar = _bar(total or None, f"download {dest.name}", progress, offset)
                with open(part, "ab" if offset else "wb") as fh, bar:
                    while block := response.read(BLOCK):
                        bar.update(fh.write(block))
            if part.stat().st_size >= total:
                os.replace(part, dest)
                print(f"downloaded {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")
                return dest
            why = f"got {part.stat().st_size} of {total} bytes"
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:  # 416: the .partial is no prefix of this file
                raise _refused(url, f"HTTP {exc.code} {exc.reason}") from exc
            part.unlink()
            why = "the partial file did not match: restarted"
        except urllib.error.URLError as exc:
            raise _refused(url, f"no connection ({exc.reason})") from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, timeout
            why = f"connection lost ({exc})"
        have = f"{part.stat().st_size / 2**20 if part.exists() else 0:.1f} MiB ({why})"
        print(f"download interrupted at {have} (try {attempt} of {retries})")
    raise DownloadError(
        f"The download of {url} stopped after {have}, {attempt} tries. "
        f"Run the same cell again: it resumes from {part}."
    )


def sha256_of(path: Path, progress: bool = True) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh, _bar(path.stat().st_size, f"sha256 {path.name}", progress) as bar:
        while block := fh.read(BLOCK):
            sha.update(block)
            bar.update(len(block))
    return sha.hexdigest()


def _in_category(name: str, category: str) -> str | None:
    """``name`` relative to the category folder (``[<folder>/]<category>/...``), else None."""
    parts = PurePosixPath(name).parts
    for depth in (1, 2):
        if parts[:1] != ("/",) and len(parts) > depth and parts[depth - 1] == category:
            return "/".join(parts[depth:])
    return None


def _leftover(dest: Path, category: str) -> None:  # a half-made category folder: never touched
    if (dest / category).exists():
        raise DownloadError(f"{dest / category} exists but has no train/good folder: move it away")


def extract_category(archive: str | Path, dest: str | Path, category: str = "metal_nut", *,
                     sha256: str | None = None, progress: bool = True) -> Path:  # fmt: skip
    """Extract only ``<category>/`` of a .tar(.xz/.gz/.bz2) archive whose sha256 is right (when
    given; else printed) into ``dest/<category>``, through a staging folder. Returns ``dest``."""
    archive, dest = Path(archive), Path(dest)
    if not hasattr(tarfile, "data_filter"):  # PEP 706: Python 3.12, 3.11.4+, 3.10.12+
        raise DownloadError(
            f"Python {sys.version.split()[0]} lacks tarfile's data filter (safe extraction): use "
            f"3.10.12+, or extract {category}/ of {archive} yourself and set dataset_path to it"
        )
    _leftover(dest, category)
    digest = sha256_of(archive, progress)
    if sha256 and digest != sha256.lower():
        raise DownloadError(
            f"checksum mismatch for {archive}: expected sha256 {sha256.lower()}, got {digest}; "
            "nothing was extracted. Run again to download it afresh, or fix download_sha256."
        )
    staging = dest / f".{category}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        bar = _bar(archive.stat().st_size, f"extract {category}", progress)
        with open(archive, "rb") as raw, bar:
            fh = CallbackIOWrapper(bar.update, raw, "read")
            with tarfile.open(fileobj=fh, mode="r|*") as tar:
                for member in tar:
                    path = PurePosixPath(member.name)
                    if path.is_absolute() or ".." in path.parts:
                        raise DownloadError(f"{archive}: unsafe member {member.name!r}; {REFUSED}")
                    if (rel := _in_category(member.name, category)) is None:
                        continue
                    if member.islnk():  # a hard link names its target from the archive's root
                        if (target := _in_category(member.linkname, category)) is None:
                            raise tarfile.LinkOutsideDestinationError(member, member.linkname)
                        member = member.replace(linkname=target, deep=False)
                    # the data filter refuses links leading out of staging and special files
                    tar.extract(member.replace(name=rel, deep=False), staging, filter="data")
        if not (staging / "train" / "good").is_dir():
            raise DownloadError(f"{archive} holds no {category}/train/good: is it MVTec AD?")
        os.replace(staging, dest / category)
    except tarfile.FilterError as exc:
        raise DownloadError(f"{archive}: unsafe member ({exc}); {REFUSED}") from exc
    except (tarfile.TarError, EOFError) as exc:
        why = f"is not a complete tar archive ({exc}): download it again"
        raise DownloadError(f"{archive} {why}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state = "verified" if sha256 else "not checked (pin it with download_sha256)"
    print(f"extracted {dest / category}; archive sha256 {digest}: {state}")
    return dest


def has_category(root: str | Path, category: str) -> bool:
    root, good = Path(root), Path("train", "good")
    return (root / category / good).is_dir() or (root.name == category and (root / good).is_dir())


def prepare_dataset(dataset_path: str | Path, category: str = "metal_nut", *,
                    download_missing: bool = False, url: str | None = None, sha256=None,
                    opener=None, cache_dir=None, progress=True) -> Path:  # fmt: skip
    """The data folder for a run (Drive mounted when it or ``url`` is on it); with
    ``download_missing``, a missing category is fetched from ``url``: http(s) (to ``cache_dir``,
    deleted once extracted or refused) or a local archive (path or file://)."""
    mount_drive_for(dataset_path=dataset_path, download_url=url)
    dest = Path(dataset_path).expanduser()
    if not download_missing or has_category(dest, category):
        return dest
    _leftover(dest, category)
    url = url or MVTEC_AD_URL
    sha256 = sha256 or (MVTEC_AD_SHA256 if url == MVTEC_AD_URL else None)
    if url.startswith("file://") or "://" not in url:
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)).expanduser()
        if not local.is_file():
            raise DownloadError(
                f"download_url={url!r}: no such file. Give the path of a .tar.xz archive "
                "(on Drive: /content/drive/MyDrive/...) or an http(s) URL"
            )
        return extract_category(local, dest, category, sha256=sha256, progress=progress)
    # $PATCHCORE_DOWNLOAD_DIR or ~/.cache (in Colab the VM's disk: the archive never goes to Drive)
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or "~/.cache/patchcore-helpers")
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or f"{category}.tar.xz"
    archive = download(url, cache.expanduser() / name, opener=opener, progress=progress)
    try:
        return extract_category(archive, dest, category, sha256=sha256, progress=progress)
    finally:
        archive.unlink(missing_ok=True)


# ------------------------------------------------------------------ Google Drive (Colab)
DRIVE_ROOT = "/content/drive"


class DriveError(FileNotFoundError):
    """A path on Google Drive was given where Drive cannot be mounted (not Colab)."""


def colab_module() -> ModuleType | None:  # google.colab in Colab, else None
    try:
        return importlib.import_module("google.colab")
    except ImportError:
        return None


def _submodule(module: ModuleType, name: str) -> ModuleType:
    return getattr(module, name, None) or importlib.import_module(f"{module.__name__}.{name}")


def drive_paths(**paths: str | Path | None) -> dict[str, str]:
    """The named paths (or file:// URLs) that lie under /content/drive."""

    def local(text: str) -> str:  # a path, or the path of a file:// URL; other URLs: ""
        path = urllib.parse.urlparse(text).path if text.startswith("file://") else text
        return "" if "://" in path else os.path.normpath(os.path.expanduser(path))

    on_drive = {k: str(v) for k, v in paths.items() if v}
    return {k: v for k, v in on_drive.items() if f"{local(v)}/".startswith(f"{DRIVE_ROOT}/")}


def mount_drive_for(*, colab: ModuleType | None = None, mountpoint=DRIVE_ROOT, **paths) -> bool:
    """Mount Google Drive when one of ``paths`` (by name: ``dataset_path=``, ``run_dir=``, ...) is
    under /content/drive and Drive is not mounted; outside Colab a :class:`DriveError` names it."""
    on_drive = drive_paths(**paths)
    if not on_drive or (Path(mountpoint) / "MyDrive").is_dir():
        return False
    module = colab if colab is not None else colab_module()
    listed = ", ".join(f"{name}={value!r}" for name, value in on_drive.items())
    if module is None:
        raise DriveError(
            f"{listed} is on Google Drive ({DRIVE_ROOT}), but this is not Colab and Drive cannot be"
            f" mounted here: copy the files to a local folder and set {next(iter(on_drive))} to it"
        )
    print(f"mounting Google Drive at {mountpoint} for {listed}: allow access in the pop-up")
    _submodule(module, "drive").mount(mountpoint)
    return True
