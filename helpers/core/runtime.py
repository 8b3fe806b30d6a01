"""Device, mixed precision, out-of-memory recovery, progress bars, and files that are never seen
half-written (atomic writes; tensors in safetensors, which never unpickles)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from helpers.core.process import PROGRESS_ENV

T = TypeVar("T")
_WARNED_CPU = False
BF16_MIN_CAPABILITY = (8, 0)  # Ampere (A100) and newer: bf16 tensor cores; below, bf16 is emulated
# The CPU runs the backbone on at most this many images at once: a larger batch is no faster on
# a CPU, and at 320 px a batch of 32 holds ~1.3 GB of activations (it set the main job's floor).
CPU_MICRO_BATCH = 8


def resolve_device(requested: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else the CPU (warned about once per process); 'cuda' without
    a GPU is an error, never a silent fallback."""
    global _WARNED_CPU
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise RuntimeError("device='cuda' was requested but no CUDA GPU is visible. In Colab: "
                           "Runtime > Change runtime type > GPU. Or set device='auto' or "
                           "'cpu'.")  # fmt: skip
    if not _WARNED_CPU:
        _WARNED_CPU = True
        msg = "no CUDA GPU found: running on the CPU (slower; set device='cpu' to silence this)"
        warnings.warn(msg, stacklevel=2)
    return torch.device("cpu")


def cpu_reported() -> None:
    """The setup cell told the user there is no GPU: :func:`resolve_device` stays quiet now."""
    global _WARNED_CPU
    _WARNED_CPU = True


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for any other device."""
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def has_native_bf16(device: torch.device) -> bool:
    """True on CUDA GPUs of compute capability >= 8.0 (A100, H100, RTX 30xx+). Not
    ``torch.cuda.is_bf16_supported()``, which is also true on a T4, where bf16 is emulated."""
    capability = cuda_capability(device)
    return capability is not None and capability >= BF16_MIN_CAPABILITY


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The backbone's autocast dtype (None: fp32). ``auto``: bf16 on a GPU of capability >= 8.0,
    fp16 on older GPUs, fp32 on the CPU; ``bf16`` on an older GPU falls back to fp16, warned."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if device.type != "cuda" or has_native_bf16(device):
        return torch.bfloat16
    if precision == "bf16":
        major, minor = cuda_capability(device)
        warnings.warn(f"precision='bf16' asked, but this GPU (compute capability {major}.{minor}) "
                      "has no bf16 tensor cores (needs 8.0, e.g. an A100): using fp16 autocast. Set"
                      " precision='fp16' (or 'auto') to silence this.", stacklevel=2)  # fmt: skip
    return torch.float16


def precision_note(device: torch.device, precision: str = "auto") -> str:
    """One line saying which precision the backbone runs in on ``device`` and why."""
    dtype = autocast_dtype(device, precision)
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    cap = cuda_capability(device)
    if cap is None:
        return f"{name} ({device.type}, precision={precision!r})"
    need = ".".join(map(str, BF16_MIN_CAPABILITY))
    why = f"compute capability {cap[0]}.{cap[1]}; bf16 needs >= {need}"
    return f"{name} ({why}, precision={precision!r})"


def autocast(device: torch.device, dtype: torch.dtype | None):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``n`` intra-op CPU threads (None: unchanged). For long chains of small
    sequential ops (the coreset loop), where every op with 2 threads pays an OpenMP fork/join
    (measured 2-6x slower than 1 thread on a shared 2-core machine, benchmarks/RESULTS.md)."""
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_halving(fn: Callable[[int], T], size: int, what: str) -> tuple[T, int]:
    """``fn(size)``, halving ``size`` on out-of-memory (warned) until it succeeds or size 1
    fails. Returns (result, size that worked)."""
    while True:
        try:
            return fn(size), size
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
            if not oom or size <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            msg = f"out of memory during {what} at {size}; retrying with {size // 2}"
            warnings.warn(msg, stacklevel=2)
            size //= 2


def _terminal():
    """The terminal the process was started from. In a Jupyter kernel, file descriptor 2 lands in
    the notebook; the kernel's ``sys.stderr.fileno()`` is its copy of the original terminal."""
    if sys.stderr is sys.__stderr__:
        return sys.__stderr__
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__
    return open(fd, "w", buffering=1, closefd=False)  # the descriptor stays open


def progress(iterable, *, total: int | None = None, desc: str = "", unit: str = "it"):
    """A tqdm bar: the notebook's own, or under ``python -m helpers run`` (PATCHCORE_PROGRESS=
    stderr) a text bar on the pipeline's terminal, so executed notebooks hold no timing output."""
    if os.environ.get(PROGRESS_ENV) == "stderr":
        from tqdm import tqdm

        kw = dict(file=_terminal(), mininterval=2.0, dynamic_ncols=False, ncols=100)
        return tqdm(iterable, total=total, desc=desc, unit=unit, **kw)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)


# ------------------------------------------------------------------ files
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write through a temporary file in the same folder, fsync, rename: a reader sees the old
    file or the whole new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    def jsonable(o: Any) -> Any:
        if isinstance(o, (np.floating, np.integer, np.ndarray)):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    text = json.dumps(obj, indent=2, sort_keys=True, default=jsonable)
    return atomic_write_text(path, text + "\n")


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write torch tensors (or numpy arrays) to a .safetensors file."""
    from safetensors.torch import save

    fix = lambda v: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v
    tensors = {k: torch.as_tensor(fix(v)).detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a .safetensors file; an error naming the file when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors")) + sorted(path.glob("artifacts/*.safetensors"))
        hint = f", e.g. {found[0]}" if found else ""
        raise IsADirectoryError(f"{path} is a folder, not a .safetensors file: pass the file "
                                f"itself{hint}")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); it may be truncated "
                         "or not a file this project wrote") from exc  # fmt: skip
