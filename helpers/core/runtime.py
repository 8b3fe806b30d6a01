"""Device choice, mixed precision and out-of-memory recovery."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU (with a warning only when a GPU was expected);
    'cuda' without a GPU is an error, never a silent fallback."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise RuntimeError(
            "device='cuda' was requested but no CUDA GPU is visible. In Colab: "
            "Runtime > Change runtime type > GPU. Or set device='auto' or 'cpu'."
        )
    global _WARNED_CPU
    if not _WARNED_CPU:
        _WARNED_CPU = True
        warnings.warn(
            "no CUDA GPU found: running on the CPU (slower; set device='cpu' to silence this)",
            stacklevel=2,
        )
    return torch.device("cpu")


_WARNED_CPU = False


def cpu_reported() -> None:
    """Someone (the notebooks' setup cell) has told the user there is no GPU: from now on
    :func:`resolve_device` does not warn about it again in this process."""
    global _WARNED_CPU
    _WARNED_CPU = True


BF16_MIN_CAPABILITY = (8, 0)  # Ampere (A100) and newer: bf16 tensor cores; below, bf16 is emulated


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for any other device."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def has_native_bf16(device: torch.device) -> bool:
    """True on CUDA GPUs of compute capability >= 8.0 (A100, H100, H200, RTX 30xx+). Not
    ``torch.cuda.is_bf16_supported()``: that is also true on a T4 or V100, where bf16 is emulated
    (no bf16 tensor cores) and far slower than fp16."""
    capability = cuda_capability(device)
    return capability is not None and capability >= BF16_MIN_CAPABILITY


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for the backbone, or None for plain fp32.

    ``auto``: bf16 on a GPU of compute capability >= 8.0, fp16 on older GPUs (T4, V100), fp32 on
    the CPU. ``fp32`` / ``fp16`` / ``bf16`` are honoured as asked, except ``bf16`` on a CUDA GPU
    below 8.0, which falls back to fp16 with a warning."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if device.type != "cuda" or has_native_bf16(device):
        return torch.bfloat16
    if precision == "bf16":
        major, minor = cuda_capability(device)
        warnings.warn(
            f"precision='bf16' asked, but this GPU (compute capability {major}.{minor}) "
            "has no bf16 tensor cores (needs 8.0, e.g. an A100): using fp16 autocast. "
            "Set precision='fp16' (or 'auto') to silence this.",
            stacklevel=2,
        )
    return torch.float16


def precision_note(device: torch.device, precision: str = "auto") -> str:
    """One line saying which precision the backbone runs in on ``device`` and why."""
    dtype = autocast_dtype(device, precision)
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    capability = cuda_capability(device)
    if capability is None:
        return f"{name} ({device.type}, precision={precision!r})"
    return (
        f"{name} (compute capability {capability[0]}.{capability[1]}; bf16 needs >= "
        f"{BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]}, precision={precision!r})"
    )


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` intra-op CPU threads (None: unchanged), restoring the old count.
    For long chains of small sequential ops (the coreset loop): with 2 threads every op pays an
    OpenMP fork/join, and on a shared machine a join waits for a descheduled thread (measured
    2-6x slower than 1 thread on the 2-core benchmark box, see benchmarks/RESULTS.md)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_halving(fn: Callable[[int], T], size: int, what: str) -> tuple[T, int]:
    """Call ``fn(size)``; on out-of-memory halve ``size`` and retry (warning each time) until it
    succeeds or size 1 fails. Returns (result, size that worked)."""
    while True:
        try:
            return fn(size), size
        except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc) or size <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            new = max(1, size // 2)
            warnings.warn(
                f"out of memory during {what} at {size}; retrying with {new}", stacklevel=2
            )
            size = new


# The CPU runs the backbone on at most this many images at once: a larger batch is no faster on
# a CPU, and at 320 px a batch of 32 holds ~1.3 GB of activations (it set the main job's floor).
CPU_MICRO_BATCH = 8

PROGRESS_ENV = "PATCHCORE_PROGRESS"  # "stderr": bars go to the process's own stderr (pipeline)


def _terminal():
    """The terminal the process was started from. In a Jupyter kernel whatever is written to file
    descriptor 2 lands in the notebook (ipykernel forwards it, so a bar drawn on
    ``sys.__stderr__`` showed up frozen in executed notebooks); the kernel's ``sys.stderr.fileno()``
    is its copy of the original descriptor, the terminal."""
    import sys

    stream = sys.stderr
    if stream is sys.__stderr__:
        return sys.__stderr__
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__
    return open(fd, "w", buffering=1, closefd=False)  # the descriptor stays open


def progress(iterable, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar over ``iterable``. In a notebook: the notebook's own bar. Under
    ``python -m helpers run`` (which sets PATCHCORE_PROGRESS=stderr for its kernels):
    a text bar on the kernel process's terminal, i.e. the pipeline's, so executed notebooks stay
    free of timing output and nbval re-execution compares equal."""
    import os

    if os.environ.get(PROGRESS_ENV) == "stderr":
        from tqdm import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            file=_terminal(),
            mininterval=2.0,
            dynamic_ncols=False,
            ncols=100,
        )
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)
