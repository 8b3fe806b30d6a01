"""Resumable HTTP download: :func:`download` writes ``dest.partial``, resumes it with an HTTP Range
request after a cut (on a retry here and on the next call), checks the sha256 and renames it to
``dest``. A refusal (HTTP error, no connection, a web page instead of the file) is a
:class:`~helpers.data.archive.DownloadError` that ends with the caller's advice on what to do."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from helpers.data.archive import BLOCK, DownloadError, byte_progress, checksum_error


def refused(url: str, why: str, advice: str = "") -> DownloadError:
    return DownloadError(f"The download of {url} was refused: {why}." + (advice and f"\n{advice}"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int, opener: Callable, timeout: float, advice: str):
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        return opener(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None  # the partial file is already complete (or longer): start over
        raise refused(url, f"HTTP {exc.code} {exc.reason}", advice) from exc
    except (urllib.error.URLError, OSError) as exc:
        why = f"no connection ({getattr(exc, 'reason', exc)})"
        raise refused(url, why, advice) from exc


def _total_size(response, offset: int) -> int | None:
    headers = getattr(response, "headers", None) or {}
    content_range = headers.get("Content-Range") or ""
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = headers.get("Content-Length")
    return offset + int(length) if length and str(length).isdigit() else None


def _copy_stream(
    response, tmp: Path, offset: int, h, *, url: str, advice: str, progress: bool
) -> int:
    """Append the response body to ``tmp`` (``offset`` bytes already there, hashed into ``h``).
    Returns the file's size; a connection lost midway raises ConnectionError."""
    headers = getattr(response, "headers", None) or {}
    if "text/html" in (headers.get("Content-Type") or "").lower():
        why = "the server sent a web page instead of the archive (a licence form or login page)"
        raise refused(url, why, advice)
    total = _total_size(response, offset)
    done = offset
    with (
        byte_progress(total, f"download {tmp.name[:-8]}", progress, offset) as bar,
        open(tmp, "ab") as fh,
    ):
        while True:
            try:
                block = response.read(BLOCK)
            except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, timeout
                raise ConnectionError(f"connection lost ({exc})") from exc
            if not block:
                break
            fh.write(block)
            h.update(block)
            done += len(block)
            bar.update(len(block))
    if total is not None and done < total:
        raise ConnectionError(f"got {done} of {total} bytes")
    return done


def _attempt(
    url: str, tmp: Path, *, opener: Callable, timeout: float, advice: str, progress: bool
) -> str:
    """One try at completing ``tmp`` (resuming it when it exists); returns its sha256."""
    offset = tmp.stat().st_size if tmp.exists() else 0
    response = _open(url, offset, opener, timeout, advice)
    if response is None:
        tmp.unlink()
        offset = 0
        response = _open(url, 0, opener, timeout, advice)
    with response:
        if offset and getattr(response, "status", None) != 206:
            tmp.unlink()  # the server ignored the Range header: it sends the whole file
            offset = 0
        h = hashlib.sha256()
        if offset:
            with open(tmp, "rb") as fh:
                for block in iter(lambda: fh.read(BLOCK), b""):
                    h.update(block)
        try:
            _copy_stream(response, tmp, offset, h, url=url, advice=advice, progress=progress)
        except DownloadError:
            tmp.unlink(missing_ok=True)
            raise
    return h.hexdigest()


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    opener: Callable | None = None,
    timeout: float = 60,
    retries: int = 3,
    progress: bool = True,
    advice: str = "",
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.partial``, resuming it with HTTP Range after a
    cut (``retries`` times here, and on the next call), then check ``sha256`` (when None the
    digest is printed) and rename. ``opener``: a ``urllib.request.urlopen``-like callable taking
    a Request (tests pass a fake). ``advice`` ends the message of a refused download."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = (sha256 or "").lower() or None
    tmp = dest.with_name(dest.name + ".partial")
    retries = max(1, retries)
    for attempt in range(1, retries + 1):
        try:
            digest = _attempt(
                url,
                tmp,
                opener=opener or urllib.request.urlopen,
                timeout=timeout,
                advice=advice,
                progress=progress,
            )
            break
        except ConnectionError as exc:
            have = tmp.stat().st_size / 2**20 if tmp.exists() else 0.0
            if attempt == retries:
                raise DownloadError(
                    f"the download of {url} stopped after {have:.1f} MiB ({exc}), {retries} "
                    f"tries. Run the same cell again: it resumes from {tmp}."
                ) from exc
            print(
                f"download interrupted at {have:.1f} MiB ({exc}); resuming "
                f"(try {attempt + 1} of {retries})"
            )
    if expected and digest != expected:
        tmp.unlink(missing_ok=True)
        raise checksum_error(f"{url} (downloaded to {tmp})", expected, digest, deleted=True)
    os.replace(tmp, dest)
    state = "verified" if expected else "not checked (pin it with download_sha256)"
    print(f"downloaded {dest} ({dest.stat().st_size / 2**20:.1f} MiB), sha256 {digest}: {state}")
    return dest
