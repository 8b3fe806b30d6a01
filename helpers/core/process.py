"""What a process of this project sets up for itself and for the processes it starts: glibc
malloc's settings (freed memory kept for reuse; transparent huge pages for the notebook kernels)
and the progress-bar switch. No torch here: the main job starts its first notebook kernel before
it loads torch (:mod:`helpers.tools.kernels`)."""

from __future__ import annotations

import os
import sys

PROGRESS_ENV = "PATCHCORE_PROGRESS"  # "stderr": bars go to the process's own stderr (pipeline)
ALLOCATOR_ENV = "PATCHCORE_ALLOCATOR"  # "system": leave glibc's malloc settings alone
_ALLOCATOR_TUNED: bool | None = None  # None: not tried yet
_LIBC = None  # glibc, once keep_freed_memory has tuned it


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of unmapping every block above 32 MB
    (PatchCore's per-batch temporaries are tens to hundreds of MB: each was unmapped on free and
    page-faulted, zero-filled, back on the next batch). Once per process, from
    :class:`helpers.core.model.PatchCore`; a no-op where malloc is not glibc's or when the
    environment sets PATCHCORE_ALLOCATOR=system. On transistor, 64 test images: 9.3 -> 7.6 s,
    system time 2.7 -> 0.4 s; a kept heap can raise a process's peak (notebook 01 alone: 2.12 ->
    2.44 GB), so large operations end with :func:`release_freed_memory` (benchmarks/RESULTS.md).
    Returns whether the settings were changed."""
    global _ALLOCATOR_TUNED, _LIBC
    if _ALLOCATOR_TUNED is None:
        _ALLOCATOR_TUNED = False
        if os.environ.get(ALLOCATOR_ENV, "") != "system" and sys.platform.startswith("linux"):
            import ctypes

            try:
                libc = ctypes.CDLL("libc.so.6")
                # M_MMAP_THRESHOLD (-3): only blocks above 256 MB (the fit's feature and projection
                # arrays) get their own mapping; M_TRIM_THRESHOLD (-1): keep the heap's free top
                mapped = libc.mallopt(-3, ctypes.c_int(256 << 20))
                _ALLOCATOR_TUNED = bool(mapped) and bool(libc.mallopt(-1, ctypes.c_int(2**31 - 1)))
            except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
                pass
            else:
                _LIBC = libc if _ALLOCATOR_TUNED else None
    return _ALLOCATOR_TUNED


HUGE_PAGES = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: malloc madvises transparent huge pages


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python process started by this project (the main job's notebook
    kernels): ``env`` (default ``os.environ``) with glibc's ``glibc.malloc.hugetlb=1`` tunable added
    to GLIBC_TUNABLES, so that malloc asks the kernel for transparent huge pages for its heap and
    large blocks (where THP is in "madvise" mode, as on most Linux machines): one page fault per
    2 MB instead of per 4 KB. The transistor main job: 4.6 -> 1.0 million page faults, system time
    33 -> 27 s (benchmarks/RESULTS.md). glibc reads tunables when a process starts, so a running
    process cannot turn this on for itself; older glibc and other C libraries ignore it.
    PATCHCORE_ALLOCATOR=system leaves the environment as it is."""
    out = dict(os.environ if env is None else env)
    if out.get(ALLOCATOR_ENV, "") == "system":
        return out
    tunables = [t for t in out.get("GLIBC_TUNABLES", "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):  # the user's own wins
        out["GLIBC_TUNABLES"] = ":".join([*tunables, HUGE_PAGES])
    return out


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc's ``malloc_trim``) after a large operation, so
    that what :func:`keep_freed_memory` kept for one loop's reuse does not stay with the process
    (fit, predict, the held-out pass and each saved figure call it; a no-op where nothing was
    tuned)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
