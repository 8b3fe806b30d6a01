"""Atomic file writes (temp file in the same folder, fsync, rename) and pickle-free tensor files.

A reader never sees a half-written file: either the old file or the complete new one. Tensors are
stored with safetensors, whose loader parses a JSON header and raw buffers and never unpickles.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(path.parent, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
        except OSError:
            pass
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Atomically write torch tensors (or numpy arrays) to a .safetensors file."""
    import torch
    from safetensors.torch import save

    tensors = {
        k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v)
        .detach()
        .cpu()
        .contiguous()
        for k, v in tensors.items()
    }
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) from a .safetensors file; ValueError naming the file when it is not
    one."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.safetensors")) + sorted(path.glob("artifacts/*.safetensors"))
        hint = f", e.g. {found[0]}" if found else ""
        raise IsADirectoryError(
            f"{path} is a folder, not a .safetensors file: pass the file itself{hint}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated "
            "or not a file this project wrote"
        ) from exc
    return tensors, meta
