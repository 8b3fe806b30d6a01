"""Extracting one category from an MVTec AD archive, streaming and safely: the archive is read
once (its sha256 computed on the way), only ``<category>/`` is written, into a staging folder that
becomes ``<dest>/<category>`` only when the checksum and the layout are right. Absolute paths,
``..``, links leading outside and special files are refused."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import tarfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

BLOCK = 1 << 20


class DownloadError(RuntimeError):
    """The archive could not be obtained or is not what was expected; the message says why and
    what to do instead."""


def checksum_error(path: str | Path, expected: str, actual: str, *, deleted: bool) -> DownloadError:
    fate = "it was deleted and nothing was extracted" if deleted else "nothing was extracted"
    return DownloadError(
        f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file is "
        f"corrupt or not the archive you meant; {fate}. Run again to download it afresh, or "
        "fix download_sha256 if you pinned another archive."
    )


def byte_progress(total: int | None, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total or None,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=desc,
        disable=not enabled,
        mininterval=0.5,
    )


class _HashingReader:
    """A read-only file wrapper that hashes and counts what the tar reader consumes."""

    def __init__(self, fh: BinaryIO, bar):
        self.fh, self.bar, self.h = fh, bar, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        block = self.fh.read(size)
        self.h.update(block)
        self.bar.update(len(block))
        return block

    def drain(self) -> str:
        """Read what the tar reader left (end-of-archive padding); the whole file's sha256."""
        while self.read(BLOCK):
            pass
        return self.h.hexdigest()


def _archive_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The member's path components, refusing absolute paths and ``..``."""
    path = PurePosixPath(name.replace("\\", "/"))
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if path.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        raise DownloadError(
            f"{archive}: unsafe member {name!r} (an absolute path or '..' would "
            "write outside the target folder); the archive was refused"
        )
    return parts


def _category_rel(parts: tuple[str, ...], category: str) -> tuple[str, ...] | None:
    """The path inside the category for ``<category>/...`` or ``<one folder>/<category>/...``
    members; None for other members (other categories, licence files)."""
    if parts and parts[0] == category:
        return parts[1:]
    if len(parts) > 1 and parts[1] == category:
        return parts[2:]
    return None


def _link_source(
    member: tarfile.TarInfo, parts: tuple[str, ...], category: str, staging: Path, archive: Path
) -> Path:
    """The already extracted file a (hard or symbolic) link points to; refused when it leads
    outside the category or was not extracted before the link."""
    if member.issym():
        target = PurePosixPath(*parts[:-1], member.linkname).as_posix()
    else:
        target = member.linkname
    try:
        rel = _category_rel(_archive_parts(os.path.normpath(target), archive), category)
    except DownloadError:
        rel = None
    source = staging.joinpath(*rel) if rel else None
    if source is None or not source.is_file():
        raise DownloadError(
            f"{archive}: link {member.name!r} -> {member.linkname!r} points "
            f"outside {category}/ (or to a file not seen before it); refused"
        )
    return source


def _write_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    parts: tuple[str, ...],
    *,
    category: str,
    staging: Path,
    archive: Path,
) -> int:
    """Write one member of the category into ``staging``; returns the files written (0/1)."""
    rel = _category_rel(parts, category)
    if rel is None:
        return 0
    target = staging.joinpath(*rel)
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    if not rel:
        raise DownloadError(
            f"{archive}: {member.name!r} should be the {category}/ folder but "
            "is a file; the archive was refused"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.issym() or member.islnk():
        shutil.copyfile(_link_source(member, parts, category, staging, archive), target)
        return 1
    if not member.isfile():
        raise DownloadError(
            f"{archive}: member {member.name!r} is not a regular file or folder "
            "(a device, fifo or other special file); the archive was refused"
        )
    with tar.extractfile(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, BLOCK)
    return 1


def _stream_category(
    archive: Path, staging: Path, category: str, *, progress: bool
) -> tuple[str, int, list[str]]:
    """Extract ``category`` from ``archive`` into ``staging`` in one streaming pass. Returns the
    archive's sha256, the files written and the top-level names seen."""
    seen: list[str] = []
    files = 0
    with (
        open(archive, "rb") as fh,
        byte_progress(archive.stat().st_size, f"extract {category}", progress) as bar,
    ):
        reader = _HashingReader(fh, bar)
        try:
            with tarfile.open(fileobj=reader, mode="r|*", bufsize=BLOCK) as tar:
                for member in tar:
                    parts = _archive_parts(member.name, archive)
                    if parts and parts[0] not in seen and len(seen) < 20:
                        seen.append(parts[0])
                    files += _write_member(
                        tar, member, parts, category=category, staging=staging, archive=archive
                    )
        except (tarfile.TarError, EOFError, lzma.LZMAError) as exc:
            raise DownloadError(
                f"{archive} is not a complete tar archive ({exc}); delete it and download it again"
            ) from exc
        return reader.drain(), files, seen


def extract_category(
    archive: str | Path,
    dest: str | Path,
    category: str = "metal_nut",
    *,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """Extract only ``<category>/`` of a .tar(.xz/.gz/.bz2) archive into ``dest/<category>``:
    one streaming pass into a hidden staging folder, checked (``sha256`` when given, the MVTec
    layout always), then renamed into place; on any error nothing is left behind. Archives
    holding ``<category>/...`` or ``<folder>/<category>/...`` both work. Returns ``dest``."""
    archive, dest = Path(archive), Path(dest)
    final = dest / category
    if final.exists():
        raise DownloadError(
            f"{final} exists but has no train/good folder: move it away (or "
            "delete it) and run again"
        )
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".{category}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        digest, files, seen = _stream_category(archive, staging, category, progress=progress)
        if sha256 and digest != sha256.lower():
            raise checksum_error(archive, sha256.lower(), digest, deleted=False)
        if not (staging / "train" / "good").is_dir():
            raise DownloadError(
                f"{archive} holds no {category}/train/good (its top-level "
                f"entries: {seen}); is it the MVTec AD archive?"
            )
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state = "verified" if sha256 else "not checked (pin it with download_sha256)"
    print(f"extracted {files} files into {final}; archive sha256 {digest}: {state}")
    return dest
