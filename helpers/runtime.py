"""Device choice, mixed precision and out-of-memory recovery."""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, TypeVar

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
        raise RuntimeError("device='cuda' was requested but no CUDA GPU is visible. In Colab: "
                           "Runtime > Change runtime type > GPU. Or set device='auto' or 'cpu'.")
    global _WARNED_CPU
    if not _WARNED_CPU:
        _WARNED_CPU = True
        warnings.warn("no CUDA GPU found: running on the CPU (slower; set device='cpu' to silence "
                      "this)", stacklevel=2)
    return torch.device("cpu")


_WARNED_CPU = False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for the backbone, or None for plain fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


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
            warnings.warn(f"out of memory during {what} at {size}; retrying with {new}", stacklevel=2)
            size = new
